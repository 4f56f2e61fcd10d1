import { defineUpstream } from '../src/index.js'

// Target URLs are the demo services' defaults; each deployment sets its own with UPSTREAM_<NAME>
// (for example UPSTREAM_USERS=http://users-1:8080,http://users-2:8080).
export default [
  defineUpstream({
    name: 'users',
    description: 'People who use the shop',
    targets: ['http://127.0.0.1:4001'],
    timeouts: { connect: '2s', firstByte: '10s' },
    healthCheck: { path: '/health', interval: '5s' },
  }),
  defineUpstream({
    name: 'orders',
    description: 'Orders placed by API clients',
    targets: ['http://127.0.0.1:4002'],
    retry: false,
  }),
  defineUpstream({
    name: 'catalog',
    description: 'The public product catalog',
    targets: ['http://127.0.0.1:4003'],
  }),
]
