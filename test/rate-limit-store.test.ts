/**
 * The rate-limit decision of both stores: the same cases run on MemoryStore and on RedisStore (a private
 * redis-server), with the same expected answers, so the in-process limiter and the Lua script agree.
 */
import { describe, test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { setTimeout as sleep } from 'node:timers/promises'
import { MemoryStore, RedisStore, type Store } from '../src/store/index.js'
import { rateLimitSpec, type RateLimitResult } from '../src/store/types.js'
import { CheckBatcher, clusterSlot } from '../src/rate-limit-batcher.js'
import { RedisServer, freePort, redisCommand } from './helpers/redis.js'

const DAY = 86_400_000
/** the deterministic part of a decision */
const brief = (r: RateLimitResult): string => `${r.allowed ? 'ok' : 'no'} rem=${r.remaining}${r.limitedBy != null ? ' by=' + r.limitedBy : ''}${r.quotaRemaining !== undefined && r.quotaRemaining >= 0 ? ' q=' + r.quotaRemaining : ''}`

let redis: RedisServer
before(async () => {
  redis = new RedisServer(await freePort())
  await redis.start()
})
after(async () => { await redis.stop() })

function cases (name: string, make: () => Promise<Store>): void {
  describe(`rate limit on ${name}`, () => {
    let store: Store
    let n = 0
    const key = (): string => `rl:{t${n++}-${Math.random().toString(36).slice(2, 8)}}:r`
    before(async () => { store = await make() })
    after(async () => { await store.close() })

    test('exact under concurrency: 20 of 50 pass, each with its own remaining count', async () => {
      const k = key()
      const all = await Promise.all(Array.from({ length: 50 }, () => store.rateLimit({ key: k, max: 20, windowMs: 60_000, cost: 1 })))
      const ok = all.filter((r) => r.allowed)
      assert.equal(ok.length, 20)
      assert.deepEqual(ok.map((r) => r.remaining).sort((a, b) => a - b), Array.from({ length: 20 }, (_, i) => i))
      for (const r of all.filter((x) => !x.allowed)) {
        assert.equal(r.remaining, 0)
        assert.equal(r.limitedBy, 'rate')
        // the first window is full: the next request passes once it has decayed by one request, in the next window
        assert.ok(r.retryAfterMs > 60_000 - 2000 && r.retryAfterMs <= 60_000 + 3000, `retryAfterMs ${r.retryAfterMs}`)
        assert.ok(r.resetMs > 0 && r.resetMs <= 60_000)
      }
      const ttl = await store.pttl(k)
      assert.ok(ttl > 0 && ttl <= 120_000, `the window key expires after two windows, pttl ${ttl}`)
    })

    test('cost > 1 is counted as that many requests; a refusal consumes nothing', async () => {
      const k = key()
      const trace: string[] = []
      for (const cost of [4, 4, 4, 1, 2, 1]) trace.push(brief(await store.rateLimit({ key: k, max: 10, windowMs: 60_000, cost })))
      assert.deepEqual(trace, ['ok rem=6', 'ok rem=2', 'no rem=2 by=rate', 'ok rem=1', 'no rem=1 by=rate', 'ok rem=0'])
    })

    test('a check that carries its numbers packed (spec, as the rate-limit plugin sends them) decides as one without', async () => {
      const run = async (withSpec: boolean): Promise<string[]> => {
        const k = key()
        const tag = k.slice(k.indexOf('{'), k.indexOf('}') + 1)
        const trace: string[] = []
        for (const cost of [2, 2, 1, 2, 1, 1]) {
          const check = { key: k, max: 7, windowMs: 60_000, cost, burst: 5, quota: { key: `q:${tag}`, max: 6, periodMs: DAY } }
          trace.push(brief(await store.rateLimit(withSpec ? { ...check, spec: rateLimitSpec(check) } : check)))
        }
        return trace
      }
      const plain = await run(false)
      // every number counts: the burst (5 of 7 at once), the costs, the quota (6)
      assert.deepEqual(plain, ['ok rem=3 q=4', 'ok rem=1 q=2', 'ok rem=0 q=1', 'no rem=0 by=quota q=1', 'no rem=0 by=rate q=1', 'no rem=0 by=rate q=1'])
      assert.deepEqual(await run(true), plain)
      assert.equal(rateLimitSpec({ windowMs: 1000, max: 3, cost: 1 }), '1000,3,1,3,0,0')
    })

    test('burst below max: back-to-back requests are spaced at the steady rate (GCRA)', async () => {
      const k = key()
      // 60 a minute = one a second, 3 at once
      const trace: RateLimitResult[] = []
      for (let i = 0; i < 4; i++) trace.push(await store.rateLimit({ key: k, max: 60, windowMs: 60_000, cost: 1, burst: 3 }))
      assert.deepEqual(trace.map(brief), ['ok rem=2', 'ok rem=1', 'ok rem=0', 'no rem=0 by=rate'])
      const last = trace[3] as RateLimitResult
      assert.ok(last.retryAfterMs > 0 && last.retryAfterMs <= 1000, `one emission interval at most, got ${last.retryAfterMs}`)
      // a cost above the burst never passes
      assert.equal((await store.rateLimit({ key: key(), max: 60, windowMs: 60_000, cost: 4, burst: 3 })).allowed, false)
    })

    test('quota: counted with the limit in one decision, refused as "quota", renews at the period end', async () => {
      const k = key()
      const tag = k.slice(k.indexOf('{'), k.indexOf('}') + 1)
      const q = { key: `q:${tag}`, max: 5, periodMs: DAY }
      const trace: RateLimitResult[] = []
      for (let i = 0; i < 7; i++) trace.push(await store.rateLimit({ key: k, max: 100, windowMs: 60_000, cost: 1, quota: q }))
      assert.deepEqual(trace.map(brief), [
        'ok rem=99 q=4', 'ok rem=98 q=3', 'ok rem=97 q=2', 'ok rem=96 q=1', 'ok rem=95 q=0',
        'no rem=95 by=quota q=0', 'no rem=95 by=quota q=0',
      ])
      const refused = trace[6] as RateLimitResult
      const toMidnight = (Math.floor(Date.now() / DAY) + 1) * DAY - Date.now()
      assert.ok(Math.abs(refused.retryAfterMs - toMidnight) < 2000, `retry at the next 00:00 UTC: ${refused.retryAfterMs} vs ${toMidnight}`)
      assert.ok(Math.abs((refused.quotaResetMs ?? 0) - toMidnight) < 2000)
      const ttl = await store.pttl(q.key)
      assert.ok(Math.abs(ttl - toMidnight) < 2000, `the quota key expires with its period, pttl ${ttl}`)
      // a quota-only check (no window) and a cost that does not fit what is left
      const q2 = { key: `q:${tag}:other`, max: 3, periodMs: DAY }
      const only: string[] = []
      for (const cost of [2, 2, 1]) only.push(brief(await store.rateLimit({ key: k + ':none', max: 0, windowMs: 0, cost, quota: q2 })))
      assert.deepEqual(only, ['ok rem=-1 q=1', 'no rem=-1 by=quota q=1', 'ok rem=-1 q=0'])
      assert.equal(await store.pttl(k + ':none'), -2, 'a check without a window writes no window key')
    })

    test('window boundary: right after a full window the previous count still weighs, no second burst', async () => {
      const w = 1000
      const max = 10
      const k = key()
      const t0 = Date.now()
      const first = await Promise.all(Array.from({ length: max + 5 }, () => store.rateLimit({ key: k, max, windowMs: w, cost: 1 })))
      assert.equal(first.filter((r) => r.allowed).length, max)
      // the window ends resetMs after the decision, which was made after t0
      const boundary = t0 + Math.min(...first.map((r) => r.resetMs))
      await sleep(Math.max(0, boundary - Date.now()) + 30)
      const second = await Promise.all(Array.from({ length: max }, () => store.rateLimit({ key: k, max, windowMs: w, cost: 1 })))
      const into = Date.now() - boundary
      const passed = second.filter((r) => r.allowed).length
      // a fixed window would let all 10 through again; here only what the steady rate released since the boundary
      assert.ok(passed <= Math.floor(max * into / w), `${passed} passed ${into}ms after the boundary`)
      assert.ok(passed < max / 2)
      for (const r of second.filter((x) => !x.allowed)) assert.ok(r.retryAfterMs > 0 && r.retryAfterMs <= w)
      // and a window and a half later, only the current count remains (the previous window fully decayed)
      await sleep(w + 100)
      assert.equal((await store.rateLimit({ key: k, max, windowMs: w, cost: 1 })).allowed, true)
    })

    test('one turn, several keys and a shared quota interleaved: each check sees the ones before it, and the state is kept', async () => {
      const a = key()
      const b = key()
      const tag = a.slice(a.indexOf('{'), a.indexOf('}') + 1)
      const q = { key: `q:${tag}:mix`, max: 5, periodMs: DAY }
      const checks = Array.from({ length: 8 }, (_, i) => i % 2 === 0
        ? { key: a, max: 100, windowMs: 60_000, cost: 1, quota: q }
        : { key: b, max: 3, windowMs: 60_000, cost: 1, quota: q })
      const all = await Promise.all(checks.map(async (c) => await store.rateLimit(c)))
      assert.deepEqual(all.map(brief), [
        'ok rem=99 q=4', 'ok rem=2 q=3', 'ok rem=98 q=2', 'ok rem=1 q=1', 'ok rem=97 q=0',
        'no rem=1 by=quota q=0', 'no rem=97 by=quota q=0', 'no rem=1 by=quota q=0',
      ])
      // what the turn left behind is what the next turn sees: the quota is used up, b has 1 left
      assert.equal(brief(await store.rateLimit({ key: b, max: 3, windowMs: 60_000, cost: 1 })), 'ok rem=0')
      assert.equal(brief(await store.rateLimit({ key: b, max: 3, windowMs: 60_000, cost: 1 })), 'no rem=0 by=rate')
      assert.equal((await store.rateLimit({ key: a, max: 100, windowMs: 60_000, cost: 1, quota: q })).limitedBy, 'quota')
      for (const k of [a, b]) {
        const ttl = await store.pttl(k)
        assert.ok(ttl > 0 && ttl <= 120_000, `${k}: pttl ${ttl}`)
      }
      assert.ok(await store.pttl(q.key) > 0)
    })

    test('lease: granted on top of an allowed request while the window has room (a quarter of what is left), counted at once', async () => {
      const k = key()
      const lease = async (want: number, cost = 1): Promise<RateLimitResult> => await store.rateLimit({ key: k, max: 100, windowMs: 60_000, cost, lease: want })
      const a = await lease(50)
      // 99 left after the request: a quarter of it, 24, is leased and counted
      assert.equal(a.allowed, true)
      assert.equal(a.leased, 24)
      assert.equal(a.remaining, 75)
      assert.ok((a.windowStart ?? 0) > 0)
      assert.equal((await lease(10)).leased, 10)
      assert.equal(brief(await store.rateLimit({ key: k, max: 100, windowMs: 60_000, cost: 1 })), 'ok rem=63')
      // near the limit: nothing more is leased, checks are exact
      for (let i = 0; i < 60; i++) await store.rateLimit({ key: k, max: 100, windowMs: 60_000, cost: 1 })
      const near = await lease(50)
      assert.equal(brief(near), 'ok rem=2')
      assert.equal(near.leased, 0)
      // a refusal leases nothing and counts nothing
      for (let i = 0; i < 3; i++) await lease(50)
      const refused = await lease(50)
      assert.equal(refused.allowed, false)
      assert.equal(refused.leased ?? 0, 0)
    })

    test('lease: limited by the quota too; never with a burst below max (GCRA) or on a quota-only check', async () => {
      const q = { key: `q:{lq${n++}}`, max: 41, periodMs: DAY }
      const withQuota = await store.rateLimit({ key: key(), max: 1000, windowMs: 60_000, cost: 1, quota: q, lease: 64 })
      // 40 quota units left after the request: 10 are leased from the window and the quota alike
      assert.equal(withQuota.leased, 10)
      assert.equal(withQuota.quotaRemaining, 30)
      assert.equal(withQuota.remaining, 989)
      assert.equal((await store.rateLimit({ key: key(), max: 1000, windowMs: 60_000, cost: 1, burst: 10, lease: 64 })).leased ?? 0, 0)
      assert.equal((await store.rateLimit({ key: key(), max: 0, windowMs: 0, cost: 1, quota: { ...q, key: `q:{lq${n++}}` }, lease: 64 })).leased ?? 0, 0)
    })

    test('lease refund: units go back to the window (and quota) they were counted in; a window that moved on is left alone', async () => {
      const k = key()
      const q = { key: `q:{lr${n++}}`, max: 1000, periodMs: DAY }
      const g = await store.rateLimit({ key: k, max: 100, windowMs: 60_000, cost: 1, quota: q, lease: 20 })
      assert.equal(g.leased, 20)
      assert.equal(g.remaining, 79)
      await store.rateLimitRefund([{ key: k, windowMs: 60_000, windowStart: g.windowStart ?? 0, units: 15, quota: { key: q.key, period: g.quotaPeriod ?? 0 } }])
      // 5 of the 20 were spent: 1 + 5 counted, then this request
      assert.equal(brief(await store.rateLimit({ key: k, max: 100, windowMs: 60_000, cost: 1, quota: q })), 'ok rem=93 q=993')
      // a refund for another window start or quota period changes nothing; nor one bigger than the count
      await store.rateLimitRefund([{ key: k, windowMs: 60_000, windowStart: (g.windowStart ?? 0) - 60_000, units: 50, quota: { key: q.key, period: (g.quotaPeriod ?? 0) - 1 } }])
      assert.equal(brief(await store.rateLimit({ key: k, max: 100, windowMs: 60_000, cost: 1, quota: q })), 'ok rem=92 q=992')
      await store.rateLimitRefund([{ key: k, windowMs: 60_000, windowStart: g.windowStart ?? 0, units: 500, quota: null }])
      assert.equal(brief(await store.rateLimit({ key: k, max: 100, windowMs: 60_000, cost: 1, quota: q })), 'ok rem=99 q=991')
      // a key that is gone stays gone
      const gone = key()
      await store.rateLimitRefund([{ key: gone, windowMs: 60_000, windowStart: g.windowStart ?? 0, units: 5, quota: null }])
      assert.equal(await store.pttl(gone), -2)
    })

    test('lease refund after the window moved on: the units come off the previous window\'s count', async () => {
      const k = key()
      const w = 1000
      const g = await store.rateLimit({ key: k, max: 100, windowMs: w, cost: 1, lease: 20 })
      assert.equal(g.leased, 20)
      // one request in the next window moves the key on: 21 counted before, now the previous window's count
      await sleep(w + 50)
      const r = await store.rateLimit({ key: k, max: 100, windowMs: w, cost: 1 })
      assert.equal(r.windowStart, (g.windowStart ?? 0) + w, 'the next window')
      await store.rateLimitRefund([{ key: k, windowMs: w, windowStart: g.windowStart ?? 0, units: 20, quota: null }])
      // the previous window weighs with 1 request (not 21): about 80 would be left without the refund
      const after = await store.rateLimit({ key: k, max: 100, windowMs: w, cost: 1 })
      assert.ok(after.remaining >= 96, `remaining ${after.remaining}`)
    })

    test('keys are independent', async () => {
      const a = key()
      const b = key()
      assert.equal((await store.rateLimit({ key: a, max: 1, windowMs: 60_000, cost: 1 })).allowed, true)
      assert.equal((await store.rateLimit({ key: a, max: 1, windowMs: 60_000, cost: 1 })).allowed, false)
      assert.equal((await store.rateLimit({ key: b, max: 1, windowMs: 60_000, cost: 1 })).allowed, true)
    })
  })
}

cases('MemoryStore', async () => {
  const s = new MemoryStore()
  await s.init()
  return s
})

cases('RedisStore', async () => {
  const s = new RedisStore({ url: redis.url, prefix: 'gw:', commandTimeoutMs: 1000 })
  await s.init()
  return s
})

describe('RedisStore batching', () => {
  test('the checks of one event-loop turn go to Redis as one script call', async (t) => {
    const store = new RedisStore({ url: redis.url, prefix: 'gw:', commandTimeoutMs: 1000 })
    await store.init()
    t.after(() => store.close())
    // load the script first, so the count below is not blurred by a NOSCRIPT retry
    await store.rateLimit({ key: 'rl:{warm}:r', max: 1, windowMs: 1000, cost: 1 })
    const calls = async (): Promise<number> => {
      const info = String(await redisCommand(redis, 'INFO', 'commandstats'))
      let sum = 0
      for (const m of info.matchAll(/cmdstat_(?:evalsha|eval):calls=(\d+)/g)) sum += Number(m[1])
      return sum
    }
    const before = await calls()
    const results = await Promise.all(Array.from({ length: 120 }, (_, i) =>
      store.rateLimit({ key: `rl:{client-${i % 7}}:r`, max: 10, windowMs: 60_000, cost: 1, quota: { key: `q:{client-${i % 7}}`, max: 12, periodMs: DAY } })))
    assert.equal(await calls() - before, 1, 'one EVALSHA for 120 checks')
    // still exact per key: 10 of the ~17 checks of each client pass
    for (let c = 0; c < 7; c++) {
      const mine = results.filter((_, i) => i % 7 === c)
      assert.equal(mine.filter((r) => r.allowed).length, 10)
    }
    const keys = (await redisCommand(redis, 'KEYS', 'gw:*{client-*')) as string[]
    assert.equal(keys.length, 14, 'a window key and a quota key per client')
  })

  test('a hung Redis: the check rejects within the command timeout', async (t) => {
    const store = new RedisStore({ url: redis.url, prefix: 'gw:', commandTimeoutMs: 200 })
    await store.init()
    t.after(() => store.close())
    await store.rateLimit({ key: 'rl:{hang}:r', max: 5, windowMs: 1000, cost: 1 })
    await redisCommand(redis, 'CLIENT', 'PAUSE', '1500', 'ALL')
    const t0 = Date.now()
    await assert.rejects(store.rateLimit({ key: 'rl:{hang}:r', max: 5, windowMs: 1000, cost: 1 }))
    assert.ok(Date.now() - t0 < 1200, 'rejected long before Redis answers again')
    await sleep(1500)
  })

  test('the batcher never leaves a caller waiting past its timeout', async () => {
    const b = new CheckBatcher<number, number>({ send: async () => await new Promise<number[]>(() => {}), slotOf: null, timeoutMs: 50 })
    await assert.rejects(b.check(1), /timed out after 50ms/)
    const grouped: number[][] = []
    const g = new CheckBatcher<string, string>({
      send: async (checks) => { grouped.push(checks.map((c) => clusterSlot(c))); return checks },
      slotOf: clusterSlot,
      timeoutMs: 1000,
    })
    const keys = ['rl:{a}:1', 'q:{a}', 'rl:{b}:1', 'rl:{a}:2']
    assert.deepEqual(await Promise.all(keys.map((k) => g.check(k))), keys)
    assert.equal(grouped.length, 2, 'one call per slot')
    for (const group of grouped) assert.equal(new Set(group).size, 1)
  })
})

test('cluster slots: CRC16 of the hash tag, as Redis Cluster computes them', () => {
  assert.equal(clusterSlot('foo'), 12182)
  assert.equal(clusterSlot('123456789'), 12739)
  assert.equal(clusterSlot('{user1000}.following'), clusterSlot('{user1000}.followers'))
  assert.equal(clusterSlot('gw:rl:{c:alice}:abc'), clusterSlot('gw:q:{c:alice}'))
  assert.equal(clusterSlot('foo{}{bar}'), clusterSlot('foo{}{bar}'))
  assert.notEqual(clusterSlot('foo{}{bar}'), clusterSlot('bar'))
})
