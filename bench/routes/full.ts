// row `full`: API key + Redis rate limit per client; the harness turns the access log and metrics on for this row
import { defineRoutes } from '../../src/declare.js'

export default defineRoutes({
  upstream: 'bench',
  prefix: '/full',
  auth: { apiKey: true },
  rateLimit: { max: 1_000_000_000, per: '1m' },
  routes: [{ method: 'GET', url: '/items/:id' }],
})
