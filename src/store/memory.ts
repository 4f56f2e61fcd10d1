/**
 * MemoryStore: the embedded default for a single replica (no REDIS_URL). Same contract and semantics as
 * RedisStore (test/store-contract.test.ts); expiry is lazy on read plus a periodic sweep.
 */
import { EventEmitter } from 'node:events'
import { decideRateLimit, refundQuota, refundWindow, type QuotaState, type RateLimitCheck, type RateLimitRefund, type RateLimitResult, type RateWindowState, type Store, type StoreHealth, type StoreState } from './types.js'

type Value = Buffer | Map<string, string> | Set<string> | RateState
/** rate-limit state (window or quota), tagged so that a key of another kind is never read as one */
interface RateState { rl: RateWindowState | QuotaState }
interface Entry { value: Value, expiresAt: number }

export class MemoryStore implements Store {
  readonly kind = 'memory' as const
  readonly state: StoreState = 'ready'
  private readonly data = new Map<string, Entry>()
  private readonly bus = new EventEmitter()
  private sweeper: NodeJS.Timeout | null = null

  constructor () { this.bus.setMaxListeners(0) }

  onStateChange (): void { /* always ready */ }

  async init (): Promise<void> {
    this.sweeper = setInterval(() => this.sweep(), 10_000)
    this.sweeper.unref()
  }

  async close (): Promise<void> {
    if (this.sweeper !== null) clearInterval(this.sweeper)
    this.bus.removeAllListeners()
  }

  async health (): Promise<StoreHealth> { return { ok: true, state: 'ready', latencyMs: 0, reason: null } }

  private sweep (): void {
    const now = Date.now()
    for (const [k, e] of this.data) if (e.expiresAt !== 0 && e.expiresAt <= now) this.data.delete(k)
  }

  private live (key: string): Entry | undefined {
    const e = this.data.get(key)
    if (e !== undefined && e.expiresAt !== 0 && e.expiresAt <= Date.now()) { this.data.delete(key); return undefined }
    return e
  }

  private expiry (ttlMs: number | undefined): number { return ttlMs !== undefined && ttlMs > 0 ? Date.now() + ttlMs : 0 }

  private typed<T extends Value> (key: string, check: (v: Value) => v is T): T | undefined {
    const e = this.live(key)
    if (e === undefined) return undefined
    if (!check(e.value)) throw new Error('WRONGTYPE Operation against a key holding the wrong kind of value')
    return e.value
  }

  async get (key: string): Promise<Buffer | null> {
    return this.typed(key, Buffer.isBuffer) ?? null
  }

  async set (key: string, value: Buffer | string, ttlMs = 0, opts?: { nx?: boolean }): Promise<boolean> {
    if (opts?.nx === true && this.live(key) !== undefined) return false
    this.data.set(key, { value: typeof value === 'string' ? Buffer.from(value) : Buffer.from(value), expiresAt: this.expiry(ttlMs) })
    return true
  }

  async delIfEquals (key: string, value: string): Promise<boolean> {
    const v = this.live(key)?.value
    if (Buffer.isBuffer(v) && v.toString() === value) { this.data.delete(key); return true }
    return false
  }

  async del (...keys: string[]): Promise<number> {
    let n = 0
    for (const k of keys) if (this.live(k) !== undefined) { this.data.delete(k); n++ }
    return n
  }

  async pttl (key: string): Promise<number> {
    const e = this.live(key)
    if (e === undefined) return -2
    return e.expiresAt === 0 ? -1 : e.expiresAt - Date.now()
  }

  async incr (key: string, by: number, ttlMs: number): Promise<number> {
    const e = this.live(key)
    if (e === undefined) {
      this.data.set(key, { value: Buffer.from(String(by)), expiresAt: this.expiry(ttlMs) })
      return by
    }
    if (!Buffer.isBuffer(e.value)) throw new Error('WRONGTYPE Operation against a key holding the wrong kind of value')
    const n = Number(e.value.toString())
    if (!Number.isInteger(n)) throw new Error('ERR value is not an integer or out of range')
    e.value = Buffer.from(String(n + by))
    if (e.expiresAt === 0 && ttlMs > 0) e.expiresAt = this.expiry(ttlMs)
    return n + by
  }

  async hset (key: string, fields: Record<string, string>, ttlMs?: number): Promise<void> {
    let h = this.typed(key, (v): v is Map<string, string> => v instanceof Map)
    if (h === undefined) { h = new Map(); this.data.set(key, { value: h, expiresAt: 0 }) }
    for (const [f, v] of Object.entries(fields)) h.set(f, v)
    if (ttlMs !== undefined && ttlMs > 0) (this.data.get(key) as Entry).expiresAt = this.expiry(ttlMs)
  }

  async hgetall (key: string): Promise<Record<string, string> | null> {
    const h = this.typed(key, (v): v is Map<string, string> => v instanceof Map)
    return h === undefined || h.size === 0 ? null : Object.fromEntries(h)
  }

  async hdel (key: string, ...fields: string[]): Promise<number> {
    const h = this.typed(key, (v): v is Map<string, string> => v instanceof Map)
    if (h === undefined) return 0
    let n = 0
    for (const f of fields) if (h.delete(f)) n++
    if (h.size === 0) this.data.delete(key)
    return n
  }

  async sadd (key: string, members: string[], ttlMs?: number): Promise<void> {
    let s = this.typed(key, (v): v is Set<string> => v instanceof Set)
    if (s === undefined) { s = new Set(); this.data.set(key, { value: s, expiresAt: 0 }) }
    for (const m of members) s.add(m)
    if (ttlMs !== undefined && ttlMs > 0) (this.data.get(key) as Entry).expiresAt = this.expiry(ttlMs)
  }

  async smembers (key: string): Promise<string[]> {
    return [...(this.typed(key, (v): v is Set<string> => v instanceof Set) ?? [])]
  }

  async srem (key: string, ...members: string[]): Promise<number> {
    const s = this.typed(key, (v): v is Set<string> => v instanceof Set)
    if (s === undefined) return 0
    let n = 0
    for (const m of members) if (s.delete(m)) n++
    if (s.size === 0) this.data.delete(key)
    return n
  }

  async * scan (prefix: string, batch = 500): AsyncIterable<string[]> {
    let out: string[] = []
    for (const k of [...this.data.keys()]) {
      if (!k.startsWith(prefix) || this.live(k) === undefined) continue
      out.push(k)
      if (out.length >= batch) { yield out; out = [] }
    }
    if (out.length > 0) yield out
  }

  async rateLimit (check: RateLimitCheck): Promise<RateLimitResult> {
    // synchronous from read to write: atomic within this process, like the script is in Redis
    const now = Date.now()
    const q = check.quota ?? null
    const d = decideRateLimit(now, check,
      check.windowMs > 0 ? this.rateState(check.key, now) as RateWindowState | null : null,
      q !== null ? this.rateState(q.key, now) as QuotaState | null : null)
    if (d.window !== null) this.data.set(check.key, { value: { rl: d.window }, expiresAt: now + check.windowMs * 2 })
    if (d.quota !== null && q !== null) this.data.set(q.key, { value: { rl: d.quota }, expiresAt: d.quotaExpiresAt })
    return d.result
  }

  async rateLimitRefund (refunds: RateLimitRefund[]): Promise<void> {
    const now = Date.now()
    for (const r of refunds) {
      // the entry (and its expiry) stays; only its state changes
      const w = refundWindow(this.rateState(r.key, now) as RateWindowState | null, r)
      if (w !== null) (this.data.get(r.key) as Entry).value = { rl: w }
      if (r.quota === null) continue
      const q = refundQuota(this.rateState(r.quota.key, now) as QuotaState | null, r)
      if (q !== null) (this.data.get(r.quota.key) as Entry).value = { rl: q }
    }
  }

  /** a rate-limit key's state (window or quota), null when absent or expired */
  private rateState (key: string, now: number): RateWindowState | QuotaState | null {
    const e = this.data.get(key)
    if (e === undefined || (e.expiresAt !== 0 && e.expiresAt <= now)) return null
    return typeof e.value === 'object' && 'rl' in e.value ? e.value.rl : null
  }

  async publish (channel: string, message: string): Promise<void> {
    // asynchronous like Redis delivery, so publishers never run subscribers on their own stack
    setImmediate(() => this.bus.emit(channel, message))
  }

  async subscribe (channel: string, listener: (message: string) => void): Promise<() => Promise<void>> {
    this.bus.on(channel, listener)
    return async () => { this.bus.off(channel, listener) }
  }
}
