/**
 * REDIS_COMMAND_TIMEOUT against a busy event loop. When the loop is held (a burst of work, a long GC, a VM that
 * was not scheduled), Node runs due timers before it reads sockets: a command timer would then call a reply late
 * that Redis sent in time and that is waiting in the socket. An API key looked up that way got a 503 (bench
 * `--growth --rows keys`, every request another key: errors in 3 of 6 runs on this shared machine, 503s where the
 * codes were recorded). A Redis that really does not answer must still time out.
 */
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { RedisStore } from '../src/store/index.js'
import { redisCommand, startRedis, type RedisServer } from './helpers/redis.js'

/** the event loop held for `ms` (bounded by the clock) */
function busy (ms: number): void {
  const until = Date.now() + ms
  while (Date.now() < until) { /* held */ }
}

/** lets ioredis write what was queued this turn (auto-pipelining sends from setImmediate; ours runs after it) */
async function sent (): Promise<void> { await new Promise<void>((resolve) => setImmediate(resolve)) }

/** a private redis-server and a store on it with this command timeout, holding k = v */
async function storeWith (t: TestContext, commandTimeoutMs: number): Promise<{ redis: RedisServer, store: RedisStore }> {
  const redis = await startRedis(t)
  const store = new RedisStore({ url: redis.url, prefix: 'gw:', commandTimeoutMs })
  await store.init()
  t.after(() => store.close())
  await store.set('k', 'v')
  return { redis, store }
}

test('replies that came in while the event loop was busy are not called late', async (t) => {
  const { store } = await storeWith(t, 100)
  await store.hset('h', { a: '1' })

  for (let round = 0; round < 3; round++) {
    const pending = Promise.allSettled([store.get('k'), store.hgetall('h'), store.incr('n', 1, 60_000), store.smembers('s')])
    await sent()
    // Redis answers within a millisecond; the loop only looks at the socket after 3 timeouts
    busy(300)
    const [get, hgetall, incr, smembers] = await pending
    assert.deepEqual(get.status === 'fulfilled' ? String(get.value) : get.reason, 'v')
    assert.deepEqual(hgetall.status === 'fulfilled' ? hgetall.value : hgetall.reason, { a: '1' })
    assert.deepEqual(incr.status === 'fulfilled' ? incr.value : incr.reason, round + 1)
    assert.deepEqual(smembers.status === 'fulfilled' ? smembers.value : smembers.reason, [])
  }
})

test('a Redis that does not answer still times out after REDIS_COMMAND_TIMEOUT', async (t) => {
  const { redis, store } = await storeWith(t, 200)
  await redisCommand(redis, 'CLIENT', 'PAUSE', '3000', 'ALL')
  const t0 = Date.now()
  await assert.rejects(store.get('k'), /timed out/)
  await assert.rejects(store.hgetall('h'), /timed out/)
  const took = Date.now() - t0
  assert.ok(took >= 190 && took < 2500, `timed out after ${took} ms, not at once and not when the pause ended`)
  assert.equal(store.state, 'ready', 'a slow answer is not a dead connection')
})
