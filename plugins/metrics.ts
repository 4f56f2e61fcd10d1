/**
 * gw-metrics: Prometheus metrics (prom-client's registry, text format, process metrics and cluster aggregation).
 *
 * Served at GET /admin/metrics (admin token), and, with METRICS_PORT, at /metrics on a separate plain listener that
 * src/server.ts (or, with several workers, the cluster primary) opens: `app.gwMetrics.scrape()`. METRICS=false
 * collects nothing (no hook at all).
 *
 * Per request the cost is one onResponse hook doing counter increments and histogram observations on series that
 * were looked up once per route, method and status class: prom-client's own Counter/Histogram hash a label object
 * on every call, so the request series here are lean accumulators that prom-client reads at scrape time (they
 * implement its metric interface, `get()`). Everything else (upstream health and in-flight, store state and
 * latency, rate-limit and load-shedding counts) is read from its owner at scrape time.
 *
 * Labels stay bounded: route patterns as declared (never raw URLs), the fixed method set, status classes, declared
 * upstream names and target URLs, and a capped set of failure reasons.
 */
import fp from 'fastify-plugin'
import cluster from 'node:cluster'
import { setTimeout as sleep } from 'node:timers/promises'
import { AggregatorRegistry, Gauge, Registry, collectDefaultMetrics } from 'prom-client'
import type { FastifyInstance, FastifyReply, FastifyRequest, HookHandlerDoneFunction } from 'fastify'
import type { GatewayConfig } from '../src/config.js'
import type { RoutePolicy } from '../src/policy.js'
import { routeConfig } from './trace.js'

export interface GatewayMetrics {
  readonly registry: Registry
  /** the current metrics in Prometheus text format */
  scrape (): Promise<{ contentType: string, body: string }>
}

declare module 'fastify' {
  interface FastifyInstance {
    /** null with METRICS=false */
    gwMetrics: GatewayMetrics | null
    /** published by the rate-limit plugin when present: numeric counters, flat or one level deep */
    gwRateLimitStats?: unknown
  }
}

type Labels = Record<string, string>
interface MetricJSON { name: string, help: string, type: string, aggregator: string, values: Array<{ value: number, labels: Labels, metricName?: string }> }

// ---- lean accumulators read by prom-client at scrape time -------------------------------------------------------

export class CounterSeries { value = 0; constructor (readonly labels: Labels) {} }

/** A counter family whose series are made once and then incremented in place (`series.value++`). */
export class LeanCounter {
  readonly type = 'counter'
  readonly #series = new Map<string, CounterSeries>()
  constructor (readonly name: string, readonly help: string, readonly labelNames: readonly string[], readonly aggregator = 'sum') {}

  series (...values: string[]): CounterSeries {
    const key = values.join('\u0000')
    let s = this.#series.get(key)
    if (s === undefined) {
      const labels: Labels = {}
      this.labelNames.forEach((n, i) => { labels[n] = values[i] ?? '' })
      s = new CounterSeries(labels)
      this.#series.set(key, s)
    }
    return s
  }

  get (): MetricJSON {
    const values = [...this.#series.values()].map((s) => ({ value: s.value, labels: s.labels }))
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values }
  }
}

export class HistogramSeries {
  /** per bucket, not cumulative; the last one is +Inf */
  readonly counts: Float64Array
  sum = 0
  count = 0
  constructor (readonly labels: Labels, readonly bounds: readonly number[]) { this.counts = new Float64Array(bounds.length + 1) }

  observe (value: number): void {
    const b = this.bounds
    let i = 0
    while (i < b.length && value > (b[i] as number)) i++
    this.counts[i]!++
    this.sum += value
    this.count++
  }
}

export class LeanHistogram {
  readonly type = 'histogram'
  readonly aggregator = 'sum'
  readonly #series = new Map<string, HistogramSeries>()
  constructor (readonly name: string, readonly help: string, readonly labelNames: readonly string[], readonly bounds: readonly number[]) {}

  series (...values: string[]): HistogramSeries {
    const key = values.join('\u0000')
    let s = this.#series.get(key)
    if (s === undefined) {
      const labels: Labels = {}
      this.labelNames.forEach((n, i) => { labels[n] = values[i] ?? '' })
      s = new HistogramSeries(labels, this.bounds)
      this.#series.set(key, s)
    }
    return s
  }

  get (): MetricJSON {
    const values: MetricJSON['values'] = []
    for (const s of this.#series.values()) {
      let acc = 0
      this.bounds.forEach((le, i) => {
        acc += s.counts[i] as number
        values.push({ metricName: `${this.name}_bucket`, labels: { ...s.labels, le: String(le) }, value: acc })
      })
      values.push({ metricName: `${this.name}_bucket`, labels: { ...s.labels, le: '+Inf' }, value: s.count })
      values.push({ metricName: `${this.name}_sum`, labels: s.labels, value: s.sum })
      values.push({ metricName: `${this.name}_count`, labels: s.labels, value: s.count })
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values }
  }
}

// ---- label normalisation ----------------------------------------------------------------------------------------

const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'OTHER'] as const
const METHOD_INDEX = new Map<string, number>(METHODS.map((m, i) => [m, i]))
const STATUS_CLASSES = ['other', '1xx', '2xx', '3xx', '4xx', '5xx'] as const
const CACHE_RESULTS = ['hit', 'miss', 'stale', 'bypass', 'revalidated', 'expired', 'updating'] as const
const REASON = /^[A-Za-z][\w.:-]{0,63}$/
const MAX_REASONS = 64

const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

function cacheResult (header: unknown): string {
  const v = String(header).toLowerCase()
  for (const r of CACHE_RESULTS) if (v.startsWith(r)) return r
  return 'other'
}

function rateLimited (reply: FastifyReply): boolean {
  return reply.hasHeader('ratelimit-remaining') || reply.hasHeader('x-ratelimit-remaining') || reply.hasHeader('ratelimit')
}

/** Everything the onResponse hook needs about one route, made on its first request. */
class RouteSeries {
  /** request count and duration per method x status class */
  readonly slots: Array<{ requests: CounterSeries, duration: HistogramSeries } | undefined> = []
  readonly cache: Array<CounterSeries | undefined> = []
  readonly rateLimit: boolean
  readonly cached: boolean
  readonly upstreamTargets = new Map<string, HistogramSeries>()
  allowed: CounterSeries | undefined
  denied: CounterSeries | undefined
  constructor (readonly route: string, readonly policy: RoutePolicy | undefined) {
    this.rateLimit = policy?.rateLimit != null
    this.cached = policy?.cache != null
  }
}

async function gwMetrics (app: FastifyInstance, opts: { config: GatewayConfig }): Promise<void> {
  if (!opts.config.metrics) { app.decorate('gwMetrics', null); return }
  const registry = new Registry()
  const kSeries = Symbol('gw.metrics.route')
  const register = (m: object): void => registry.registerMetric(m as never)

  const requests = new LeanCounter('gateway_requests_total', 'Requests answered, by route pattern, method, status class and upstream', ['route', 'method', 'status_class', 'upstream'])
  const duration = new LeanHistogram('gateway_request_duration_seconds', 'Time from request to the end of the response, by route pattern, method, status class and upstream', ['route', 'method', 'status_class', 'upstream'], LATENCY_BUCKETS)
  const upstreamDuration = new LeanHistogram('gateway_upstream_duration_seconds', 'Time from dispatch to an upstream target until its response headers', ['upstream', 'target'], LATENCY_BUCKETS)
  const cache = new LeanCounter('gateway_cache_requests_total', 'Cache lookups on cached routes by result (from X-Cache)', ['route', 'result'])
  const rateLimit = new LeanCounter('gateway_ratelimit_decisions_total', 'Rate-limit decisions on limited routes', ['route', 'decision'])
  const authFailures = new LeanCounter('gateway_auth_failures_total', 'Requests refused with 401 or 403, by route pattern and reason', ['route', 'status', 'reason'])
  for (const m of [requests, duration, upstreamDuration, cache, rateLimit, authFailures]) register(m)

  const unmatched = new RouteSeries('unmatched', undefined)
  const reasons = new Set<string>()

  function seriesOf (request: FastifyRequest): RouteSeries {
    const config = routeConfig(request) as (Record<symbol, RouteSeries | undefined> & { url?: string, gw?: RoutePolicy }) | undefined
    if (config === undefined) return unmatched
    let s = config[kSeries]
    if (s === undefined) {
      const gw = config.gw
      s = gw !== undefined ? new RouteSeries(gw.url, gw) : config.url !== undefined ? new RouteSeries(config.url, undefined) : unmatched
      config[kSeries] = s
    }
    return s
  }

  function reasonOf (request: FastifyRequest): string {
    const detail = (request as unknown as { authFailure?: unknown }).authFailure
    const r = typeof detail === 'string' && REASON.test(detail) ? detail : request.gwError ?? 'none'
    if (reasons.has(r)) return r
    if (reasons.size >= MAX_REASONS) return 'other'
    reasons.add(r)
    return r
  }

  app.addHook('onResponse', function countRequest (request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction) {
    const s = seriesOf(request)
    const status = reply.statusCode
    const cls = status >= 100 && status < 600 ? (status / 100) | 0 : 0
    const m = METHOD_INDEX.get(request.method) ?? 7
    const i = m * 6 + cls
    let slot = s.slots[i]
    if (slot === undefined) {
      const labels = [s.route, METHODS[m] as string, STATUS_CLASSES[cls] as string, s.policy?.upstream ?? '']
      slot = { requests: requests.series(...labels), duration: duration.series(...labels) }
      s.slots[i] = slot
    }
    slot.requests.value++
    slot.duration.observe(reply.elapsedTime / 1000)

    if (request.gwUpstreamMs >= 0 && request.gwTarget !== null && s.policy !== undefined) {
      const target = request.gwTarget
      let h = s.upstreamTargets.get(target)
      if (h === undefined) { h = upstreamDuration.series(s.policy.upstream, target); s.upstreamTargets.set(target, h) }
      h.observe(request.gwUpstreamMs / 1000)
    }
    if (s.cached) {
      const x = reply.getHeader('x-cache')
      if (x !== undefined) {
        const r = cacheResult(x)
        const k = (CACHE_RESULTS as readonly string[]).indexOf(r)
        const j = k === -1 ? CACHE_RESULTS.length : k
        let c = s.cache[j]
        if (c === undefined) { c = cache.series(s.route, r); s.cache[j] = c }
        c.value++
      }
    }
    if (s.rateLimit) {
      if (status === 429) (s.denied ??= rateLimit.series(s.route, 'denied')).value++
      else if (status < 400 || rateLimited(reply)) (s.allowed ??= rateLimit.series(s.route, 'allowed')).value++
    }
    if (status === 401 || status === 403) authFailures.series(s.route, String(status), reasonOf(request)).value++
    done()
  })

  // ---- read at scrape time from their owners ---------------------------------------------------------------------

  type Pool = { name?: unknown, targets?: unknown }
  type TargetLike = { url?: unknown, healthy?: unknown, inflight?: unknown }
  function eachTarget (fn: (upstream: string, target: string, t: TargetLike) => void): void {
    const pools = (app as { gwProxy?: { upstreams?: ReadonlyMap<string, Pool> } }).gwProxy?.upstreams
    if (pools === undefined) return
    for (const [name, pool] of pools) {
      if (!Array.isArray(pool?.targets)) continue
      for (const t of pool.targets as TargetLike[]) if (typeof t?.url === 'string') fn(name, t.url, t)
    }
  }
  register(new Gauge({
    name: 'gateway_upstream_target_healthy',
    help: 'Whether the gateway currently sends traffic to an upstream target (1) or has it ejected/unhealthy (0)',
    labelNames: ['upstream', 'target'],
    registers: [],
    aggregator: 'min',
    collect () {
      this.reset()
      eachTarget((upstream, target, t) => { if (typeof t.healthy === 'boolean') this.set({ upstream, target }, t.healthy ? 1 : 0) })
    },
  }))
  register(new Gauge({
    name: 'gateway_upstream_target_inflight',
    help: 'Requests in flight to an upstream target',
    labelNames: ['upstream', 'target'],
    registers: [],
    collect () {
      this.reset()
      eachTarget((upstream, target, t) => { if (typeof t.inflight === 'number') this.set({ upstream, target }, t.inflight) })
    },
  }))

  const STATES = ['ready', 'connecting', 'down'] as const
  register(new Gauge({
    name: 'gateway_store_up',
    help: 'Whether the shared store (Redis, or the in-process store) is connected',
    labelNames: ['kind'],
    registers: [],
    aggregator: 'min',
    collect () { this.reset(); this.set({ kind: app.store.kind }, app.store.state === 'ready' ? 1 : 0) },
  }))
  register(new Gauge({
    name: 'gateway_store_state',
    help: 'The store connection state (1 for the current state)',
    labelNames: ['kind', 'state'],
    registers: [],
    collect () {
      this.reset()
      const now = app.store.state
      for (const state of STATES) this.set({ kind: app.store.kind, state }, now === state ? 1 : 0)
    },
  }))
  register(new Gauge({
    name: 'gateway_store_latency_seconds',
    help: 'Round trip of one store command (PING for Redis), measured at scrape time',
    labelNames: ['kind'],
    registers: [],
    aggregator: 'max',
    async collect () {
      this.reset()
      // bounded: a scrape never waits on a store that does not answer
      const h = await Promise.race([app.store.health(), sleep(1000, null, { ref: false })]).catch(() => null)
      if (h !== null && typeof h.latencyMs === 'number') this.set({ kind: app.store.kind }, h.latencyMs / 1000)
    },
  }))

  // published counters of other plugins: numeric fields, flat or (with `nested`) one level deep
  function counters (name: string, help: string, label: string, read: () => unknown, nested = true): void {
    register({
      name,
      get (): MetricJSON {
        const values: MetricJSON['values'] = []
        const add = (key: string, v: unknown): void => {
          if (typeof v === 'number' && Number.isFinite(v) && REASON.test(key) && values.length < 64) values.push({ value: v, labels: { [label]: key } })
        }
        const stats = read()
        if (stats !== null && typeof stats === 'object') {
          for (const [k, v] of Object.entries(stats)) {
            if (v !== null && typeof v === 'object' && !Array.isArray(v)) { if (nested) for (const [k2, v2] of Object.entries(v)) add(`${k}_${k2}`, v2) }
            else add(k, v)
          }
        }
        return { name, help, type: 'counter', aggregator: 'sum', values }
      },
    })
  }
  counters('gateway_ratelimit_events_total', 'Rate-limit events published by the rate limiter (decisions, store fallbacks)', 'event', () => app.gwRateLimitStats)
  type CacheLike = { stats?: () => { l1?: { entries?: unknown, bytes?: unknown } } }
  const cacheStats = (): ReturnType<NonNullable<CacheLike['stats']>> | undefined => {
    const c = (app as { gwCache?: CacheLike }).gwCache
    return typeof c?.stats === 'function' ? c.stats() : undefined
  }
  counters('gateway_cache_events_total', 'Cache events published by the cache (hits, misses, stale, bypasses, stored), all routes', 'event', cacheStats, false)
  register(new Gauge({
    name: 'gateway_cache_l1',
    help: 'The in-process (L1) cache: entries and bytes held',
    labelNames: ['measure'],
    registers: [],
    collect () {
      this.reset()
      const l1 = cacheStats()?.l1
      if (typeof l1?.entries === 'number') this.set({ measure: 'entries' }, l1.entries)
      if (typeof l1?.bytes === 'number') this.set({ measure: 'bytes' }, l1.bytes)
    },
  }))
  register(new Gauge({
    name: 'gateway_ratelimit_fallback_active',
    help: 'Whether rate limits are decided without the shared store right now (RATE_LIMIT_ON_STORE_ERROR applies)',
    registers: [],
    aggregator: 'max',
    collect () {
      this.reset()
      const mode = (app.gwRateLimitStats as { mode?: unknown } | undefined)?.mode
      if (typeof mode === 'string') this.set(mode === 'fallback' ? 1 : 0)
    },
  }))
  counters('gateway_shed_requests_total', 'Requests answered 503 by load shedding, by the check that tripped', 'reason', () => (app as { gwPressure?: { shed?: unknown } }).gwPressure?.shed)

  collectDefaultMetrics({ register: registry })

  // In a cluster worker, answer the primary's requests for this registry (src/cluster.ts sums the workers).
  if (cluster.isWorker) {
    void new AggregatorRegistry()
    AggregatorRegistry.setRegistries([registry])
  }

  const metrics: GatewayMetrics = {
    registry,
    async scrape () { return { contentType: registry.contentType, body: await registry.metrics() } },
  }
  app.decorate('gwMetrics', metrics)

  app.adminRoute({
    method: 'GET',
    url: '/metrics',
    handler: async function adminMetrics (_request, reply) {
      const { contentType, body } = await metrics.scrape()
      return reply.type(contentType).send(body)
    },
  })
}

export default fp(gwMetrics, { name: 'gw-metrics', fastify: '5.x', dependencies: ['gw-trace', 'gw-admin', 'gw-store', 'gw-proxy'] })
