/**
 * Retries (issue 3, item 5): idempotent requests go again on ANOTHER target after a connection failure or a
 * retryable status; POST/PATCH never after their body was sent (but yes when the connection could not even be
 * opened); bodies too large to hold are not retried; tries are bounded; the retry budget caps retries when every
 * target fails.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import type { ServerResponse } from 'node:http'
import { defineRoutes, defineUpstream, type UpstreamDeclaration } from '../src/declare.js'
import { build } from './helper.js'
import { startUpstream, type Upstream } from './helpers/upstream.js'
import { ADMIN_TOKEN, named, until, upstreamState } from './helpers/upstream-tools.js'

function declare (upstream: Omit<UpstreamDeclaration, 'name'>) {
  return [
    defineUpstream({ name: 'svc', ...upstream }),
    defineRoutes({ upstream: 'svc', prefix: '/api', routes: [{ method: ['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'], url: '/*' }] }),
  ]
}

const unavailable = (_req: unknown, res: ServerResponse): void => { res.writeHead(503, { 'content-type': 'text/plain' }); res.end('unavailable') }

async function deadTarget (t: Parameters<typeof startUpstream>[0]): Promise<Upstream> {
  const dead = await startUpstream(t)
  await dead.close()
  return dead
}

test('GET, HEAD, OPTIONS, PUT, DELETE are retried on another target after a retryable status', async (t) => {
  const bad = await startUpstream(t, unavailable)
  const good = await startUpstream(t, named('good'))
  const app = await build(t, { declare: declare({ targets: [bad.url, good.url], passive: false, retry: { tries: 2, budget: 1 } }) })
  for (const method of ['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE'] as const) {
    for (let i = 0; i < 4; i++) {
      const res = await app.inject({ method, url: '/api/thing' })
      assert.equal(res.statusCode, 200, `${method} #${i}: ${res.body}`)
    }
  }
  // round-robin: every second request met the bad target first, then went to the good one
  assert.equal(bad.hits, 10)
  assert.equal(good.hits, 20)
})

test('a retryable status with a body too large to hold is dropped mid-stream and the request goes to the next target', async (t) => {
  // over the proxy's 256 KiB buffer, so the 503's body streams: the retry must end that stream and its request
  const big = Buffer.alloc(1024 * 1024, 'x')
  let closed = 0
  const bad = await startUpstream(t, (_req, res) => {
    res.on('close', () => { closed++ })
    res.writeHead(503, { 'content-type': 'text/plain', 'content-length': big.length })
    res.end(big)
  })
  const good = await startUpstream(t, named('good'))
  const app = await build(t, { env: { ADMIN_TOKEN }, declare: declare({ targets: [bad.url, good.url], passive: false, retry: { tries: 2, budget: 1 } }) })
  for (let i = 0; i < 4; i++) {
    const res = await app.inject('/api/thing')
    assert.equal(res.statusCode, 200, res.body)
    assert.equal(res.json().target, 'good')
  }
  assert.equal(bad.hits, 2)
  assert.equal(good.hits, 4)
  // 1 MiB does not fit in the sockets' buffers: only an aborted request lets the bad target's answer end
  await until("the bad target's answers to end", () => closed === 2)
  // nothing of the dropped answers is still counted in flight
  const state = await upstreamState(app, 'svc')
  assert.deepEqual(state.targets.map((target) => target.inflight), [0, 0])
})

test('GET is retried after a refused connection and a reset; the client sees no error', async (t) => {
  const dead = await deadTarget(t)
  const reset = await startUpstream(t, (req) => { req.socket.destroy() })
  const good = await startUpstream(t, named('good'))
  const app = await build(t, { declare: declare({ targets: [dead.url, reset.url, good.url], passive: false, retry: { tries: 3, budget: 1 } }) })
  for (let i = 0; i < 9; i++) {
    const res = await app.inject('/api/thing')
    assert.equal(res.statusCode, 200, res.body)
    assert.equal(res.json().target, 'good')
  }
  assert.equal(good.hits, 9)
})

test('POST is not retried after its body was sent: a 503 or a reset reaches the client, the other target sees nothing', async (t) => {
  const bad = await startUpstream(t, unavailable)
  const good = await startUpstream(t, named('good'))
  let app = await build(t, { declare: declare({ targets: [bad.url, good.url], passive: false, retry: { tries: 3, budget: 1 } }) })
  const statuses: number[] = []
  for (let i = 0; i < 6; i++) statuses.push((await app.inject({ method: 'POST', url: '/api/orders', payload: { n: i } })).statusCode)
  assert.deepEqual(statuses, [503, 200, 503, 200, 503, 200])
  assert.equal(bad.hits, 3)
  assert.equal(good.hits, 3)

  const reset = await startUpstream(t, (req) => { req.socket.destroy() })
  const good2 = await startUpstream(t, named('good2'))
  app = await build(t, { declare: declare({ targets: [reset.url, good2.url], passive: false, retry: { tries: 3, budget: 1 } }) })
  const res = await app.inject({ method: 'PATCH', url: '/api/orders/1', payload: { paid: true } })
  assert.equal(res.statusCode, 502)
  assert.equal(res.json().type, '/problems/GW_ERR_UPSTREAM_RESET')
  assert.equal(reset.hits, 1, 'the reset target read the whole body')
  assert.equal(good2.hits, 0, 'and the request was not sent again')
})

test('POST is retried when the connection could not be opened: no byte of it left the gateway', async (t) => {
  const dead = await deadTarget(t)
  const good = await startUpstream(t)
  const app = await build(t, { declare: declare({ targets: [dead.url, good.url], passive: false, retry: { tries: 2, budget: 1 } }) })
  for (let i = 0; i < 4; i++) {
    const res = await app.inject({ method: 'POST', url: '/api/orders', headers: { 'content-type': 'text/plain' }, payload: `order ${i}` })
    assert.equal(res.statusCode, 200)
    assert.equal(res.json().body, `order ${i}`, 'the same body, whole')
  }
  assert.equal(good.hits, 4)
})

test('a small streamed body is held and sent again; a large one streams through and is not retried', async (t) => {
  const bad = await startUpstream(t, unavailable)
  const good = await startUpstream(t)
  const app = await build(t, { declare: declare({ targets: [bad.url, good.url], passive: false, retry: { tries: 2, budget: 1 } }) })
  const small = Buffer.alloc(64 * 1024, 'a')
  let res = await app.inject({ method: 'PUT', url: '/api/blob', headers: { 'content-type': 'application/octet-stream' }, payload: small })
  assert.equal(res.statusCode, 200)
  assert.equal(res.json().body.length, small.length)
  assert.equal(bad.hits, 1)
  assert.equal(bad.received[0]?.body.length, small.length)

  // the retry took no turn: the next request starts on the good target; the large one then starts on the bad one
  assert.equal((await app.inject('/api/x')).statusCode, 200)
  const large = Buffer.alloc(300 * 1024, 'b')
  res = await app.inject({ method: 'PUT', url: '/api/blob', headers: { 'content-type': 'application/octet-stream' }, payload: large })
  assert.equal(res.statusCode, 503, 'streamed body: the answer of the only try')
  assert.equal(bad.hits, 2)
  assert.equal(bad.received[1]?.body.length, large.length)
  assert.equal(good.received.filter((r) => r.method === 'PUT').length, 1)
})

test('tries bound the attempts; the retry budget caps retries when every target fails', async (t) => {
  const targets = await Promise.all([startUpstream(t, unavailable), startUpstream(t, unavailable), startUpstream(t, unavailable)])
  const hits = (): number => targets.reduce((n, u) => n + u.hits, 0)
  // budget 1 (one retry per request): each request earns its retry back, and makes exactly `tries` attempts
  let app = await build(t, { declare: declare({ targets: targets.map((u) => u.url), passive: false, retry: { tries: 2, budget: 1 } }) })
  for (let i = 0; i < 10; i++) {
    const res = await app.inject('/api/x')
    assert.equal(res.statusCode, 503, 'the last answer is passed on')
    assert.equal(res.body, 'unavailable')
  }
  assert.equal(hits(), 20)
  await app.close()

  // budget 0.1: 100 requests may cause at most 10 (the reserve) + 0.1 × 100 retries, instead of 200
  const before = hits()
  app = await build(t, { env: { ADMIN_TOKEN }, declare: declare({ targets: targets.map((u) => u.url), passive: false, retry: { tries: 3, budget: 0.1 } }) })
  for (let i = 0; i < 100; i++) assert.equal((await app.inject('/api/x')).statusCode, 503)
  const retries = hits() - before - 100
  assert.ok(retries <= 20, `${retries} retries`)
  assert.ok(retries >= 15, `${retries} retries: the budget is spent, not refused outright`)
  const state = await upstreamState(app, 'svc')
  assert.equal(state.retry?.spent, retries)
  assert.ok((state.retry?.refusedByBudget ?? 0) >= 75)
})
