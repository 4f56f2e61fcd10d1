/**
 * Balancing (issue 3, item 1): weighted round-robin, least-connections, random, and consistent hashing on a
 * header, a cookie or the client, measured over real upstream servers on 127.0.0.1.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { defineRoutes, defineUpstream, type UpstreamDeclaration } from '../src/declare.js'
import { build } from './helper.js'
import { startUpstream, type Upstream } from './helpers/upstream.js'
import { ADMIN_TOKEN, named, upstreamState } from './helpers/upstream-tools.js'

async function targets (t: Parameters<typeof startUpstream>[0], names: string[]): Promise<Upstream[]> {
  return await Promise.all(names.map((n) => startUpstream(t, named(n))))
}

function declare (upstream: Omit<UpstreamDeclaration, 'name'>) {
  return [
    defineUpstream({ name: 'svc', ...upstream }),
    defineRoutes({ upstream: 'svc', prefix: '/api', routes: [{ method: ['GET', 'POST'], url: '/*' }] }),
  ]
}

function counts (seen: string[]): Record<string, number> {
  const out: Record<string, number> = {}
  for (const s of seen) out[s] = (out[s] ?? 0) + 1
  return out
}

test('weighted round-robin: 1:2:5 gives 20/40/100 of 160 (±5%), spread out, not in bursts', async (t) => {
  const [a, b, c] = await targets(t, ['a', 'b', 'c']) as [Upstream, Upstream, Upstream]
  const app = await build(t, {
    declare: declare({ targets: [{ url: a.url, weight: 1 }, { url: b.url, weight: 2 }, { url: c.url, weight: 5 }] }),
    env: { ADMIN_TOKEN },
  })
  assert.equal((await upstreamState(app, 'svc')).balance, 'weighted-round-robin')
  const seen: string[] = []
  for (let i = 0; i < 160; i++) {
    const res = await app.inject(`/api/x/${i}`)
    assert.equal(res.statusCode, 200)
    seen.push(res.json().target)
  }
  const n = counts(seen)
  const tolerance = 0.05 * 160
  for (const [name, expected] of [['a', 20], ['b', 40], ['c', 100]] as const) {
    assert.ok(Math.abs((n[name] ?? 0) - expected) <= tolerance, `${name}: ${n[name]} of 160, expected ${expected} ± ${tolerance}`)
  }
  // smooth: the heaviest target never gets more than 2 turns in a row (a naive weighted RR gives it 5)
  let run = 0
  let longest = 0
  for (const s of seen) { run = s === 'c' ? run + 1 : 0; longest = Math.max(longest, run) }
  assert.ok(longest <= 2, `longest run on c: ${longest}`)
})

test('least-connections sends less to a slow target than round-robin does (under 20% vs exactly 1/3)', async (t) => {
  const slow = await startUpstream(t, (req, res) => { setTimeout(() => named('slow')(req, res, Buffer.alloc(0)), 150) })
  const [f1, f2] = await targets(t, ['fast1', 'fast2']) as [Upstream, Upstream]
  const load = async (balance: 'least-connections' | 'round-robin'): Promise<Record<string, number>> => {
    const app = await build(t, { declare: declare({ targets: [slow.url, f1.url, f2.url], balance }) })
    const seen: string[] = []
    let next = 0
    // 6 concurrent clients, 150 requests in all
    await Promise.all(Array.from({ length: 6 }, async () => {
      while (next < 150) {
        next++
        const res = await app.inject('/api/work')
        assert.equal(res.statusCode, 200)
        seen.push(res.json().target)
      }
    }))
    assert.equal(seen.length, 150)
    await app.close()
    return counts(seen)
  }
  const rr = await load('round-robin')
  assert.equal(rr.slow, 50, `round-robin: ${JSON.stringify(rr)}`)
  const lc = await load('least-connections')
  assert.ok((lc.slow ?? 0) < 0.2 * 150, `least-connections: ${JSON.stringify(lc)}`)
  assert.ok((lc.fast1 ?? 0) > 0.3 * 150 && (lc.fast2 ?? 0) > 0.3 * 150, `least-connections: ${JSON.stringify(lc)}`)
})

test('weighted random: weights 1:3 give 25%/75% of 400 requests (±10 points)', async (t) => {
  const [a, b] = await targets(t, ['a', 'b']) as [Upstream, Upstream]
  const app = await build(t, { declare: declare({ targets: [{ url: a.url, weight: 1 }, { url: b.url, weight: 3 }], balance: 'random' }) })
  const seen: string[] = []
  for (let i = 0; i < 400; i++) seen.push((await app.inject('/api/r')).json().target)
  const share = (counts(seen).b ?? 0) / 400
  assert.ok(Math.abs(share - 0.75) <= 0.1, `b's share: ${share}`)
})

test('hash on a header: each user sticks to one target; when a target dies only its users move', async (t) => {
  const ups = await targets(t, ['a', 'b', 'c'])
  const app = await build(t, {
    declare: declare({
      targets: ups.map((u) => u.url),
      balance: { hash: 'header:x-user' },
      retry: { tries: 3 },
      passive: { failures: 1, ejectFor: '1m' },
    }),
  })
  const users = Array.from({ length: 40 }, (_, i) => `user-${i}`)
  const home = new Map<string, string>()
  for (let round = 0; round < 3; round++) {
    for (const u of users) {
      const res = await app.inject({ url: '/api/me', headers: { 'x-user': u } })
      assert.equal(res.statusCode, 200)
      const target = res.json().target as string
      if (round === 0) home.set(u, target)
      else assert.equal(target, home.get(u), `${u} moved from ${home.get(u)} to ${target}`)
    }
  }
  const spread = counts([...home.values()])
  assert.deepEqual(Object.keys(spread).sort(), ['a', 'b', 'c'], `every target has users: ${JSON.stringify(spread)}`)

  await (ups[2] as Upstream).close()
  const moved = new Map<string, string>()
  for (let round = 0; round < 2; round++) {
    for (const u of users) {
      const res = await app.inject({ url: '/api/me', headers: { 'x-user': u } })
      assert.equal(res.statusCode, 200, 'a GET to the dead target is retried on the next one on the ring')
      const target = res.json().target as string
      if (home.get(u) !== 'c') assert.equal(target, home.get(u), `${u} was on ${home.get(u)}, which is still up`)
      else if (round === 0) moved.set(u, target)
      else assert.equal(target, moved.get(u), `${u} moved again`)
    }
  }
  // requests without the header are spread round-robin
  const anon: string[] = []
  for (let i = 0; i < 10; i++) anon.push((await app.inject('/api/me')).json().target)
  assert.deepEqual(counts(anon), { a: 5, b: 5 })
})

test('hash on a cookie and on the client (the IP when unauthenticated) is sticky', async (t) => {
  const ups = await targets(t, ['a', 'b', 'c'])
  const byCookie = await build(t, { declare: declare({ targets: ups.map((u) => u.url), balance: { hash: 'cookie:sid' } }) })
  const byClient = await build(t, { declare: declare({ targets: ups.map((u) => u.url), balance: { hash: 'client' } }) })
  const homes = { cookie: new Map<string, string>(), client: new Map<string, string>() }
  for (let round = 0; round < 3; round++) {
    for (let i = 0; i < 30; i++) {
      const c = await byCookie.inject({ url: '/api/cart', headers: { cookie: `theme=dark; sid=s${i}; lang=en` } })
      const ip = await byClient.inject({ url: '/api/cart', remoteAddress: `10.0.${i}.7` })
      for (const [kind, res, key] of [['cookie', c, `s${i}`], ['client', ip, `10.0.${i}.7`]] as const) {
        const target = res.json().target as string
        const map = homes[kind]
        if (round === 0) map.set(key, target)
        else assert.equal(target, map.get(key), `${kind} ${key} moved`)
      }
    }
  }
  for (const kind of ['cookie', 'client'] as const) {
    assert.ok(new Set(homes[kind].values()).size >= 2, `${kind} keys spread over several targets`)
  }
})
