import { test } from 'node:test'
import assert from 'node:assert/strict'
import { main } from '../src/cli.js'
import { defineRoutes, defineUpstream } from '../src/declare.js'
import { build } from './helper.js'
import { startUpstream } from './helpers/upstream.js'
import { withRedis, until } from './cache-helpers.js'

function io (): { out: string[], err: string[], io: { out: (s: string) => void, err: (s: string) => void } } {
  const out: string[] = []; const err: string[] = []
  return { out, err, io: { out: (s) => out.push(s), err: (s) => err.push(s) } }
}

test('fastgate cache purge --prefix drops the entries in Redis and on every replica', async (t) => {
  const up = await startUpstream(t)
  const redis = await withRedis(t, async (r) => r)
  const declare = [[
    defineUpstream({ name: 'svc', targets: [up.url] }),
    defineRoutes({ upstream: 'svc', cache: { ttl: '1h' }, routes: [{ method: 'GET', url: '/items/*' }] }),
  ]]
  const env = { REDIS_URL: redis.url, CACHE_L1_TTL: '1h', PRESSURE_MAX_EVENT_LOOP_DELAY: '0', PRESSURE_MAX_HEAP_USED: '0' }
  const a = await build(t, { declare, env })
  const b = await build(t, { declare, env })
  for (const app of [a, b]) for (const url of ['/items/1', '/items/2']) await app.inject(url)
  assert.equal((await b.inject('/items/1')).headers['x-cache'], 'HIT')
  const hitsBefore = up.hits

  const usage = io()
  assert.equal(await main(['cache', 'purge'], { REDIS_URL: redis.url }, usage.io), 2)
  assert.match(usage.err.join(''), /exactly one of --key, --prefix or --tag/)

  const run = io()
  assert.equal(await main(['cache', 'purge', '--prefix', '/items/', '--json'], { REDIS_URL: redis.url }, run.io), 0)
  assert.ok(JSON.parse(run.out.join('')).purged >= 2)
  // both replicas go upstream again, though their in-process copies would have lived for an hour
  // (each entry once: the first replica to ask stores it again for the other)
  for (const [app, url] of [[b, '/items/1'], [a, '/items/2']] as const) {
    const res = await until(() => app.inject(url), (r) => r.headers['x-cache'] !== 'HIT')
    assert.equal(res.headers['x-cache'], 'MISS', url)
  }
  assert.equal(up.hits, hitsBefore + 2)

  const down = io()
  assert.equal(await main(['cache', 'purge', '--tag', 'x'], { REDIS_URL: 'redis://127.0.0.1:1' }, down.io), 1)
  assert.match(down.err.join(''), /cannot reach Redis/)
})
