import { defineRoutes } from '../src/index.js'

const Item = {
  type: 'object',
  properties: { id: { type: 'string' }, name: { type: 'string' }, price: { type: 'number' } },
  required: ['id', 'name', 'price'],
} as const

// Public and cached: anyone may read the catalog; each IP gets 120 requests a minute.
export default defineRoutes({
  upstream: 'catalog',
  prefix: '/catalog',
  rewrite: '',
  auth: 'none',
  rateLimit: { max: 120, per: '1m', by: 'ip' },
  cache: { ttl: '30s', staleIfError: '5m', tags: ['catalog'] },
  routes: [
    { method: 'GET', url: '/items', summary: 'List catalog items', schema: { response: { 200: { type: 'array', items: Item } } } },
    { method: 'GET', url: '/items/:id', summary: 'One catalog item', schema: { params: { type: 'object', properties: { id: { type: 'string' } } }, response: { 200: Item } } },
  ],
})
