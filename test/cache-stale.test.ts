/**
 * Serving stale: stale-if-error (the upstream stopped, or answering 5xx) and stale-while-revalidate (stale now, a
 * background refresh for the next client), across two replicas on one redis-server.
 */
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { setTimeout as sleep } from 'node:timers/promises'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { FastifyInstance } from 'fastify'
import { defineRoutes, defineUpstream, type RouteDeclaration } from '../src/declare.js'
import { build } from './helper.js'
import { redisCommand, type RedisServer } from './helpers/redis.js'
import { startUpstream, type Upstream } from './helpers/upstream.js'
import { until, withRedis } from './cache-helpers.js'

interface Replicas { a: FastifyInstance, b: FastifyInstance, up: Upstream, redis: RedisServer }

async function replicas (t: TestContext, handler: (req: IncomingMessage, res: ServerResponse) => void, routes: RouteDeclaration[]): Promise<Replicas> {
  const up = await startUpstream(t, handler)
  return await withRedis(t, async (redis) => {
    const opts = (): Parameters<typeof build>[1] => ({
      env: { REDIS_URL: redis.url },
      // no passive ejection or retries: each request shows what the upstream did
      declare: [[defineUpstream({ name: 'svc', targets: [up.url], passive: false, retry: false, timeouts: { connect: '500ms', firstByte: '2s' } }), defineRoutes({ upstream: 'svc', routes })]],
    })
    return { a: await build(t, opts()), b: await build(t, opts()), up, redis }
  })
}

function numbered (): { handler: (req: IncomingMessage, res: ServerResponse) => void, status: { code: number } } {
  let n = 0
  const status = { code: 200 }
  return {
    status,
    handler: (req, res) => {
      n++
      const body = JSON.stringify({ n, auth: req.headers.authorization ?? null })
      res.writeHead(status.code, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
      res.end(body)
    },
  }
}

test('stale-if-error: a stale entry answers while the upstream is stopped or failing, until its window ends', async (t) => {
  const u = numbered()
  const { a, b, up } = await replicas(t, u.handler, [
    { method: 'GET', url: '/sie', cache: { ttl: '200ms', staleIfError: '1m' } },
    { method: 'GET', url: '/plain', cache: { ttl: '200ms' } },
  ])
  assert.equal((await a.inject('/sie')).json().n, 1)
  assert.equal((await a.inject('/plain')).json().n, 2)
  await sleep(400) // both entries are past their freshness now
  await up.close()
  const stale = await b.inject('/sie')
  assert.equal(stale.statusCode, 200, 'the stale entry instead of a 502')
  assert.equal(stale.headers['x-cache'], 'STALE')
  assert.equal(stale.json().n, 1)
  assert.match(String(stale.headers.age), /^\d+$/)
  const plain = await b.inject('/plain')
  assert.ok(plain.statusCode >= 502 && plain.statusCode <= 504, `without staleIfError the error shows: ${plain.statusCode}`)
  assert.match(String(plain.headers['content-type']), /problem\+json/)

  // the upstream is back but answers 503: stale again
  u.status.code = 503
  await up.restart()
  const on503 = await a.inject('/sie')
  assert.equal(on503.statusCode, 200)
  assert.equal(on503.headers['x-cache'], 'STALE')
  assert.equal(on503.json().n, 1)
  assert.equal(on503.headers['content-type'], 'application/json', 'the stale entry\'s headers, not the error\'s')

  // and recovered: the fresh answer replaces the stale one
  u.status.code = 200
  const fresh = await a.inject('/sie')
  assert.equal(fresh.headers['x-cache'], 'MISS')
  assert.equal(fresh.statusCode, 200)
  assert.ok(fresh.json().n > 2)
  assert.equal((await b.inject('/sie')).headers['x-cache'], 'HIT')
})

test('stale-if-error ends with its window', async (t) => {
  const u = numbered()
  const { a, up } = await replicas(t, u.handler, [{ method: 'GET', url: '/short', cache: { ttl: '100ms', staleIfError: '300ms' } }])
  assert.equal((await a.inject('/short')).statusCode, 200)
  await up.close()
  const late = await until(() => a.inject('/short'), (r) => r.statusCode !== 200, 5000)
  assert.ok(late.statusCode >= 502, `after the window, the error: ${late.statusCode}`)
})

test('stale-while-revalidate: stale answer at once, one background refresh, fresh answer next', async (t) => {
  const u = numbered()
  const { a, b, up, redis } = await replicas(t, (req, res) => { setTimeout(() => u.handler(req, res), 100) }, [
    { method: 'GET', url: '/swr', cache: { ttl: '300ms', staleWhileRevalidate: '1m', perClient: true } },
  ])
  const headers = { authorization: 'Bearer alice' }
  const first = await a.inject({ url: '/swr', headers })
  assert.equal(first.json().n, 1)
  await sleep(500)
  const stale = await Promise.all(Array.from({ length: 10 }, async (_, i) => await (i % 2 === 0 ? a : b).inject({ url: '/swr', headers })))
  for (const r of stale) {
    assert.equal(r.headers['x-cache'], 'STALE')
    assert.equal(r.json().n, 1)
  }
  const refreshed = await until(() => b.inject({ url: '/swr', headers }), (r) => r.json().n === 2)
  assert.equal(refreshed.json().n, 2, 'the background refresh stored the new answer')
  assert.equal(refreshed.headers['x-cache'], 'HIT')
  assert.equal(refreshed.json().auth, 'Bearer alice', 'refreshed with the client\'s own credentials')
  assert.equal(up.hits, 2, 'ten stale answers, one refresh across both replicas')
  assert.equal(up.received[1]?.headers['x-gw-cache-refresh'], undefined, 'the internal refresh marker never reaches the upstream')
  await sleep(50)
  assert.deepEqual(await redisCommand(redis, 'KEYS', 'gw:cache:l:*'), [])
  // another client does not get alice's entry, stale or not
  const bob = await a.inject({ url: '/swr', headers: { authorization: 'Bearer bob' } })
  assert.equal(bob.headers['x-cache'], 'MISS')
  assert.equal(bob.json().auth, 'Bearer bob')
})

test('a client that asks for fresh (max-age=0, no-cache) does not get a stale answer', async (t) => {
  const u = numbered()
  const { a } = await replicas(t, u.handler, [{ method: 'GET', url: '/swr', cache: { ttl: '100ms', staleWhileRevalidate: '1m' } }])
  await a.inject('/swr')
  await sleep(250)
  const r = await a.inject({ url: '/swr', headers: { 'cache-control': 'max-age=0' } })
  assert.equal(r.headers['x-cache'], 'MISS')
  assert.equal(r.json().n, 2)
})
