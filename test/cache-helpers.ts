/**
 * Helpers of the cache tests (test/cache-*.test.ts, test/compress-*.test.ts).
 */
import type { TestContext } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { RedisServer, freePort } from './helpers/redis.js'

/**
 * A private redis-server that outlives the apps `make` builds: it is stopped after their close hooks have run
 * (node:test runs after-hooks in the order they were added), so no app closes against a Redis that just vanished.
 */
export async function withRedis<T> (t: TestContext, make: (redis: RedisServer) => Promise<T>): Promise<T> {
  const redis = new RedisServer(await freePort())
  await redis.start()
  let out: T
  try { out = await make(redis) } catch (err) { await redis.stop(); throw err }
  t.after(() => redis.stop())
  return out
}

/** calls fn until ok(result) or the deadline; returns the last result (the caller asserts on it) */
export async function until<T> (fn: () => Promise<T>, ok: (v: T) => boolean, ms = 10_000): Promise<T> {
  const deadline = Date.now() + ms
  let v = await fn()
  while (!ok(v) && Date.now() < deadline) { await sleep(25); v = await fn() }
  return v
}
