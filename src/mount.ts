/**
 * Turns compiled route policies into Fastify routes, inside the scope of their route file. Routes without a body
 * schema get the request body as a stream (any content type, no parsing, no copy); routes with one get JSON
 * parsed and validated, and the original bytes are forwarded.
 */
import type { FastifyInstance, FastifyRequest, RouteOptions } from 'fastify'
import type { Readable } from 'node:stream'
import type { Declarations, RoutePolicy } from './policy.js'
import { GW_ERR_BAD_REQUEST, GW_ERR_BODY_TOO_LARGE } from './errors.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** given by plugins/websocket.ts: registers a WebSocket route */
    gwWebSocket?: { route (scope: FastifyInstance, policy: RoutePolicy): void }
  }
}

function streamBody (request: FastifyRequest, payload: Readable, done: (err: Error | null, body?: unknown) => void): void {
  const len = request.headers['content-length']
  const limit = request.routeOptions.bodyLimit
  if (len !== undefined && Number(len) > limit) { done(new GW_ERR_BODY_TOO_LARGE(limit)); return }
  done(null, payload)
}

function hasBodySchema (r: RoutePolicy): boolean {
  return r.schema !== null && (r.schema as { body?: unknown }).body !== undefined
}

export function mountRoutes (scope: FastifyInstance, routes: readonly RoutePolicy[], declarations: Declarations): void {
  const explicitHead = new Set(declarations.routes.filter((r) => r.methods.includes('HEAD')).map((r) => r.url))
  const options = (r: RoutePolicy, app: FastifyInstance): RouteOptions => ({
    // HEAD of a GET route is proxied as HEAD by the same handler (Fastify's own HEAD routes would rewrite the
    // upstream's content-length). A copy: Fastify and Ajv write into these; the policy itself stays frozen.
    method: (r.methods.includes('GET') && !r.methods.includes('HEAD') && !explicitHead.has(r.url) ? [...r.methods, 'HEAD'] : [...r.methods]) as RouteOptions['method'],
    url: r.url,
    config: { gw: r },
    ...(r.schema !== null ? { schema: structuredClone(r.schema) } : {}),
    ...(r.bodyLimit !== null ? { bodyLimit: r.bodyLimit } : {}),
    exposeHeadRoute: false,
    handler: app.gwProxy.handlerFor(r),
  })
  scope.register(async function streamedBodies (app) {
    app.removeAllContentTypeParsers()
    app.addContentTypeParser('*', streamBody)
    for (const r of routes) {
      if (hasBodySchema(r)) continue
      if (r.websocket) {
        if (app.gwWebSocket === undefined) throw new Error(`${r.file} ${r.id}: websocket routes need plugins/websocket.ts`)
        app.gwWebSocket.route(app, r)
      } else app.route(options(r, app))
    }
  })
  scope.register(async function validatedBodies (app) {
    app.removeAllContentTypeParsers()
    const json = app.getDefaultJsonParser('error', 'error')
    app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (request, body, done) => {
      request.rawBody = body as Buffer
      json(request, body as unknown as string, (err, parsed) => err != null ? done(new GW_ERR_BAD_REQUEST(`Request body is not valid JSON: ${err.message}`)) : done(null, parsed))
    })
    for (const r of routes) if (hasBodySchema(r)) app.route(options(r, app))
  })
}
