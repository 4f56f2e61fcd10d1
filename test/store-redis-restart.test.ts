import { test } from 'node:test'
import assert from 'node:assert/strict'
import { setTimeout as sleep } from 'node:timers/promises'
import { defineRoutes, defineUpstream } from '../src/declare.js'
import { RedisStore } from '../src/store/index.js'
import { build } from './helper.js'
import { RedisServer, freePort, startRedis } from './helpers/redis.js'
import { startUpstream } from './helpers/upstream.js'

async function until<T> (fn: () => Promise<T>, ok: (v: T) => boolean, ms = 15000): Promise<T> {
  const deadline = Date.now() + ms
  let last = await fn()
  while (!ok(last) && Date.now() < deadline) { await sleep(50); last = await fn() }
  return last
}

test('RedisStore fails fast while Redis is down, reconnects by itself, and reports its state', async (t) => {
  const redis = await startRedis(t)
  const store = new RedisStore({ url: redis.url, prefix: 'gw:', commandTimeoutMs: 300 })
  const states: string[] = []
  store.onStateChange((s) => states.push(s))
  await store.init()
  t.after(() => store.close())
  await store.set('k', 'v')
  await redis.stop()
  await until(async () => store.state, (s) => s === 'down')
  assert.equal(store.state, 'down')
  const t0 = Date.now()
  await assert.rejects(store.get('k'))
  assert.ok(Date.now() - t0 < 1500, 'a command against a dead Redis rejects instead of waiting for a reconnect')
  const h = await store.health()
  assert.equal(h.ok, false)
  assert.ok(h.reason !== null)
  await redis.start()
  await until(async () => store.state, (s) => s === 'ready')
  assert.equal(store.state, 'ready')
  assert.equal(await store.get('k'), null, 'a new empty redis-server (nothing persisted in tests)')
  await store.set('k2', 'v2')
  assert.equal((await store.get('k2'))?.toString(), 'v2')
  const seen = states.filter((s) => s !== 'connecting')
  assert.deepEqual(seen.filter((s, i) => s !== seen[i - 1]), ['ready', 'down', 'ready'], 'each change reported once')
})

test('the gateway keeps proxying while Redis is down; /health/ready says why, and recovers', async (t) => {
  const redis = await startRedis(t)
  const up = await startUpstream(t)
  const app = await build(t, {
    env: { REDIS_URL: redis.url, REDIS_COMMAND_TIMEOUT: '200ms' },
    declare: [[defineUpstream({ name: 'svc', targets: [up.url] }), defineRoutes({ upstream: 'svc', routes: [{ method: 'GET', url: '/ping' }] })]],
  })
  let ready = await app.inject('/health/ready')
  assert.equal(ready.statusCode, 200)
  assert.equal(ready.json().checks.store.kind, 'redis')

  await redis.stop()
  ready = await until(() => app.inject('/health/ready'), (r) => r.statusCode === 503)
  assert.equal(ready.statusCode, 503)
  assert.match(ready.json().reason, /^store (down|connecting)/)
  assert.equal((await app.inject('/health/live')).statusCode, 200)
  const res = await app.inject('/ping')
  assert.equal(res.statusCode, 200, 'a route that needs no store is served while Redis is down')

  await redis.start()
  ready = await until(() => app.inject('/health/ready'), (r) => r.statusCode === 200)
  assert.equal(ready.statusCode, 200)
})

test('the gateway starts while Redis is unreachable and turns ready when it comes', async (t) => {
  const redis = new RedisServer(await freePort())
  t.after(() => redis.stop())
  const up = await startUpstream(t)
  const app = await build(t, {
    env: { REDIS_URL: redis.url, REDIS_COMMAND_TIMEOUT: '200ms' },
    declare: [[defineUpstream({ name: 'svc', targets: [up.url] }), defineRoutes({ upstream: 'svc', routes: [{ method: 'GET', url: '/ping' }] })]],
  })
  assert.equal((await app.inject('/health/ready')).statusCode, 503)
  assert.equal((await app.inject('/ping')).statusCode, 200)
  await redis.start()
  const ready = await until(() => app.inject('/health/ready'), (r) => r.statusCode === 200)
  assert.equal(ready.statusCode, 200)
})
