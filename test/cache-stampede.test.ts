/**
 * Stampede protection: concurrent misses for one key, on two replicas sharing one redis-server, make one upstream
 * request; an answer that must not be shared is never handed to the waiting requests.
 */
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { setTimeout as sleep } from 'node:timers/promises'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { FastifyInstance } from 'fastify'
import { defineRoutes, defineUpstream } from '../src/declare.js'
import { build } from './helper.js'
import { redisCommand, type RedisServer } from './helpers/redis.js'
import { withRedis } from './cache-helpers.js'
import { startUpstream, type Upstream } from './helpers/upstream.js'

async function twoReplicas (t: TestContext, handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<{ a: FastifyInstance, b: FastifyInstance, up: Upstream, redis: RedisServer }> {
  const up = await startUpstream(t, handler)
  return await withRedis(t, async (redis) => {
    const opts = (): Parameters<typeof build>[1] => ({
      env: { REDIS_URL: redis.url, REDIS_COMMAND_TIMEOUT: '1s' },
      declare: [[defineUpstream({ name: 'svc', targets: [up.url], timeouts: { firstByte: '5s' }, passive: false, retry: false }), defineRoutes({ upstream: 'svc', cache: { ttl: '1m' }, routes: [{ method: 'GET', url: '/*' }] })]],
    })
    return { a: await build(t, opts()), b: await build(t, opts()), up, redis }
  })
}

test('100 concurrent misses over two replicas make one upstream request', async (t) => {
  let n = 0
  const { a, b, up, redis } = await twoReplicas(t, (req, res) => {
    n++
    const body = JSON.stringify({ n, url: req.url, pad: 'x'.repeat(2000) })
    // slow enough that every request arrives while the first is still out
    setTimeout(() => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
      res.end(body)
    }, 400)
  })
  const all = await Promise.all(Array.from({ length: 100 }, async (_, i) => await (i % 2 === 0 ? a : b).inject('/hot')))
  assert.equal(up.hits, 1, 'one upstream request for 100 concurrent misses')
  assert.deepEqual([...new Set(all.map((r) => r.statusCode))], [200])
  assert.equal(new Set(all.map((r) => r.body)).size, 1, 'everyone got the same answer')
  const outcomes = all.map((r) => String(r.headers['x-cache']))
  assert.equal(outcomes.filter((o) => o === 'MISS').length, 1)
  assert.equal(outcomes.filter((o) => o === 'HIT').length, 99)
  await sleep(50)
  assert.deepEqual(await redisCommand(redis, 'KEYS', 'gw:cache:l:*'), [], 'the fill lock is released')
  // and the next wave is served from the cache, no upstream
  const again = await Promise.all(Array.from({ length: 20 }, async (_, i) => await (i % 2 === 0 ? a : b).inject('/hot')))
  assert.ok(again.every((r) => r.headers['x-cache'] === 'HIT'))
  assert.equal(up.hits, 1)
})

test('concurrent misses for an answer that may not be shared each get their own', async (t) => {
  let n = 0
  const { a, b, up, redis } = await twoReplicas(t, (req, res) => {
    n++
    const body = JSON.stringify({ n })
    setTimeout(() => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'cache-control': 'private' })
      res.end(body)
    }, 200)
  })
  const all = await Promise.all(Array.from({ length: 20 }, async (_, i) => await (i % 2 === 0 ? a : b).inject('/mine')))
  assert.equal(up.hits, 20, 'each waiting request asked the upstream for its own answer')
  assert.equal(new Set(all.map((r) => r.json().n)).size, 20, 'no answer was handed to another request')
  assert.ok(all.every((r) => r.headers['x-cache'] === 'MISS'))
  assert.deepEqual(await redisCommand(redis, 'KEYS', 'gw:cache:*'), [])
})

test('distinct keys fill in parallel; a failing upstream releases waiters at once', async (t) => {
  let fail = true
  const { a, b, up } = await twoReplicas(t, (req, res) => {
    setTimeout(() => {
      if (fail && req.url === '/broken') { res.writeHead(503, { 'content-type': 'text/plain' }); res.end('down'); return }
      const body = String(req.url)
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) })
      res.end(body)
    }, 150)
  })
  const many = await Promise.all(Array.from({ length: 10 }, async (_, i) => await (i % 2 === 0 ? a : b).inject(`/k${i}`)))
  assert.ok(many.every((r, i) => r.body === `/k${i}`))
  assert.equal(up.hits, 10)
  const broken = await Promise.all(Array.from({ length: 10 }, async (_, i) => await (i % 2 === 0 ? a : b).inject('/broken')))
  assert.ok(broken.every((r) => r.statusCode === 503))
  // the failed fill released its waiters, which asked for themselves (an error is never shared)
  assert.equal(up.hits, 20)
  fail = false
  const fixed = await a.inject('/broken')
  assert.equal(fixed.statusCode, 200)
  assert.equal((await b.inject('/broken')).headers['x-cache'], 'HIT')
})
