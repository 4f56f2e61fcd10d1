/**
 * What L1 keeps of a value read from Redis is the value, not the socket read it came in: ioredis answers views into
 * its reads (up to 64 KiB, shared by every reply of the read), and an L1 entry holding one would keep the whole read.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { RedisStore } from '../src/store/index.js'
import { ownBuffer } from '../src/cache-l1.js'
import { startRedis } from './helpers/redis.js'

test('values read together from Redis share one read; ownBuffer gives each a buffer of its own size', async (t) => {
  const redis = await startRedis(t)
  const store = new RedisStore({ url: redis.url, prefix: 'gw:', commandTimeoutMs: 2000 })
  await store.init()
  t.after(() => store.close())
  const values = Array.from({ length: 30 }, (_, i) => Buffer.alloc(1024, i + 1))
  for (let i = 0; i < values.length; i++) await store.set(`v${i}`, values[i] as Buffer, 60_000)

  const got = await Promise.all(values.map(async (_, i) => await store.get(`v${i}`)))
  // the premise: at least one small value came back as a view into a much larger read
  assert.ok(got.some((b) => b !== null && b.buffer.byteLength >= 2 * b.length), 'ioredis answered views into a shared read')
  for (let i = 0; i < got.length; i++) {
    const b = got[i] as Buffer
    const own = ownBuffer(b)
    assert.ok(own.equals(values[i] as Buffer), 'same bytes')
    assert.equal(own.buffer.byteLength, own.length, 'its own ArrayBuffer, of its own size')
  }
  // a buffer that already fills its ArrayBuffer is kept as it is
  const whole = Buffer.allocUnsafeSlow(100)
  assert.equal(ownBuffer(whole), whole)
})
