/**
 * Redis stopped mid-test: the cache is bypassed (X-Cache: BYPASS, requests go upstream), nothing hangs, and
 * caching resumes by itself once Redis is back.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { setTimeout as sleep } from 'node:timers/promises'
import { defineRoutes, defineUpstream } from '../src/declare.js'
import { build } from './helper.js'
import { startUpstream } from './helpers/upstream.js'
import { until, withRedis } from './cache-helpers.js'

test('Redis stopped: bypass without hanging, in-flight fills finish, recovery after restart', async (t) => {
  let n = 0
  const up = await startUpstream(t, (req, res) => {
    n++
    const body = JSON.stringify({ n, url: req.url })
    setTimeout(() => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
      res.end(body)
    }, req.url === '/slow' ? 300 : 0)
  })
  const { a, b, redis } = await withRedis(t, async (redis) => {
    const opts = (): Parameters<typeof build>[1] => ({
      env: { REDIS_URL: redis.url, REDIS_COMMAND_TIMEOUT: '200ms' },
      declare: [[defineUpstream({ name: 'svc', targets: [up.url] }), defineRoutes({ upstream: 'svc', cache: { ttl: '10m', staleIfError: '10m' }, routes: [{ method: 'GET', url: '/*' }] })]],
    })
    return { a: await build(t, opts()), b: await build(t, opts()), redis }
  })
  assert.equal((await a.inject('/x')).headers['x-cache'], 'MISS')
  assert.equal((await b.inject('/x')).headers['x-cache'], 'HIT')

  // Redis goes away while misses for /slow are waiting on the upstream and on each other
  const inFlight = Promise.all(Array.from({ length: 20 }, async (_, i) => await (i % 2 === 0 ? a : b).inject('/slow')))
  await sleep(100)
  await redis.stop()
  const during = await inFlight
  assert.ok(during.every((r) => r.statusCode === 200), 'every in-flight request was answered')
  assert.ok(during.every((r) => r.json().url === '/slow'))

  const bypassed = await until(() => b.inject('/x'), (r) => r.headers['x-cache'] === 'BYPASS')
  assert.equal(bypassed.headers['x-cache'], 'BYPASS')
  assert.equal(bypassed.statusCode, 200)
  const before = up.hits
  const burst = await Promise.all(Array.from({ length: 20 }, async (_, i) => await (i % 2 === 0 ? a : b).inject('/x')))
  assert.ok(burst.every((r) => r.statusCode === 200 && r.headers['x-cache'] === 'BYPASS'))
  assert.equal(up.hits, before + 20, 'each request went upstream: nothing served from a cache that cannot hear purges')

  await redis.start()
  const back = await until(() => a.inject('/x'), (r) => r.headers['x-cache'] === 'HIT', 15_000)
  assert.equal(back.headers['x-cache'], 'HIT', 'caching resumed by itself (a fresh, empty Redis: one miss, then hits)')
  const onB = await until(() => b.inject('/x'), (r) => r.headers['x-cache'] === 'HIT', 15_000)
  assert.equal(onB.headers['x-cache'], 'HIT')
  assert.equal(onB.body, back.body)
})
