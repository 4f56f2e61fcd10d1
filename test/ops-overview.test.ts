/**
 * Issue 10, admin overview: the routes with their policies, the upstreams with the health and load of each target,
 * the store and the process, behind the admin token, without secrets.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { defineRoutes, defineUpstream } from '../src/declare.js'
import { plain } from '../plugins/overview.js'
import { build } from './helper.js'
import { startUpstream } from './helpers/upstream.js'
import { startRedis } from './helpers/redis.js'

const TOKEN = 'admin-token-for-ops-tests'

test('GET /admin/overview: routes and policies, upstream target health, store and process', async (t) => {
  const a = await startUpstream(t)
  const redis = await startRedis(t)
  const app = await build(t, {
    declare: [
      defineUpstream({ name: 'users', targets: [a.url, 'http://127.0.0.1:1'] }),
      defineRoutes({
        upstream: 'users',
        prefix: '/users',
        auth: { apiKey: true, scopes: ['users:read'] },
        rateLimit: { max: 100, per: '1m' },
        cache: { ttl: '30s' },
        routes: [{ method: 'GET', url: '/:id' }, { method: 'POST', url: '/', cache: false, rateLimit: { max: 10, per: '1m' } }],
      }),
    ],
    env: { ADMIN_TOKEN: TOKEN, REDIS_URL: redis.url, JWT_SECRET: 'jwt-secret-that-must-not-show-anywhere' },
  })
  assert.equal((await app.inject('/admin/overview')).statusCode, 401)
  const res = await app.inject({ url: '/admin/overview', headers: { authorization: `Bearer ${TOKEN}` } })
  assert.equal(res.statusCode, 200)
  assert.equal(res.body.includes(TOKEN), false)
  assert.equal(res.body.includes('jwt-secret-that-must-not-show-anywhere'), false)
  const o = res.json()

  assert.equal(o.process.pid, process.pid)
  assert.equal(o.process.worker, null)
  assert.equal(o.process.shuttingDown, false)
  assert.equal(typeof o.process.memory.rssBytes, 'number')
  assert.equal(typeof o.process.memory.arrayBuffersBytes, 'number', 'Buffers held outside the V8 heap (socket reads, cache bodies)')
  assert.deepEqual({ kind: o.store.kind, state: o.store.state, ok: o.store.ok }, { kind: 'redis', state: 'ready', ok: true })

  const get = o.routes.find((r: { id: string }) => r.id === 'GET /users/:id')
  assert.ok(get !== undefined)
  assert.equal(get.upstream, 'users')
  assert.deepEqual(get.auth.scopes, ['users:read'])
  assert.equal(get.auth.apiKey.header, 'x-api-key')
  assert.equal(get.rateLimit.max, 100)
  assert.equal(get.rateLimit.perMs, 60_000)
  assert.equal(get.cache.ttlMs, 30_000)
  const post = o.routes.find((r: { id: string }) => r.id === 'POST /users/')
  assert.equal(post.cache, null)
  assert.equal(post.rateLimit.max, 10)

  const users = o.upstreams.find((u: { name: string }) => u.name === 'users')
  assert.equal(users.targets.length, 2)
  assert.deepEqual(users.targets.map((x: { url: string }) => x.url), [a.url, 'http://127.0.0.1:1'])
  for (const target of users.targets) {
    assert.equal(typeof target.healthy, 'boolean')
    assert.equal(target.inflight, 0)
  }
  assert.ok(users.timeouts !== undefined)
})

test('the admin API is off without ADMIN_TOKEN', async (t) => {
  const up = await startUpstream(t)
  const app = await build(t, { declare: [defineUpstream({ name: 'svc', targets: [up.url] }), defineRoutes({ upstream: 'svc', routes: [{ method: 'GET', url: '/x' }] })] })
  assert.equal((await app.inject('/admin/overview')).statusCode, 404)
  assert.equal((await app.inject('/admin/metrics')).statusCode, 404)
})

test('plain(): Sets, Maps and nested policies become JSON; secret-looking fields are left out', () => {
  assert.deepEqual(plain({ a: new Set([500, 502]), m: new Map([['k', { secret: 'x', n: 1 }]]), fn: () => 1, re: /x/, clientSecret: 's', password: 'p', adminToken: 't', tokenHeader: 'h' }),
    { a: [500, 502], m: { k: { n: 1 } }, re: '/x/', tokenHeader: 'h' })
  assert.equal(plain(null), null)
})
