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
  /** requests (of cost 1) still allowed right now */
  remaining: number
  /** ms until the limit is fully available again */
  resetMs: number
  /** ms to wait before a request of this cost can pass (0 when allowed) */
  retryAfterMs: number
}

export interface RateLimitCheck {
  key: string
  /** requests allowed per window */
  max: number
  windowMs: number
  cost: number
}

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

  publish (channel: string, message: string): Promise<void>
  /** resolves once subscribed; the returned function unsubscribes */
  subscribe (channel: string, listener: (message: string) => void): Promise<() => Promise<void>>
}

/** The sliding-window decision, shared by both stores (the Lua script in redis.ts is the same arithmetic). */
export function slidingWindow (now: number, windowMs: number, max: number, cost: number, state: { w: number, c: number, p: number }): RateLimitResult & { w: number, c: number, p: number } {
  const cur = Math.floor(now / windowMs)
  let c = state.c
  let p = state.p
  if (state.w !== cur) { p = state.w === cur - 1 ? c : 0; c = 0 }
  const into = now - cur * windowMs
  const weight = 1 - into / windowMs
  const used = p * weight + c
  const resetMs = windowMs - into + (p > 0 || c > 0 ? windowMs : 0)
  if (used + cost <= max) {
    c += cost
    return { allowed: true, remaining: Math.max(0, Math.floor(max - used - cost)), resetMs, retryAfterMs: 0, w: cur, c, p }
  }
  let retryAfterMs: number
  if (c + cost > max) {
    // not before the next window, and then only once this window's count has decayed enough
    retryAfterMs = windowMs - into + (c > 0 ? Math.ceil(windowMs * Math.max(0, 1 - (max - cost) / c)) : 0)
  } else {
    retryAfterMs = Math.max(1, Math.ceil(windowMs * (1 - (max - cost - c) / p)) - into)
  }
  return { allowed: false, remaining: Math.max(0, Math.floor(max - used)), resetMs, retryAfterMs, w: cur, c, p }
}
