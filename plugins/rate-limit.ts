/**
 * gw-rate-limit: per-client, per-route rate limits and quotas, exact across replicas.
 *
 * Why not @fastify/rate-limit: it counts in a fixed window (INCR + PEXPIRE), which lets a client send twice the
 * limit across a window boundary, and its store contract (`incr(key, cb, timeWindow, max)` answering a count)
 * cannot express a sliding window, a burst, a cost per request, a quota checked together with the limit, or a
 * batch of checks per event-loop turn. Wrapping it would leave only its header code; the decisions live here and in
 * the store (decideRateLimit() in src/store/types.ts and the same arithmetic in Lua in src/store/redis.ts).
 *
 * Which routes: those whose policy has `rateLimit`, and - when plans with limits are declared - the routes with
 * `auth` (a client's plan limits it everywhere it authenticates), unless the route says `rateLimit: false`.
 * The hook runs first in preHandler, after auth (onRequest) has set request.client.
 *
 * Which limit: the client's plan (request.client.plan) when it declares one, else the route's. The quota: the
 * plan's (counted across all routes) when it declares one, else the route's `rateLimit.quota` (per route).
 * Keyed by `by`: the client id when authenticated, else the client IP (request.ip, honouring TRUST_PROXY); or
 * always the IP; or a header's value. Keys: `rl:{<subject>}:<route>` and `q:{<subject>}[:<route>]`, the subject
 * being the hash tag, so one script call touches one Redis Cluster slot.
 */
import fp from 'fastify-plugin'
import { hash } from 'node:crypto'
import { Type } from '@sinclair/typebox'
import type { FastifyInstance, FastifyReply, FastifyRequest, HookHandlerDoneFunction, RouteOptions, preHandlerHookHandler } from 'fastify'
import type { GatewayConfig } from '../src/config.js'
import type { Client } from '../src/client.js'
import type { Declarations, PlanPolicy, RoutePolicy } from '../src/policy.js'
import { GW_ERR_BAD_REQUEST, GW_ERR_QUOTA_EXCEEDED, GW_ERR_RATE_LIMITED, GW_ERR_STORE_UNAVAILABLE } from '../src/errors.js'
import { GuardedLimiter, UNAVAILABLE, envOf, newStats, type Decision, type OnStoreError, type RateLimitStats } from '../src/rate-limit-limiter.js'
import { leasableLimit, rateLimitSpec, type RateLimitCheck } from '../src/store/types.js'
import { RateLimitLeases } from '../src/rate-limit-lease.js'
import { sendProblem } from './problem.js'
import { addRouteHook } from '../src/route-hooks.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** published by the rate-limit plugin when present: numeric counters, flat or one level deep */
    gwRateLimitStats?: unknown
  }
}

/** "1m" for 60000: durations in messages as they are usually declared */
export function formatDuration (ms: number): string {
  for (const [unit, size] of [['d', 86_400_000], ['h', 3_600_000], ['m', 60_000], ['s', 1000]] as const) {
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`
  }
  return `${ms}ms`
}

const digest = (s: string): string => hash('sha256', s, 'base64url').slice(0, 22)
/** subjects longer than this are hashed: keys stay short whatever a client id or header holds */
const MAX_SUBJECT = 128
const BRACES = /[{}%]/
/** a client id or header value as it goes into a key: hashed when long, braces escaped (the subject is the hash tag) */
const part = (v: string): string => v.length > MAX_SUBJECT ? '#' + digest(v) : BRACES.test(v) ? v.replace(/[{}%]/g, encodeURIComponent) : v
/** the subject of a client's keys (the hook's, and the admin API's reset) */
const clientSubject = (clientId: string): string => 'c:' + part(clientId)

/** The limit that applies to one (route, plan): everything per-request code needs, worked out at start-up. */
interface Limit {
  max: number
  /** 0 = no window (quota only) */
  windowMs: number
  burst: number
  /** what each replica allows while the store is unreachable (RATE_LIMIT_ON_STORE_ERROR=local) */
  localMax: number
  localBurst: number
  quota: { max: number, periodMs: number, perRoute: boolean } | null
  limitHeader: string
  localLimitHeader: string
  quotaLimitHeader: string
  policyHeader: string
  localPolicyHeader: string
  per: string
  quotaPer: string
  /** RateLimitCheck.spec of this limit's checks */
  spec: string
  /** a busy subject's units may be leased (a window without GCRA spacing; see src/rate-limit-lease.ts) */
  leasable: boolean
}

interface SubjectKeys { rate: string, routeQuota: string, quota: string }

interface RouteLimiter {
  tag: string
  cost: number
  subject: (request: FastifyRequest) => string
  /** keyed by the authenticated client when there is one (`by` client, the default) */
  byClient: boolean
  /** the route's own limit; null = only plans limit this route */
  base: Limit | null
  /** per plan name: its effective limit on this route (null = none) */
  plans: ReadonlyMap<string, Limit | null>
}

function compileLimit (rate: { max: number, perMs: number, burst: number } | null, quota: { max: number, perMs: number } | null, perRoute: boolean, replicas: number, cost: number): Limit | null {
  if (rate === null && quota === null) return null
  const max = rate?.max ?? 0
  const windowMs = rate?.perMs ?? 0
  const burst = rate?.burst ?? max
  // each replica's share, never below one request of this route's cost (else nothing would pass at all)
  const localMax = Math.max(cost, Math.floor(max / replicas))
  const localBurst = Math.min(localMax, Math.max(cost, Math.floor(burst / replicas)))
  const w = (ms: number): number => Math.max(1, Math.ceil(ms / 1000))
  const quotaPolicy = quota === null ? '' : `${quota.max};w=${w(quota.perMs)}`
  const policy = (m: number): string => [rate === null ? '' : `${m};w=${w(windowMs)}${burst < max ? `;burst=${burst}` : ''}`, quotaPolicy].filter(Boolean).join(', ')
  return {
    max,
    windowMs,
    burst,
    localMax,
    localBurst,
    quota: quota === null ? null : { max: quota.max, periodMs: quota.perMs, perRoute },
    limitHeader: String(max),
    localLimitHeader: String(localMax),
    quotaLimitHeader: quota === null ? '' : String(quota.max),
    policyHeader: policy(max),
    localPolicyHeader: policy(localMax),
    per: formatDuration(windowMs),
    quotaPer: quota === null ? '' : formatDuration(quota.perMs),
    spec: rateLimitSpec({ windowMs, max, cost, burst, quota: quota === null ? null : { max: quota.max, periodMs: quota.perMs } }),
    leasable: leasableLimit(windowMs, max, burst),
  }
}

function subjectOf (by: NonNullable<RoutePolicy['rateLimit']>['by']): (request: FastifyRequest) => string {
  const fallback = (request: FastifyRequest): string => {
    const client = request.client
    if (client === null) return 'ip:' + request.ip
    return clientSubject(client.id)
  }
  if (by.kind !== 'header') return by.kind === 'ip' ? (request) => 'ip:' + request.ip : fallback
  const name = by.name
  const prefix = `h:${name}=`
  // a missing (or repeated) header falls back to the client or IP, so leaving it out buys nothing
  return (request) => {
    const v = request.headers[name]
    return typeof v !== 'string' || v === '' ? fallback(request) : prefix + part(v)
  }
}

/** the subject an operator names in the admin API, built as the hook builds it */
function adminSubject (q: { client?: string, ip?: string, header?: string, value?: string }): string {
  if (q.client !== undefined) return clientSubject(q.client)
  if (q.ip !== undefined) return 'ip:' + q.ip
  if (q.header !== undefined && q.value !== undefined) return `h:${q.header.toLowerCase()}=${part(q.value)}`
  throw new GW_ERR_BAD_REQUEST('Name whose limits to reset: ?client=<id>, ?ip=<address> or ?header=<name>&value=<value>')
}

async function gwRateLimit (app: FastifyInstance, opts: { config: GatewayConfig, declarations: Declarations }): Promise<void> {
  const { config, declarations } = opts
  const onError = envOf<OnStoreError>(config, 'RATE_LIMIT_ON_STORE_ERROR')
  const replicas = envOf<number>(config, 'RATE_LIMIT_REPLICAS')
  const sets = envOf<string[]>(config, 'RATE_LIMIT_HEADERS')
  const ietf = sets.includes('ietf')
  const xHeaders = sets.includes('x')

  const leaseUnits = envOf<number>(config, 'RATE_LIMIT_LEASE')
  const leaseMs = envOf<number>(config, 'RATE_LIMIT_LEASE_MS')

  const stats: RateLimitStats = newStats()
  const limiter = new GuardedLimiter(app.store, onError, app.log, stats)
  await limiter.init()
  // leases only where checks cost a round trip: a MemoryStore decides in process anyway
  const leases = app.store.kind === 'redis' && leaseUnits > 0 ? new RateLimitLeases(limiter, app.store, app.log, { maxUnits: leaseUnits, ms: leaseMs }, stats) : null
  app.addHook('onClose', async () => {
    // unspent leased units go back before the store closes (its onClose runs after this one)
    await leases?.close()
    await limiter.close()
  })
  // the flood limiter's refusals are published with these counters
  Object.defineProperty(stats, 'floodLimited', { enumerable: true, get: () => app.gwFloodStats.limited })
  app.decorate('gwRateLimitStats', stats)

  const plans: PlanPolicy[] = [...declarations.plans.values()].filter((p) => p.rateLimit !== null || p.quota !== null)
  const warnedPlans = new Set<string>()
  function unknownPlan (request: FastifyRequest, plan: string): void {
    if (warnedPlans.has(plan) || warnedPlans.size > 100) return
    warnedPlans.add(plan)
    request.log.warn({ plan }, 'rate limits: the client\'s plan is not declared (definePlans); the route\'s own limit applies')
  }

  function compileRoute (policy: RoutePolicy): RouteLimiter {
    const rl = policy.rateLimit
    const cost = rl?.cost ?? 1
    const by: NonNullable<RoutePolicy['rateLimit']>['by'] = rl?.by ?? { kind: 'client' }
    const own = rl === null ? null : { max: rl.max, perMs: rl.perMs, burst: rl.burst }
    const byPlan = new Map<string, Limit | null>()
    for (const plan of plans) {
      const rate = plan.rateLimit ?? own
      if (rate !== null && cost > rate.burst) {
        app.log.warn({ route: policy.id, plan: plan.name }, `rate limits: cost ${cost} of route ${policy.id} is above the burst ${rate.burst} of plan ${plan.name}: its clients are always refused there`)
      }
      byPlan.set(plan.name, plan.quota !== null
        ? compileLimit(rate, plan.quota, false, replicas, cost)
        : compileLimit(rate, rl?.quota ?? null, true, replicas, cost))
    }
    return {
      tag: digest(policy.id).slice(0, 12),
      cost,
      subject: subjectOf(by),
      byClient: by.kind === 'client',
      base: compileLimit(own, rl?.quota ?? null, true, replicas, cost),
      plans: byPlan,
    }
  }

  function setHeaders (reply: FastifyReply, limit: Limit, r: Decision): void {
    // several policies: report the one closest to exhaustion (draft-ietf-httpapi-ratelimit-headers-07 §3)
    const qr = r.quotaRemaining ?? -1
    // a quota-only limit decided by the local fallback: nothing was counted, nothing to announce
    if (qr < 0 && r.remaining < 0) return
    let lim: string
    let rem: number
    let resetMs: number
    if (qr >= 0 && (r.remaining < 0 || qr < r.remaining)) {
      lim = limit.quotaLimitHeader; rem = qr; resetMs = r.quotaResetMs ?? 0
    } else {
      lim = r.local === true ? limit.localLimitHeader : limit.limitHeader; rem = r.remaining; resetMs = r.resetMs
    }
    const remaining = String(rem > 0 ? rem : 0)
    const reset = String(Math.ceil(resetMs / 1000))
    if (ietf) {
      reply.header('ratelimit-limit', lim)
      reply.header('ratelimit-remaining', remaining)
      reply.header('ratelimit-reset', reset)
      reply.header('ratelimit-policy', r.local === true ? limit.localPolicyHeader : limit.policyHeader)
    }
    if (xHeaders) {
      reply.header('x-ratelimit-limit', lim)
      reply.header('x-ratelimit-remaining', remaining)
      reply.header('x-ratelimit-reset', reset)
    }
  }

  /** what a decision means for the reply: done() to go on, or the refusal sent (and done not called) */
  function apply (request: FastifyRequest, reply: FastifyReply, limit: Limit, r: Decision | null | typeof UNAVAILABLE, done: HookHandlerDoneFunction): void {
    if (r === null) { done(); return }
    if (r === UNAVAILABLE) {
      reply.header('retry-after', '1')
      const err = new GW_ERR_STORE_UNAVAILABLE()
      sendProblem(request, reply, 503, err.code, err.message)
      return
    }
    if (ietf || xHeaders) setHeaders(reply, limit, r)
    if (r.allowed) { stats.allowed++; done(); return }
    const retryAfter = Math.max(1, Math.ceil(r.retryAfterMs / 1000))
    reply.header('retry-after', String(retryAfter))
    const q = limit.quota
    if (r.limitedBy === 'quota' && q !== null) {
      stats.quotaExceeded++
      const err = new GW_ERR_QUOTA_EXCEEDED(q.max, limit.quotaPer, retryAfter)
      sendProblem(request, reply, 429, err.code, err.message)
      return
    }
    stats.limited++
    const err = new GW_ERR_RATE_LIMITED(r.local === true ? limit.localMax : limit.max, limit.per, retryAfter)
    sendProblem(request, reply, 429, err.code, err.message)
  }

  // a callback hook and one promise per check (the batcher's): an async hook over an async limiter cost two more
  // promises and their microtasks per request
  function hookFor (rl: RouteLimiter): preHandlerHookHandler {
    const { tag, cost, base, plans: byPlan, byClient } = rl
    const subjectFor = rl.subject
    const keySuffix = '}:' + tag
    /** the keys of a subject on this route: its window's, its quota's on this route, its quota's across routes */
    const keysOf = (subject: string): SubjectKeys => ({ rate: 'rl:{' + subject + keySuffix, routeQuota: 'q:{' + subject + keySuffix, quota: 'q:{' + subject + '}' })
    /** a client's keys, made once per client (Client objects are shared by its requests) */
    const clientKeys = new WeakMap<Client, SubjectKeys>()
    return function rateLimit (request, reply, done) {
      let limit = base
      const client = request.client
      const plan = client?.plan ?? null
      if (plan !== null && byPlan.size > 0) {
        const l = byPlan.get(plan)
        if (l !== undefined) limit = l
        else unknownPlan(request, plan)
      }
      if (limit === null) { done(); return }
      const q = limit.quota
      let keys: SubjectKeys | undefined
      if (byClient && client != null) {
        keys = clientKeys.get(client)
        if (keys === undefined) {
          keys = keysOf(clientSubject(client.id))
          clientKeys.set(client, keys)
        }
      } else keys = keysOf(subjectFor(request))
      const lease = limit.leasable ? leases : null
      const now = lease === null ? 0 : Date.now()
      if (lease !== null) {
        // units this replica holds for the subject: decided here, without the store
        const held = lease.take(keys.rate, cost, limit.spec, now)
        if (held !== null) {
          try { apply(request, reply, limit, held, done) } catch (err) { done(err as Error) }
          return
        }
      }
      const check: RateLimitCheck = {
        key: keys.rate,
        max: limit.max,
        windowMs: limit.windowMs,
        cost,
        burst: limit.burst,
        quota: q === null ? null : { key: q.perRoute ? keys.routeQuota : keys.quota, max: q.max, periodMs: q.periodMs },
        spec: limit.spec,
      }
      const decided = limit
      const decision = lease !== null ? lease.check(check, limit.localMax, limit.localBurst, now) : limiter.check(check, limit.localMax, limit.localBurst)
      decision.then((r) => {
        try { apply(request, reply, decided, r, done) } catch (err) { done(err as Error) }
      }, done)
    }
  }

  const hooks = new Map<RoutePolicy, preHandlerHookHandler>()
  app.addHook('onRoute', function attachRateLimit (route: RouteOptions) {
    const policy = route.config?.gw
    if (policy === undefined || policy.rateLimitOff === true) return
    if (policy.rateLimit === null && (policy.auth === null || plans.length === 0)) return
    let hook = hooks.get(policy)
    if (hook === undefined) {
      hook = hookFor(compileRoute(policy))
      hooks.set(policy, hook)
    }
    // first of the preHandlers
    addRouteHook(route, 'preHandler', hook, 'first')
  })

  app.adminRoute({
    method: 'GET',
    url: '/rate-limits',
    handler: async function rateLimitStatus () {
      return { store: app.store.kind, onStoreError: onError, replicas, headers: sets, lease: leases === null ? 0 : leaseUnits, leaseMs, ...stats }
    },
  })

  app.adminRoute({
    method: 'DELETE',
    url: '/rate-limits',
    schema: {
      querystring: Type.Object({
        client: Type.Optional(Type.String({ minLength: 1 })),
        ip: Type.Optional(Type.String({ minLength: 1 })),
        header: Type.Optional(Type.String({ minLength: 1 })),
        value: Type.Optional(Type.String({ minLength: 1 })),
      }, { additionalProperties: false }),
    },
    handler: async function resetRateLimits (request) {
      const subject = adminSubject(request.query as Record<string, string>)
      // this replica's leases of the subject go with its counts (other replicas' end within RATE_LIMIT_LEASE_MS)
      leases?.forget(`rl:{${subject}}`)
      let deleted = 0
      for (const store of [limiter.local, app.store]) {
        if (store === null) continue
        try {
          for (const prefix of [`rl:{${subject}}`, `q:{${subject}}`]) {
            for await (const keys of store.scan(prefix)) deleted += await store.del(...keys)
          }
        } catch (err) {
          throw Object.assign(new GW_ERR_STORE_UNAVAILABLE(), { cause: err, headers: { 'retry-after': '1' } })
        }
      }
      request.log.info({ subject }, 'rate limits reset')
      return { subject, deleted }
    },
  })
}

export default fp(gwRateLimit, { name: 'gw-rate-limit', fastify: '5.x', dependencies: ['gw-store', 'gw-problem', 'gw-admin', 'gw-flood'] })
