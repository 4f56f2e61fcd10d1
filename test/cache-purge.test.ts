/**
 * Purge by URL (exact key), by path prefix and by tag, through the admin API and through purgeCache() (what the
 * CLI calls): the entries leave Redis, and the other replica drops its in-process (L1) copies too.
 */
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { defineRoutes, defineUpstream } from '../src/declare.js'
import { RedisStore } from '../src/store/index.js'
import { purgeCache } from '../src/cache-purge.js'
import { build } from './helper.js'
import { redisCommand, type RedisServer } from './helpers/redis.js'
import { startUpstream, type Upstream } from './helpers/upstream.js'
import { until, withRedis } from './cache-helpers.js'

const TOKEN = 'admin-token-0123456789'

interface Setup { a: FastifyInstance, b: FastifyInstance, up: Upstream, redis: RedisServer, counts: Map<string, number> }

async function setup (t: TestContext): Promise<Setup> {
  const counts = new Map<string, number>()
  const up = await startUpstream(t, (req, res) => {
    const url = String(req.url)
    const n = (counts.get(url) ?? 0) + 1
    counts.set(url, n)
    const body = JSON.stringify({ url, n })
    const headers: Record<string, string> = { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) }
    const user = /^\/users\/(\d+)/.exec(url)
    if (user !== null) headers['x-cache-tags'] = `user-${user[1] as string}, users`
    res.writeHead(200, headers)
    res.end(body)
  })
  return await withRedis(t, async (redis) => {
    const opts = (): Parameters<typeof build>[1] => ({
      // an L1 copy would be served for the whole TTL: only the purge message can drop it
      env: { REDIS_URL: redis.url, ADMIN_TOKEN: TOKEN, CACHE_L1_TTL: '1h' },
      declare: [[
        defineUpstream({ name: 'svc', targets: [up.url] }),
        defineRoutes({ upstream: 'svc', prefix: '/api', rewrite: '', cache: { ttl: '10m', tagHeader: 'X-Cache-Tags' }, routes: [{ method: 'GET', url: '/users/:id' }] }),
        defineRoutes({ upstream: 'svc', prefix: '/api', rewrite: '', cache: { ttl: '10m', tags: ['orders', 'svc'] }, routes: [{ method: 'GET', url: '/orders/:id' }] }),
      ]],
    })
    return { a: await build(t, opts()), b: await build(t, opts()), up, redis, counts }
  })
}

const URLS = ['/api/users/1', '/api/users/1?view=full', '/api/users/2', '/api/users/20', '/api/orders/1', '/api/orders/2']

/** every URL fetched on A (miss) and on B (hit, now in B's L1) */
async function warm (s: Setup): Promise<void> {
  for (const u of URLS) await s.a.inject(u)
  for (const u of URLS) assert.equal((await s.b.inject(u)).headers['x-cache'], 'HIT', u)
}

function purge (app: FastifyInstance, body: unknown, token = TOKEN): Promise<LightMyRequestResponse> {
  return app.inject({ method: 'DELETE', url: '/admin/cache', headers: { authorization: `Bearer ${token}` }, payload: body as Record<string, unknown> })
}

/** the X-Cache B answers each URL with, once the purge message had time to arrive: a purged URL is a MISS */
async function onB (s: Setup, purged: string[]): Promise<Record<string, string>> {
  // wait for the message: the first purged URL turns into a MISS on B (its L1 copy would otherwise answer)
  const first = purged[0] as string
  const r = await until(() => s.b.inject(first), (x) => x.headers['x-cache'] === 'MISS', 5000)
  const out: Record<string, string> = { [first]: String(r.headers['x-cache']) }
  for (const u of URLS) if (u !== first) out[u] = String((await s.b.inject(u)).headers['x-cache'])
  return out
}

async function keys (redis: RedisServer): Promise<string[]> {
  return (await redisCommand(redis, 'KEYS', 'gw:cache:e:*') as string[]).map((k) => k.slice('gw:cache:e:'.length).replace(/\?.*$/, '')).sort()
}

test('purge by URL: that URL only, in Redis and in the other replica\'s L1', async (t) => {
  const s = await setup(t)
  await warm(s)
  const res = await purge(s.a, { key: '/api/users/1' })
  assert.equal(res.statusCode, 200)
  assert.deepEqual(res.json(), { purged: 1 })
  const seen = await onB(s, ['/api/users/1'])
  assert.deepEqual(seen, {
    '/api/users/1': 'MISS', '/api/users/1?view=full': 'HIT', '/api/users/2': 'HIT', '/api/users/20': 'HIT', '/api/orders/1': 'HIT', '/api/orders/2': 'HIT',
  })
  assert.equal(s.counts.get('/users/1'), 2, 'fetched again after the purge')
  // with its query
  assert.deepEqual((await purge(s.b, { key: '/api/users/1?view=full' })).json(), { purged: 1 })
  assert.equal((await until(() => s.a.inject('/api/users/1?view=full'), (x) => x.headers['x-cache'] === 'MISS', 5000)).headers['x-cache'], 'MISS')
})

test('purge by path prefix', async (t) => {
  const s = await setup(t)
  await warm(s)
  const res = await purge(s.a, { prefix: '/api/users/' })
  assert.deepEqual(res.json(), { purged: 4 })
  assert.deepEqual(await keys(s.redis), ['/api/orders/1', '/api/orders/2'])
  const seen = await onB(s, ['/api/users/1'])
  assert.deepEqual(seen, {
    '/api/users/1': 'MISS', '/api/users/1?view=full': 'MISS', '/api/users/2': 'MISS', '/api/users/20': 'MISS', '/api/orders/1': 'HIT', '/api/orders/2': 'HIT',
  })
  // a string prefix: /api/users/2 also matches /api/users/20
  await warm(s)
  assert.deepEqual((await purge(s.b, { prefix: '/api/users/2' })).json(), { purged: 2 })
})

test('purge by tag: the route\'s tags and the values of its tag header', async (t) => {
  const s = await setup(t)
  await warm(s)
  const users = await s.a.inject('/api/users/2')
  assert.equal(users.headers['x-cache-tags'], undefined, 'the tag header is for the cache, not for clients')
  assert.deepEqual((await purge(s.a, { tag: 'user-2' })).json(), { purged: 1 })
  assert.deepEqual(await onB(s, ['/api/users/2']), {
    '/api/users/2': 'MISS', '/api/users/1': 'HIT', '/api/users/1?view=full': 'HIT', '/api/users/20': 'HIT', '/api/orders/1': 'HIT', '/api/orders/2': 'HIT',
  })
  assert.deepEqual((await purge(s.a, { tag: 'orders' })).json(), { purged: 2 })
  assert.deepEqual(await redisCommand(s.redis, 'KEYS', 'gw:cache:t:orders'), [], 'the tag set is gone with its entries')
  assert.deepEqual(await keys(s.redis), ['/api/users/1', '/api/users/1', '/api/users/2', '/api/users/20'])
  assert.deepEqual(await onB(s, ['/api/orders/1', '/api/orders/2']), {
    '/api/orders/1': 'MISS', '/api/orders/2': 'MISS', '/api/users/1': 'HIT', '/api/users/1?view=full': 'HIT', '/api/users/2': 'HIT', '/api/users/20': 'HIT',
  })
  // the CLI's path: purgeCache() on a store of its own, no gateway involved
  await warm(s)
  const store = new RedisStore({ url: s.redis.url, prefix: 'gw:', commandTimeoutMs: 1000 })
  await store.init()
  t.after(() => store.close())
  const r = await purgeCache(store, { tag: 'users' })
  assert.equal(r.purged, 4)
  assert.deepEqual(await onB(s, ['/api/users/1']), {
    '/api/users/1': 'MISS', '/api/users/1?view=full': 'MISS', '/api/users/2': 'MISS', '/api/users/20': 'MISS', '/api/orders/1': 'HIT', '/api/orders/2': 'HIT',
  })
})

test('the purge API needs the admin token and exactly one selector', async (t) => {
  const s = await setup(t)
  await warm(s)
  assert.equal((await purge(s.a, { prefix: '/api' }, 'wrong-token-0123456789')).statusCode, 401)
  assert.equal((await s.a.inject({ method: 'DELETE', url: '/admin/cache', payload: { prefix: '/api' } })).statusCode, 401)
  for (const body of [{}, { prefix: '/api', tag: 'x' }, { prefix: 'api' }, { key: 'users/1' }, { tag: 'has space' }]) {
    const r = await purge(s.a, body)
    assert.equal(r.statusCode, 400, JSON.stringify(body))
    assert.match(String(r.headers['content-type']), /problem\+json/)
  }
  await sleep(50)
  assert.equal((await keys(s.redis)).length, URLS.length, 'nothing purged by refused calls')
  const stats = await s.a.inject({ url: '/admin/cache', headers: { authorization: `Bearer ${TOKEN}` } })
  assert.equal(stats.statusCode, 200)
  assert.equal(stats.json().store, 'ready')
  assert.equal(stats.json().l1.entries, URLS.length)
})
