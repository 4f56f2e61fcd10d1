/**
 * gw-docs: the public API documentation. The OpenAPI 3.1 document generated from the declared routes
 * (src/openapi.ts) with the upstream services' own documents merged in (src/openapi-upstreams.ts), served at
 * OPENAPI_PATH.json and .yaml, and browsable with Swagger UI at DOCS_PATH (assets served locally by
 * @fastify/swagger-ui). Admin, health and every other non-declared route stay out of it. DOCS=off registers
 * nothing, so the routes pay nothing for it.
 *
 * The document is built once, at start-up (onReady): upstream documents are loaded then (a broken shipped file
 * stops the start, a URL that fails is a warning), conflicts are logged then, and the two served forms are
 * serialized then. The document routes answer a prepared string with an ETag.
 */
import fp from 'fastify-plugin'
import { createHash } from 'node:crypto'
import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import { stringify as toYaml } from 'yaml'
import type { FastifyInstance, FastifyReply, FastifyRequest, FastifySchema } from 'fastify'
import type { GatewayConfig } from '../src/config.js'
import type { Declarations } from '../src/policy.js'
import { docsSettings, OpenApiBuilder, type DocsSettings } from '../src/openapi.js'
import { loadUpstreamSpecs } from '../src/openapi-upstreams.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** the generated document, once the app is ready (null with DOCS=off) */
    gwOpenApi: { document: Record<string, unknown> | null }
  }
}

/**
 * Swagger UI's own policy (its staticCSP) without `upgrade-insecure-requests`, which would send "Try it out" to
 * https:// on a plain-HTTP gateway, and with `connect-src` open to the documented servers.
 */
function contentSecurityPolicy (settings: DocsSettings): string {
  const origins = [...new Set(settings.servers.map((u) => new URL(u).origin))]
  return [
    "default-src 'self'", "base-uri 'self'", `connect-src 'self'${origins.map((o) => ' ' + o).join('')}`, "font-src 'self' data:",
    "form-action 'self'", "frame-ancestors 'self'", "img-src 'self' data:", "object-src 'none'", "script-src 'self'",
    "script-src-attr 'none'", "style-src 'self' 'unsafe-inline'",
  ].join('; ')
}

async function gwDocs (app: FastifyInstance, opts: { config: GatewayConfig, declarations: Declarations }): Promise<void> {
  const settings = docsSettings(opts.config)
  const state: { document: Record<string, unknown> | null } = { document: null }
  app.decorate('gwOpenApi', state)
  if (!settings.enabled) return

  const { specs, warnings } = await loadUpstreamSpecs(opts.declarations.upstreams, { dir: settings.upstreamsDir, fetchTimeoutMs: settings.fetchTimeoutMs })
  for (const w of warnings) app.log.warn({ docs: 'openapi' }, w)
  const builder = new OpenApiBuilder(opts.declarations, specs, {
    info: { title: settings.title, version: settings.version, description: settings.description },
    servers: settings.servers,
    warn: (message) => app.log.warn({ docs: 'openapi' }, message),
  })
  // before any route: @fastify/swagger collects routes in onRoute
  await app.register(swagger, builder.swaggerOptions())
  if (settings.uiPath !== null) {
    await app.register(swaggerUi, {
      routePrefix: settings.uiPath,
      staticCSP: contentSecurityPolicy(settings),
      logLevel: 'warn',
      theme: { title: `${settings.title} · API documentation` },
      uiConfig: { deepLinking: true, docExpansion: 'list', filter: true, displayRequestDuration: true, persistAuthorization: false, tryItOutEnabled: false },
    })
  }

  let json = ''
  let yaml = ''
  let etag = ''
  app.addHook('onReady', function buildOpenApiDocument (done) {
    try {
      const doc = app.swagger() as unknown as Record<string, unknown>
      state.document = doc
      json = JSON.stringify(doc)
      yaml = toYaml(doc, { aliasDuplicateObjects: false })
      etag = `"${createHash('sha256').update(json).digest('base64url').slice(0, 27)}"`
      const merged = [...builder.merged].map(([source, n]) => `${source} (${n})`)
      app.log.info({ docs: 'openapi', operations: builder.operations, merged }, 'API document ready')
      done()
    } catch (err) { done(err as Error) }
  })

  if (settings.documentPath === null) return
  const hide = { hide: true } as FastifySchema
  const serve = (type: string, body: () => string) => function openApiDocument (request: FastifyRequest, reply: FastifyReply): FastifyReply {
    reply.header('etag', etag).header('cache-control', 'no-cache').header('access-control-allow-origin', '*')
    const given = request.headers['if-none-match']
    if (given !== undefined && (given === etag || given === '*' || given.split(',').some((t) => t.trim().replace(/^W\//, '') === etag))) return reply.code(304).send()
    return reply.type(type).send(body())
  }
  app.get(`${settings.documentPath}.json`, { schema: hide, logLevel: 'warn' }, serve('application/json; charset=utf-8', () => json))
  app.get(`${settings.documentPath}.yaml`, { schema: hide, logLevel: 'warn' }, serve('application/yaml; charset=utf-8', () => yaml))
}

export default fp(gwDocs, { name: 'gw-docs', fastify: '5.x', dependencies: ['gw-problem'] })
