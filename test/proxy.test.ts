import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createServer } from 'node:http'
import { defineRoutes, defineUpstream } from '../src/declare.js'
import { build } from './helper.js'
import { startUpstream, type UpstreamHandler } from './helpers/upstream.js'

const routesFor = (url: string, extra: Partial<Parameters<typeof defineRoutes>[0]> = {}) => [
  defineUpstream({ name: 'svc', targets: [url], timeouts: { firstByte: '300ms' } }),
  defineRoutes({ upstream: 'svc', prefix: '/api', rewrite: '/v1', routes: [{ method: ['GET', 'POST', 'PUT', 'DELETE', 'PATCH'], url: '/*' }], ...extra }),
]

test('method, rewritten path, query, headers and body pass through', async (t) => {
  const up = await startUpstream(t)
  const app = await build(t, { declare: routesFor(up.url) })
  const res = await app.inject({ method: 'POST', url: '/api/things/7?b=2&a=%20x', headers: { 'content-type': 'text/plain', 'x-custom': 'yes' }, payload: 'hello' })
  assert.equal(res.statusCode, 200)
  const seen = res.json()
  assert.equal(seen.method, 'POST')
  assert.equal(seen.url, '/v1/things/7?b=2&a=%20x')
  assert.equal(seen.body, 'hello')
  assert.equal(seen.headers['x-custom'], 'yes')
  assert.equal(seen.headers['content-type'], 'text/plain')
  assert.equal(seen.headers['x-forwarded-proto'], 'http')
  assert.equal(seen.headers['x-forwarded-for'], '127.0.0.1')
  assert.ok(seen.headers['x-request-id'])
  assert.equal(res.headers['x-request-id'], seen.headers['x-request-id'])
})
