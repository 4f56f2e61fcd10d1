/**
 * Rate-limit leases on one gateway with a private redis-server (src/rate-limit-lease.ts): a busy subject's requests
 * are decided from units taken ahead of use, the counts in Redis come back to what was admitted, a slow subject is
 * checked request by request, and units held when Redis goes away, when a subject is reset or at shutdown.
 * (Exact totals across replicas with leases: test/rate-limit-replicas.test.ts.)
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { defineRoutes, defineUpstream } from '../src/declare.js'
import { build as buildApp } from './helper.js'
import { startRedis, redisCommand, type RedisServer } from './helpers/redis.js'
import { startUpstream, type Upstream } from './helpers/upstream.js'

const ADMIN = 'admin-token-for-lease-tests'
const IP = '10.7.7.7'

async function gateway (t: Parameters<typeof buildApp>[0], redis: RedisServer, up: Upstream, max: number, env: Record<string, string> = {}): Promise<FastifyInstance> {
  return await buildApp(t, {
    env: {
      ADMIN_TOKEN: ADMIN,
      REDIS_URL: redis.url,
      REDIS_COMMAND_TIMEOUT: '2s',
      RATE_LIMIT_LEASE_MS: '300',
      PRESSURE_MAX_EVENT_LOOP_DELAY: '0',
      PRESSURE_MAX_HEAP_USED: '0',
      ...env,
    },
    declare: [defineUpstream({ name: 'svc', targets: [up.url] }), defineRoutes({
      upstream: 'svc',
      routes: [
        { method: 'GET', url: '/busy', rateLimit: { max, per: '1m' } },
        { method: 'GET', url: '/quota', rateLimit: { max: 100_000, per: '1m', quota: { max: 1000, per: '1d' } } },
      ],
    })],
  })
}

/** a private redis-server, an upstream and a gateway on both */
async function setup (t: Parameters<typeof buildApp>[0], max: number, env: Record<string, string> = {}): Promise<{ redis: RedisServer, up: Upstream, app: FastifyInstance }> {
  const redis = await startRedis(t)
  const up = await startUpstream(t)
  return { redis, up, app: await gateway(t, redis, up, max, env) }
}

const hit = async (app: FastifyInstance, url = '/busy'): Promise<LightMyRequestResponse> => await app.inject({ url, remoteAddress: IP })

/** `total` requests, `concurrency` at a time */
async function load (app: FastifyInstance, total: number, concurrency: number, url = '/busy'): Promise<LightMyRequestResponse[]> {
  const out: LightMyRequestResponse[] = []
  let next = 0
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < total) {
      next++
      out.push(await hit(app, url))
    }
  }))
  return out
}

interface Status { mode: string, lease: number, allowed: number, leases: number, leaseServed: number, leaseReturned: number, leaseReturnFailed: number }

async function status (app: FastifyInstance): Promise<Status> {
  const res = await app.inject({ url: '/admin/rate-limits', headers: { authorization: `Bearer ${ADMIN}` } })
  assert.equal(res.statusCode, 200)
  return res.json()
}

/** the window count this client has in Redis */
const counted = async (redis: RedisServer): Promise<number> => await countedIn(redis, 'rl')

/** the count of this client's only key of `kind` in Redis (rl: windows, q: quotas) */
async function countedIn (redis: RedisServer, kind: 'rl' | 'q'): Promise<number> {
  const keys = (await redisCommand(redis, 'KEYS', `gw:${kind}:*`)) as string[]
  assert.equal(keys.length, 1, `one ${kind} key: ${keys.join(', ')}`)
  return Number(await redisCommand(redis, 'HGET', keys[0] as string, 'c'))
}

/** polls until the count in Redis is `want` (bounded), returns the last count seen */
async function countedBecomes (redis: RedisServer, want: number, kind: 'rl' | 'q' = 'rl', ms = 5000): Promise<number> {
  const until = Date.now() + ms
  let c = await countedIn(redis, kind)
  while (c !== want && Date.now() < until) {
    await sleep(50)
    c = await countedIn(redis, kind)
  }
  return c
}

/**
 * Makes sure this replica holds some leased units after `before` admitted requests: one more request leaves some held when
 * none were (it asks for a lease). Returns how many requests were admitted then, and the count in Redis.
 */
async function holdSome (app: FastifyInstance, redis: RedisServer, before: number): Promise<{ admitted: number, counted: number }> {
  let admitted = before
  let c = await counted(redis)
  for (let i = 0; i < 3 && c === admitted; i++) {
    assert.equal((await hit(app)).statusCode, 200)
    admitted++
    c = await counted(redis)
  }
  assert.ok(c > admitted, `units held: counted ${c}, admitted ${admitted}`)
  return { admitted, counted: c }
}

test('a busy client: most requests are decided from leased units, each with its own remaining count; unspent units go back to Redis', async (t) => {
  const { redis, up, app } = await setup(t, 10_000)
  const answers = await load(app, 400, 20)
  assert.deepEqual([...new Set(answers.map((a) => a.statusCode))], [200])
  assert.equal(up.hits, 400)
  // one replica: every answer has its own place in the count, as without leases
  const remaining = answers.map((a) => Number(a.headers['ratelimit-remaining'])).sort((x, y) => y - x)
  assert.deepEqual(remaining, Array.from({ length: 400 }, (_, i) => 9999 - i))
  for (const a of answers) assert.equal(a.headers['ratelimit-limit'], '10000')
  const s = await status(app)
  assert.equal(s.allowed, 400)
  assert.ok(s.leases > 0, 'leases granted')
  assert.ok(s.leaseServed > 300, `${s.leaseServed} of 400 requests decided from leases`)

  // units still held are counted in Redis
  const { admitted } = await holdSome(app, redis, 400)
  // the lease ends (RATE_LIMIT_LEASE_MS 300 ms): what was not spent goes back
  assert.equal(await countedBecomes(redis, admitted), admitted)
  assert.ok((await status(app)).leaseReturned > 0)
})

test('a quota is leased with the window: units come off both, the headers count the quota, and both go back', async (t) => {
  const { redis, app } = await setup(t, 10_000)
  const answers = await load(app, 300, 20, '/quota')
  assert.deepEqual([...new Set(answers.map((a) => a.statusCode))], [200])
  // the quota (1000 a day) is the tighter policy: each answer has its own place in it
  const remaining = answers.map((a) => Number(a.headers['ratelimit-remaining'])).sort((x, y) => y - x)
  assert.deepEqual(remaining, Array.from({ length: 300 }, (_, i) => 999 - i))
  assert.ok((await status(app)).leaseServed > 0)
  assert.equal(await countedBecomes(redis, 300, 'q'), 300)
  assert.equal(await countedBecomes(redis, 300, 'rl'), 300)
})

test('a client slower than the lease period is checked in Redis request by request: nothing leased, nothing to give back', async (t) => {
  const { redis, up, app } = await setup(t, 10_000, { RATE_LIMIT_LEASE_MS: '100' })
  for (let i = 0; i < 4; i++) {
    const res = await hit(app)
    assert.equal(res.statusCode, 200)
    assert.equal(res.headers['ratelimit-remaining'], String(9999 - i))
    assert.equal(await counted(redis), i + 1)
    await sleep(150)
  }
  const s = await status(app)
  assert.equal(s.leases, 0)
  assert.equal(s.leaseServed, 0)
})

test('near the limit checks are exact again: exactly the limit passes, and nothing is left held', async (t) => {
  const { redis, up, app } = await setup(t, 300)
  const answers = await load(app, 400, 20)
  assert.equal(answers.filter((a) => a.statusCode === 200).length, 300)
  assert.equal(answers.filter((a) => a.statusCode === 429).length, 100)
  assert.equal(up.hits, 300)
  assert.equal(await counted(redis), 300)
  assert.ok((await status(app)).leaseServed > 0)
})

test('RATE_LIMIT_LEASE=0: every request asks Redis', async (t) => {
  const { redis, up, app } = await setup(t, 10_000, { RATE_LIMIT_LEASE: '0' })
  await load(app, 100, 10)
  assert.equal(await counted(redis), 100)
  const s = await status(app)
  assert.equal(s.lease, 0)
  assert.equal(s.leaseServed, 0)
})

test('shutdown gives unspent units back; an admin reset drops the subject\'s leases with its counts', async (t) => {
  // leases last long here: only the reset and the shutdown end them
  const { redis, up, app } = await setup(t, 10_000, { RATE_LIMIT_LEASE_MS: '60000' })
  await load(app, 200, 20)
  await holdSome(app, redis, 200)

  const reset = await app.inject({ method: 'DELETE', url: `/admin/rate-limits?ip=${IP}`, headers: { authorization: `Bearer ${ADMIN}` } })
  assert.equal(reset.statusCode, 200)
  // the next request is counted afresh in Redis, not taken from the old lease
  const first = await hit(app)
  assert.equal(first.headers['ratelimit-remaining'], '9999')
  assert.equal(await counted(redis), 1)

  await load(app, 100, 20)
  const { admitted } = await holdSome(app, redis, 101)
  await app.close()
  assert.equal(await counted(redis), admitted)
})

test('Redis gone while units are held: they are still spent, then the local fallback decides; the failed refund is counted', async (t) => {
  const { redis, up, app } = await setup(t, 10_000, { REDIS_COMMAND_TIMEOUT: '300ms' })
  await load(app, 200, 20)
  const { admitted, counted: c } = await holdSome(app, redis, 200)
  const held = c - admitted
  const before = await status(app)
  await redis.stop()
  // the units held are still spent: counted in Redis before it went away
  for (let i = 0; i < held - 1; i++) assert.equal((await hit(app)).statusCode, 200)
  assert.equal((await status(app)).leaseServed, before.leaseServed + held - 1)
  // the lease ends (300 ms) with one unit left, and its refund fails: counted, not thrown
  const until = Date.now() + 5000
  let s = await status(app)
  while (s.leaseReturnFailed === 0 && Date.now() < until) {
    await sleep(50)
    s = await status(app)
  }
  assert.equal(s.leaseReturnFailed, 1)
  // then the local fallback decides; no request waits on the dead Redis
  const answers = await load(app, 20, 5)
  assert.deepEqual([...new Set(answers.map((a) => a.statusCode))], [200])
  s = await status(app)
  assert.equal(s.mode, 'fallback')
})

test('a burst that arrives while the first check is out: the waiters ask for a lease together, not each on its own', async (t) => {
  const { redis, up, app } = await setup(t, 10_000)
  // all 100 are in flight before the first answer: it asked for nothing (a subject's first request is exact)
  const answers = await Promise.all(Array.from({ length: 100 }, async () => await hit(app)))
  assert.deepEqual([...new Set(answers.map((a) => a.statusCode))], [200])
  assert.equal(up.hits, 100)
  const remaining = answers.map((a) => Number(a.headers['ratelimit-remaining'])).sort((x, y) => y - x)
  assert.deepEqual(remaining, Array.from({ length: 100 }, (_, i) => 9999 - i))
  const s = await status(app)
  assert.ok(s.leases > 0, 'a lease was granted for the waiters')
  assert.ok(s.leaseServed >= 50, `${s.leaseServed} of 100 requests decided from leases`)
  assert.equal(await countedBecomes(redis, 100), 100)
})
