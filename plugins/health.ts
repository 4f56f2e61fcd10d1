/**
 * gw-health: /health/live (the process answers) and /health/ready (it can serve: the store is reachable and the
 * gateway is not shutting down). Not part of the public API document.
 */
import fp from 'fastify-plugin'
import type { FastifyInstance, FastifySchema } from 'fastify'

declare module 'fastify' {
  interface FastifyInstance { gwShuttingDown: boolean }
}

async function gwHealth (app: FastifyInstance): Promise<void> {
  app.decorate('gwShuttingDown', false)
  const hide = { hide: true } as FastifySchema
  app.get('/health/live', { schema: hide, logLevel: 'warn' }, async () => ({ status: 'ok' }))
  app.get('/health/ready', { schema: hide, logLevel: 'warn' }, async (_request, reply) => {
    const store = await app.store.health()
    const checks = { store: { kind: app.store.kind, ...store } }
    if (app.gwShuttingDown) return reply.code(503).send({ status: 'unavailable', reason: 'shutting down', checks })
    if (!store.ok) return reply.code(503).send({ status: 'unavailable', reason: `store ${store.state}: ${store.reason ?? 'unknown'}`, checks })
    return { status: 'ok', checks }
  })
}

export default fp(gwHealth, { name: 'gw-health', fastify: '5.x', dependencies: ['gw-store'] })
