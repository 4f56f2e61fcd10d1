/**
 * Loads the route files, validates every declaration before any route is registered, reports all errors at once
 * (file, route, field), and compiles them into frozen policies (src/policy.ts).
 *
 * Why not @fastify/autoload for routes/: autoload registers each file as it goes, so a wrong declaration in the
 * tenth file is found after nine files of routes are registered, and the plugin cannot tell which file it came
 * from. Here all files are read and checked first. plugins/ is still loaded with autoload (src/app.ts).
 */
import { readdir } from 'node:fs/promises'
import { basename, join, relative } from 'node:path'
import { pathToFileURL } from 'node:url'
import { Value } from '@sinclair/typebox/value'
import type { TSchema } from '@sinclair/typebox'
import { checkTargetUrl, type GatewayConfig } from './config.js'
import { declarationOf, SCHEMAS, type Declaration, type RouteDeclaration, type RoutesDeclaration, type UpstreamDeclaration, type AuthDeclaration, type RateLimitDeclaration, type CacheDeclaration, type PlanDeclaration, type DeclaredPlugin } from './declare.js'
import { parseDuration, DURATION_HINT } from './duration.js'
import { GW_ERR_ROUTE_DECLARATION } from './errors.js'
import type { AuthPolicy, CachePolicy, Declarations, PlanPolicy, RateLimitPolicy, Rewrite, RoutePolicy, UpstreamPolicy } from './policy.js'

export interface DeclarationSource { file: string, exported: unknown }

const ROUTE_FILE = /\.(?:js|mjs|ts|mts)$/
const SKIP_FILE = /\.d\.[mc]?ts$|\.map$|(?:^|\/)_|\.test\.|\.spec\./

/** The declaration sources in a folder, sorted by file name, so the load order is stable. */
export async function readRouteFiles (dir: string, displayRoot = process.cwd()): Promise<DeclarationSource[]> {
  const names = (await readdir(dir)).filter((n) => ROUTE_FILE.test(n) && !SKIP_FILE.test(n)).sort()
  // Run from dist/ the .ts sources are not there; from source with a TS loader only .ts are. Never load both.
  const hasJs = names.some((n) => n.endsWith('.js') || n.endsWith('.mjs'))
  const out: DeclarationSource[] = []
  for (const name of names) {
    if (hasJs && (name.endsWith('.ts') || name.endsWith('.mts'))) continue
    const path = join(dir, name)
    const mod = await import(pathToFileURL(path).href) as { default?: unknown }
    out.push({ file: relative(displayRoot, path) || basename(path), exported: mod.default })
  }
  return out
}

class Problems {
  readonly list: string[] = []
  add (file: string, where: string, field: string, message: string): void {
    this.list.push(`${file}  ${where}  ${field === '' ? '' : field + ': '}${message}`)
  }
}

/** The literal values a union of literals (possibly nested, next to array forms) allows, or null. */
function constChoices (schema: TSchema): string[] | null {
  if (!Array.isArray(schema.anyOf)) return null
  const out: string[] = []
  for (const s of schema.anyOf as TSchema[]) {
    if ('const' in s) out.push(String(s.const))
    else if (s.type === 'array') continue
    else {
      const inner = constChoices(s)
      if (inner === null) return null
      out.push(...inner)
    }
  }
  return out.length > 0 ? out : null
}

/** TypeBox errors with precise paths: a union of objects is explained by its object member. */
function schemaErrors (schema: TSchema, value: unknown, base = ''): Array<{ path: string, message: string }> {
  const out: Array<{ path: string, message: string }> = []
  for (const e of Value.Errors(schema, value)) {
    const member = Array.isArray(e.schema.anyOf) && typeof e.value === 'object' && e.value !== null && !Array.isArray(e.value)
      ? (e.schema.anyOf as TSchema[]).find((s) => s.type === 'object')
      : undefined
    const choices = typeof e.value === 'string' ? constChoices(e.schema) : null
    if (member !== undefined) out.push(...schemaErrors(member, e.value, base + e.path))
    else if (choices !== null) out.push({ path: base + e.path, message: `expected one of ${choices.join(', ')}, got ${JSON.stringify(e.value)}` })
    else out.push({ path: base + e.path, message: e.message === 'Unexpected property' ? 'unknown field' : e.message })
  }
  // Value.Errors reports a union failure once per level; keep the first of each path.
  return out.filter((e, i) => out.findIndex((o) => o.path === e.path) === i)
}

const toField = (path: string): string => path.replace(/^\//, '').replace(/\//g, '.')

function routeIdOf (decl: RoutesDeclaration, route: RouteDeclaration | undefined, index: number): string {
  if (route === undefined || typeof route !== 'object') return `routes[${index}]`
  const m = Array.isArray(route.method) ? route.method.join(',') : String(route.method)
  return `${m} ${typeof decl.prefix === 'string' ? decl.prefix : ''}${String(route.url)}`
}

function ms (p: Problems, file: string, where: string, field: string, value: unknown, min = 0): number {
  const n = parseDuration(value)
  if (n === null) { p.add(file, where, field, `${DURATION_HINT}, got ${JSON.stringify(value)}`); return 0 }
  if (n < min) p.add(file, where, field, `must be at least ${min}ms, got ${JSON.stringify(value)}`)
  return n
}

function compileUpstream (p: Problems, file: string, d: UpstreamDeclaration, config: GatewayConfig): UpstreamPolicy {
  const where = `upstream ${d.name}`
  const fromEnv = config.upstreamTargets[d.name]
  const targets = fromEnv ?? d.targets.map((t, i) => {
    const raw = typeof t === 'string' ? { url: t, weight: 1 } : { url: t.url, weight: t.weight ?? 1 }
    try { return { url: checkTargetUrl(raw.url), weight: raw.weight } } catch (err) {
      p.add(file, where, `targets[${i}]`, (err as Error).message)
      return raw
    }
  })
  let balance: UpstreamPolicy['balance'] = 'round-robin'
  if (typeof d.balance === 'string') balance = d.balance
  else if (d.balance !== undefined) {
    const m = /^(header|cookie):(.+)$|^(client)$/.exec(d.balance.hash)
    if (m === null) p.add(file, where, 'balance.hash', `expected "header:<name>", "cookie:<name>" or "client", got ${JSON.stringify(d.balance.hash)}`)
    else balance = m[3] === 'client' ? { hash: 'client', name: '' } : { hash: m[1] as 'header' | 'cookie', name: m[1] === 'header' ? (m[2] as string).toLowerCase() : m[2] as string }
  }
  const t = d.timeouts ?? {}
  const hc = d.healthCheck
  let healthCheck: UpstreamPolicy['healthCheck'] = null
  if (hc !== undefined) {
    if (!hc.path.startsWith('/')) p.add(file, where, 'healthCheck.path', `must start with "/", got ${JSON.stringify(hc.path)}`)
    const expect = hc.expect === undefined ? [200] : Array.isArray(hc.expect) ? hc.expect : [hc.expect]
    healthCheck = {
      path: hc.path,
      intervalMs: ms(p, file, where, 'healthCheck.interval', hc.interval ?? '5s', 100),
      timeoutMs: ms(p, file, where, 'healthCheck.timeout', hc.timeout ?? '2s', 1),
      healthy: hc.healthy ?? 2,
      unhealthy: hc.unhealthy ?? 3,
      expect: new Set(expect),
    }
  }
  const r = d.retry
  const ps = d.passive
  return {
    name: d.name,
    targets,
    balance,
    timeouts: {
      connectMs: ms(p, file, where, 'timeouts.connect', t.connect ?? '5s', 1),
      firstByteMs: ms(p, file, where, 'timeouts.firstByte', t.firstByte ?? '30s', 1),
      responseMs: ms(p, file, where, 'timeouts.response', t.response ?? 0),
    },
    retry: r === false ? null : { tries: r?.tries ?? 2, statuses: new Set(r?.statuses ?? [502, 503, 504]), budget: r?.budget ?? 0.2 },
    healthCheck,
    passive: ps === false ? null : {
      failures: ps?.failures ?? 5,
      ejectForMs: ms(p, file, where, 'passive.ejectFor', ps?.ejectFor ?? '10s', 1),
      maxEjectForMs: ms(p, file, where, 'passive.maxEjectFor', ps?.maxEjectFor ?? '5m', 1),
    },
    maxConnections: d.maxConnections ?? 128,
    openapi: d.openapi ?? null,
    description: d.description ?? null,
  }
}

function compileAuth (d: AuthDeclaration | undefined): AuthPolicy | null {
  if (d === undefined || d === 'none') return null
  const apiKey = d.apiKey === undefined || d.apiKey === false ? null
    : d.apiKey === true ? { header: 'x-api-key', bearer: false }
      : { header: (d.apiKey.header ?? 'x-api-key').toLowerCase(), bearer: d.apiKey.bearer ?? false }
  const arr = (v: string | string[] | undefined): string[] | null => v === undefined ? null : Array.isArray(v) ? v : [v]
  const jwt = d.jwt === undefined || d.jwt === false ? null
    : d.jwt === true ? { issuer: null, audience: null, algorithms: null }
      : { issuer: arr(d.jwt.issuer), audience: arr(d.jwt.audience), algorithms: d.jwt.algorithms ?? null }
  if (apiKey === null && jwt === null) return null
  return { apiKey, jwt, scopes: d.scopes ?? [] }
}

function compileRateLimit (p: Problems, file: string, where: string, d: RateLimitDeclaration | undefined): RateLimitPolicy | null {
  if (d === undefined || d === false) return null
  let by: RateLimitPolicy['by'] = { kind: 'client' }
  if (d.by !== undefined) {
    const m = /^(client|ip)$|^header:(.+)$/.exec(d.by)
    if (m === null) p.add(file, where, 'rateLimit.by', `expected "client", "ip" or "header:<name>", got ${JSON.stringify(d.by)}`)
    else by = m[1] !== undefined ? { kind: m[1] as 'client' | 'ip' } : { kind: 'header', name: (m[2] as string).toLowerCase() }
  }
  const cost = d.cost ?? 1
  const burst = d.burst ?? d.max
  if (cost > burst) p.add(file, where, 'rateLimit.cost', `a cost of ${cost} is above the burst of ${burst}: every request would be refused`)
  if (burst > d.max) p.add(file, where, 'rateLimit.burst', `a burst of ${burst} is above max ${d.max}: a window never admits more than max`)
  return {
    max: d.max,
    perMs: ms(p, file, where, 'rateLimit.per', d.per, 1),
    burst,
    cost,
    by,
    quota: d.quota === undefined ? null : { max: d.quota.max, perMs: ms(p, file, where, 'rateLimit.quota.per', d.quota.per, 1) },
  }
}

function compileCache (p: Problems, file: string, where: string, d: CacheDeclaration | undefined, auth: AuthPolicy | null): CachePolicy | null {
  if (d === undefined || d === false) return null
  return {
    ttlMs: ms(p, file, where, 'cache.ttl', d.ttl, 1),
    vary: (d.vary ?? []).map((h) => h.toLowerCase()),
    perClient: d.perClient ?? (auth !== null && d.shared !== true),
    shared: d.shared ?? false,
    tags: d.tags ?? [],
    tagHeader: d.tagHeader?.toLowerCase() ?? null,
    staleWhileRevalidateMs: d.staleWhileRevalidate === undefined ? 0 : ms(p, file, where, 'cache.staleWhileRevalidate', d.staleWhileRevalidate),
    staleIfErrorMs: d.staleIfError === undefined ? 0 : ms(p, file, where, 'cache.staleIfError', d.staleIfError),
    ignoreUpstreamMaxAge: d.ignoreUpstreamMaxAge ?? false,
    maxEntrySize: d.maxEntrySize ?? 1024 * 1024,
  }
}

const PARAM = /:([A-Za-z0-9_]+)/g

function compileRewrite (p: Problems, file: string, where: string, prefix: string, fileRewrite: string | undefined, route: RouteDeclaration): Rewrite {
  if (route.rewrite !== undefined) {
    if (!route.rewrite.startsWith('/')) p.add(file, where, 'rewrite', `must start with "/", got ${JSON.stringify(route.rewrite)}`)
    const params = new Set([...route.url.matchAll(PARAM)].map((m) => m[1] as string))
    const parts: Array<string | { param: string }> = []
    let last = 0
    for (const m of route.rewrite.matchAll(PARAM)) {
      const name = m[1] as string
      if (!params.has(name)) p.add(file, where, 'rewrite', `uses :${name}, which the route url ${JSON.stringify(route.url)} does not have`)
      parts.push(route.rewrite.slice(last, m.index), { param: name })
      last = (m.index ?? 0) + m[0].length
    }
    parts.push(route.rewrite.slice(last))
    return { kind: 'template', parts: parts.filter((x) => x !== '') }
  }
  if (fileRewrite !== undefined && fileRewrite !== '' && !fileRewrite.startsWith('/')) p.add(file, where, 'rewrite', `must start with "/", got ${JSON.stringify(fileRewrite)}`)
  return { kind: 'prefix', from: prefix, to: (fileRewrite ?? prefix).replace(/\/$/, '') }
}

function compilePlans (p: Problems, file: string, d: Record<string, PlanDeclaration>): PlanPolicy[] {
  return Object.entries(d).map(([name, plan]) => {
    if (plan.rateLimit?.burst !== undefined && plan.rateLimit.burst > plan.rateLimit.max) p.add(file, `plan ${name}`, 'rateLimit.burst', `a burst of ${plan.rateLimit.burst} is above max ${plan.rateLimit.max}: a window never admits more than max`)
    return {
      name,
      rateLimit: plan.rateLimit === undefined ? null : {
        max: plan.rateLimit.max,
        perMs: ms(p, file, `plan ${name}`, 'rateLimit.per', plan.rateLimit.per, 1),
        burst: plan.rateLimit.burst ?? plan.rateLimit.max,
      },
      quota: plan.quota === undefined ? null : { max: plan.quota.max, perMs: ms(p, file, `plan ${name}`, 'quota.per', plan.quota.per, 1) },
    }
  })
}

function deepFreeze<T> (o: T): T {
  if (typeof o === 'object' && o !== null && !Object.isFrozen(o) && !(o instanceof Set) && !(o instanceof Map)) {
    Object.freeze(o)
    for (const v of Object.values(o)) deepFreeze(v)
  }
  return o
}

/** Validate and compile every declaration; throws GW_ERR_ROUTE_DECLARATION listing every problem. */
export function compileDeclarations (sources: readonly DeclarationSource[], config: GatewayConfig): Declarations {
  const p = new Problems()
  const found: Array<{ file: string, plugin: DeclaredPlugin, decl: Declaration }> = []
  for (const { file, exported } of sources) {
    const items = Array.isArray(exported) ? exported : [exported]
    if (items.length === 0 || exported === undefined) p.add(file, '', '', 'has no default export: export default defineRoutes({...}), defineUpstream({...}) or definePlans({...})')
    for (const item of items) {
      const decl = declarationOf(item)
      if (decl === null) { p.add(file, '', 'default export', 'is not a declaration: use defineRoutes, defineUpstream or definePlans from the gateway'); continue }
      const errors = schemaErrors(SCHEMAS[decl.kind], decl.value)
      // A route with a schema error is left out of compiling; its siblings still are, so their own problems
      // (durations, duplicates, rewrites) are reported in the same run.
      const badRoutes = new Set<number>()
      let usable = true
      for (const e of errors) {
        if (decl.kind === 'routes') {
          const m = /^\/routes\/(\d+)(\/.*)?$/.exec(e.path)
          const rd = decl.value as RoutesDeclaration
          if (m !== null) {
            badRoutes.add(Number(m[1]))
            p.add(file, routeIdOf(rd, rd.routes?.[Number(m[1])], Number(m[1])), toField(m[2] ?? ''), e.message)
          } else { usable = false; p.add(file, `routes for ${String(rd.upstream)}`, toField(e.path), e.message) }
        } else if (decl.kind === 'upstream') {
          usable = false
          p.add(file, `upstream ${String((decl.value as UpstreamDeclaration).name)}`, toField(e.path), e.message)
        } else { usable = false; p.add(file, 'plans', toField(e.path), e.message) }
      }
      if (!usable) continue
      if (badRoutes.size > 0 && decl.kind === 'routes') {
        const routes = decl.value.routes.filter((_r, i) => !badRoutes.has(i))
        if (routes.length > 0) found.push({ file, plugin: item as DeclaredPlugin, decl: { kind: 'routes', value: { ...decl.value, routes } } })
      } else found.push({ file, plugin: item as DeclaredPlugin, decl })
    }
  }

  const upstreams = new Map<string, UpstreamPolicy>()
  const upstreamFile = new Map<string, string>()
  const plans = new Map<string, PlanPolicy>()
  for (const { file, decl } of found) {
    if (decl.kind === 'upstream') {
      const prev = upstreamFile.get(decl.value.name)
      if (prev !== undefined) p.add(file, `upstream ${decl.value.name}`, 'name', `is already declared in ${prev}`)
      upstreamFile.set(decl.value.name, file)
      upstreams.set(decl.value.name, compileUpstream(p, file, decl.value, config))
    } else if (decl.kind === 'plans') {
      for (const plan of compilePlans(p, file, decl.value)) {
        if (plans.has(plan.name)) p.add(file, `plan ${plan.name}`, '', 'is declared twice')
        plans.set(plan.name, plan)
      }
    }
  }
  for (const name of Object.keys(config.upstreamTargets)) {
    if (!upstreams.has(name)) p.add('environment', `UPSTREAM_${name.toUpperCase().replace(/-/g, '_')}`, '', `sets targets for upstream "${name}", which no route file declares`)
  }

  const seen = new Map<string, string>()
  const files: Array<{ file: string, plugin: DeclaredPlugin, routes: RoutePolicy[] }> = []
  const all: RoutePolicy[] = []
  for (const { file, plugin, decl } of found) {
    if (decl.kind !== 'routes') continue
    const d = decl.value
    const prefix = (d.prefix ?? '').replace(/\/$/, '')
    if (prefix !== '' && !prefix.startsWith('/')) p.add(file, `routes for ${d.upstream}`, 'prefix', `must start with "/", got ${JSON.stringify(d.prefix)}`)
    if (!upstreams.has(d.upstream)) {
      const known = [...upstreams.keys()]
      p.add(file, `routes for ${d.upstream}`, 'upstream', `unknown upstream "${d.upstream}"; declared: ${known.length > 0 ? known.join(', ') : 'none'}`)
    }
    const routes: RoutePolicy[] = []
    for (const r of d.routes) {
      const methods = Array.isArray(r.method) ? [...new Set(r.method)] : [r.method]
      const url = prefix + r.url
      const id = `${methods.join(',')} ${url}`
      if (!r.url.startsWith('/') && r.url !== '') p.add(file, id, 'url', `must start with "/", got ${JSON.stringify(r.url)}`)
      for (const m of methods) {
        const key = `${m} ${url.replace(/:[A-Za-z0-9_]+/g, ':')}`
        const prev = seen.get(key)
        if (prev !== undefined) p.add(file, id, 'url', `duplicate route: ${m} ${url} is already declared in ${prev}`)
        seen.set(key, file)
      }
      if (r.websocket === true && (methods.length !== 1 || methods[0] !== 'GET')) p.add(file, id, 'websocket', 'a WebSocket route has method GET')
      if (r.websocket === true && (r.schema as { body?: unknown } | undefined)?.body !== undefined) p.add(file, id, 'schema.body', 'a WebSocket route has no request body')
      const auth = compileAuth(r.auth ?? d.auth)
      const rateLimit = compileRateLimit(p, file, id, r.rateLimit ?? d.rateLimit)
      const cache = compileCache(p, file, id, r.cache ?? d.cache, auth)
      if (cache !== null && !methods.every((m) => m === 'GET' || m === 'HEAD')) p.add(file, id, 'cache', 'only GET and HEAD responses are cached; set cache: false on this route')
      if (cache !== null && r.websocket === true) p.add(file, id, 'cache', 'a WebSocket route is not cached; set cache: false on this route')
      const policy: RoutePolicy = {
        id,
        file,
        upstream: d.upstream,
        methods,
        url: url === '' ? '/' : url,
        rewrite: compileRewrite(p, file, id, prefix, d.rewrite, r),
        websocket: r.websocket ?? false,
        auth,
        rateLimit,
        rateLimitOff: (r.rateLimit ?? d.rateLimit) === false,
        cache,
        schema: (r.schema as RoutePolicy['schema']) ?? null,
        bodyLimit: r.bodyLimit ?? null,
        tags: r.tags ?? d.tags ?? [d.upstream],
        summary: r.summary ?? null,
        description: r.description ?? null,
        operationId: r.operationId ?? null,
      }
      routes.push(policy)
      all.push(policy)
    }
    files.push({ file, plugin, routes })
  }
  if (p.list.length > 0) throw new GW_ERR_ROUTE_DECLARATION(p.list.map((l) => `  - ${l}`).join('\n'))
  return deepFreeze({ upstreams, plans, routes: all, files }) as Declarations
}

/** Routes from config: `declarations` given directly (tests, embedding) or the files in routesDir. */
export async function loadDeclarations (config: GatewayConfig, defaultDir: string, given?: readonly DeclarationSource[]): Promise<Declarations> {
  const sources = given ?? await readRouteFiles(config.routesDir ?? defaultDir)
  return compileDeclarations(sources, config)
}
