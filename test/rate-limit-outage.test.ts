/**
 * Rate limits while Redis is away, on one in-process gateway: fail-open, fail-closed, a hung Redis (the local
 * limit applies after the check timeout), and a Redis that is not there at start. Two or more processes sharing a
 * Redis that dies under load: test/rate-limit-replicas.test.ts.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { defineRoutes, defineUpstream } from '../src/declare.js'
import type { RateLimitStats } from '../src/rate-limit-limiter.js'
import { build as buildApp, type TestBuild } from './helper.js'
import { freePort, redisCommand, startRedis } from './helpers/redis.js'
import { startUpstream, type Upstream } from './helpers/upstream.js'

/** this 2-core machine is shared with other test runs: no load shedding (503) in the middle of a count */
async function build (t: Parameters<typeof buildApp>[0], opts: TestBuild = {}): ReturnType<typeof buildApp> {
  return await buildApp(t, { ...opts, env: { PRESSURE_MAX_EVENT_LOOP_DELAY: '0', PRESSURE_MAX_HEAP_USED: '0', ...opts.env } })
}

const decl = (up: Upstream, max: number): ReturnType<typeof defineRoutes>[] => [
  defineUpstream({ name: 'svc', targets: [up.url] }),
  defineRoutes({ upstream: 'svc', routes: [{ method: 'GET', url: '/a', rateLimit: { max, per: '1m', by: 'ip' } }] }),
]

const stats = (app: FastifyInstance): RateLimitStats => app.gwRateLimitStats as RateLimitStats

/** a request that must be answered: far longer than REDIS_COMMAND_TIMEOUT, so a hang fails here. (The timeouts
 *  are not shorter because this 2-core machine is shared: a busy Redis must not look like a dead one.) */
async function call (app: FastifyInstance, ip: string): Promise<LightMyRequestResponse> {
  let timer: NodeJS.Timeout | undefined
  const hang = new Promise<never>((_resolve, reject) => { timer = setTimeout(() => reject(new Error('request hung')), 5000) })
  try { return await Promise.race([app.inject({ url: '/a', remoteAddress: ip }), hang]) } finally { clearTimeout(timer) }
}

async function backToShared (app: FastifyInstance): Promise<void> {
  const deadline = Date.now() + 20_000
  let n = 0
  while (stats(app).mode !== 'shared') {
    assert.ok(Date.now() < deadline, 'back to shared limiting after Redis returned')
    await call(app, `10.200.0.${n++ % 250}`)
    await sleep(100)
  }
}

test('fail-open: while Redis is down requests pass unchecked; shared limiting resumes when it is back', async (t) => {
  const redis = await startRedis(t)
  const up = await startUpstream(t)
  const app = await build(t, { declare: decl(up, 1), env: { REDIS_URL: redis.url, RATE_LIMIT_ON_STORE_ERROR: 'open', REDIS_COMMAND_TIMEOUT: '1s' } })
  assert.equal((await call(app, '10.0.0.1')).statusCode, 200)
  assert.equal((await call(app, '10.0.0.1')).statusCode, 429)
  await redis.stop()
  const during: LightMyRequestResponse[] = []
  for (let i = 0; i < 5; i++) during.push(await call(app, '10.0.0.1'))
  assert.deepEqual(during.map((r) => r.statusCode), [200, 200, 200, 200, 200])
  assert.equal(during[4]?.headers['ratelimit-limit'], undefined, 'no limit was checked, none is announced')
  assert.equal(stats(app).mode, 'fallback')
  assert.ok(stats(app).fallbackChecks >= 5)
  assert.equal(stats(app).fallbackEntered, 1)
  await redis.start()
  await backToShared(app)
  // the restarted Redis is empty: the limit counts from zero, shared again
  assert.equal((await call(app, '10.0.0.1')).statusCode, 200)
  const again = await call(app, '10.0.0.1')
  assert.equal(again.statusCode, 429)
  assert.equal(again.headers['ratelimit-limit'], '1')
  assert.equal(((await redisCommand(redis, 'KEYS', 'gw:rl:{ip:10.0.0.1}:*')) as string[]).length, 1)
})

test('fail-closed: while Redis is down rate-limited requests get a 503 problem, the upstream is not called', async (t) => {
  const redis = await startRedis(t)
  const up = await startUpstream(t)
  const app = await build(t, { declare: decl(up, 5), env: { REDIS_URL: redis.url, RATE_LIMIT_ON_STORE_ERROR: 'closed', REDIS_COMMAND_TIMEOUT: '1s' } })
  assert.equal((await call(app, '10.0.0.2')).statusCode, 200)
  await redis.stop()
  const res = await call(app, '10.0.0.2')
  assert.equal(res.statusCode, 503)
  assert.match(String(res.headers['content-type']), /^application\/problem\+json/)
  assert.equal(res.json().type, '/problems/GW_ERR_STORE_UNAVAILABLE')
  assert.equal(res.headers['retry-after'], '1')
  assert.equal(up.hits, 1)
  assert.ok(stats(app).unavailable >= 1)
})

test('a hung Redis: the checks time out, the local limit (limit / replicas) applies, shared again once Redis answers', async (t) => {
  const redis = await startRedis(t)
  const up = await startUpstream(t)
  const app = await build(t, { declare: decl(up, 10), env: { REDIS_URL: redis.url, RATE_LIMIT_REPLICAS: '2', REDIS_COMMAND_TIMEOUT: '500ms' } })
  assert.equal((await call(app, '10.0.0.3')).statusCode, 200)
  await redisCommand(redis, 'CLIENT', 'PAUSE', '3000', 'ALL')
  const paused = Date.now()
  const rs = await Promise.all(Array.from({ length: 8 }, async () => await call(app, '10.0.0.4')))
  assert.ok(Date.now() - paused < 3000, 'answered while Redis was still paused')
  assert.deepEqual(rs.map((r) => r.statusCode).sort(), [200, 200, 200, 200, 200, 429, 429, 429])
  assert.equal(rs.find((r) => r.statusCode === 429)?.headers['ratelimit-limit'], '5')
  assert.ok(stats(app).storeErrors >= 1)
  assert.equal(stats(app).mode, 'fallback')
  assert.equal(app.store.state, 'ready', 'the connection itself never dropped')
  await sleep(Math.max(0, paused + 3100 - Date.now()))
  await backToShared(app)
  // the shared count kept what Redis had before the pause
  const more: number[] = []
  for (let i = 0; i < 10; i++) more.push((await call(app, '10.0.0.3')).statusCode)
  assert.deepEqual(more, [200, 200, 200, 200, 200, 200, 200, 200, 200, 429])
})

test('Redis unreachable at start: the gateway starts and limits locally', async (t) => {
  const up = await startUpstream(t)
  const app = await build(t, { declare: decl(up, 4), env: { REDIS_URL: `redis://127.0.0.1:${await freePort()}`, RATE_LIMIT_REPLICAS: '2' } })
  assert.notEqual(app.store.state, 'ready')
  const rs: LightMyRequestResponse[] = []
  for (let i = 0; i < 3; i++) rs.push(await call(app, '10.0.0.5'))
  assert.deepEqual(rs.map((r) => r.statusCode), [200, 200, 429])
  assert.equal(rs[0]?.headers['ratelimit-limit'], '2')
  assert.equal(stats(app).mode, 'fallback')
})
