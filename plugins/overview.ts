/**
 * gw-overview: GET /admin/overview, what an operator wants at a glance: the declared routes with their policies
 * (auth, rate limit, cache; never a secret), the upstreams with the health and load of each target, the store, and
 * this process (pid, cluster worker, memory, load-shedding limits, whether it is draining).
 */
import fp from 'fastify-plugin'
import cluster from 'node:cluster'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance } from 'fastify'

/** Field names that never leave the process, whatever a policy object grows in the future. */
const SECRET_FIELD = /secret|password|passwd|credential|private|token$/i

/** A policy value as plain JSON: Sets and Maps become arrays and objects, functions and secrets are left out. */
export function plain (value: unknown, depth = 0): unknown {
  if (value === null || typeof value !== 'object') return typeof value === 'function' || typeof value === 'symbol' || typeof value === 'bigint' ? undefined : value
  if (depth > 6) return undefined
  if (value instanceof RegExp) return String(value)
  if (value instanceof Set) return [...value].map((v) => plain(v, depth + 1))
  if (Array.isArray(value)) return value.map((v) => plain(v, depth + 1))
  const entries = value instanceof Map ? [...value.entries()] : Object.entries(value)
  const out: Record<string, unknown> = {}
  for (const [k, v] of entries) {
    if (typeof k !== 'string' || SECRET_FIELD.test(k)) continue
    const p = plain(v, depth + 1)
    if (p !== undefined) out[k] = p
  }
  return out
}

interface TargetLike { url?: unknown, weight?: unknown, healthy?: unknown, state?: unknown, inflight?: unknown, lastCheck?: unknown }
interface PoolLike { name?: unknown, policy?: { balance?: unknown, timeouts?: unknown, retry?: unknown, healthCheck?: unknown, passive?: unknown, maxConnections?: unknown }, targets?: unknown }

function targetView (t: TargetLike): Record<string, unknown> {
  const out: Record<string, unknown> = { url: t.url }
  if (typeof t.weight === 'number') out.weight = t.weight
  if (typeof t.healthy === 'boolean') out.healthy = t.healthy
  if (typeof t.state === 'string') out.state = t.state
  if (typeof t.inflight === 'number') out.inflight = t.inflight
  if (t.lastCheck !== undefined) out.lastCheck = plain(t.lastCheck)
  return out
}

async function gwOverview (app: FastifyInstance): Promise<void> {
  const startedAt = new Date().toISOString()

  function routes (): unknown[] {
    return app.gw.declarations.routes.map((r) => ({
      id: r.id,
      file: r.file,
      methods: [...r.methods],
      url: r.url,
      upstream: r.upstream,
      websocket: r.websocket,
      auth: plain(r.auth),
      rateLimit: plain(r.rateLimit),
      cache: plain(r.cache),
    }))
  }

  function upstreams (): unknown[] {
    const pools = (app as { gwProxy?: { upstreams?: ReadonlyMap<string, PoolLike> } }).gwProxy?.upstreams
    if (pools === undefined) return []
    return [...pools].map(([name, pool]) => {
      const targets = Array.isArray(pool.targets) ? (pool.targets as TargetLike[]).map(targetView) : []
      const policy = pool.policy ?? {}
      return {
        name,
        healthyTargets: targets.filter((t) => t.healthy !== false).length,
        targets,
        balance: plain(policy.balance),
        timeouts: plain(policy.timeouts),
        retry: plain(policy.retry),
        healthCheck: plain(policy.healthCheck),
        passive: plain(policy.passive),
      }
    })
  }

  app.adminRoute({
    method: 'GET',
    url: '/overview',
    handler: async function overview () {
      const unanswered = { ok: false, state: app.store.state, latencyMs: null, reason: 'no answer within 1s' }
      const health = await Promise.race([app.store.health(), sleep(1000, unanswered, { ref: false })])
        .catch((err: Error) => ({ ok: false, state: app.store.state, latencyMs: null, reason: err.message }))
      const mem = process.memoryUsage()
      const pressure = (app as { gwPressure?: { limits?: unknown, shed?: unknown } }).gwPressure
      const sampled = typeof (app as { memoryUsage?: unknown }).memoryUsage === 'function' ? app.memoryUsage() : null
      return {
        process: {
          pid: process.pid,
          worker: cluster.isWorker ? cluster.worker?.id ?? null : null,
          startedAt,
          uptimeS: Math.round(process.uptime()),
          node: process.version,
          memory: { rssBytes: mem.rss, heapUsedBytes: mem.heapUsed, heapTotalBytes: mem.heapTotal, externalBytes: mem.external, arrayBuffersBytes: mem.arrayBuffers },
          shuttingDown: app.gwShuttingDown,
          loadShedding: pressure === undefined ? null : { limits: plain(pressure.limits), shed: plain(pressure.shed), sampled: plain(sampled) },
        },
        store: { kind: app.store.kind, ...health },
        upstreams: upstreams(),
        routes: routes(),
      }
    },
  })
}

export default fp(gwOverview, { name: 'gw-overview', fastify: '5.x', dependencies: ['gw-admin', 'gw-store', 'gw-proxy', 'gw-health'] })
