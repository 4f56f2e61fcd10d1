/**
 * gw-admin: the admin API's guard. Other plugins add their admin routes with `app.adminRoute(...)`: each is
 * served under /admin, needs `Authorization: Bearer <ADMIN_TOKEN>` (compared in constant time), and stays out of
 * the public API document. Without ADMIN_TOKEN the admin API answers 404 (disabled), never an open door.
 */
import fp from 'fastify-plugin'
import { createHash, timingSafeEqual } from 'node:crypto'
import type { FastifyInstance, FastifyReply, FastifyRequest, RouteOptions } from 'fastify'
import type { GatewayConfig } from '../src/config.js'
import { GW_ERR_ADMIN_UNAUTHORIZED, GW_ERR_NOT_FOUND } from '../src/errors.js'
import { addRouteHook } from '../src/route-hooks.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** register an admin route; `url` is relative to /admin */
    adminRoute (route: RouteOptions): void
  }
}

const digest = (s: string): Buffer => createHash('sha256').update(s).digest()

export function adminGuard (token: string | null): (request: FastifyRequest, reply: FastifyReply) => Promise<void> {
  const expected = token === null ? null : digest(token)
  return async function checkAdmin (request) {
    if (expected === null) throw new GW_ERR_NOT_FOUND(request.method, request.url.split('?', 1)[0])
    const h = request.headers.authorization
    const given = typeof h === 'string' && h.startsWith('Bearer ') ? h.slice(7).trim() : ''
    // hash both sides so the comparison is constant-time whatever the lengths
    if (given === '' || !timingSafeEqual(digest(given), expected)) {
      throw Object.assign(new GW_ERR_ADMIN_UNAUTHORIZED(), { headers: { 'www-authenticate': 'Bearer realm="admin"' } })
    }
  }
}

async function gwAdmin (app: FastifyInstance, opts: { config: GatewayConfig }): Promise<void> {
  const guard = adminGuard(opts.config.adminToken)
  app.decorate('adminRoute', function adminRoute (route: RouteOptions) {
    const url = '/admin' + (route.url.startsWith('/') ? route.url : '/' + route.url)
    const admin: RouteOptions = { ...route, url, schema: { ...(route.schema ?? {}), hide: true } as RouteOptions['schema'] }
    addRouteHook(admin, 'onRequest', guard, 'first')
    app.route(admin)
  })
}

export default fp(gwAdmin, { name: 'gw-admin', fastify: '5.x', dependencies: ['gw-problem'] })
