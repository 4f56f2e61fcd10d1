/**
 * The rate limiter's link to the store, and what it does when the store fails.
 *
 * Shared mode: every check goes to the store (RedisStore batches the checks of one event-loop turn into one
 * script call, and no check waits longer than REDIS_COMMAND_TIMEOUT). When a check fails, or the store reports
 * that it is down, the limiter switches to fallback mode (logged once) and applies RATE_LIMIT_ON_STORE_ERROR:
 *   local  - an in-process limiter (the same algorithm, MemoryStore) at the limit divided by RATE_LIMIT_REPLICAS,
 *            so the replicas together stay within the declared limit; quotas are not counted meanwhile
 *   open   - requests pass unchecked
 *   closed - requests are refused (503)
 * In fallback mode the store is not called, except for one probe check at a time, at most once a PROBE_MS and
 * as soon as the store reports it is ready again; the first probe that succeeds returns to shared mode (logged).
 */
import type { FastifyBaseLogger } from 'fastify'
import { VARS, type GatewayConfig } from './config.js'
import { MemoryStore } from './store/memory.js'
import type { RateLimitCheck, RateLimitResult, Store } from './store/types.js'
import type { LeaseStats } from './rate-limit-lease.js'

export type OnStoreError = 'local' | 'open' | 'closed'

/** Counters for the metrics plugin (numeric fields are exported as gateway_ratelimit_events_total{event}). */
export interface RateLimitStats extends LeaseStats {
  /** 'shared' while decisions are made in the store, 'fallback' while RATE_LIMIT_ON_STORE_ERROR applies */
  mode: 'shared' | 'fallback'
  /** requests allowed by a rate-limit check */
  allowed: number
  /** requests refused by a rate limit (429 GW_ERR_RATE_LIMITED) */
  limited: number
  /** requests refused by a quota (429 GW_ERR_QUOTA_EXCEEDED) */
  quotaExceeded: number
  /** checks the store failed or did not answer in time */
  storeErrors: number
  /** decisions made without the store (local, open or closed) */
  fallbackChecks: number
  /** requests refused with 503 because the store was unavailable and RATE_LIMIT_ON_STORE_ERROR=closed */
  unavailable: number
  /** times the limiter switched from the store to its fallback */
  fallbackEntered: number
  /** requests refused by the pre-auth per-IP flood limit (plugins/flood.ts) */
  floodLimited: number
}

/** The fallback's answer when RATE_LIMIT_ON_STORE_ERROR=closed. */
export const UNAVAILABLE = Symbol('gw.rateLimit.unavailable')
/** A decision made by the in-process fallback limiter. */
export type Decision = RateLimitResult & { local?: true }

const PROBE_MS = 1000

/** The parsed value of a VARS row without a typed GatewayConfig field (loadConfig validated it already). */
export function envOf<T> (config: GatewayConfig, name: string): T {
  const row = VARS.find((v) => v.name === name)
  if (row === undefined) throw new Error(`no VARS row ${name}`)
  return row.parse(config.env[name] ?? row.default ?? '') as T
}

export function newStats (): RateLimitStats {
  return { mode: 'shared', allowed: 0, limited: 0, quotaExceeded: 0, storeErrors: 0, fallbackChecks: 0, unavailable: 0, fallbackEntered: 0, floodLimited: 0, leases: 0, leaseServed: 0, leaseReturned: 0, leaseReturnFailed: 0 }
}

export class GuardedLimiter {
  readonly stats: RateLimitStats
  readonly #store: Store
  readonly #onError: OnStoreError
  readonly #log: FastifyBaseLogger
  /** null for a MemoryStore: it never fails, there is nothing to fall back from */
  readonly #local: MemoryStore | null
  #probing = false
  #nextProbeAt = 0

  constructor (store: Store, onError: OnStoreError, log: FastifyBaseLogger, stats: RateLimitStats = newStats()) {
    this.#store = store
    this.#onError = onError
    this.#log = log
    this.stats = stats
    this.#local = store.kind === 'memory' ? null : new MemoryStore()
    store.onStateChange((state, reason) => {
      if (state === 'ready') this.#nextProbeAt = 0
      else this.#enterFallback(reason ?? `store ${state}`)
    })
    if (store.state !== 'ready') this.#enterFallback(`store ${store.state} at start`)
  }

  get local (): MemoryStore | null { return this.#local }

  async init (): Promise<void> { await this.#local?.init() }
  async close (): Promise<void> { await this.#local?.close() }

  /**
   * The decision for `check`, made in the store or by the fallback. null = pass unchecked (fail-open);
   * UNAVAILABLE = refuse (fail-closed). localMax/localBurst: the limit the in-process fallback applies.
   */
  check (check: RateLimitCheck, localMax: number, localBurst: number): Promise<Decision | null | typeof UNAVAILABLE> {
    // the hot path: the store's own promise and one reaction, no async frame
    if (this.stats.mode === 'shared') {
      return this.#store.rateLimit(check).then(undefined, async (err: unknown) => {
        this.#failed(err)
        return await this.#fallback(check, localMax, localBurst)
      })
    }
    return this.#degraded(check, localMax, localBurst)
  }

  async #degraded (check: RateLimitCheck, localMax: number, localBurst: number): Promise<Decision | null | typeof UNAVAILABLE> {
    if (!this.#probing && this.#store.state === 'ready' && Date.now() >= this.#nextProbeAt) {
      this.#probing = true
      try {
        const r = await this.#store.rateLimit(check)
        this.#probing = false
        if (this.stats.mode === 'fallback') {
          this.stats.mode = 'shared'
          this.#log.info({ store: this.#store.kind }, 'rate limits: store reachable again; limits are shared across replicas again')
        }
        return r
      } catch (err) {
        this.#probing = false
        this.#failed(err)
      }
    }
    return await this.#fallback(check, localMax, localBurst)
  }

  async #fallback (check: RateLimitCheck, localMax: number, localBurst: number): Promise<Decision | null | typeof UNAVAILABLE> {
    this.stats.fallbackChecks++
    if (this.#onError === 'open' || this.#local === null) return null
    if (this.#onError === 'closed') { this.stats.unavailable++; return UNAVAILABLE }
    const r: Decision = await this.#local.rateLimit({ key: check.key, max: localMax, windowMs: check.windowMs, cost: check.cost, burst: localBurst, quota: null })
    r.local = true
    return r
  }

  #failed (err: unknown): void {
    this.stats.storeErrors++
    this.#nextProbeAt = Date.now() + PROBE_MS
    this.#enterFallback((err as Error)?.message ?? String(err))
  }

  #enterFallback (reason: string): void {
    if (this.stats.mode === 'fallback') return
    this.stats.mode = 'fallback'
    this.stats.fallbackEntered++
    this.#nextProbeAt = Date.now() + PROBE_MS
    this.#log.warn({ store: this.#store.kind, reason, onStoreError: this.#onError }, `rate limits: store unavailable; ${this.#onError === 'local' ? 'limiting in process at limit / RATE_LIMIT_REPLICAS' : this.#onError === 'open' ? 'letting requests through unchecked' : 'refusing rate-limited requests (503)'}`)
  }
}
