/**
 * Health (issue 3, items 2, 3 and 9): active checks, passive ejection with back-off and a half-open trial,
 * 503 at once when no target is left, the admin view, and one log line per state change.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { defineRoutes, defineUpstream, type UpstreamDeclaration } from '../src/declare.js'
import { build } from './helper.js'
import { startUpstream, type Upstream } from './helpers/upstream.js'
import { ADMIN, ADMIN_TOKEN, logCapture, named, sleep, targetState, until, upstreamState } from './helpers/upstream-tools.js'

function declare (upstream: Omit<UpstreamDeclaration, 'name'>) {
  return [
    defineUpstream({ name: 'svc', ...upstream }),
    defineRoutes({ upstream: 'svc', prefix: '/api', routes: [{ method: ['GET', 'POST'], url: '/*' }] }),
  ]
}

const traffic = (up: Upstream): number => up.received.filter((r) => r.url !== '/health').length

test('three targets, one killed mid-stream: no client error, traffic moves, and it returns after passing checks', { timeout: 60_000 }, async (t) => {
  const [a, b, c] = await Promise.all(['a', 'b', 'c'].map((n) => startUpstream(t, named(n)))) as [Upstream, Upstream, Upstream]
  const app = await build(t, {
    env: { ADMIN_TOKEN },
    declare: declare({
      targets: [a.url, b.url, c.url],
      healthCheck: { path: '/health', interval: '100ms', timeout: '1s', healthy: 2, unhealthy: 2 },
      // a long back-off: the target comes back through its active checks, not through a trial request
      passive: { failures: 2, ejectFor: '5m' },
      retry: { tries: 3 },
    }),
  })
  const seen: string[] = []
  const failures: string[] = []
  let sent = 0
  let killed = false
  await Promise.all(Array.from({ length: 4 }, async () => {
    while (sent < 240) {
      sent++
      if (sent === 80 && !killed) { killed = true; await b.close() }
      const res = await app.inject('/api/item')
      if (res.statusCode !== 200) failures.push(`${res.statusCode} ${res.body}`)
      else seen.push(res.json().target)
    }
  }))
  assert.deepEqual(failures, [], 'no client saw an error')
  const afterKill = seen.slice(100)
  assert.equal(afterKill.filter((s) => s === 'b').length, 0, 'no answer from the killed target')
  assert.ok(afterKill.filter((s) => s === 'a').length > 40 && afterKill.filter((s) => s === 'c').length > 40, 'a and c share the traffic')
  await until('b is marked unhealthy', async () => targetState(await upstreamState(app, 'svc'), b.url).state === 'unhealthy')

  await b.restart()
  await until('b passes its checks again', async () => targetState(await upstreamState(app, 'svc'), b.url).healthy, 15_000)
  const before = traffic(b)
  const back: string[] = []
  for (let i = 0; i < 30; i++) {
    const res = await app.inject('/api/item')
    assert.equal(res.statusCode, 200)
    back.push(res.json().target)
  }
  assert.equal(back.filter((s) => s === 'b').length, 10, `round-robin over three again: ${back.join(' ')}`)
  assert.equal(traffic(b) - before, 10)
})

test('a hanging target: 504 within the first-byte timeout, ejected after the threshold, one log line', { timeout: 30_000 }, async (t) => {
  const hang = await startUpstream(t, () => { /* never answers */ })
  const ok = await startUpstream(t, named('ok'))
  const log = logCapture()
  const app = await build(t, {
    env: { ADMIN_TOKEN, LOG_LEVEL: 'info' },
    logStream: log.stream,
    declare: declare({ targets: [hang.url, ok.url], timeouts: { firstByte: '300ms' }, passive: { failures: 2, ejectFor: '1m' } }),
  })
  const statuses: number[] = []
  for (let i = 0; i < 12; i++) {
    const t0 = Date.now()
    const res = await app.inject('/api/slow')
    statuses.push(res.statusCode)
    if (res.statusCode === 504) {
      assert.ok(Date.now() - t0 < 5_000, 'answered by the 300ms first-byte timeout, not a default one')
      assert.match(String(res.headers['content-type']), /^application\/problem\+json/)
      assert.equal(res.json().type, '/problems/GW_ERR_UPSTREAM_TIMEOUT')
    } else assert.equal(res.json().target, 'ok')
  }
  // round-robin: hang, ok, hang, ok; two timeouts eject it; everything after goes to ok
  assert.deepEqual(statuses, [504, 200, 504, ...Array(9).fill(200)])
  assert.equal(hang.hits, 2)
  const state = targetState(await upstreamState(app, 'svc'), hang.url)
  assert.equal(state.state, 'ejected')
  assert.equal(state.ejected, true)
  assert.equal(state.ejections, 1)
  const ejected = log.lines.filter((l) => l.msg === 'upstream target ejected')
  assert.equal(ejected.length, 1, 'one line per state change, not per request')
  assert.equal(ejected[0]?.target, hang.url)
  assert.equal(ejected[0]?.reason, 'UND_ERR_HEADERS_TIMEOUT')
  assert.equal(ejected[0]?.upstream, 'svc')
})

test('every target ejected: 503 problem+json at once, with Retry-After, no upstream contacted', async (t) => {
  const fail = (req: unknown, res: import('node:http').ServerResponse): void => { res.writeHead(500); res.end('boom') }
  const [x, y] = await Promise.all([startUpstream(t, fail), startUpstream(t, fail)])
  const app = await build(t, { declare: declare({ targets: [x.url, y.url], passive: { failures: 1, ejectFor: '30s' }, retry: false }) })
  assert.equal((await app.inject('/api/a')).statusCode, 500)
  assert.equal((await app.inject('/api/a')).statusCode, 500)
  for (let i = 0; i < 5; i++) {
    const res = await app.inject('/api/a')
    assert.equal(res.statusCode, 503)
    assert.match(String(res.headers['content-type']), /^application\/problem\+json/)
    assert.equal(res.json().type, '/problems/GW_ERR_NO_HEALTHY_TARGET')
    const after = Number(res.headers['retry-after'])
    assert.ok(after >= 1 && after <= 30, `Retry-After ${res.headers['retry-after']}`)
  }
  assert.equal(x.hits + y.hits, 2)
})

test('after the back-off ONE trial request decides: a failed trial ejects for longer, a passed one restores', { timeout: 30_000 }, async (t) => {
  let broken = true
  const flaky = await startUpstream(t, (req, res) => {
    setTimeout(() => {
      if (broken) { res.writeHead(503); res.end('down'); return }
      named('flaky')(req, res, Buffer.alloc(0))
    }, 100)
  })
  const good = await startUpstream(t, named('good'))
  const log = logCapture()
  const app = await build(t, {
    env: { ADMIN_TOKEN, LOG_LEVEL: 'info' },
    logStream: log.stream,
    declare: declare({ targets: [flaky.url, good.url], passive: { failures: 1, ejectFor: '300ms', maxEjectFor: '10s' }, retry: false }),
  })
  assert.equal((await app.inject('/api/x')).statusCode, 503, 'the first request meets the broken target')
  let s = targetState(await upstreamState(app, 'svc'), flaky.url)
  assert.equal(s.state, 'ejected')
  assert.equal(s.ejectForMs, 300)
  for (let i = 0; i < 4; i++) assert.equal((await app.inject('/api/x')).json().target, 'good', 'ejected: no traffic')
  assert.equal(flaky.hits, 1)

  await sleep(450)
  // five at once: one is the trial, the others go to the good target meanwhile
  let burst = await Promise.all(Array.from({ length: 5 }, () => app.inject('/api/x')))
  assert.equal(flaky.hits, 2, 'exactly one trial request')
  assert.deepEqual(burst.map((r) => r.statusCode).sort(), [200, 200, 200, 200, 503])
  s = targetState(await upstreamState(app, 'svc'), flaky.url)
  assert.equal(s.state, 'ejected', 'the failed trial ejects again')
  assert.equal(s.ejections, 2)
  assert.equal(s.ejectForMs, 600, 'for twice as long')

  broken = false
  assert.equal((await app.inject('/api/x')).json().target, 'good')
  assert.equal(flaky.hits, 2)
  await sleep(750)
  burst = await Promise.all(Array.from({ length: 5 }, () => app.inject('/api/x')))
  assert.equal(flaky.hits, 3, 'one trial again')
  assert.ok(burst.every((r) => r.statusCode === 200))
  s = targetState(await upstreamState(app, 'svc'), flaky.url)
  assert.equal(s.state, 'healthy')
  const after: string[] = []
  for (let i = 0; i < 4; i++) after.push((await app.inject('/api/x')).json().target)
  assert.deepEqual(after.sort(), ['flaky', 'flaky', 'good', 'good'], 'restored into the rotation')

  const changes = log.lines.filter((l) => l.upstream === 'svc' && typeof l.state === 'string').map((l) => l.msg)
  assert.deepEqual(changes, [
    'upstream target ejected',
    'upstream target back-off over, sending one trial request',
    'upstream target failed its trial request, ejected again',
    'upstream target back-off over, sending one trial request',
    'upstream target passed its trial request, restored',
  ])
})

test('admin: GET /admin/upstreams shows every target with its state and in-flight requests', async (t) => {
  let release: () => void = () => {}
  const held = new Promise<void>((resolve) => { release = resolve })
  const slow = await startUpstream(t, (req, res) => { void held.then(() => named('slow')(req, res, Buffer.alloc(0))) })
  const other = await startUpstream(t, named('other'))
  const app = await build(t, {
    env: { ADMIN_TOKEN },
    declare: declare({ targets: [slow.url, `${other.url}/base`], healthCheck: { path: '/health', interval: '1s' } }),
  })
  const pending = app.inject('/api/wait')
  await until('the request is in flight', async () => targetState(await upstreamState(app, 'svc'), slow.url).inflight === 1)
  const all = await app.inject({ url: '/admin/upstreams', headers: ADMIN })
  assert.equal(all.statusCode, 200)
  const svc = all.json().upstreams.find((u: { name: string }) => u.name === 'svc')
  assert.equal(svc.balance, 'round-robin')
  assert.equal(svc.available, 2)
  assert.deepEqual(svc.targets.map((x: { url: string }) => x.url), [slow.url, `${other.url}/base`])
  assert.deepEqual(Object.keys(svc.targets[0]).sort(), ['consecutiveFailures', 'ejectForMs', 'ejected', 'ejectedUntil', 'ejections', 'healthy', 'inflight', 'lastCheck', 'passing', 'state', 'url', 'weight'])
  assert.equal(svc.healthCheck.path, '/health')
  assert.equal(svc.retry.tries, 2)
  release()
  assert.equal((await pending).statusCode, 200)
  await until('in-flight back to 0', async () => targetState(await upstreamState(app, 'svc'), slow.url).inflight === 0)

  assert.equal((await app.inject({ url: '/admin/upstreams' })).statusCode, 401)
  const unknown = await app.inject({ url: '/admin/upstreams/nope', headers: ADMIN })
  assert.equal(unknown.statusCode, 404)
  assert.equal(unknown.json().type, '/problems/GW_ERR_UNKNOWN_UPSTREAM')
})

test('a client at fault (a body over the limit) does not count against the target', async (t) => {
  const up = await startUpstream(t, named('only'))
  const app = await build(t, {
    env: { ADMIN_TOKEN, BODY_LIMIT: '1kb' },
    declare: declare({ targets: [up.url], passive: { failures: 1, ejectFor: '1m' } }),
  })
  const { Readable } = await import('node:stream')
  for (let i = 0; i < 3; i++) {
    const res = await app.inject({ method: 'POST', url: '/api/upload', headers: { 'content-type': 'text/plain', 'transfer-encoding': 'chunked' }, payload: Readable.from([Buffer.alloc(800), Buffer.alloc(800)]) })
    assert.equal(res.statusCode, 413)
  }
  const s = targetState(await upstreamState(app, 'svc'), up.url)
  assert.deepEqual([s.state, s.consecutiveFailures], ['healthy', 0])
  assert.equal((await app.inject('/api/next')).json().target, 'only')
})
