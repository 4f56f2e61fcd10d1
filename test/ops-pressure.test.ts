/**
 * Issue 10, load shedding: with the event loop blocked past PRESSURE_MAX_EVENT_LOOP_DELAY the gateway answers 503
 * problem+json with Retry-After, health probes still answer, and traffic passes again once the loop recovers.
 */
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import type { FastifyInstance } from 'fastify'
import { defineRoutes, defineUpstream } from '../src/declare.js'
import { build } from './helper.js'
import { startUpstream } from './helpers/upstream.js'
import { eventually, parseMetrics, value } from './fixtures/ops/helpers.js'

const TOKEN = 'admin-token-for-ops-tests'

/** busy-wait: the event loop is blocked for `ms` (bounded) */
function blockLoop (ms: number): void {
  const end = Date.now() + ms
  while (Date.now() < end) { /* spin */ }
}

async function gateway (t: TestContext, env: Record<string, string>): Promise<{ app: FastifyInstance, hits: () => number }> {
  const up = await startUpstream(t)
  const app = await build(t, {
    declare: [defineUpstream({ name: 'svc', targets: [up.url] }), defineRoutes({ upstream: 'svc', prefix: '/api', routes: [{ method: 'GET', url: '/*' }] })],
    env: { ADMIN_TOKEN: TOKEN, ...env },
  })
  return { app, hits: () => up.hits }
}

/**
 * Block the loop, let the sampler run (its timer fell due during the block, so it runs before one set after), then
 * send a request. The sampler's next run 100ms later clears the state again, so a slow machine may need a retry.
 */
async function underPressure<T> (send: () => Promise<T>, tripped: (r: T) => boolean): Promise<T> {
  let last: T | undefined
  for (let i = 0; i < 5; i++) {
    blockLoop(1200)
    await new Promise((r) => setTimeout(r, 1))
    last = await send()
    if (tripped(last)) return last
    await new Promise((r) => setTimeout(r, 300))
  }
  return last as T
}

test('an event-loop block sheds requests with 503 problem+json and Retry-After, before any upstream work', async (t) => {
  const { app, hits } = await gateway(t, { PRESSURE_MAX_EVENT_LOOP_DELAY: '50ms', PRESSURE_SAMPLE_INTERVAL: '100ms', PRESSURE_RETRY_AFTER: '3s' })
  assert.equal((await app.inject('/api/ok')).statusCode, 200)
  const before = hits()
  // a proxied request and a health probe in the same pressure window
  const [res, live] = await underPressure(() => Promise.all([app.inject('/api/shed'), app.inject('/health/live')]), ([r]) => r.statusCode === 503)
  assert.equal(res.statusCode, 503)
  assert.equal(live.statusCode, 200, 'health probes are never shed')
  assert.match(String(res.headers['content-type']), /^application\/problem\+json/)
  assert.equal(res.headers['retry-after'], '3')
  const body = res.json()
  assert.equal(body.type, '/problems/GW_ERR_OVERLOADED')
  assert.equal(body.status, 503)
  assert.equal(hits(), before, 'the shed request never reached the upstream')


  // the loop recovers: traffic passes again
  await eventually(async () => (await app.inject('/api/again')).statusCode === 200 ? true : undefined, 'requests pass once the loop recovers')
  const m = parseMetrics((await app.inject({ url: '/admin/metrics', headers: { authorization: `Bearer ${TOKEN}` } })).body)
  assert.ok(value(m, 'gateway_shed_requests_total', { reason: 'eventLoopDelay' }) >= 1)
  assert.ok(value(m, 'gateway_requests_total', { route: '/api/*', method: 'GET', status_class: '5xx', upstream: 'svc' }) >= 1)
})

test('limits of 0 turn shedding off', async (t) => {
  const { app } = await gateway(t, { PRESSURE_MAX_EVENT_LOOP_DELAY: '0', PRESSURE_MAX_HEAP_USED: '0', PRESSURE_MAX_RSS: '0', PRESSURE_SAMPLE_INTERVAL: '100ms' })
  blockLoop(1200)
  await new Promise((r) => setTimeout(r, 1))
  assert.equal((await app.inject('/api/x')).statusCode, 200)
  assert.equal(typeof (app as { isUnderPressure?: unknown }).isUnderPressure, 'undefined', 'under-pressure is not even registered')
})

test('a heap limit below the heap in use sheds; the admin API is exempt and shows the limits', async (t) => {
  const { app } = await gateway(t, { PRESSURE_MAX_EVENT_LOOP_DELAY: '0', PRESSURE_MAX_HEAP_USED: '1mb', PRESSURE_SAMPLE_INTERVAL: '20ms' })
  const res = await eventually(async () => {
    const r = await app.inject('/api/x')
    return r.statusCode === 503 ? r : undefined
  }, 'the heap check trips')
  assert.equal(res.headers['retry-after'], '10')
  assert.equal((await app.inject('/health/ready')).statusCode, 200)
  const overview = await app.inject({ url: '/admin/overview', headers: { authorization: `Bearer ${TOKEN}` } })
  assert.equal(overview.statusCode, 200, 'the admin API is not shed')
  const shedding = overview.json().process.loadShedding
  assert.deepEqual(shedding.limits, { eventLoopDelayMs: 0, heapUsedBytes: 1024 * 1024, rssBytes: 0 })
  assert.ok(shedding.shed.heapUsedBytes >= 1)
})
