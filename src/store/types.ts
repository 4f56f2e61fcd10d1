/**
 * The one store contract. RedisStore (shared by replicas) and MemoryStore (one replica, the embedded default)
 * implement it, and test/store-contract.test.ts runs the same suite against both.
 *
 * Keys are given without the namespace; the store adds its prefix (REDIS_PREFIX, default "gw:"). A key that one
 * script touches together with others carries a hash tag (`{...}`) so that Redis Cluster keeps them in one slot.
 * Every call fails fast (a rejected promise within the command timeout) when the store is down: callers decide
 * their fallback. Nothing here waits for a reconnect.
 */
export type StoreState = 'ready' | 'connecting' | 'down'

export interface RateLimitResult {
  allowed: boolean
  /** requests (of cost 1) still allowed right now by the window (and burst); -1 when the check has no window */
  remaining: number
  /** ms until the current window ends (its count then starts to decay); 0 when the check has no window */
  resetMs: number
  /** ms to wait before a request of this cost can pass (0 when allowed) */
  retryAfterMs: number
  /** what refused the request; null when allowed */
  limitedBy?: 'rate' | 'quota' | null
  /** quota units left in the period (after this request when allowed); -1 when the check has no quota */
  quotaRemaining?: number
  /** ms until the quota period ends; 0 when the check has no quota */
  quotaResetMs?: number
  /** units granted ahead of use on top of the request's own cost (RateLimitCheck.lease), already counted and
   *  already taken out of `remaining` and `quotaRemaining`; 0 or absent when none */
  leased?: number
  /** with `leased`: the start of the window they were counted in, and the quota period's index (for a refund) */
  windowStart?: number
  quotaPeriod?: number
}

/** A longer-period allowance counted in fixed periods aligned to the Unix epoch (so "1d" resets at 00:00 UTC). */
export interface RateLimitQuota {
  /** a key in the same hash-tag slot as the check's key (one script touches both) */
  key: string
  max: number
  periodMs: number
}

export interface RateLimitCheck {
  key: string
  /** requests allowed per window */
  max: number
  /** the sliding window; 0 = no window (a quota-only check) */
  windowMs: number
  cost: number
  /** most requests admitted back to back (default max); below max the window's allowance is released at the
   *  steady rate max/windowMs (GCRA) instead of all at once */
  burst?: number
  quota?: RateLimitQuota | null
  /**
   * The same numbers as one string, `windowMs,max,cost,burst,quotaMax,quotaPeriodMs` (0,0 without a quota), which
   * is how RedisStore hands them to its script: a caller that checks the same limit again and again makes it once
   * (rateLimitSpec) instead of once per request. Must agree with the fields; a store may ignore it.
   */
  spec?: string
  /**
   * Units wanted ahead of use, on top of `cost` (a replica's lease, src/rate-limit-lease.ts). Granted only when
   * the request is allowed, the limit has no burst below max, and the window (and quota) have room to spare: at
   * most a LEASE_HEADROOM-th of what would remain after the request. Granted units are counted like requests.
   */
  lease?: number
}

/** A lease's unused units, given back to the window (and quota) they were counted in. */
export interface RateLimitRefund {
  key: string
  windowMs: number
  /** RateLimitResult.windowStart of the grant */
  windowStart: number
  units: number
  quota: { key: string, period: number } | null
}

/**
 * A lease is at most this share of what the window (and quota) would have left after the request: near the limit
 * checks are exact again, and units held by one replica can only keep a small share of the allowance from others.
 */
export const LEASE_HEADROOM = 4

/** Whether a limit's units may be leased at all: a window, and no burst below max (GCRA spaces its requests). */
export function leasableLimit (windowMs: number, max: number, burst: number): boolean {
  return windowMs > 0 && burst >= max
}

/** RateLimitCheck.spec for these numbers. */
export function rateLimitSpec (c: Pick<RateLimitCheck, 'windowMs' | 'max' | 'cost' | 'burst'> & { quota?: Pick<RateLimitQuota, 'max' | 'periodMs'> | null }): string {
  const q = c.quota ?? null
  return `${c.windowMs},${c.max},${c.cost},${c.burst ?? c.max},${q === null ? '0,0' : `${q.max},${q.periodMs}`}`
}

/** A key's window: its start (ms), the counts of the current and of the previous window, GCRA arrival time (ms). */
export interface RateWindowState { s: number, c: number, p: number, t: number }
/** A quota key: the period index (floor(now / periodMs)) and the units used in it. */
export interface QuotaState { w: number, c: number }

export interface StoreHealth { ok: boolean, state: StoreState, latencyMs: number | null, reason: string | null }

export interface Store {
  readonly kind: 'memory' | 'redis'
  readonly state: StoreState
  /** called with the new state on every change (connect, disconnect, reconnect) */
  onStateChange (listener: (state: StoreState, reason: string | null) => void): void
  /** resolves once connected (or given up for now: the store then keeps reconnecting in the background) */
  init (): Promise<void>
  close (): Promise<void>
  health (): Promise<StoreHealth>

  get (key: string): Promise<Buffer | null>
  /** ttlMs 0 = no expiry; nx = only when absent. Resolves true when written. */
  set (key: string, value: Buffer | string, ttlMs?: number, opts?: { nx?: boolean }): Promise<boolean>
  /** delete only when the value is still `value` (a lock's owner releases it) */
  delIfEquals (key: string, value: string): Promise<boolean>
  del (...keys: string[]): Promise<number>
  /** remaining time to live in ms; -1 = no expiry, -2 = no key */
  pttl (key: string): Promise<number>
  /** atomically add `by` and return the new value; the expiry is set when the key is created */
  incr (key: string, by: number, ttlMs: number): Promise<number>

  hset (key: string, fields: Record<string, string>, ttlMs?: number): Promise<void>
  hgetall (key: string): Promise<Record<string, string> | null>
  hdel (key: string, ...fields: string[]): Promise<number>

  sadd (key: string, members: string[], ttlMs?: number): Promise<void>
  smembers (key: string): Promise<string[]>
  srem (key: string, ...members: string[]): Promise<number>

  /** all keys starting with `prefix` (without the namespace), in batches */
  scan (prefix: string, batch?: number): AsyncIterable<string[]>

  /** one atomic limiter check: a sliding window (previous window weighted by its remaining share + current) */
  rateLimit (check: RateLimitCheck): Promise<RateLimitResult>
  /** give leased units back (refundWindow, refundQuota); a window or period that has moved on since is left alone */
  rateLimitRefund (refunds: RateLimitRefund[]): Promise<void>

  publish (channel: string, message: string): Promise<void>
  /** resolves once subscribed; the returned function unsubscribes */
  subscribe (channel: string, listener: (message: string) => void): Promise<() => Promise<void>>
}

/**
 * The rate-limit decision, shared by both stores: RedisStore runs the same arithmetic in Lua (RATE_LIMIT in
 * redis.ts), MemoryStore runs this function, so both give the same answers (test/rate-limit-store.test.ts).
 *
 * - Window: a sliding-window counter. Windows of `windowMs` start at the key's first request (so a fresh client's
 *   first window is whole and its requests are counted exactly) and follow each other; the previous window's count
 *   is weighted by the share of it still inside the sliding window. No double burst at a window boundary: right
 *   after a full window, the previous count still weighs nearly fully.
 * - Burst: below max, GCRA (a virtual scheduling token bucket) also spaces requests at windowMs/max each, allowing
 *   `burst` back to back. Emission interval rounded up to whole ms, so all state stays integral.
 * - Quota: a count per fixed period aligned to the Unix epoch.
 * All arithmetic is on integers (scaled by windowMs where a weight is involved), so Lua and JS agree exactly.
 * Nothing is written for a refused request.
 */
export function decideRateLimit (now: number, check: RateLimitCheck, win: RateWindowState | null, quota: QuotaState | null): {
  result: RateLimitResult & { limitedBy: 'rate' | 'quota' | null, quotaRemaining: number, quotaResetMs: number, leased: number }
  /** state to write when allowed (null when refused or when the check has no window / no quota) */
  window: RateWindowState | null
  quota: QuotaState | null
  /** absolute ms at which the quota key expires (the end of its period) */
  quotaExpiresAt: number
} {
  const { windowMs: w, max, cost } = check
  const burst = check.burst ?? max
  let ok = true
  let rate = true
  let remaining = -1
  let remainingIfAllowed = -1
  let resetMs = 0
  let retry = 0
  let next: RateWindowState | null = null
  if (w > 0) {
    let s = now; let c = 0; let p = 0; let t = 0
    if (win !== null) {
      s = win.s; c = win.c; p = win.p; t = win.t
      if (now >= s + w) {
        const n = Math.floor((now - s) / w)
        p = n === 1 ? c : 0
        c = 0
        s = s + n * w
      }
    }
    const into = now - s
    resetMs = w - into
    // the allowance left, times w: max*w - (p weighted by the share of the previous window still covered) - c*w
    const left = max * w - p * (w - into) - c * w
    remaining = Math.max(0, Math.floor(left / w))
    remainingIfAllowed = Math.floor((left - cost * w) / w)
    if (left < cost * w) {
      rate = false
      if (c + cost > max) {
        // not in this window: in the next one, once this window's count has decayed enough
        const x = max >= cost && c > 0 ? Math.max(0, Math.ceil(w * (c - max + cost) / c)) : w
        retry = w - into + x
      } else {
        retry = Math.max(1, Math.ceil(w * (p - max + c + cost) / p) - into)
      }
    }
    let nt = 0
    if (burst < max) {
      const T = Math.ceil(w / max)
      const tat = t > now ? t : now
      const gleft = now + burst * T - tat
      remaining = Math.min(remaining, Math.max(0, Math.floor(gleft / T)))
      remainingIfAllowed = Math.min(remainingIfAllowed, Math.floor((gleft - cost * T) / T))
      if (gleft < cost * T) {
        rate = false
        retry = Math.max(retry, cost * T - gleft)
      }
      nt = tat + cost * T
    }
    ok = rate
    next = { s, c: c + cost, p, t: nt }
  }
  let quotaRemaining = -1
  let quotaRemainingIfAllowed = -1
  let quotaResetMs = 0
  let quotaExpiresAt = 0
  let nextQuota: QuotaState | null = null
  let quotaOk = true
  const q = check.quota
  if (q != null) {
    const qw = Math.floor(now / q.periodMs)
    const qc = quota !== null && quota.w === qw ? quota.c : 0
    quotaExpiresAt = (qw + 1) * q.periodMs
    quotaResetMs = quotaExpiresAt - now
    quotaRemaining = Math.max(0, q.max - qc)
    quotaRemainingIfAllowed = q.max - qc - cost
    if (qc + cost > q.max) {
      quotaOk = false
      ok = false
      retry = Math.max(retry, quotaResetMs)
    }
    nextQuota = { w: qw, c: qc + cost }
  }
  let leased = 0
  const want = check.lease ?? 0
  if (ok && want > 0 && leasableLimit(w, max, burst)) {
    leased = Math.floor(remainingIfAllowed / LEASE_HEADROOM)
    if (q != null) leased = Math.min(leased, Math.floor(quotaRemainingIfAllowed / LEASE_HEADROOM))
    leased = Math.max(0, Math.min(leased, want))
    if (leased > 0) {
      remainingIfAllowed -= leased
      if (q != null) quotaRemainingIfAllowed -= leased
      if (next !== null) next.c += leased
      if (nextQuota !== null) nextQuota.c += leased
    }
  }
  return {
    result: {
      allowed: ok,
      remaining: ok ? remainingIfAllowed : remaining,
      resetMs,
      retryAfterMs: ok ? 0 : retry,
      limitedBy: ok ? null : quotaOk ? 'rate' : 'quota',
      quotaRemaining: ok ? quotaRemainingIfAllowed : quotaRemaining,
      quotaResetMs,
      leased,
      windowStart: next?.s ?? 0,
      quotaPeriod: nextQuota?.w ?? 0,
    },
    window: ok ? next : null,
    quota: ok ? nextQuota : null,
    quotaExpiresAt,
  }
}

/**
 * A refund's effect on a key's state (MemoryStore runs this, RedisStore the same in Lua): the units come off the
 * count of the window they were counted in, or off the previous window's count when the key has moved one window
 * on since; off the quota's count while it is still the same period. Never below zero; null = nothing to change.
 */
export function refundWindow (win: RateWindowState | null, r: RateLimitRefund): RateWindowState | null {
  if (win === null) return null
  if (win.s === r.windowStart) return { ...win, c: Math.max(0, win.c - r.units) }
  if (win.s === r.windowStart + r.windowMs) return { ...win, p: Math.max(0, win.p - r.units) }
  return null
}

export function refundQuota (quota: QuotaState | null, r: RateLimitRefund): QuotaState | null {
  if (quota === null || r.quota === null || quota.w !== r.quota.period) return null
  return { w: quota.w, c: Math.max(0, quota.c - r.units) }
}
