/**
 * Upstream services' own OpenAPI documents: found (openapi/upstreams/<name>.json|yaml|yml, or the upstream's
 * `openapi` field: a file in that folder or an http(s) URL), checked at start-up, and merged into the gateway's
 * operations for the routes that proxy to them, with paths mapped through each route's rewrite.
 *
 * What is fatal and what is a warning:
 * - A file shipped with the gateway that is missing (when an upstream names it), outside openapi/upstreams/, not
 *   JSON/YAML, not OpenAPI 3.x, malformed, or with a $ref that does not resolve (or points to another file) stops
 *   the start-up with GW_ERR_OPENAPI_UPSTREAM naming the file and where in it. It is part of the deployment, like
 *   a route file: a broken one is a bug to fix before serving.
 * - A document at a URL that cannot be fetched in time or is invalid is a warning: the remote service may be down
 *   while the gateway starts, and the gateway must start anyway; those routes are documented from their
 *   declarations only.
 * - Where a route declares its own schema and the upstream document declares a different one for the same part
 *   (request body, a response status), the route's schema is documented and a warning names both.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { basename, dirname, extname, isAbsolute, join, relative, resolve, sep } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parse as parseYaml } from 'yaml'
import { formatParamUrl } from '@fastify/swagger'
import { GW_ERR_OPENAPI_UPSTREAM } from './errors.js'
import type { RoutePolicy, UpstreamPolicy } from './policy.js'

export type Json = Record<string, unknown>

export const HTTP_METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'] as const
const COMPONENT_KINDS = new Set(['schemas', 'responses', 'parameters', 'examples', 'requestBodies', 'headers', 'links', 'callbacks', 'pathItems'])
const MAX_DOCUMENT_BYTES = 10 * 1024 * 1024

export const isObj = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v)

const here = dirname(fileURLToPath(import.meta.url))

/** The gateway's own folder (the one with package.json), from the sources or from dist/. */
export function projectRoot (): string {
  let dir = join(here, '..')
  for (let i = 0; i < 4; i++) {
    if (existsSync(join(dir, 'package.json'))) return dir
    dir = join(dir, '..')
  }
  return join(here, '..')
}

export const DEFAULT_UPSTREAM_SPECS_DIR = join(projectRoot(), 'openapi', 'upstreams')

export interface SpecPath { path: string, norm: string, params: string[], item: Json }

export interface UpstreamSpec {
  upstream: string
  /** shown in messages: a path relative to the working directory, or the URL */
  source: string
  doc: Json
  /** '3.0' documents have their schemas upgraded to the gateway's 3.1 when merged */
  version: '3.0' | '3.1'
  /** each path of the document, prefixed with each server base path it may be served under */
  paths: SpecPath[]
}

export interface LoadOptions {
  dir: string
  fetchTimeoutMs: number
  /** where file names in messages are relative to */
  displayRoot?: string
}

// ---- paths ------------------------------------------------------------------------------------------------------

/** '/items/{id}' -> { norm: '/items/{}', params: ['id'] }: paths that differ only by parameter names match. */
export function normalizeTemplate (path: string): { norm: string, params: string[] } {
  const params: string[] = []
  const norm = path.replace(/\{([^{}]+)\}/g, (_m, name: string) => { params.push(name); return '{}' })
  return { norm: norm.length > 1 ? norm.replace(/\/$/, '') : norm, params }
}

/** The upstream path template a route forwards to, in OpenAPI form ('/v1/items/{id}'), or a prefix for a wildcard. */
export function upstreamTemplate (policy: RoutePolicy): { template: string, wildcard: boolean } {
  const rw = policy.rewrite
  if (rw.kind === 'template') {
    return { template: rw.parts.map((p) => typeof p === 'string' ? p : `{${p.param}}`).join(''), wildcard: false }
  }
  const rest = policy.url === '/' && rw.from.length === 0 ? '/' : policy.url.slice(rw.from.length)
  const wildcard = rest.endsWith('*')
  const tail = formatParamUrl(wildcard ? rest.slice(0, -1) : rest)
  const template = tail === '' ? (rw.to === '' ? '/' : rw.to) : rw.to + tail
  return { template, wildcard }
}

/** The gateway path of a route as the document shows it ('/catalog/items/{id}'; a final '*' is '{wildcard}'). */
export function documentPath (url: string): string {
  return formatParamUrl(url.endsWith('*') ? url.slice(0, -1) + '{wildcard}' : url)
}

function serverBasePaths (doc: Json): string[] {
  const out = new Set<string>([''])
  const servers = Array.isArray(doc.servers) ? doc.servers : []
  for (const s of servers) {
    if (!isObj(s) || typeof s.url !== 'string') continue
    let url = s.url
    const vars = isObj(s.variables) ? s.variables : {}
    url = url.replace(/\{([^{}]+)\}/g, (_m, name: string) => {
      const v = vars[name]
      return isObj(v) && typeof v.default === 'string' ? v.default : ''
    })
    let path: string
    try { path = new URL(url, 'http://upstream.invalid').pathname } catch { continue }
    path = path.replace(/\/+$/, '')
    if (path !== '') out.add(path)
  }
  return [...out]
}

function indexPaths (doc: Json): SpecPath[] {
  const out: SpecPath[] = []
  const paths = doc.paths as Json
  for (const base of serverBasePaths(doc)) {
    for (const [path, item] of Object.entries(paths)) {
      if (!isObj(item)) continue
      const full = base + path
      out.push({ path: full, ...normalizeTemplate(full), item })
    }
  }
  return out
}

// ---- JSON pointers and $refs ------------------------------------------------------------------------------------

const unescapeToken = (t: string): string => t.replace(/~1/g, '/').replace(/~0/g, '~')

export function resolvePointer (doc: Json, ref: string): unknown {
  if (ref === '#') return doc
  if (!ref.startsWith('#/')) return undefined
  let cur: unknown = doc
  for (const raw of ref.slice(2).split('/')) {
    const token = unescapeToken(decodeURIComponent(raw))
    if (Array.isArray(cur)) cur = cur[Number(token)]
    else if (isObj(cur) && Object.hasOwn(cur, token)) cur = cur[token]
    else return undefined
  }
  return cur
}

const where = (path: string[]): string => path.length === 0 ? '(document)' : path.join('.')

/** Keys whose value maps names to schemas: there a key named "example" is a property, not example data. */
const NAMED_SCHEMAS = new Set(['properties', 'patternProperties', '$defs', 'definitions', 'dependentSchemas', 'schemas'])
/** Example data, where "$ref" is just a key (an OpenAPI `examples` map holds Example Objects and is walked). */
const isExampleData = (k: string, v: unknown): boolean => k === 'example' || (k === 'examples' && !isObj(v))

function checkRefs (doc: Json, value: unknown, path: string[], problems: string[], names = false): void {
  if (Array.isArray(value)) { value.forEach((v, i) => checkRefs(doc, v, [...path, String(i)], problems)); return }
  if (!isObj(value)) return
  for (const [k, v] of Object.entries(value)) {
    if (!names && isExampleData(k, v)) continue
    if (!names && k === '$ref' && typeof v === 'string') {
      if (!v.startsWith('#')) problems.push(`${where(path)}: $ref "${v}" points outside this document; bundle it into one file (for example with \`npx @redocly/cli bundle\`)`)
      else if (resolvePointer(doc, v) === undefined) problems.push(`${where(path)}: $ref "${v}" does not resolve`)
      continue
    }
    checkRefs(doc, v, [...path, k], problems, !names && NAMED_SCHEMAS.has(k))
  }
}

// ---- checking a document ----------------------------------------------------------------------------------------

/** The problems of a parsed document, each naming where it is; an empty list means it can be merged. */
export function checkDocument (doc: unknown): string[] {
  const p: string[] = []
  if (!isObj(doc)) return ['(document): is not an object']
  if (typeof doc.swagger === 'string') return [`swagger: Swagger ${doc.swagger} documents are not supported; convert it to OpenAPI 3 (for example with \`npx swagger2openapi\`)`]
  if (typeof doc.openapi !== 'string' || !/^3\.[0-2]\.\d+/.test(doc.openapi)) return [`openapi: expected an OpenAPI version 3.0.x or 3.1.x, got ${JSON.stringify(doc.openapi)}`]
  if (doc.info !== undefined && !isObj(doc.info)) p.push('info: must be an object')
  // 3.1 makes `paths` optional (a document of webhooks or components only)
  if (doc.paths === undefined && !doc.openapi.startsWith('3.0')) doc.paths = {}
  if (!isObj(doc.paths)) { p.push('paths: must be an object'); return p }
  for (const [path, item] of Object.entries(doc.paths)) {
    const at = ['paths', path]
    if (!path.startsWith('/')) p.push(`${where(at)}: a path starts with "/"`)
    if (!isObj(item)) { p.push(`${where(at)}: must be an object`); continue }
    checkParameters(item.parameters, [...at, 'parameters'], p)
    for (const m of HTTP_METHODS) {
      const op = item[m]
      if (op === undefined) continue
      const o = [...at, m]
      if (!isObj(op)) { p.push(`${where(o)}: must be an object`); continue }
      checkParameters(op.parameters, [...o, 'parameters'], p)
      if (op.requestBody !== undefined && !isObj(op.requestBody)) p.push(`${where([...o, 'requestBody'])}: must be an object`)
      if (op.responses !== undefined) {
        if (!isObj(op.responses)) p.push(`${where([...o, 'responses'])}: must be an object`)
        else {
          for (const [status, res] of Object.entries(op.responses)) {
            const r = [...o, 'responses', status]
            if (!/^([1-5](\d\d|XX)|default)$/.test(status) && !status.startsWith('x-')) p.push(`${where(r)}: expected a status code like 200, 4XX or default`)
            if (!isObj(res)) p.push(`${where(r)}: must be an object`)
            else if (res.$ref === undefined && typeof res.description !== 'string') p.push(`${where(r)}: a response needs a description`)
          }
        }
      }
      for (const k of ['summary', 'description', 'operationId'] as const) {
        if (op[k] !== undefined && typeof op[k] !== 'string') p.push(`${where([...o, k])}: must be a string`)
      }
    }
  }
  if (doc.components !== undefined) {
    if (!isObj(doc.components)) p.push('components: must be an object')
    else {
      for (const [kind, group] of Object.entries(doc.components)) {
        if (COMPONENT_KINDS.has(kind) && !isObj(group)) p.push(`components.${kind}: must be an object`)
      }
    }
  }
  if (p.length === 0) checkRefs(doc, doc, [], p)
  return p
}

function checkParameters (value: unknown, at: string[], p: string[]): void {
  if (value === undefined) return
  if (!Array.isArray(value)) { p.push(`${where(at)}: must be an array`); return }
  value.forEach((param, i) => {
    const here = [...at, String(i)]
    if (!isObj(param)) { p.push(`${where(here)}: must be an object`); return }
    if (param.$ref !== undefined) return
    if (typeof param.name !== 'string') p.push(`${where(here)}: a parameter needs a name`)
    if (!['query', 'header', 'path', 'cookie'].includes(param.in as string)) p.push(`${where(here)}: "in" must be query, header, path or cookie, got ${JSON.stringify(param.in)}`)
  })
}

function parseText (text: string, yamlFirst: boolean): unknown {
  if (!yamlFirst) return JSON.parse(text)
  return parseYaml(text, { prettyErrors: true, maxAliasCount: 1000 })
}

function makeSpec (upstream: string, source: string, doc: Json): UpstreamSpec {
  return { upstream, source, doc, version: (doc.openapi as string).startsWith('3.0') ? '3.0' : '3.1', paths: indexPaths(doc) }
}

// ---- loading ----------------------------------------------------------------------------------------------------

const SPEC_FILE = /\.(json|ya?ml)$/i

/** A URL as logs may show it: no user info, no query (either may carry a credential). */
export function safeUrl (raw: string): string {
  try {
    const u = new URL(raw)
    return `${u.protocol}//${u.host}${u.pathname}${u.search === '' ? '' : '?…'}`
  } catch { return '(an invalid URL)' }
}

async function fetchDocument (raw: string, timeoutMs: number): Promise<unknown> {
  // user info in the URL is sent as Basic credentials (fetch refuses it in the URL)
  const u = new URL(raw)
  const headers: Record<string, string> = { accept: 'application/json, application/yaml;q=0.9, */*;q=0.1' }
  if (u.username !== '' || u.password !== '') {
    headers.authorization = 'Basic ' + Buffer.from(`${decodeURIComponent(u.username)}:${decodeURIComponent(u.password)}`).toString('base64')
    u.username = ''
    u.password = ''
  }
  const url = u.href
  const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs), headers, redirect: 'follow' })
  if (!res.ok) { await res.body?.cancel(); throw new Error(`HTTP ${res.status}`) }
  const len = Number(res.headers.get('content-length') ?? 0)
  if (len > MAX_DOCUMENT_BYTES) { await res.body?.cancel(); throw new Error(`larger than ${MAX_DOCUMENT_BYTES} bytes`) }
  const buf = Buffer.from(await res.arrayBuffer())
  if (buf.length > MAX_DOCUMENT_BYTES) throw new Error(`larger than ${MAX_DOCUMENT_BYTES} bytes`)
  const text = buf.toString('utf8')
  const type = res.headers.get('content-type') ?? ''
  const yamlFirst = /ya?ml/i.test(type) || (/\.ya?ml(\?|$)/i.test(new URL(url).pathname) && !/json/i.test(type)) || !/^\s*[{[]/.test(text)
  return parseText(text, yamlFirst)
}

/**
 * The upstream documents of the declared upstreams. Throws GW_ERR_OPENAPI_UPSTREAM listing every problem with a
 * shipped file; URL documents that fail become `warnings`.
 */
export async function loadUpstreamSpecs (upstreams: ReadonlyMap<string, UpstreamPolicy>, opts: LoadOptions): Promise<{ specs: Map<string, UpstreamSpec>, warnings: string[] }> {
  const root = opts.displayRoot ?? process.cwd()
  const show = (file: string): string => relative(root, file) || file
  const dir = resolve(opts.dir)
  const specs = new Map<string, UpstreamSpec>()
  const warnings: string[] = []
  const fatal: string[] = []
  const used = new Set<string>()
  const inDir = existsSync(dir) ? readdirSync(dir).filter((n) => SPEC_FILE.test(n)).sort() : []

  const fromFile = (name: string, file: string): void => {
    used.add(resolve(file))
    let text: string
    try { text = readFileSync(file, 'utf8') } catch (err) { fatal.push(`${show(file)}  upstream ${name}: cannot be read: ${(err as Error).message}`); return }
    let doc: unknown
    try { doc = parseText(text, /\.ya?ml$/i.test(file)) } catch (err) {
      fatal.push(`${show(file)}  upstream ${name}: is not valid ${/\.ya?ml$/i.test(file) ? 'YAML' : 'JSON'}: ${(err as Error).message.split('\n')[0] ?? ''}`)
      return
    }
    const problems = checkDocument(doc)
    if (problems.length > 0) { for (const pr of problems) fatal.push(`${show(file)}  upstream ${name}  ${pr}`); return }
    specs.set(name, makeSpec(name, show(file), doc as Json))
  }

  const fetches: Array<Promise<void>> = []
  for (const [name, up] of upstreams) {
    const declared = up.openapi
    if (declared !== null && /^https?:\/\//i.test(declared)) {
      const shown = safeUrl(declared)
      fetches.push(fetchDocument(declared, opts.fetchTimeoutMs).then((doc) => {
        const problems = checkDocument(doc)
        if (problems.length > 0) warnings.push(`upstream ${name}: the OpenAPI document at ${shown} is invalid (${problems.slice(0, 3).join('; ')}${problems.length > 3 ? `; and ${problems.length - 3} more` : ''}); its routes are documented from their declarations only`)
        else specs.set(name, makeSpec(name, shown, doc as Json))
      }, (err: Error) => {
        const reason = err.name === 'TimeoutError' ? `no answer within ${opts.fetchTimeoutMs} ms` : ((err.cause as Error | undefined)?.message ?? err.message).replace(/\bhttps?:\/\/\S+/gi, (m) => safeUrl(m))
        warnings.push(`upstream ${name}: could not load its OpenAPI document from ${shown}: ${reason}; its routes are documented from their declarations only`)
      }))
      continue
    }
    if (declared !== null) {
      const file = resolve(dir, declared)
      if (isAbsolute(declared) || !(file.startsWith(dir + sep)) || !SPEC_FILE.test(declared)) {
        fatal.push(`${show(dir)}  upstream ${name}  openapi: expected a .json, .yaml or .yml file in ${show(dir)} or an http(s) URL, got ${JSON.stringify(declared)}`)
        continue
      }
      if (!existsSync(file)) { fatal.push(`${show(file)}  upstream ${name}  openapi: the file does not exist`); continue }
      fromFile(name, file)
      continue
    }
    const found = inDir.filter((n) => basename(n, extname(n)) === name)
    if (found.length > 1) { fatal.push(`${show(dir)}  upstream ${name}: several documents match (${found.join(', ')}); keep one`); continue }
    if (found[0] !== undefined) fromFile(name, join(dir, found[0]))
  }
  await Promise.all(fetches)
  if (fatal.length > 0) throw new GW_ERR_OPENAPI_UPSTREAM(fatal.map((l) => `  - ${l}`).join('\n'))
  for (const n of inDir) {
    if (!used.has(resolve(dir, n))) warnings.push(`${show(join(dir, n))}: matches no upstream; name it <upstream>${extname(n)} or set \`openapi: '${n}'\` on the upstream`)
  }
  // keep the declaration order, whatever order the fetches ended in
  const ordered = new Map<string, UpstreamSpec>()
  for (const name of upstreams.keys()) { const s = specs.get(name); if (s !== undefined) ordered.set(name, s) }
  return { specs: ordered, warnings }
}

// ---- 3.0 schemas in a 3.1 document --------------------------------------------------------------------------------

const SCHEMA_MAPS = ['properties', 'patternProperties', '$defs', 'definitions', 'dependentSchemas']
const SCHEMA_LISTS = ['allOf', 'anyOf', 'oneOf', 'prefixItems']
const SCHEMA_ONE = ['items', 'additionalProperties', 'not', 'contains', 'if', 'then', 'else', 'propertyNames', 'unevaluatedProperties', 'unevaluatedItems', 'additionalItems']

/** OpenAPI 3.0 schema dialect to JSON Schema 2020-12 (3.1): nullable, boolean exclusive bounds, example. In place. */
export function upgradeSchema30 (s: unknown): void {
  if (!isObj(s)) return
  if (s.nullable !== undefined) {
    if (s.nullable === true && s.type !== undefined) {
      const types = Array.isArray(s.type) ? s.type : [s.type]
      s.type = types.includes('null') ? types : [...types, 'null']
      if (Array.isArray(s.enum) && !s.enum.includes(null)) s.enum = [...s.enum, null]
    }
    delete s.nullable
  }
  for (const [flag, bound] of [['exclusiveMinimum', 'minimum'], ['exclusiveMaximum', 'maximum']] as const) {
    if (s[flag] === true && typeof s[bound] === 'number') { s[flag] = s[bound]; delete s[bound] } else if (s[flag] === false) delete s[flag]
  }
  if (s.example !== undefined && s.examples === undefined) { s.examples = [s.example]; delete s.example }
  for (const k of SCHEMA_MAPS) if (isObj(s[k])) for (const v of Object.values(s[k] as Json)) upgradeSchema30(v)
  for (const k of SCHEMA_LISTS) if (Array.isArray(s[k])) for (const v of s[k] as unknown[]) upgradeSchema30(v)
  for (const k of SCHEMA_ONE) upgradeSchema30(s[k])
}

/** Upgrades every Schema Object found in an operation, response, parameter, header or media type. In place. */
export function upgradeContent30 (v: unknown): void {
  if (Array.isArray(v)) { for (const x of v) upgradeContent30(x); return }
  if (!isObj(v)) return
  for (const [k, x] of Object.entries(v)) {
    if (k === 'example' || k === 'examples' || k === 'value') continue
    if (k === 'schema') upgradeSchema30(x)
    else upgradeContent30(x)
  }
}

// ---- components: copied on demand, renamed <upstream>.<Name> --------------------------------------------------

interface Pending { spec: UpstreamSpec, kind: string, name: string, target: string }

/** The upstream components the merged operations refer to, copied into the gateway's document under new names. */
export class ComponentCopier {
  readonly #out: Record<string, Json> = {}
  readonly #pending: Pending[] = []
  readonly #seen = new Set<string>()

  /** A deep copy of `value` from `spec` with its $refs renamed; referenced components are queued for copying. */
  copy (spec: UpstreamSpec, value: unknown, stack: string[] = [], names = false): unknown {
    if (Array.isArray(value)) return value.map((v) => this.copy(spec, v, stack))
    if (!isObj(value)) return value
    const out: Json = {}
    for (const [k, v] of Object.entries(value)) {
      if (!names && isExampleData(k, v)) { out[k] = structuredClone(v); continue }
      if (!names && k === '$ref' && typeof v === 'string') {
        const tokens = v.slice(2).split('/').map((t) => unescapeToken(decodeURIComponent(t)))
        const [top, kind, name, ...rest] = tokens
        if (top === 'components' && kind !== undefined && name !== undefined && COMPONENT_KINDS.has(kind)) {
          const target = this.#queue(spec, kind, name)
          out.$ref = `#/components/${kind}/${escapeToken(target)}${rest.map((t) => '/' + escapeToken(t)).join('')}`
          continue
        }
        // a reference into paths or elsewhere: inlined (cycles are cut, leaving an empty schema)
        if (stack.includes(v)) return {}
        return this.copy(spec, resolvePointer(spec.doc, v), [...stack, v])
      }
      out[k] = this.copy(spec, v, stack, !names && NAMED_SCHEMAS.has(k))
    }
    return out
  }

  #queue (spec: UpstreamSpec, kind: string, name: string): string {
    const target = `${spec.upstream}.${name.replace(/[^A-Za-z0-9._-]/g, '_')}`
    const key = `${kind}/${target}`
    if (!this.#seen.has(key)) {
      this.#seen.add(key)
      this.#pending.push({ spec, kind, name, target })
    }
    return target
  }

  /** Copies the queued components (and what they refer to) into `components`. */
  flush (components: Json): void {
    while (this.#pending.length > 0) {
      const { spec, kind, name, target } = this.#pending.shift() as Pending
      const source = ((spec.doc.components as Json)[kind] as Json)[name]
      const value = this.copy(spec, source)
      if (spec.version === '3.0') { if (kind === 'schemas') upgradeSchema30(value); else upgradeContent30(value) }
      const group = (this.#out[kind] ??= {})
      group[target] = value
    }
    for (const [kind, group] of Object.entries(this.#out)) {
      const existing = isObj(components[kind]) ? components[kind] as Json : {}
      components[kind] = { ...existing, ...group }
    }
  }
}

const escapeToken = (t: string): string => t.replace(/~/g, '~0').replace(/\//g, '~1')

// ---- comparing schemas ------------------------------------------------------------------------------------------

const ANNOTATIONS = new Set(['description', 'title', 'example', 'examples', 'default', 'deprecated', 'readOnly', 'writeOnly', '$comment', '$id', '$schema', 'xml', 'externalDocs', 'discriminator'])

/** A canonical form of a schema for comparison: refs resolved within `doc`, annotations dropped, keys sorted. */
export function canonicalSchema (schema: unknown, doc: Json | null, stack: string[] = []): unknown {
  if (Array.isArray(schema)) return schema.map((s) => canonicalSchema(s, doc, stack))
  if (!isObj(schema)) return schema
  if (typeof schema.$ref === 'string' && doc !== null) {
    if (stack.includes(schema.$ref)) return { $ref: schema.$ref }
    return canonicalSchema(resolvePointer(doc, schema.$ref), doc, [...stack, schema.$ref])
  }
  const out: Json = {}
  for (const k of Object.keys(schema).sort()) {
    if (ANNOTATIONS.has(k) || k.startsWith('x-')) continue
    const v = schema[k]
    if (k === 'required' && Array.isArray(v)) out[k] = [...v].sort()
    else if (k === 'type' && Array.isArray(v)) out[k] = v.length === 1 ? v[0] : [...v].sort()
    else if (k === 'properties' && isObj(v)) {
      const props: Json = {}
      for (const name of Object.keys(v).sort()) props[name] = canonicalSchema(v[name], doc, stack)
      out[k] = props
    } else out[k] = canonicalSchema(v, doc, stack)
  }
  return out
}

/** The JSON body schema of a response or request body object, or undefined. */
export function jsonSchemaOf (holder: unknown): unknown {
  if (!isObj(holder) || !isObj(holder.content)) return undefined
  const content = holder.content
  const key = Object.keys(content).find((t) => /^application\/(.+\+)?json/i.test(t)) ?? Object.keys(content)[0]
  const media = key === undefined ? undefined : content[key]
  return isObj(media) ? media.schema : undefined
}

export const _internal = { serverBasePaths, indexPaths, parseText }
