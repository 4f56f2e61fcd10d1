/**
 * Rate-limit leases: a replica takes a few units of a busy subject's allowance from Redis ahead of use and spends
 * them in process, so most of that subject's requests are decided without waiting for Redis.
 *
 * The limit stays a ceiling across replicas: leased units are counted in Redis when they are granted, before any
 * request spends them, so all replicas together never admit more than the limit. What a lease can cost is the
 * other way round: units one replica holds are not available to the others until it spends them or gives them
 * back. That is kept small:
 * - Redis grants a lease only while the window (and quota) have room to spare: at most LEASE_HEADROOM-th of what
 *   would be left (decideRateLimit in src/store/types.ts). Near the limit every check is exact again.
 * - A subject's lease grows with the demand this replica sees (it doubles while the units run out before the lease
 *   ends, and starts from the requests that waited for the last answer), up to RATE_LIMIT_LEASE units, and shrinks
 *   to what was spent when a lease ends with units left. A subject with one request per lease period gets none.
 * - A lease ends after RATE_LIMIT_LEASE_MS, at the end of its window or quota period, or when its subject's limit
 *   changes (a plan); units left are given back to the window they were counted in (a refund script), and on
 *   shutdown. Units of a replica that dies are counted until its window passes.
 * - Limits with a burst below max (GCRA spacing) and quota-only limits are never leased.
 * While one lease check of a subject is out, the subject's later requests on this replica wait for its answer
 * instead of asking Redis too. When that check asked for no units (a subject's first request) and was admitted,
 * the waiters are the demand: the first of them asks for a lease that size and the others wait for it. When Redis
 * refused a lease that was asked for (near the limit) or refused the request, they go to Redis together (one batch).
 */
import type { FastifyBaseLogger } from 'fastify'
import type { Decision, GuardedLimiter, UNAVAILABLE } from './rate-limit-limiter.js'
import type { RateLimitCheck, RateLimitRefund, Store } from './store/types.js'

type Outcome = Decision | null | typeof UNAVAILABLE

export interface LeaseOptions {
  /** most units one lease may hold (RATE_LIMIT_LEASE); 0 = leases off */
  maxUnits: number
  /** how long a lease's units may be spent (RATE_LIMIT_LEASE_MS) */
  ms: number
  /** most subjects tracked at once; beyond, new subjects are checked in Redis request by request */
  maxSubjects?: number
}

export interface LeaseStats {
  /** leases granted by the store */
  leases: number
  /** requests decided from a lease, without the store */
  leaseServed: number
  /** units given back unspent */
  leaseReturned: number
  /** units whose refund failed (the store was unreachable): they stay counted until their window passes */
  leaseReturnFailed: number
}

interface Waiter {
  check: RateLimitCheck
  localMax: number
  localBurst: number
  resolve: (r: Outcome) => void
  reject: (err: unknown) => void
}

/** One subject's lease on one route (keyed by the check's window key). */
interface Lease {
  /** RateLimitCheck.spec of the limit its units were counted for */
  spec: string | undefined
  /** units held, not yet spent */
  units: number
  /** what the window and the quota had left after the grant counted all its units (-1: no quota) */
  remaining: number
  quotaRemaining: number
  resetAt: number
  quotaResetAt: number
  /** the units may be spent until then (ms, Date.now()); also the end of the period the demand is measured over */
  expiresAt: number
  /** where the units were counted, for their refund */
  refund: RateLimitRefund | null
  /** units granted by the last answer, and spent from them */
  granted: number
  spent: number
  /** units of the requests that waited for the last answer */
  demand: number
  /** requests waiting for the lease check in flight; null when none is */
  waiters: Waiter[] | null
  lastUse: number
}

export class RateLimitLeases {
  readonly #limiter: GuardedLimiter
  readonly #store: Store
  readonly #log: FastifyBaseLogger
  readonly #max: number
  readonly #ms: number
  readonly #maxSubjects: number
  readonly #stats: LeaseStats
  readonly #leases = new Map<string, Lease>()
  #refunds: RateLimitRefund[] = []
  #flushing: Promise<void> | null = null
  #timer: NodeJS.Timeout | null = null
  #closed = false

  constructor (limiter: GuardedLimiter, store: Store, log: FastifyBaseLogger, opts: LeaseOptions, stats: LeaseStats) {
    this.#limiter = limiter
    this.#store = store
    this.#log = log
    this.#max = opts.maxUnits
    this.#ms = opts.ms
    this.#maxSubjects = opts.maxSubjects ?? 10_000
    this.#stats = stats
    this.#timer = setInterval(() => { this.#sweep(Date.now()) }, Math.max(10, Math.floor(this.#ms / 2)))
    this.#timer.unref()
  }

  /**
   * A decision from the units this replica holds for `key`, or null when it holds too few (the caller then calls
   * check()). Synchronous: no store, no promise.
   */
  take (key: string, cost: number, spec: string | undefined, now: number): Decision | null {
    const e = this.#leases.get(key)
    if (e === undefined || e.units < cost || now >= e.expiresAt || e.spec !== spec) return null
    e.units -= cost
    e.spent += cost
    e.lastUse = now
    this.#stats.leaseServed++
    const quota = e.quotaRemaining >= 0
    return {
      allowed: true,
      // the units still held are not spent: from this replica's view they are still there
      remaining: e.remaining + e.units,
      resetMs: e.resetAt - now,
      retryAfterMs: 0,
      limitedBy: null,
      quotaRemaining: quota ? e.quotaRemaining + e.units : -1,
      quotaResetMs: quota ? e.quotaResetAt - now : 0,
    }
  }

  /**
   * The decision from the store, asking for a lease when this subject's demand calls for one. For checks of a
   * leasable limit (leasableLimit in src/store/types.ts): the store grants nothing to others anyway.
   */
  check (check: RateLimitCheck, localMax: number, localBurst: number, now: number): Promise<Outcome> {
    if (this.#closed || this.#limiter.stats.mode !== 'shared') {
      return this.#limiter.check(check, localMax, localBurst)
    }
    let e = this.#leases.get(check.key)
    if (e === undefined) {
      if (this.#leases.size >= this.#maxSubjects) return this.#limiter.check(check, localMax, localBurst)
      e = {
        spec: check.spec, units: 0, remaining: 0, quotaRemaining: -1, resetAt: 0, quotaResetAt: 0, expiresAt: now + this.#ms,
        refund: null, granted: 0, spent: 0, demand: 0, waiters: null, lastUse: now,
      }
      this.#leases.set(check.key, e)
      // the first request of a subject is checked exactly: its demand is not known yet
      return this.#send(e, check, localMax, localBurst, 0)
    }
    e.lastUse = now
    const lease = e
    if (lease.waiters !== null) {
      return new Promise<Outcome>((resolve, reject) => { (lease.waiters as Waiter[]).push({ check, localMax, localBurst, resolve, reject }) })
    }
    // units that can no longer be spent here (the lease ended, the limit changed, fewer than this request's cost)
    if (e.units > 0) this.#giveBack(e)
    const ended = now >= e.expiresAt || e.spec !== check.spec
    // a lease that ended asks for what the last one spent; one that ran out within its period, for twice as much,
    // or for what waited for the last answer when that was more
    const want = ended ? e.spent : Math.max(2 * e.granted, e.demand, check.cost)
    e.spec = check.spec
    return this.#send(e, check, localMax, localBurst, Math.min(this.#max, want))
  }

  #send (e: Lease, check: RateLimitCheck, localMax: number, localBurst: number, want: number): Promise<Outcome> {
    const waiters: Waiter[] = []
    e.waiters = waiters
    const asked: RateLimitCheck = want > 0 ? { ...check, lease: want } : check
    return this.#limiter.check(asked, localMax, localBurst).then(
      (r) => this.#answered(e, check, r, waiters, want),
      (err: unknown) => { this.#answered(e, check, null, waiters, want); throw err })
  }

  /** takes in the answer to a lease check, hands on its units to the requests that waited; the requester's decision */
  #answered (e: Lease, check: RateLimitCheck, r: Outcome, waiters: Waiter[], want: number): Outcome {
    if (e.waiters === waiters) e.waiters = null
    const now = Date.now()
    const admitted = r !== null && typeof r === 'object' && r.allowed && r.local !== true
    const granted = admitted && (r.leased ?? 0) > 0 ? r : null
    const leased = granted?.leased ?? 0
    e.granted = leased
    e.spent = 0
    let demand = 0
    for (const w of waiters) demand += w.check.cost
    e.demand = demand
    if (granted === null) {
      e.expiresAt = now + this.#ms
      if (admitted && want === 0) {
        // no units were asked for, and the store had room: the first waiter asks for what they all need, the
        // others wait for its answer (check() with this demand; once closed or in fallback it asks the store)
        for (const w of waiters) this.check(w.check, w.localMax, w.localBurst, now).then(w.resolve, w.reject)
        return r
      }
      // the store refused the lease or the request, or is not answering: the waiters are checked in the store
      // together (one batch), as they would have been
      for (const w of waiters) this.#limiter.check(w.check, w.localMax, w.localBurst).then(w.resolve, w.reject)
      return r
    }
    this.#stats.leases++
    const quota = check.quota ?? null
    e.units = leased
    e.remaining = granted.remaining
    e.quotaRemaining = quota === null ? -1 : granted.quotaRemaining ?? -1
    e.resetAt = now + granted.resetMs
    e.quotaResetAt = now + (granted.quotaResetMs ?? 0)
    // spent only within the window (and quota period) they were counted in
    e.expiresAt = Math.min(now + this.#ms, e.resetAt, quota === null ? Infinity : e.quotaResetAt)
    e.refund = {
      key: check.key,
      windowMs: check.windowMs,
      windowStart: granted.windowStart ?? 0,
      units: 0,
      quota: quota === null ? null : { key: quota.key, period: granted.quotaPeriod ?? 0 },
    }
    // the requester's place in the count: the units this replica now holds are not spent yet
    const mine: Decision = { ...granted, remaining: granted.remaining + leased, quotaRemaining: e.quotaRemaining < 0 ? granted.quotaRemaining : e.quotaRemaining + leased }
    for (const w of waiters) {
      const held = this.take(w.check.key, w.check.cost, w.check.spec, now)
      if (held !== null) w.resolve(held)
      else this.check(w.check, w.localMax, w.localBurst, now).then(w.resolve, w.reject)
    }
    return mine
  }

  /** the units `e` holds go back to the store (batched per event-loop turn) */
  #giveBack (e: Lease): void {
    const units = e.units
    e.units = 0
    if (units <= 0 || e.refund === null) return
    this.#refunds.push({ ...e.refund, units })
    this.#stats.leaseReturned += units
    this.#flushing ??= new Promise<void>((resolve) => { setImmediate(resolve) }).then(async () => await this.#flush())
  }

  async #flush (): Promise<void> {
    const refunds = this.#refunds
    this.#refunds = []
    this.#flushing = null
    if (refunds.length === 0) return
    try {
      await this.#store.rateLimitRefund(refunds)
    } catch (err) {
      let units = 0
      for (const r of refunds) units += r.units
      this.#stats.leaseReturnFailed += units
      this.#log.debug({ err: (err as Error).message, units }, 'rate limits: leased units could not be given back; they stay counted until their window passes')
    }
  }

  #sweep (now: number): void {
    for (const [key, e] of this.#leases) {
      if (e.waiters !== null) continue
      if (e.units > 0 && now >= e.expiresAt) this.#giveBack(e)
      if (e.units === 0 && now - e.lastUse > 2 * this.#ms) this.#leases.delete(key)
    }
  }

  /** Drop the leases of keys starting with `prefix`, unspent and not given back (their counts were deleted). */
  forget (prefix: string): void {
    for (const [key, e] of this.#leases) {
      if (!key.startsWith(prefix)) continue
      e.units = 0
      if (e.waiters === null) this.#leases.delete(key)
    }
  }

  /** Give every unspent unit back and stop leasing (checks then go to the store one by one). */
  async close (): Promise<void> {
    this.#closed = true
    if (this.#timer !== null) clearInterval(this.#timer)
    this.#timer = null
    for (const e of this.#leases.values()) this.#giveBack(e)
    await this.#flush()
  }
}
