/**
 * `npm run openapi`: writes openapi/openapi.json, the document of the routes shipped in routes/ with the upstream
 * documents in openapi/upstreams/ merged in. A test regenerates it and fails when the committed file is stale.
 *
 * The routes are mounted on a bare Fastify instance with @fastify/swagger and the same builder plugins/docs.ts
 * uses (src/openapi.ts), so the export needs no Redis, no secrets and no running upstream. It reads no
 * environment: the file is the same on every machine, made with the default DOCS_* settings (title, version, no
 * servers). A test checks that the gateway serves the same document.
 */
import { writeFileSync } from 'node:fs'
import { join, relative, resolve } from 'node:path'
import { pathToFileURL } from 'node:url'
import fastify, { type RouteOptions } from 'fastify'
import swagger from '@fastify/swagger'
import { ROUTES_DIR } from './app.js'
import { loadConfig } from './config.js'
import { docsSettings, OpenApiBuilder } from './openapi.js'
import { loadUpstreamSpecs, projectRoot } from './openapi-upstreams.js'
import { loadDeclarations } from './routes-loader.js'

export const EXPORT_FILE = join(projectRoot(), 'openapi', 'openapi.json')

export interface ExportOptions {
  /** configuration variables; default: none (the defaults) */
  env?: Record<string, string>
  /** receives each warning (upstream documents, conflicts) */
  warn?: (message: string) => void
}

/** The document for the routes in ROUTES_DIR (default: the shipped routes/). */
export async function openApiDocument (opts: ExportOptions = {}): Promise<Record<string, unknown>> {
  const config = loadConfig({ LOG_LEVEL: 'silent', ...opts.env })
  const warn = opts.warn ?? (() => {})
  const declarations = await loadDeclarations(config, ROUTES_DIR)
  const settings = docsSettings(config)
  const { specs, warnings } = await loadUpstreamSpecs(declarations.upstreams, { dir: settings.upstreamsDir, fetchTimeoutMs: settings.fetchTimeoutMs })
  for (const w of warnings) warn(w)
  const builder = new OpenApiBuilder(declarations, specs, {
    info: { title: settings.title, version: settings.version, description: settings.description },
    servers: settings.servers,
    warn,
  })
  const app = fastify({ logger: false, routerOptions: { maxParamLength: 1000 } })
  // documented, never called: no validators or serializers to compile
  app.setValidatorCompiler(() => () => true)
  app.setSerializerCompiler(() => (data) => JSON.stringify(data))
  try {
    await app.register(swagger, builder.swaggerOptions())
    for (const r of declarations.routes) {
      const route: RouteOptions = {
        method: [...r.methods] as RouteOptions['method'],
        url: r.url,
        config: { gw: r },
        exposeHeadRoute: false,
        handler: async function documentedOnly () { return null },
        // as src/mount.ts and plugins/websocket.ts register them: a WebSocket route is a plain GET
        ...(r.schema !== null && !r.websocket ? { schema: structuredClone(r.schema) } : {}),
      }
      app.route(route)
    }
    await app.ready()
    return app.swagger() as unknown as Record<string, unknown>
  } finally {
    await app.close()
  }
}

/** The exported file's text: stable key order (the generator's), two-space indent, final newline. */
export function serializeDocument (doc: unknown): string {
  return JSON.stringify(doc, null, 2) + '\n'
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  try {
    // `--out <file>` writes elsewhere (the freshness test uses it); default: openapi/openapi.json
    const i = process.argv.indexOf('--out')
    const out = i === -1 ? EXPORT_FILE : resolve(process.argv[i + 1] ?? '')
    if (i !== -1 && process.argv[i + 1] === undefined) throw new Error('--out needs a file name')
    const doc = await openApiDocument({ warn: (m) => process.stderr.write(`warning: ${m}\n`) })
    writeFileSync(out, serializeDocument(doc))
    const ops = Object.values(doc.paths as Record<string, object>).reduce((n, item) => n + Object.keys(item).length, 0)
    process.stdout.write(`wrote ${relative(process.cwd(), out) || out}: ${ops} operations\n`)
  } catch (err) {
    const e = err as { code?: string, message?: string, stack?: string }
    process.stderr.write(`${typeof e.code === 'string' && e.code.startsWith('GW_ERR_') ? e.message ?? '' : e.stack ?? String(err)}\n`)
    process.exit(1)
  }
}
