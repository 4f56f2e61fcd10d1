/**
 * RedisStore: ioredis, shared by every replica. Fails fast instead of queueing while Redis is away
 * (enableOfflineQueue off, a command timeout, one try per request: fastify-rate-limit#84), reconnects by itself,
 * and reports its state. Scripts are defined once (EVALSHA) and auto-pipelining batches the commands of one
 * event-loop turn into one write.
 */
import { EventEmitter } from 'node:events'
import { Redis, type RedisOptions } from 'ioredis'
import { LEASE_HEADROOM, rateLimitSpec, type RateLimitCheck, type RateLimitRefund, type RateLimitResult, type Store, type StoreHealth, type StoreState } from './types.js'
import { answeredWithin } from '../answered-within.js'
import { CheckBatcher, clusterSlot, groupBySlot } from '../rate-limit-batcher.js'

const INCR = `local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if tonumber(ARGV[2]) > 0 and redis.call('PTTL', KEYS[1]) == -1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return v`

const DEL_IF_EQUALS = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`

// The same arithmetic as decideRateLimit() in types.ts, for a batch of checks (see src/rate-limit-batcher.ts), each
// decided in turn so two checks of one key in a batch see each other. Redis's clock, so replicas agree on windows.
// KEYS: the batch's distinct keys. ARGV[1]: 9 comma-separated numbers per check: its window key's and its quota
// key's index in KEYS (the window key's again when it has no quota), the units wanted ahead of use (lease, 0 =
// none), windowMs, max, cost, burst, quota max (0 = none), quota period. One packed argument rather than 9 per
// check: ioredis spent about 1.5 µs per check turning a batch's arguments into a command. A key's state is read
// once per batch, kept here while the batch's checks are decided, and written once at the end. Returns 10
// integers per check: allowed, remaining, resetMs, retryAfterMs, limitedBy (0 none, 1 rate, 2 quota),
// quotaRemaining, quotaResetMs, units leased, the window's start and the quota's period (for a refund).
const RATE_LIMIT = `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = {}
for x in string.gmatch(ARGV[1], '[^,]+') do v[#v + 1] = tonumber(x) end
local out = {}
local rs = {}
local qs = {}
for a = 0, #v - 9, 9 do
  local ki = v[a + 1]; local qi = v[a + 2]; local want = v[a + 3]
  local w = v[a + 4]; local max = v[a + 5]; local cost = v[a + 6]
  local burst = v[a + 7]; local qmax = v[a + 8]; local qper = v[a + 9]
  local ok = true; local rate = true; local quotaOk = true
  local remaining = -1; local remainingIfAllowed = -1; local reset = 0; local retry = 0
  local s, c, p, tat, nt = now, 0, 0, 0, 0
  local st = nil
  if w > 0 then
    st = rs[ki]
    if st == nil then
      local h = redis.call('HMGET', KEYS[ki], 's', 'c', 'p', 't')
      if h[1] then
        st = { tonumber(h[1]), tonumber(h[2]) or 0, tonumber(h[3]) or 0, tonumber(h[4]) or 0, false, w }
      else
        st = { now, 0, 0, 0, false, w }
      end
      rs[ki] = st
    end
    s = st[1]; c = st[2]; p = st[3]; tat = st[4]
    if now >= s + w then
      local n = math.floor((now - s) / w)
      if n == 1 then p = c else p = 0 end
      c = 0; s = s + n * w
    end
    local into = now - s
    reset = w - into
    local left = max * w - p * (w - into) - c * w
    remaining = math.max(0, math.floor(left / w))
    remainingIfAllowed = math.floor((left - cost * w) / w)
    if left < cost * w then
      rate = false
      if c + cost > max then
        local x = w
        if max >= cost and c > 0 then x = math.max(0, math.ceil(w * (c - max + cost) / c)) end
        retry = w - into + x
      else
        retry = math.max(1, math.ceil(w * (p - max + c + cost) / p) - into)
      end
    end
    if burst < max then
      local T = math.ceil(w / max)
      local at = tat
      if now > at then at = now end
      local gleft = now + burst * T - at
      remaining = math.min(remaining, math.max(0, math.floor(gleft / T)))
      remainingIfAllowed = math.min(remainingIfAllowed, math.floor((gleft - cost * T) / T))
      if gleft < cost * T then
        rate = false
        retry = math.max(retry, cost * T - gleft)
      end
      nt = at + cost * T
    end
    ok = rate
  end
  local qrem = -1; local qremIfAllowed = -1; local qreset = 0; local qw = 0; local qc = 0
  local qt = nil
  if qmax > 0 then
    qw = math.floor(now / qper)
    qt = qs[qi]
    if qt == nil then
      local h = redis.call('HMGET', KEYS[qi], 'w', 'c')
      qt = { tonumber(h[1]), tonumber(h[2]) or 0, false, qper }
      qs[qi] = qt
    end
    if qt[1] == qw then qc = qt[2] end
    qreset = (qw + 1) * qper - now
    qrem = math.max(0, qmax - qc)
    qremIfAllowed = qmax - qc - cost
    if qc + cost > qmax then
      quotaOk = false; ok = false
      retry = math.max(retry, qreset)
    end
  end
  local by = 0
  if ok then
    local g = 0
    if want > 0 and w > 0 and burst >= max then
      g = math.floor(remainingIfAllowed / ${LEASE_HEADROOM})
      if qmax > 0 then g = math.min(g, math.floor(qremIfAllowed / ${LEASE_HEADROOM})) end
      g = math.max(0, math.min(g, want))
      remainingIfAllowed = remainingIfAllowed - g
      if qmax > 0 then qremIfAllowed = qremIfAllowed - g end
    end
    if st ~= nil then
      st[1] = s; st[2] = c + cost + g; st[3] = p; st[4] = nt; st[5] = true; st[6] = w
    end
    if qt ~= nil then
      qt[1] = qw; qt[2] = qc + cost + g; qt[3] = true; qt[4] = qper
    end
    out[#out + 1] = 1; out[#out + 1] = remainingIfAllowed; out[#out + 1] = reset; out[#out + 1] = 0
    out[#out + 1] = 0; out[#out + 1] = qremIfAllowed; out[#out + 1] = qreset
    out[#out + 1] = g; out[#out + 1] = s; out[#out + 1] = qw
  else
    if quotaOk then by = 1 else by = 2 end
    out[#out + 1] = 0; out[#out + 1] = remaining; out[#out + 1] = reset; out[#out + 1] = retry
    out[#out + 1] = by; out[#out + 1] = qrem; out[#out + 1] = qreset
    out[#out + 1] = 0; out[#out + 1] = 0; out[#out + 1] = 0
  end
end
for ki, st in pairs(rs) do
  if st[5] then
    redis.call('HSET', KEYS[ki], 's', st[1], 'c', st[2], 'p', st[3], 't', st[4])
    redis.call('PEXPIRE', KEYS[ki], st[6] * 2)
  end
end
for qi, qt in pairs(qs) do
  if qt[3] then
    redis.call('HSET', KEYS[qi], 'w', qt[1], 'c', qt[2])
    redis.call('PEXPIREAT', KEYS[qi], (qt[1] + 1) * qt[4])
  end
end
return out`

// Leased units given back (refundWindow/refundQuota in types.ts). KEYS: the refunds' window and quota keys.
// ARGV[1]: 6 numbers per refund: its window key's index in KEYS, its quota key's index (0 = none), windowMs, the
// window's start, units, the quota's period. HSET keeps each key's expiry.
const RATE_LIMIT_REFUND = `local v = {}
for x in string.gmatch(ARGV[1], '[^,]+') do v[#v + 1] = tonumber(x) end
for a = 0, #v - 6, 6 do
  local ki = v[a + 1]; local qi = v[a + 2]; local w = v[a + 3]; local s = v[a + 4]; local n = v[a + 5]
  local h = redis.call('HMGET', KEYS[ki], 's', 'c', 'p')
  if h[1] then
    local s0 = tonumber(h[1])
    if s0 == s then
      redis.call('HSET', KEYS[ki], 'c', math.max(0, (tonumber(h[2]) or 0) - n))
    elseif s0 == s + w then
      redis.call('HSET', KEYS[ki], 'p', math.max(0, (tonumber(h[3]) or 0) - n))
    end
  end
  if qi > 0 then
    local q = redis.call('HMGET', KEYS[qi], 'w', 'c')
    if q[1] and tonumber(q[1]) == v[a + 6] then
      redis.call('HSET', KEYS[qi], 'c', math.max(0, (tonumber(q[2]) or 0) - n))
    end
  end
end
return 0`

/** The distinct keys of one script call, namespaced, and each one's index in KEYS (1-based, as Lua counts). */
class KeyIndex {
  readonly keys: string[] = []
  readonly #index = new Map<string, number>()
  /** `name`: the key as stored (RedisStore.k) */
  constructor (private readonly name: (key: string) => string) {}
  of (key: string): number {
    let i = this.#index.get(key)
    if (i === undefined) { i = this.keys.push(this.name(key)); this.#index.set(key, i) }
    return i
  }
}

interface GwRedis extends Redis {
  gwIncr (key: string, by: number, ttlMs: number): Promise<number>
  gwDelIfEquals (key: string, value: string): Promise<number>
  gwRateLimit (numKeys: number, ...keysThenPacked: string[]): Promise<number[]>
  gwRateLimitRefund (numKeys: number, ...keysThenPacked: string[]): Promise<number>
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
  /** rate-limit checks of one event-loop turn, sent as one script call */
  private rateLimits: CheckBatcher<RateLimitCheck, RateLimitResult> | null = null
  /** the connection rate-limit checks travel on (see rateLimitClient) */
  private rateLimitConn: GwRedis | null = null
  private rateLimitConnecting: Promise<void> | null = null

  constructor (private readonly opts: RedisStoreOptions) {
    this.client = new Redis(opts.url, this.clientOptions()) as GwRedis
    this.client.defineCommand('gwIncr', { numberOfKeys: 1, lua: INCR })
    this.client.defineCommand('gwDelIfEquals', { numberOfKeys: 1, lua: DEL_IF_EQUALS })
    this.track(this.client, true)
  }

  private clientOptions (): RedisOptions {
    return {
      lazyConnect: true,
      enableOfflineQueue: false,
      enableAutoPipelining: true,
      maxRetriesPerRequest: 1,
      // no commandTimeout: every command of the main connection goes through answeredWithin() instead
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
    // A QUIT to a Redis that died a moment ago may never be answered (the subscriber has no command timeout):
    // wait for it briefly, then drop the connection.
    const quit = async (c: Redis): Promise<void> => {
      if (c.status === 'ready') await answeredWithin(c.quit(), 1000, 'QUIT timed out').catch(() => {})
      c.disconnect()
    }
    // the rate-limit connection has no command timeout: dropped at once rather than waiting for a QUIT to be answered
    this.rateLimitConn?.disconnect()
    await Promise.all([quit(this.client), this.subscriber === null ? undefined : quit(this.subscriber)])
  }

  async health (): Promise<StoreHealth> {
    if (this.client.status !== 'ready') return { ok: false, state: this.current, latencyMs: null, reason: this.lastError ?? `redis ${this.client.status}` }
    const t0 = performance.now()
    try {
      await this.within(this.client.ping())
      return { ok: true, state: 'ready', latencyMs: Math.round((performance.now() - t0) * 100) / 100, reason: null }
    } catch (err) {
      // the connection may still say ready for a moment after Redis went away: the failed probe is what counts
      return { ok: false, state: 'down', latencyMs: null, reason: (err as Error).message }
    }
  }

  private k (key: string): string { return this.opts.prefix + key }

  /** a Redis Cluster client: a script call may only touch keys of one slot */
  private get isCluster (): boolean { return (this.client as { isCluster?: boolean }).isCluster === true }

  /** a command of the main connection, bounded by REDIS_COMMAND_TIMEOUT (src/answered-within.ts) */
  private within<T> (p: Promise<T>): Promise<T> { return answeredWithin(p, this.opts.commandTimeoutMs, 'Command timed out') }

  async get (key: string): Promise<Buffer | null> { return await this.within(this.client.getBuffer(this.k(key))) }

  async set (key: string, value: Buffer | string, ttlMs = 0, opts?: { nx?: boolean }): Promise<boolean> {
    const k = this.k(key)
    let r: string | null
    if (ttlMs > 0 && opts?.nx === true) r = await this.within(this.client.set(k, value, 'PX', ttlMs, 'NX'))
    else if (ttlMs > 0) r = await this.within(this.client.set(k, value, 'PX', ttlMs))
    else if (opts?.nx === true) r = await this.within(this.client.set(k, value, 'NX'))
    else r = await this.within(this.client.set(k, value))
    return r === 'OK'
  }

  async delIfEquals (key: string, value: string): Promise<boolean> { return (await this.within(this.client.gwDelIfEquals(this.k(key), value))) === 1 }

  async del (...keys: string[]): Promise<number> {
    if (keys.length === 0) return 0
    // one DEL per key: on Cluster the keys may live in different slots
    const counts = await Promise.all(keys.map((key) => this.within(this.client.del(this.k(key)))))
    return counts.reduce((a, b) => a + b, 0)
  }

  async pttl (key: string): Promise<number> { return await this.within(this.client.pttl(this.k(key))) }

  async incr (key: string, by: number, ttlMs: number): Promise<number> { return Number(await this.within(this.client.gwIncr(this.k(key), by, ttlMs))) }

  async hset (key: string, fields: Record<string, string>, ttlMs?: number): Promise<void> {
    const k = this.k(key)
    if (ttlMs !== undefined && ttlMs > 0) await this.within(this.client.multi().hset(k, fields).pexpire(k, ttlMs).exec())
    else await this.within(this.client.hset(k, fields))
  }

  async hgetall (key: string): Promise<Record<string, string> | null> {
    const h = await this.within(this.client.hgetall(this.k(key)))
    return Object.keys(h).length === 0 ? null : h
  }

  async hdel (key: string, ...fields: string[]): Promise<number> {
    return fields.length === 0 ? 0 : await this.within(this.client.hdel(this.k(key), ...fields))
  }

  async sadd (key: string, members: string[], ttlMs?: number): Promise<void> {
    if (members.length === 0) return
    const k = this.k(key)
    if (ttlMs !== undefined && ttlMs > 0) await this.within(this.client.multi().sadd(k, ...members).pexpire(k, ttlMs).exec())
    else await this.within(this.client.sadd(k, ...members))
  }

  async smembers (key: string): Promise<string[]> { return await this.within(this.client.smembers(this.k(key))) }

  async srem (key: string, ...members: string[]): Promise<number> {
    return members.length === 0 ? 0 : await this.within(this.client.srem(this.k(key), ...members))
  }

  async * scan (prefix: string, batch = 500): AsyncIterable<string[]> {
    const match = this.k(prefix).replace(/[*?[\]\\]/g, '\\$&') + '*'
    const strip = this.opts.prefix.length
    let cursor = '0'
    do {
      const [next, keys] = await this.within(this.client.scan(cursor, 'MATCH', match, 'COUNT', batch))
      cursor = next
      if (keys.length > 0) yield keys.map((k) => k.slice(strip))
    } while (cursor !== '0')
  }

  rateLimit (check: RateLimitCheck): Promise<RateLimitResult> {
    if (this.closing) return Promise.reject(new Error('the store is closed'))
    this.rateLimits ??= new CheckBatcher<RateLimitCheck, RateLimitResult>({
      send: async (checks) => await this.rateLimitBatch(checks),
      // one call per slot on Cluster (the keys of a check share their hash tag); one call per turn otherwise
      slotOf: this.isCluster ? (c) => clusterSlot(c.key) : null,
      timeoutMs: this.opts.commandTimeoutMs,
    })
    // no async wrapper: the batcher's promise is the caller's (one promise per check on the hot path)
    return this.rateLimits.check(check)
  }

  /**
   * Rate-limit checks travel on a connection of their own, without ioredis's per-command timer: the batcher's guard
   * times them out instead (REDIS_COMMAND_TIMEOUT), after letting the event loop read what Redis has already
   * answered. A busy loop runs due timers before it reads sockets, so with ioredis's timer a reply that came in time
   * counts as late, and the gateway would fall back to local limits just because it was busy. Offline queue off as
   * on the main connection: while Redis is away a check fails at once.
   */
  private async rateLimitClient (): Promise<GwRedis> {
    let c = this.rateLimitConn
    if (c === null) {
      // checks are already batched (one EVALSHA per event-loop turn): ioredis's auto-pipelining would only wrap
      // each batch in a Pipeline object of its own
      c = this.client.duplicate({ commandTimeout: undefined, lazyConnect: true, enableAutoPipelining: false }) as GwRedis
      c.defineCommand('gwRateLimit', { lua: RATE_LIMIT })
      c.defineCommand('gwRateLimitRefund', { lua: RATE_LIMIT_REFUND })
      c.on('error', () => { /* the main connection reports the store's state */ })
      this.rateLimitConn = c
      this.rateLimitConnecting = c.connect().then(() => {}, () => {}).finally(() => { this.rateLimitConnecting = null })
    }
    if (this.rateLimitConnecting !== null) await this.rateLimitConnecting
    return c
  }

  private async rateLimitBatch (checks: RateLimitCheck[]): Promise<RateLimitResult[]> {
    const keys = new KeyIndex((key) => this.k(key))
    let packed = ''
    for (const c of checks) {
      const q = c.quota ?? null
      const ki = keys.of(c.key)
      packed += (packed === '' ? '' : ',') + ki + ',' + (q === null ? ki : keys.of(q.key)) + ',' + (c.lease ?? 0) + ',' + (c.spec ?? rateLimitSpec(c))
    }
    const r = await (await this.rateLimitClient()).gwRateLimit(keys.keys.length, ...keys.keys, packed)
    const out: RateLimitResult[] = []
    for (let i = 0; i + 9 < r.length; i += 10) {
      const by = r[i + 4]
      out.push({
        allowed: r[i] === 1,
        remaining: r[i + 1] as number,
        resetMs: r[i + 2] as number,
        retryAfterMs: r[i + 3] as number,
        limitedBy: by === 1 ? 'rate' : by === 2 ? 'quota' : null,
        quotaRemaining: r[i + 5] as number,
        quotaResetMs: r[i + 6] as number,
        leased: r[i + 7] as number,
        windowStart: r[i + 8] as number,
        quotaPeriod: r[i + 9] as number,
      })
    }
    return out
  }

  async rateLimitRefund (refunds: RateLimitRefund[]): Promise<void> {
    if (this.closing) throw new Error('the store is closed')
    if (refunds.length === 0) return
    const c = await this.rateLimitClient()
    // one call per Cluster slot (a refund's keys share their hash tag), one call otherwise
    const groups = this.isCluster ? groupBySlot(refunds, (r) => clusterSlot(r.key)) : [refunds]
    await Promise.all([...groups].map(async (group) => {
      const keys = new KeyIndex((key) => this.k(key))
      let packed = ''
      for (const r of group) {
        packed += (packed === '' ? '' : ',') + keys.of(r.key) + ',' + (r.quota === null ? 0 : keys.of(r.quota.key)) + ',' +
          r.windowMs + ',' + r.windowStart + ',' + r.units + ',' + (r.quota === null ? 0 : r.quota.period)
      }
      await this.within(c.gwRateLimitRefund(keys.keys.length, ...keys.keys, packed))
    }))
  }

  async publish (channel: string, message: string): Promise<void> { await this.within(this.client.publish(this.k(channel), message)) }

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
        if (this.subscriber?.status === 'ready') await answeredWithin(this.subscriber.unsubscribe(ch), 1000, 'UNSUBSCRIBE timed out').catch(() => {})
      }
    }
  }
}
