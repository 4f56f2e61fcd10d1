/**
 * RedisStore: ioredis, shared by every replica. Fails fast instead of queueing while Redis is away
 * (enableOfflineQueue off, a command timeout, one try per request: fastify-rate-limit#84), reconnects by itself,
 * and reports its state. Scripts are defined once (EVALSHA) and auto-pipelining batches the commands of one
 * event-loop turn into one write.
 */
import { EventEmitter } from 'node:events'
import { Redis, type RedisOptions } from 'ioredis'
import type { RateLimitCheck, RateLimitResult, Store, StoreHealth, StoreState } from './types.js'

const INCR = `local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if tonumber(ARGV[2]) > 0 and redis.call('PTTL', KEYS[1]) == -1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return v`

const DEL_IF_EQUALS = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`

// The same arithmetic as slidingWindow() in types.ts; Redis's clock so replicas agree on the window.
const SLIDING_WINDOW = `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local win = tonumber(ARGV[1]); local max = tonumber(ARGV[2]); local cost = tonumber(ARGV[3])
local cur = math.floor(now / win)
local s = redis.call('HMGET', KEYS[1], 'w', 'c', 'p')
local w = tonumber(s[1]) or 0; local c = tonumber(s[2]) or 0; local p = tonumber(s[3]) or 0
if w ~= cur then if w == cur - 1 then p = c else p = 0 end; c = 0 end
local into = now - cur * win
local used = p * (1 - into / win) + c
local reset = win - into
if p > 0 or c > 0 then reset = reset + win end
if used + cost <= max then
  c = c + cost
  redis.call('HSET', KEYS[1], 'w', cur, 'c', c, 'p', p)
  redis.call('PEXPIRE', KEYS[1], win * 2)
  return {1, math.floor(max - used - cost), reset, 0}
end
local retry
if c + cost > max then
  retry = win - into
  if c > 0 then retry = retry + math.ceil(win * math.max(0, 1 - (max - cost) / c)) end
else
  retry = math.max(1, math.ceil(win * (1 - (max - cost - c) / p)) - into)
end
return {0, math.max(0, math.floor(max - used)), reset, retry}`

interface GwRedis extends Redis {
  gwIncr (key: string, by: number, ttlMs: number): Promise<number>
  gwDelIfEquals (key: string, value: string): Promise<number>
  gwSlidingWindow (key: string, windowMs: number, max: number, cost: number): Promise<[number, number, number, number]>
}

export interface RedisStoreOptions {
  url: string
  prefix: string
  commandTimeoutMs: number
  connectTimeoutMs?: number
}

export class RedisStore implements Store {
  readonly kind = 'redis' as const
  private current: StoreState = 'connecting'
  private lastError: string | null = null
  private readonly events = new EventEmitter()
  private readonly client: GwRedis
  private subscriber: Redis | null = null
  private readonly listeners = new Map<string, Set<(m: string) => void>>()
  private closing = false

  constructor (private readonly opts: RedisStoreOptions) {
    this.client = new Redis(opts.url, this.clientOptions()) as GwRedis
    this.client.defineCommand('gwIncr', { numberOfKeys: 1, lua: INCR })
    this.client.defineCommand('gwDelIfEquals', { numberOfKeys: 1, lua: DEL_IF_EQUALS })
    this.client.defineCommand('gwSlidingWindow', { numberOfKeys: 1, lua: SLIDING_WINDOW })
    this.track(this.client, true)
  }

  private clientOptions (): RedisOptions {
    return {
      lazyConnect: true,
      enableOfflineQueue: false,
      enableAutoPipelining: true,
      maxRetriesPerRequest: 1,
      commandTimeout: this.opts.commandTimeoutMs,
      connectTimeout: this.opts.connectTimeoutMs ?? 2000,
      // reconnect for ever, backing off to one try a second
      retryStrategy: (times) => Math.min(50 * times, 1000),
    }
  }

  private track (conn: Redis, main: boolean): void {
    conn.on('error', (err: Error) => { this.lastError = err.message })
    if (!main) return
    conn.on('ready', () => this.setState('ready', null))
    conn.on('close', () => { if (!this.closing) this.setState('down', this.lastError ?? 'connection closed') })
    conn.on('reconnecting', () => { if (this.current !== 'down') this.setState('connecting', this.lastError) })
  }

  private setState (state: StoreState, reason: string | null): void {
    if (state === this.current) return
    this.current = state
    this.events.emit('state', state, reason)
  }

  get state (): StoreState { return this.current }

  onStateChange (listener: (state: StoreState, reason: string | null) => void): void { this.events.on('state', listener) }

  async init (): Promise<void> {
    try { await this.client.connect() } catch (err) {
      // Not fatal: the gateway serves without Redis (fallbacks) and ioredis keeps reconnecting.
      this.lastError = (err as Error).message
      this.setState('down', this.lastError)
    }
  }

  async close (): Promise<void> {
    this.closing = true
    this.events.removeAllListeners()
    const quit = async (c: Redis): Promise<void> => {
      if (c.status === 'ready') await c.quit().catch(() => c.disconnect())
      else c.disconnect()
    }
    await Promise.all([quit(this.client), this.subscriber === null ? undefined : quit(this.subscriber)])
  }

  async health (): Promise<StoreHealth> {
    if (this.client.status !== 'ready') return { ok: false, state: this.current, latencyMs: null, reason: this.lastError ?? `redis ${this.client.status}` }
    const t0 = performance.now()
    try {
      await this.client.ping()
      return { ok: true, state: 'ready', latencyMs: Math.round((performance.now() - t0) * 100) / 100, reason: null }
    } catch (err) {
      return { ok: false, state: this.current, latencyMs: null, reason: (err as Error).message }
    }
  }

  private k (key: string): string { return this.opts.prefix + key }

  async get (key: string): Promise<Buffer | null> { return await this.client.getBuffer(this.k(key)) }

  async set (key: string, value: Buffer | string, ttlMs = 0, opts?: { nx?: boolean }): Promise<boolean> {
    const k = this.k(key)
    let r: string | null
    if (ttlMs > 0 && opts?.nx === true) r = await this.client.set(k, value, 'PX', ttlMs, 'NX')
    else if (ttlMs > 0) r = await this.client.set(k, value, 'PX', ttlMs)
    else if (opts?.nx === true) r = await this.client.set(k, value, 'NX')
    else r = await this.client.set(k, value)
    return r === 'OK'
  }

  async delIfEquals (key: string, value: string): Promise<boolean> { return (await this.client.gwDelIfEquals(this.k(key), value)) === 1 }

  async del (...keys: string[]): Promise<number> {
    if (keys.length === 0) return 0
    // one DEL per key: on Cluster the keys may live in different slots
    const counts = await Promise.all(keys.map((key) => this.client.del(this.k(key))))
    return counts.reduce((a, b) => a + b, 0)
  }

  async pttl (key: string): Promise<number> { return await this.client.pttl(this.k(key)) }

  async incr (key: string, by: number, ttlMs: number): Promise<number> { return Number(await this.client.gwIncr(this.k(key), by, ttlMs)) }

  async hset (key: string, fields: Record<string, string>, ttlMs?: number): Promise<void> {
    const k = this.k(key)
    if (ttlMs !== undefined && ttlMs > 0) await this.client.multi().hset(k, fields).pexpire(k, ttlMs).exec()
    else await this.client.hset(k, fields)
  }

  async hgetall (key: string): Promise<Record<string, string> | null> {
    const h = await this.client.hgetall(this.k(key))
    return Object.keys(h).length === 0 ? null : h
  }

  async hdel (key: string, ...fields: string[]): Promise<number> {
    return fields.length === 0 ? 0 : await this.client.hdel(this.k(key), ...fields)
  }

  async sadd (key: string, members: string[], ttlMs?: number): Promise<void> {
    if (members.length === 0) return
    const k = this.k(key)
    if (ttlMs !== undefined && ttlMs > 0) await this.client.multi().sadd(k, ...members).pexpire(k, ttlMs).exec()
    else await this.client.sadd(k, ...members)
  }

  async smembers (key: string): Promise<string[]> { return await this.client.smembers(this.k(key)) }

  async srem (key: string, ...members: string[]): Promise<number> {
    return members.length === 0 ? 0 : await this.client.srem(this.k(key), ...members)
  }

  async * scan (prefix: string, batch = 500): AsyncIterable<string[]> {
    const match = this.k(prefix).replace(/[*?[\]\\]/g, '\\$&') + '*'
    const strip = this.opts.prefix.length
    let cursor = '0'
    do {
      const [next, keys] = await this.client.scan(cursor, 'MATCH', match, 'COUNT', batch)
      cursor = next
      if (keys.length > 0) yield keys.map((k) => k.slice(strip))
    } while (cursor !== '0')
  }

  async rateLimit (check: RateLimitCheck): Promise<RateLimitResult> {
    const [allowed, remaining, resetMs, retryAfterMs] = await this.client.gwSlidingWindow(this.k(check.key), check.windowMs, check.max, check.cost)
    return { allowed: allowed === 1, remaining, resetMs, retryAfterMs }
  }

  async publish (channel: string, message: string): Promise<void> { await this.client.publish(this.k(channel), message) }

  async subscribe (channel: string, listener: (message: string) => void): Promise<() => Promise<void>> {
    const ch = this.k(channel)
    if (this.subscriber === null) {
      // A subscriber connection queues while offline so subscriptions are made once it connects, and
      // ioredis re-subscribes after every reconnect.
      this.subscriber = new Redis(this.opts.url, { ...this.clientOptions(), enableOfflineQueue: true, maxRetriesPerRequest: null, commandTimeout: undefined, enableAutoPipelining: false })
      this.track(this.subscriber, false)
      this.subscriber.on('message', (c: string, m: string) => { for (const l of this.listeners.get(c) ?? []) l(m) })
      // wait for the connection when Redis is there (so a publish right after this resolves is received),
      // but never longer than the connect timeout: while Redis is away, boot goes on and ioredis keeps trying
      const connected = this.subscriber.connect().catch(() => { /* keeps reconnecting; the main client reports state */ })
      let timer: NodeJS.Timeout | undefined
      await Promise.race([connected, new Promise((resolve) => { timer = setTimeout(resolve, this.opts.connectTimeoutMs ?? 2000) })])
      clearTimeout(timer)
    }
    let set = this.listeners.get(ch)
    if (set === undefined) {
      set = new Set()
      this.listeners.set(ch, set)
      const subscribed = this.subscriber.subscribe(ch)
      // While Redis is away the subscription is queued and made on connect; never hold the caller (boot) on it.
      if (this.subscriber.status === 'ready') await subscribed
      else subscribed.catch(() => { /* made again after reconnect */ })
    }
    set.add(listener)
    return async () => {
      const s = this.listeners.get(ch)
      if (s === undefined) return
      s.delete(listener)
      if (s.size === 0) {
        this.listeners.delete(ch)
        if (this.subscriber?.status === 'ready') await this.subscriber.unsubscribe(ch)
      }
    }
  }
}
