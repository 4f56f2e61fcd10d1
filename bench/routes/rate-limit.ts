// row `rateLimit`: a Redis-backed limit per client (here: per IP) high enough never to trip
import { defineRoutes } from '../../src/declare.js'

export default defineRoutes({ upstream: 'bench', prefix: '/rl', rateLimit: { max: 1_000_000_000, per: '1m' }, routes: [{ method: 'GET', url: '/items/:id' }] })
