import { defineRoutes } from '../src/index.js'

const User = {
  type: 'object',
  properties: { id: { type: 'string' }, name: { type: 'string' }, email: { type: 'string' } },
  required: ['id', 'name', 'email'],
} as const

// Per-client API keys with scopes; the public /users maps to the service's /v1/users.
export default defineRoutes({
  upstream: 'users',
  prefix: '/users',
  rewrite: '/v1/users',
  auth: { apiKey: true, scopes: ['users:read'] },
  rateLimit: { max: 100, per: '1m' },
  routes: [
    { method: 'GET', url: '', summary: 'List users', schema: { response: { 200: { type: 'array', items: User } } } },
    { method: 'GET', url: '/:id', summary: 'One user', schema: { params: { type: 'object', properties: { id: { type: 'string' } } }, response: { 200: User } } },
    {
      method: 'POST',
      url: '',
      summary: 'Create a user',
      auth: { apiKey: true, scopes: ['users:write'] },
      rateLimit: { max: 10, per: '1m' },
      schema: {
        body: { type: 'object', properties: { name: { type: 'string', minLength: 1 }, email: { type: 'string', minLength: 3 } }, required: ['name', 'email'], additionalProperties: false },
        response: { 201: User },
      },
    },
  ],
})
