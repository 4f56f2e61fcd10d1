/**
 * The store contract, run against both implementations: the in-process MemoryStore and RedisStore on a private
 * redis-server. Rate-limit, cache and API-key code rely on exactly these behaviours.
 */
import { describe, test, after, before } from 'node:test'
import assert from 'node:assert/strict'
import { setTimeout as sleep } from 'node:timers/promises'
import { MemoryStore, RedisStore, type Store } from '../src/store/index.js'
import { RedisServer, freePort } from './helpers/redis.js'

async function eventually (check: () => Promise<boolean> | boolean, ms = 3000): Promise<void> {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) { if (await check()) return; await sleep(20) }
  assert.fail('condition not met in time')
}

function contract (name: string, make: () => Promise<Store>): void {
  describe(`store contract: ${name}`, () => {
    let store: Store
    before(async () => { store = await make() })
    after(async () => { await store.close() })
    let n = 0
    const key = (): string => `t${name}:${n++}:${Math.random().toString(36).slice(2)}`

    test('set/get bytes, with and without expiry, nx', async () => {
      const k = key()
      assert.equal(await store.get(k), null)
      assert.equal(await store.set(k, Buffer.from([0, 1, 2, 255])), true)
      assert.deepEqual(await store.get(k), Buffer.from([0, 1, 2, 255]))
      assert.equal(await store.pttl(k), -1)
      assert.equal(await store.set(k, 'other', 0, { nx: true }), false, 'nx does not overwrite')
      assert.equal((await store.get(k))?.toString('latin1'), '\u0000\u0001\u0002\u00ff')
      const e = key()
      assert.equal(await store.set(e, 'short', 80), true)
      const ttl = await store.pttl(e)
      assert.ok(ttl > 0 && ttl <= 80, `pttl ${ttl}`)
      await sleep(150)
      assert.equal(await store.get(e), null, 'expired')
      assert.equal(await store.pttl(e), -2)
      assert.equal(await store.set(e, 'again', 1000, { nx: true }), true, 'nx writes once the old value expired')
    })

    test('delIfEquals releases only the owner\'s lock; del counts', async () => {
      const k = key()
      await store.set(k, 'owner-a', 5000, { nx: true })
      assert.equal(await store.delIfEquals(k, 'owner-b'), false)
      assert.equal(await store.delIfEquals(k, 'owner-a'), true)
      assert.equal(await store.get(k), null)
      const a = key(); const b = key()
      await store.set(a, '1'); await store.set(b, '2')
      assert.equal(await store.del(a, b, key()), 2)
    })

    test('incr is atomic under concurrency and sets the expiry once', async () => {
      const k = key()
      const results = await Promise.all(Array.from({ length: 200 }, () => store.incr(k, 1, 60_000)))
      assert.equal(Math.max(...results), 200)
      assert.equal(new Set(results).size, 200, 'each caller saw a distinct value')
      const ttl = await store.pttl(k)
      assert.ok(ttl > 58_000 && ttl <= 60_000, `ttl ${ttl}`)
      assert.equal(await store.incr(k, 5, 1), 205, 'a later incr does not shorten the expiry')
      assert.ok(await store.pttl(k) > 58_000)
      const short = key()
      await store.incr(short, 1, 60)
      await sleep(120)
      assert.equal(await store.incr(short, 1, 60), 1, 'the counter starts again after expiry')
    })

    test('hashes: set, get all, delete fields, expiry', async () => {
      const k = key()
      assert.equal(await store.hgetall(k), null)
      await store.hset(k, { client: 'acme', scopes: 'a b' })
      await store.hset(k, { plan: 'pro' })
      assert.deepEqual(await store.hgetall(k), { client: 'acme', scopes: 'a b', plan: 'pro' })
      assert.equal(await store.hdel(k, 'plan', 'nope'), 1)
      assert.deepEqual(await store.hgetall(k), { client: 'acme', scopes: 'a b' })
      const e = key()
      await store.hset(e, { a: '1' }, 80)
      await sleep(150)
      assert.equal(await store.hgetall(e), null)
    })

    test('sets: add, members, remove', async () => {
      const k = key()
      assert.deepEqual(await store.smembers(k), [])
      await store.sadd(k, ['x', 'y', 'x'])
      assert.deepEqual((await store.smembers(k)).sort(), ['x', 'y'])
      assert.equal(await store.srem(k, 'x', 'z'), 1)
      assert.deepEqual(await store.smembers(k), ['y'])
    })

    test('scan lists keys by prefix, without the namespace, and does not treat glob characters specially', async () => {
      const p = `${key()}:scan*[x]:`
      const keys = Array.from({ length: 30 }, (_, i) => `${p}${i}`)
      for (const k of keys) await store.set(k, 'v')
      await store.set(`${key()}:other`, 'v')
      const seen: string[] = []
      for await (const batch of store.scan(p, 7)) seen.push(...batch)
      assert.deepEqual([...new Set(seen)].sort(), [...keys].sort())
    })

    test('rateLimit: exact under concurrency, then refuses with retry-after', async () => {
      const k = key()
      const checks = await Promise.all(Array.from({ length: 30 }, () => store.rateLimit({ key: k, max: 10, windowMs: 60_000, cost: 1 })))
      assert.equal(checks.filter((c) => c.allowed).length, 10)
      const denied = checks.find((c) => !c.allowed)
      assert.ok(denied !== undefined && denied.retryAfterMs > 0 && denied.remaining === 0)
      const costly = await store.rateLimit({ key: key(), max: 10, windowMs: 60_000, cost: 4 })
      assert.equal(costly.allowed, true)
      assert.equal(costly.remaining, 6)
    })

    test('publish reaches subscribers; unsubscribe stops delivery', async () => {
      const ch = key()
      const got: string[] = []
      const off = await store.subscribe(ch, (m) => got.push(m))
      await store.publish(ch, 'revoke:k1')
      await eventually(() => got.length === 1)
      assert.deepEqual(got, ['revoke:k1'])
      await off()
      await store.publish(ch, 'after')
      await sleep(100)
      assert.deepEqual(got, ['revoke:k1'])
    })

    test('health reports ready', async () => {
      const h = await store.health()
      assert.equal(h.ok, true)
      assert.equal(h.state, 'ready')
      assert.equal(store.state, 'ready')
    })
  })
}

contract('memory', async () => { const s = new MemoryStore(); await s.init(); return s })

let server: RedisServer
contract('redis', async () => {
  server = new RedisServer(await freePort())
  await server.start()
  const s = new RedisStore({ url: server.url, prefix: 'gw:', commandTimeoutMs: 500 })
  await s.init()
  return s
})
after(async () => { await server?.stop() })
