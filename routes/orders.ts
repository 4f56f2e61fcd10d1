import { defineRoutes } from '../src/index.js'

// JWTs from the identity provider (JWT_SECRET / JWT_PUBLIC_KEY_FILE / JWT_JWKS_URL), or an API key: either works.
export default defineRoutes({
  upstream: 'orders',
  prefix: '/orders',
  rewrite: '/orders',
  auth: { jwt: true, apiKey: true, scopes: ['orders'] },
  routes: [
    { method: 'GET', url: '', summary: 'The calling client\'s orders' },
    { method: 'GET', url: '/live', websocket: true, summary: 'Orders as they are placed (WebSocket)' },
    {
      method: 'POST',
      url: '',
      summary: 'Place an order',
      rateLimit: { max: 5, per: '10s' },
      schema: { body: { type: 'object', properties: { item: { type: 'string' }, quantity: { type: 'integer', minimum: 1 } }, required: ['item'] } },
    },
  ],
})
