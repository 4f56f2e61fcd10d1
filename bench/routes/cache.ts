// rows `cacheHitL1`, `cacheHitRedis` (one URL again and again) and `cacheMiss` (a new query string every request)
import { defineRoutes } from '../../src/declare.js'

export default [
  defineRoutes({ upstream: 'bench', prefix: '/cache', cache: { ttl: '1h' }, routes: [{ method: 'GET', url: '/items/:id' }] }),
  // misses write every answer: a short TTL keeps redis-server small during a long run
  defineRoutes({ upstream: 'bench', prefix: '/cachemiss', cache: { ttl: '10s' }, routes: [{ method: 'GET', url: '/items/:id' }] }),
]
