/**
 * Issue 10, metrics: the series move as requests go through (scrape, parse, compare), labels stay bounded, the
 * scrape-time gauges read the upstreams and the store, and the endpoints are protected.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import type { FastifyInstance } from 'fastify'
import { request } from 'undici'
import { defineRoutes, defineUpstream } from '../src/declare.js'
import { start } from '../src/server.js'
import { build } from './helper.js'
import { startUpstream } from './helpers/upstream.js'
import { freePort, startRedis } from './helpers/redis.js'
import { eventually, parseMetrics, routesDir, series, value, type Samples } from './fixtures/ops/helpers.js'

const TOKEN = 'admin-token-for-ops-tests'
const auth = { authorization: `Bearer ${TOKEN}` }

async function scrape (app: FastifyInstance): Promise<Samples> {
  const res = await app.inject({ url: '/admin/metrics', headers: auth })
  assert.equal(res.statusCode, 200)
  assert.match(String(res.headers['content-type']), /^text\/plain; version=0\.0\.4/)
  return parseMetrics(res.body)
}

function routes (url: string, extra: Partial<Parameters<typeof defineRoutes>[0]> = {}) {
  return [
    defineUpstream({ name: 'svc', targets: [url] }),
    defineRoutes({ upstream: 'svc', prefix: '/api', routes: [{ method: ['GET', 'POST'], url: '/*' }], ...extra }),
  ]
}

test('request count and latency by route pattern, method, status class and upstream', async (t) => {
  const up = await startUpstream(t)
  const app = await build(t, { declare: routes(up.url), env: { ADMIN_TOKEN: TOKEN } })
  const before = await scrape(app)
  for (let i = 0; i < 3; i++) assert.equal((await app.inject(`/api/items/${i}?q=${i}`)).statusCode, 200)
  assert.equal((await app.inject({ method: 'POST', url: '/api/items', payload: 'x' })).statusCode, 200)
  assert.equal((await app.inject('/nowhere/at/all')).statusCode, 404)
  const after = await scrape(app)

  const get = { route: '/api/*', method: 'GET', status_class: '2xx', upstream: 'svc' }
  const post = { ...get, method: 'POST' }
  const delta = (name: string, labels: Record<string, string>): number => value(after, name, labels) - value(before, name, labels)
  assert.equal(delta('gateway_requests_total', get), 3)
  assert.equal(delta('gateway_requests_total', post), 1)
  assert.equal(delta('gateway_request_duration_seconds_count', get), 3)
  assert.equal(delta('gateway_request_duration_seconds_bucket', { ...get, le: '+Inf' }), 3)
  assert.ok(delta('gateway_request_duration_seconds_sum', get) > 0)
  assert.equal(delta('gateway_requests_total', { route: 'unmatched', method: 'GET', status_class: '4xx', upstream: '' }), 1)
  assert.equal(delta('gateway_upstream_duration_seconds_count', { upstream: 'svc', target: up.url }), 4)

  // the first scrape itself was counted under its own route pattern
  assert.equal(value(after, 'gateway_requests_total', { route: '/admin/metrics', method: 'GET', status_class: '2xx', upstream: '' }), 1)
  // buckets are cumulative
  const buckets = series(after, 'gateway_request_duration_seconds_bucket').filter((s) => s.labels.route === '/api/*' && s.labels.method === 'GET')
  const ordered = buckets.map((b) => [b.labels.le === '+Inf' ? Infinity : Number(b.labels.le), b.value] as const).sort((a, b) => a[0] - b[0])
  for (let i = 1; i < ordered.length; i++) assert.ok((ordered[i]?.[1] ?? 0) >= (ordered[i - 1]?.[1] ?? 0))
})

test('labels stay bounded: many distinct URLs and query strings make one series', async (t) => {
  const up = await startUpstream(t)
  const app = await build(t, { declare: routes(up.url), env: { ADMIN_TOKEN: TOKEN } })
  for (let i = 0; i < 40; i++) await app.inject(`/api/users/${i}/orders?page=${i}&api_key=k${i}`)
  const text = (await app.inject({ url: '/admin/metrics', headers: auth })).body
  const requests = series(parseMetrics(text), 'gateway_requests_total').filter((s) => s.labels.route === '/api/*')
  assert.equal(requests.length, 1)
  assert.equal(requests[0]?.value, 40)
  assert.doesNotMatch(text, /users\/\d|page=|api_key|k17/)
})

test('upstream target health and in-flight, read at scrape time', async (t) => {
  let release: () => void = () => {}
  const held = new Promise<void>((resolve) => { release = resolve })
  const slow = await startUpstream(t, (_req, res) => { void held.then(() => { res.writeHead(200); res.end('ok') }) })
  const app = await build(t, { declare: routes(slow.url), env: { ADMIN_TOKEN: TOKEN } })
  const labels = { upstream: 'svc', target: slow.url }
  let m = await scrape(app)
  assert.equal(value(m, 'gateway_upstream_target_healthy', labels), 1)
  assert.equal(value(m, 'gateway_upstream_target_inflight', labels), 0)
  const pending = [app.inject('/api/a'), app.inject('/api/b')]
  await eventually(() => slow.hits === 2 ? true : undefined, 'both requests reach the upstream')
  m = await scrape(app)
  assert.equal(value(m, 'gateway_upstream_target_inflight', labels), 2)
  release()
  await Promise.all(pending)
  m = await scrape(app)
  assert.equal(value(m, 'gateway_upstream_target_inflight', labels), 0)
})

test('cache results from X-Cache and rate-limit decisions are counted per route', async (t) => {
  // The upstream's own X-Cache passes through when no cache plugin answers; with one, its header counts.
  // Either way every answer's X-Cache value is tallied here and compared with the metric.
  const up = await startUpstream(t, (_req, res) => { res.writeHead(200, { 'content-type': 'text/plain', 'x-cache': 'MISS', 'cache-control': 'max-age=60' }); res.end('ok') })
  const app = await build(t, {
    declare: [
      defineUpstream({ name: 'svc', targets: [up.url] }),
      defineRoutes({ upstream: 'svc', prefix: '/c', cache: { ttl: '30s' }, routes: [{ method: 'GET', url: '/*' }] }),
      defineRoutes({ upstream: 'svc', prefix: '/r', rateLimit: { max: 2, per: '1m' }, routes: [{ method: 'GET', url: '/*' }] }),
    ],
    env: { ADMIN_TOKEN: TOKEN },
  })
  const before = await scrape(app)
  const seen: Record<string, number> = {}
  for (let i = 0; i < 4; i++) {
    const res = await app.inject('/c/thing')
    const x = String(res.headers['x-cache'] ?? 'none').toLowerCase().split(/[\s;,]/)[0] as string
    seen[x] = (seen[x] ?? 0) + 1
  }
  const statuses: number[] = []
  for (let i = 0; i < 4; i++) statuses.push((await app.inject('/r/thing')).statusCode)
  const after = await scrape(app)
  for (const [result, n] of Object.entries(seen)) {
    if (result === 'none') continue
    const labels = { route: '/c/*', result: ['hit', 'miss', 'stale', 'bypass', 'revalidated', 'expired', 'updating'].includes(result) ? result : 'other' }
    assert.equal(value(after, 'gateway_cache_requests_total', labels) - value(before, 'gateway_cache_requests_total', labels), n, `X-Cache ${result}`)
  }
  const denied = statuses.filter((s) => s === 429).length
  const allowed = statuses.filter((s) => s < 400).length
  assert.equal(value(after, 'gateway_ratelimit_decisions_total', { route: '/r/*', decision: 'denied' }), denied)
  assert.equal(value(after, 'gateway_ratelimit_decisions_total', { route: '/r/*', decision: 'allowed' }), allowed)
  // no cache series for the rate-limited route, no rate-limit series for the cached one
  assert.equal(series(after, 'gateway_cache_requests_total').filter((s) => s.labels.route === '/r/*').length, 0)
  assert.equal(series(after, 'gateway_ratelimit_decisions_total').filter((s) => s.labels.route === '/c/*').length, 0)
})

test('auth failures by route and reason; the endpoint needs the admin token', async (t) => {
  const up = await startUpstream(t)
  const app = await build(t, {
    declare: [...routes(up.url), defineRoutes({ upstream: 'svc', prefix: '/k', auth: { apiKey: true }, routes: [{ method: 'GET', url: '/*' }] })],
    env: { ADMIN_TOKEN: TOKEN },
  })
  assert.equal((await app.inject('/admin/metrics')).statusCode, 401)
  assert.equal((await app.inject({ url: '/admin/metrics', headers: { authorization: 'Bearer wrong-token-wrong-token' } })).statusCode, 401)
  // a route that needs an API key, called without one and with a wrong one: the reason is the problem's code
  const reasons: string[] = []
  for (const headers of [{}, { 'x-api-key': 'not-a-key-at-all' }]) {
    const res = await app.inject({ url: '/k/x', headers })
    assert.equal(res.statusCode, 401)
    reasons.push(String(res.json().type).split('/').pop() as string)
  }
  const m = await scrape(app)
  assert.equal(value(m, 'gateway_auth_failures_total', { route: '/admin/metrics', status: '401', reason: 'GW_ERR_ADMIN_UNAUTHORIZED' }), 2)
  for (const reason of new Set(reasons)) {
    assert.equal(value(m, 'gateway_auth_failures_total', { route: '/k/*', status: '401', reason }), reasons.filter((r) => r === reason).length, reason)
  }
  assert.equal(up.hits, 0)
})

test('process metrics, store state and latency (Redis up, then down)', async (t) => {
  const redis = await startRedis(t)
  const up = await startUpstream(t)
  const app = await build(t, { declare: routes(up.url), env: { ADMIN_TOKEN: TOKEN, REDIS_URL: redis.url, REDIS_COMMAND_TIMEOUT: '200ms' } })
  let m = await scrape(app)
  assert.ok(value(m, 'process_cpu_user_seconds_total') > 0)
  assert.ok(value(m, 'nodejs_heap_size_used_bytes') > 0)
  assert.equal(value(m, 'gateway_store_up', { kind: 'redis' }), 1)
  assert.equal(value(m, 'gateway_store_state', { kind: 'redis', state: 'ready' }), 1)
  assert.ok(m.has('gateway_store_latency_seconds{kind="redis"}'))
  await redis.stop()
  m = await eventually(async () => {
    const s = await scrape(app)
    return value(s, 'gateway_store_up', { kind: 'redis' }) === 0 ? s : undefined
  }, 'the store is reported down')
  assert.equal(value(m, 'gateway_store_state', { kind: 'redis', state: 'ready' }), 0)
  assert.equal(m.has('gateway_store_latency_seconds{kind="redis"}'), false, 'no latency without an answer')
  await redis.start()
  await eventually(async () => value(await scrape(app), 'gateway_store_up', { kind: 'redis' }) === 1 ? true : undefined, 'the store is reported up again')
})

test('counters published by other plugins are exported when present', async (t) => {
  const up = await startUpstream(t)
  const app = await build(t, { declare: routes(up.url), env: { ADMIN_TOKEN: TOKEN } })
  const had = app.gwRateLimitStats
  // whatever the rate limiter publishes, numeric fields (flat or one level deep) become events
  ;(app as { gwRateLimitStats?: unknown }).gwRateLimitStats = { mode: 'fallback', allowed: 5, denied: 2, fallback: { open: 1 }, note: 'text' }
  t.after(() => { (app as { gwRateLimitStats?: unknown }).gwRateLimitStats = had })
  const m = await scrape(app)
  assert.equal(value(m, 'gateway_ratelimit_events_total', { event: 'allowed' }), 5)
  assert.equal(value(m, 'gateway_ratelimit_events_total', { event: 'denied' }), 2)
  assert.equal(value(m, 'gateway_ratelimit_events_total', { event: 'fallback_open' }), 1)
  assert.equal(series(m, 'gateway_ratelimit_events_total').length, 3)
  assert.equal(value(m, 'gateway_ratelimit_fallback_active'), 1)
})

test('METRICS_PORT: plain /metrics on a separate listener, closed with the gateway', async (t) => {
  const up = await startUpstream(t)
  const metricsPort = await freePort()
  const running = await start({ PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'silent', METRICS_PORT: String(metricsPort), ROUTES_DIR: routesDir(t, up.url) }, { logStream: { write () {} } })
  t.after(() => running.stop())
  assert.equal(running.metricsUrl, `http://127.0.0.1:${metricsPort}/metrics`)
  assert.equal((await request(`${running.url}/api/x`)).statusCode, 200)
  const res = await request(running.metricsUrl ?? '')
  assert.equal(res.statusCode, 200)
  const m = parseMetrics(await res.body.text())
  assert.equal(value(m, 'gateway_requests_total', { route: '/api/*', method: 'GET', status_class: '2xx', upstream: 'svc' }), 1)
  const other = await request(`http://127.0.0.1:${metricsPort}/admin/overview`)
  assert.equal(other.statusCode, 404)
  await other.body.dump()
  // the main port has no unauthenticated /metrics
  const main = await request(`${running.url}/metrics`)
  assert.equal(main.statusCode, 404)
  await main.body.dump()
  await running.stop()
  await assert.rejects(request(running.metricsUrl ?? ''))
})

test('METRICS=false: nothing is collected and /admin/metrics does not exist', async (t) => {
  const up = await startUpstream(t)
  const app = await build(t, { declare: routes(up.url), env: { ADMIN_TOKEN: TOKEN, METRICS: 'false' } })
  assert.equal(app.gwMetrics, null)
  assert.equal((await app.inject('/api/x')).statusCode, 200)
  assert.equal((await app.inject({ url: '/admin/metrics', headers: auth })).statusCode, 404)
})
