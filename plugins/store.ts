/**
 * gw-store: the shared store (Redis when REDIS_URL is set, else in-process) as `app.store`, connected at boot
 * and closed last. State changes are logged once each.
 */
import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import type { GatewayConfig } from '../src/config.js'
import { createStore, type Store } from '../src/store/index.js'

declare module 'fastify' {
  interface FastifyInstance { store: Store }
}

async function gwStore (app: FastifyInstance, opts: { config: GatewayConfig, store?: Store }): Promise<void> {
  const store = opts.store ?? createStore(opts.config)
  store.onStateChange((state, reason) => {
    if (state === 'ready') app.log.info({ store: store.kind }, 'store connected')
    else app.log.warn({ store: store.kind, state, reason }, 'store unavailable; serving with fallbacks')
  })
  await store.init()
  if (store.state !== 'ready') app.log.warn({ store: store.kind, state: store.state }, 'store not reachable at start; reconnecting in the background')
  app.decorate('store', store)
  // close after every plugin that may still use it on close
  app.addHook('onClose', async () => { if (opts.store === undefined) await store.close() })
}

export default fp(gwStore, { name: 'gw-store', fastify: '5.x' })
