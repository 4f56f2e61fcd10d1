/**
 * gw-cache: the response cache shared by every replica, for routes that declare `cache` (GET and HEAD; HEAD is
 * answered from GET's entry). Entries live in the store (Redis: shared; in process without REDIS_URL) with a small
 * per-replica L1 in front (src/cache-l1.ts). Keys: src/cache-key.ts; HTTP rules: src/cache-http.ts; the stored
 * form: src/cache-entry.ts; purge: src/cache-purge.ts.
 *
 * Where it runs, per cached route (attached in onRoute; other routes pay nothing):
 * - lookup: at the start of the route's handler, wrapped around the proxy. That is after every onRequest and
 *   preHandler hook whatever order the plugins were loaded in (auth and rate limits count a hit like any other
 *   request), and it lets an upstream failure thrown by the proxy fall back to a stale entry (stale-if-error).
 * - store: the first onSend hook, so it sees the upstream's body and headers before compression (plugins/compress.ts)
 *   or any other onSend hook changes them. A buffered body (the proxy buffers up to 256 KiB) is stored as is; a
 *   streamed one is copied while it streams, up to the route's maxEntrySize, and stored when it ends.
 *
 * Stampede protection: concurrent misses for one key on one replica wait for the first one (in-process); across
 * replicas the first takes a short lock in the store (SET NX PX) and the others poll for its entry, at most
 * CACHE_LOCK_WAIT, then fetch themselves. An answer that may not be shared (private, Set-Cookie, an error) is
 * never handed to the waiters: they each go upstream.
 *
 * Redis unreachable: lookups and stores are skipped (X-Cache: BYPASS) without waiting, the L1 is dropped (it can
 * no longer hear purges), and caching resumes by itself when the store is back.
 */
import fp from 'fastify-plugin'
import { randomBytes } from 'node:crypto'
import { pipeline, Transform, type Readable, type TransformCallback } from 'node:stream'
import type { FastifyInstance, FastifyReply, FastifyRequest, RouteHandlerMethod, RouteOptions } from 'fastify'
import { VARS, type GatewayConfig } from '../src/config.js'
import type { CachePolicy, Declarations, RoutePolicy } from '../src/policy.js'
import type { Store } from '../src/store/types.js'
import { decodeStored, encodeEntry, encodeMarker, makeEntry, type CacheEntry, type Stored } from '../src/cache-entry.js'
import { CACHEABLE_STATUS, ERROR_STATUS, NOT_MODIFIED_HEADERS, freshness, notModified, parseCacheControl, parseVary, weakEtag } from '../src/cache-http.js'
import { digest, INVALIDATE_CHANNEL, KeyMemo, lockKeyOf, splitUrl, TAG, tagKeyOf } from '../src/cache-key.js'
import { L1Cache, ownBuffer } from '../src/cache-l1.js'
import { invalidates, parseInvalidation, purgeCache, type Invalidation, type PurgeSelector } from '../src/cache-purge.js'
import { GW_ERR_CACHE_ONLY_IF_CACHED, GW_ERR_STORE_UNAVAILABLE } from '../src/errors.js'
import { addVary, type GatewayCompression } from './compress.js'
import { addRouteHook } from '../src/route-hooks.js'
import { directWritable, markOnSend } from '../src/direct-reply.js'
import type { ProxyHandler } from './proxy.js'

export type CacheOutcome = 'HIT' | 'MISS' | 'STALE' | 'BYPASS'

/** what the request is doing with the cache */
const enum Phase {
  /** not looked up, not stored */
  Bypass,
  Lookup,
  /** gone upstream; the answer is stored if it may be */
  Fill,
  /** gone upstream; the answer is not stored (HEAD, or a fill that could not be coordinated) */
  Pass,
  /** answered from the cache */
  Served,
}

export interface CacheStats {
  hits: number
  misses: number
  stale: number
  bypasses: number
  stored: number
  l1: { enabled: boolean, entries: number, bytes: number, maxEntries: number, maxBytes: number }
}

export interface GatewayCache {
  /** deletes entries in the store and on every replica's L1 */
  purge (sel: PurgeSelector): Promise<{ purged: number }>
  stats (): CacheStats
}

declare module 'fastify' {
  interface FastifyInstance { gwCache: GatewayCache }
  interface FastifyRequest {
    /** the cache's state for this request; null on routes without a cache policy */
    gwCache: CacheState | null
  }
}

/** Never stored: hop-by-hop, computed per answer (Date, Age, Content-Length), or per client (Set-Cookie: never stored anyway). */
const NOT_STORED = new Set(['connection', 'keep-alive', 'proxy-authenticate', 'proxy-authorization', 'proxy-connection', 'te', 'trailer',
  'transfer-encoding', 'upgrade', 'date', 'age', 'x-cache', 'content-length', 'set-cookie'])
/** an internal header carrying the token of a background (stale-while-revalidate) refresh; never forwarded */
const REFRESH_HEADER = 'x-gw-cache-refresh'
/** not copied into the internal refresh request */
const REFRESH_DROP = new Set(['content-length', 'transfer-encoding', 'connection', 'keep-alive', 'expect', 'upgrade', 'te',
  'if-none-match', 'if-modified-since', 'if-match', 'if-unmodified-since', 'if-range', 'range', 'cache-control', 'pragma'])
const MAX_TAGS = 64
/** the role of the store hook for src/direct-reply.ts: a no-op on an answer served from the cache */
const CACHE_STORE_ROLE = 'cache-store'

interface RouteCache {
  readonly policy: CachePolicy
  /** route vary headers, lower-case */
  readonly vary: readonly string[]
  /** header names whose presence means "this request carries a credential" */
  readonly credentials: readonly string[]
  /** share entries between clients (no client in the key) */
  readonly shared: boolean
  /** longest any entry of the route lives in the store */
  readonly lifetimeMs: number
  readonly tags: readonly string[]
}

/** A fill in progress on this replica: the leading request's state, and the promise its followers wait on. */
class Fill {
  readonly promise: Promise<CacheEntry | null>
  resolve!: (entry: CacheEntry | null) => void
  /** armed when the first follower arrives: followers never wait longer than the lock lives */
  timer: NodeJS.Timeout | null = null
  constructor (readonly key: string, readonly leader: CacheState) {
    this.promise = new Promise((resolve) => { this.resolve = resolve })
  }
}

export class CacheState {
  phase = Phase.Lookup
  outcome: CacheOutcome = 'BYPASS'
  path = ''
  baseKey = ''
  /** the key looked up and stored under: the base key, or a variant of it once the upstream's Vary is known */
  key = ''
  varyNames: readonly string[] | null = null
  /** the request says not to serve a stored answer without going upstream (no-cache, max-age=0) */
  revalidate = false
  maxAge = -1
  minFresh = -1
  onlyIfCached = false
  ifNoneMatch: string | undefined = undefined
  ifModifiedSince: string | undefined = undefined
  /** a stale entry to serve if the upstream fails (stale-if-error) */
  stale: CacheEntry | null = null
  /** set when this request leads the in-process fill of its key */
  fill: Fill | null = null
  lock: { key: string, owner: string } | null = null
  /** reply headers set by the gateway before the upstream answered: not the upstream's, never stored */
  gatewayHeaders: ReadonlySet<string> | null = null
  settled = false
  constructor (readonly rt: RouteCache) {}
}

function setting<T> (config: GatewayConfig, name: string): T {
  const row = VARS.find((v) => v.name === name)
  if (row === undefined) throw new Error(`${name} has no row in VARS (src/config.ts)`)
  return row.parse(config.env[name] ?? row.default ?? '') as T
}

function headerText (v: string | string[] | number | undefined): string | undefined {
  if (v === undefined) return undefined
  return Array.isArray(v) ? v.join(', ') : String(v)
}

/** The content codings a client accepts (q > 0), sorted: what an upstream varying on Accept-Encoding depends on. */
function acceptedCodings (v: string | string[] | undefined): string {
  if (v === undefined) return ''
  const out = new Set<string>()
  for (const part of (Array.isArray(v) ? v.join(',') : v).toLowerCase().split(',')) {
    const semi = part.indexOf(';')
    const name = (semi === -1 ? part : part.slice(0, semi)).trim()
    if (name === '') continue
    if (semi !== -1 && /;\s*q\s*=\s*0(?:\.0*)?\s*(?:;|$)/.test(part.slice(semi))) continue
    out.add(name === 'x-gzip' ? 'gzip' : name)
  }
  return [...out].sort().join(',')
}

function ageOf (e: CacheEntry, now: number): number {
  return e.initialAge + Math.max(0, Math.floor((now - e.storedAt) / 1000))
}

function noop (): void {}

async function gwCache (app: FastifyInstance, opts: { config: GatewayConfig, declarations: Declarations }): Promise<void> {
  const { config, declarations } = opts
  const store: Store = app.store
  const gz: GatewayCompression = app.gwCompress
  const enabled = setting<boolean>(config, 'CACHE')
  const l1 = new L1Cache(setting<number>(config, 'CACHE_L1_MAX_ENTRIES'), setting<number>(config, 'CACHE_L1_MAX_BYTES'), setting<number>(config, 'CACHE_L1_TTL'))
  const lockTtlMs = setting<number>(config, 'CACHE_LOCK_TTL')
  const lockWaitMs = setting<number>(config, 'CACHE_LOCK_WAIT')
  const stats = { hits: 0, misses: 0, stale: 0, bypasses: 0, stored: 0 }
  const keys = new KeyMemo()

  // A tag set lives as long as the longest-lived entry any route can make, so that it never expires before one
  // of its members (a set's expiry is reset by every entry added to it).
  let tagTtlMs = 1000
  for (const r of declarations.routes) {
    if (r.cache !== null) tagTtlMs = Math.max(tagTtlMs, r.cache.ttlMs + Math.max(r.cache.staleWhileRevalidateMs, r.cache.staleIfErrorMs) + 1000)
  }

  /** fills in progress on this replica, by key */
  const inflight = new Map<string, Fill>()
  /** background refreshes: their token (sent in REFRESH_HEADER) -> the entry and the lock they fill */
  const refreshes = new Map<string, { key: string, varyNames: readonly string[], lock: { key: string, owner: string } }>()
  /** keys being refreshed in the background by this replica */
  const refreshing = new Set<string>()
  const replicaId = randomBytes(6).toString('base64url')
  let owners = 0
  let closing = false

  const nextOwner = (): string => `${replicaId}.${(owners++).toString(36)}`

  function dropL1 (inv: Invalidation): number {
    return l1.deleteWhere((key, stored) => invalidates(inv, key, stored))
  }

  // ---- keys ----------------------------------------------------------------------------------------------------

  function identity (request: FastifyRequest, rt: RouteCache): string {
    const client = request.client
    if (client !== null) return 'c:' + client.id
    // a credential the gateway did not check (no auth on the route): its holder is the client
    for (const name of rt.credentials) {
      const v = request.headers[name]
      if (v !== undefined) return 'k:' + digest(headerText(v) as string, 43)
    }
    return ''
  }

  function variantKey (st: CacheState, request: FastifyRequest, names: readonly string[]): string {
    let material = ''
    for (const name of names) {
      const v = request.headers[name]
      material += (name === 'accept-encoding' ? acceptedCodings(v) : v === undefined ? '\u0001' : headerText(v)) + '\n'
    }
    return st.baseKey + ':' + digest(material)
  }

  // ---- the request side ------------------------------------------------------------------------------------------

  function bypass (st: CacheState, reply: FastifyReply): void {
    st.phase = Phase.Bypass
    st.outcome = 'BYPASS'
    stats.bypasses++
    reply.header('x-cache', 'BYPASS')
  }

  /** Works out the request's keys and what it allows; no I/O. */
  function begin (request: FastifyRequest, reply: FastifyReply, rt: RouteCache): CacheState {
    const st = new CacheState(rt)
    request.gwCache = st
    const h = request.headers
    const token = h[REFRESH_HEADER]
    let refresh: { key: string, varyNames: readonly string[], lock: { key: string, owner: string } } | undefined
    if (token !== undefined) {
      delete request.raw.headers[REFRESH_HEADER]
      refresh = typeof token === 'string' ? refreshes.get(token) : undefined
      if (refresh !== undefined) refreshes.delete(token as string)
    }
    if (store.state !== 'ready' || h.range !== undefined || h['if-match'] !== undefined || h['if-unmodified-since'] !== undefined || h['if-range'] !== undefined) {
      if (refresh !== undefined) store.delIfEquals(refresh.lock.key, refresh.lock.owner).catch(noop)
      bypass(st, reply)
      return st
    }
    const cc = h['cache-control']
    if (cc !== undefined) {
      const c = parseCacheControl(cc)
      // RFC 9111 §5.2.1.5: nothing of this exchange may be stored
      if (c.noStore) { bypass(st, reply); return st }
      if (c.noCache || c.maxAge === 0) st.revalidate = true
      else {
        st.maxAge = c.maxAge
        st.minFresh = c.minFresh
      }
      st.onlyIfCached = c.onlyIfCached
    } else if (h.pragma !== undefined && /no-cache/i.test(headerText(h.pragma) as string)) {
      st.revalidate = true // RFC 9111 §5.4: Pragma: no-cache without Cache-Control
    }
    st.ifNoneMatch = headerText(h['if-none-match'])
    st.ifModifiedSince = headerText(h['if-modified-since'])
    const { path, query } = splitUrl(request.url)
    st.path = path
    let material = 'GET\n' + path + '\n' + query + '\n'
    for (const name of rt.vary) {
      const v = h[name]
      material += (v === undefined ? '\u0001' : headerText(v)) + '\n'
    }
    if (!rt.shared) material += identity(request, rt)
    st.baseKey = keys.baseKey(material, path, query)
    st.key = st.baseKey
    if (refresh !== undefined) {
      st.key = refresh.key
      st.varyNames = refresh.varyNames
      st.lock = refresh.lock
      st.revalidate = true
    }
    return st
  }

  /** The entry for the request's key in L1 (following a vary marker), or undefined. */
  function readL1 (st: CacheState, request: FastifyRequest, now: number): CacheEntry | undefined {
    if (!l1.enabled) return undefined
    let s: Stored | undefined = l1.get(st.baseKey, now)
    if (s === undefined) return undefined
    if (s.kind === 'vary') {
      st.varyNames = s.names
      st.key = variantKey(st, request, s.names)
      s = l1.get(st.key, now)
    }
    return s?.kind === 'response' ? s : undefined
  }

  /** what may go into L1 does not hold the socket read it came in (ownBuffer) */
  function ownedForL1 (buf: Buffer | null): Buffer | null {
    return buf === null || !l1.enabled ? buf : ownBuffer(buf)
  }

  async function readKey (key: string, now: number): Promise<Stored | null> {
    const buf = ownedForL1(await store.get(key))
    if (buf === null) return null
    const s = decodeStored(key, buf)
    if (s !== null) l1.set(s, now)
    return s
  }

  /** The entry for the request's key in the store (following a vary marker), or null. */
  async function readStore (st: CacheState, request: FastifyRequest, now: number): Promise<CacheEntry | null> {
    if (st.varyNames === null) {
      const s = await readKey(st.baseKey, now)
      if (s === null) return null
      if (s.kind === 'response') return s
      st.varyNames = s.names
      st.key = variantKey(st, request, s.names)
    }
    const s = await readKey(st.key, now)
    return s?.kind === 'response' ? s : null
  }

  function fresh (st: CacheState, e: CacheEntry, now: number): boolean {
    if (now >= e.freshUntil) return false
    if (st.maxAge >= 0 && ageOf(e, now) > st.maxAge) return false
    if (st.minFresh >= 0 && e.freshUntil - now < st.minFresh * 1000) return false
    return true
  }

  /** Whether another request's entry answers this request too (same key once the upstream's Vary is applied). */
  function answers (st: CacheState, request: FastifyRequest, e: CacheEntry): boolean {
    if (e.varyNames.length === 0) return e.key === st.baseKey
    return e.key === variantKey(st, request, e.varyNames)
  }

  // ---- answering from the cache --------------------------------------------------------------------------------

  function entryHeaders (reply: FastifyReply, e: CacheEntry, outcome: CacheOutcome, now: number, only: ReadonlySet<string> | null, rt: RouteCache): void {
    for (const [n, v] of e.headers) if (only === null || only.has(n)) reply.header(n, v)
    for (const name of rt.vary) addVary(reply, name)
    reply.header('age', String(ageOf(e, now)))
    reply.header('x-cache', outcome)
  }

  /**
   * A stored body as it is. Written straight to the socket when the route has no onSend hook besides ours (the
   * store hook does nothing for a served entry, compression was decided above): src/direct-reply.ts.
   */
  function sendStored (request: FastifyRequest, reply: FastifyReply, e: CacheEntry): FastifyReply {
    if (directWritable(request, reply, e.status, CACHE_STORE_ROLE)) {
      app.gwProxy.writeDirect(reply, e.status, e.body)
      return reply
    }
    return reply.send(e.body)
  }

  function serve (request: FastifyRequest, reply: FastifyReply, st: CacheState, e: CacheEntry, outcome: CacheOutcome, now: number): FastifyReply | Promise<FastifyReply> {
    st.phase = Phase.Served
    st.outcome = outcome
    if (outcome === 'HIT') stats.hits++
    else stats.stale++
    request.gwCompressDecided = true
    const compressible = request.method !== 'HEAD' && e.contentEncoding === null && !e.noTransform && gz.eligible(e.contentType, e.body.length)
    if (e.status === 200 && (st.ifNoneMatch !== undefined || st.ifModifiedSince !== undefined) && notModified(st.ifNoneMatch, st.ifModifiedSince, e.etag, e.lastModified)) {
      reply.code(304)
      entryHeaders(reply, e, outcome, now, NOT_MODIFIED_HEADERS, st.rt)
      if (compressible) {
        // the validator this client holds is the one it got: weak when its coding made us compress
        gz.varyOnEncoding(reply)
        if (e.etag !== null && gz.negotiate(request.headers['accept-encoding']) !== null) reply.header('etag', weakEtag(e.etag))
      }
      return reply.send()
    }
    reply.code(e.status)
    entryHeaders(reply, e, outcome, now, null, st.rt)
    if (!compressible) return sendStored(request, reply, e)
    gz.varyOnEncoding(reply)
    const coding = gz.negotiate(request.headers['accept-encoding'])
    if (coding === null) return sendStored(request, reply, e)
    gz.markEncoded(reply, coding)
    const memo = l1.variant(e, coding)
    if (memo !== undefined) return reply.header('content-length', memo.length).send(memo)
    const out = gz.encode(e.body, coding)
    if (Buffer.isBuffer(out)) {
      l1.addVariant(e, coding, out)
      return reply.header('content-length', out.length).send(out)
    }
    return out.then((buf) => {
      l1.addVariant(e, coding, buf)
      return reply.header('content-length', buf.length).send(buf)
    })
  }

  // ---- going upstream ------------------------------------------------------------------------------------------

  /** The request goes upstream: conditionals are answered here, so the upstream sends the whole response. */
  function goUpstream (st: CacheState, request: FastifyRequest, reply: FastifyReply, phase: Phase.Fill | Phase.Pass): void {
    st.phase = phase
    st.outcome = 'MISS'
    stats.misses++
    reply.header('x-cache', 'MISS')
    if (phase === Phase.Fill && request.method === 'GET') {
      if (st.ifNoneMatch !== undefined) delete request.raw.headers['if-none-match']
      if (st.ifModifiedSince !== undefined) delete request.raw.headers['if-modified-since']
    }
    st.gatewayHeaders = new Set(Object.keys(reply.getHeaders()))
  }

  /** Ends this request's part in the fill of its key: wakes local waiters, then releases the store lock. */
  function settle (st: CacheState, entry: CacheEntry | null, written?: Promise<unknown>): void {
    if (st.settled) return
    st.settled = true
    const fill = st.fill
    if (fill !== null) {
      if (fill.timer !== null) clearTimeout(fill.timer)
      if (inflight.get(fill.key) === fill) inflight.delete(fill.key)
      fill.resolve(entry)
    }
    const lock = st.lock
    if (lock !== null) {
      st.lock = null
      const release = (): void => { store.delIfEquals(lock.key, lock.owner).catch(noop) }
      // other replicas see the lock go only once the entry is readable
      if (written !== undefined) written.then(release, release)
      else release()
    }
  }

  function lead (st: CacheState): void {
    const fill = new Fill(st.key, st)
    inflight.set(st.key, fill)
    st.fill = fill
  }

  function follow (fill: Fill): Promise<CacheEntry | null> {
    if (fill.timer === null) {
      // whatever happens to the leading request (a client gone, an answer lost), its followers go on in time
      fill.timer = setTimeout(() => settle(fill.leader, null), lockTtlMs)
      fill.timer.unref()
    }
    return fill.promise
  }

  /** Polls the store for the entry another replica is filling; null when its lock goes without one, or on time-out. */
  async function awaitRemoteFill (st: CacheState, request: FastifyRequest, lockKey: string): Promise<CacheEntry | null> {
    const deadline = Date.now() + lockWaitMs
    let delay = 5
    while (!closing && store.state === 'ready') {
      const left = deadline - Date.now()
      if (left <= 0) return null
      await new Promise((resolve) => setTimeout(resolve, Math.min(delay, left)))
      delay = Math.min(delay * 2, 100)
      // the lock first: a lock found gone means the entry, if any, was written before (set, then release)
      const [ttl, buf] = await Promise.all([store.pttl(lockKey), store.get(st.key).then(ownedForL1)])
      const now = Date.now()
      if (buf !== null) {
        const s = decodeStored(st.key, buf)
        if (s !== null && s.kind === 'vary') {
          l1.set(s, now)
          st.varyNames = s.names
          st.key = variantKey(st, request, s.names)
          const v = await readKey(st.key, now)
          return v !== null && v.kind === 'response' && fresh(st, v, now) ? v : null
        }
        if (s !== null && s.kind === 'response' && fresh(st, s, now)) { l1.set(s, now); return s }
      }
      if (ttl === -2) return null
    }
    return null
  }

  /**
   * A miss: wait for a fill of the same key already running (on this replica, then on another), or become the one
   * that fills it. Resolves true when the reply was sent from the cache.
   */
  async function fill (st: CacheState, request: FastifyRequest, reply: FastifyReply): Promise<boolean> {
    const running = inflight.get(st.key)
    if (running !== undefined) {
      const e = await follow(running)
      const now = Date.now()
      if (e !== null && answers(st, request, e) && fresh(st, e, now)) { await serve(request, reply, st, e, 'HIT', now); return true }
      if (e !== null && e.varyNames.length > 0) {
        // the upstream varies: this request's variant may be there now
        st.varyNames = e.varyNames
        st.key = variantKey(st, request, e.varyNames)
        const mine = l1.get(st.key, now)
        if (mine?.kind === 'response' && fresh(st, mine, now)) { await serve(request, reply, st, mine, 'HIT', now); return true }
      }
      // the answer could not be shared (private, an error...): this request asks for its own
      goUpstream(st, request, reply, Phase.Fill)
      return false
    }
    lead(st)
    const lockKey = lockKeyOf(st.key)
    const owner = nextOwner()
    let locked: boolean
    try {
      locked = await store.set(lockKey, owner, lockTtlMs, { nx: true })
    } catch {
      // the store stopped answering: nothing can be coordinated or stored
      settle(st, null)
      bypass(st, reply)
      return false
    }
    if (locked) {
      st.lock = { key: lockKey, owner }
      goUpstream(st, request, reply, Phase.Fill)
      return false
    }
    let e: CacheEntry | null = null
    try { e = await awaitRemoteFill(st, request, lockKey) } catch { e = null }
    if (e !== null) {
      settle(st, e)
      await serve(request, reply, st, e, 'HIT', Date.now())
      return true
    }
    // the other replica's answer was not stored, or it took too long: fetch it here (still leading local waiters)
    goUpstream(st, request, reply, Phase.Fill)
    return false
  }

  /** Serve stale, and refresh the entry in the background: one refresh per key across replicas (the lock). */
  function refreshInBackground (request: FastifyRequest, e: CacheEntry): void {
    if (refreshing.has(e.key) || closing) return
    refreshing.add(e.key)
    const lockKey = lockKeyOf(e.key)
    const owner = nextOwner()
    const headers: Record<string, string | string[]> = {}
    for (const [name, v] of Object.entries(request.headers)) if (v !== undefined && !REFRESH_DROP.has(name)) headers[name] = v
    const url = request.url
    store.set(lockKey, owner, lockTtlMs, { nx: true }).then(async (locked) => {
      if (!locked || closing) return
      const token = randomBytes(18).toString('base64url')
      refreshes.set(token, { key: e.key, varyNames: e.varyNames, lock: { key: lockKey, owner } })
      headers[REFRESH_HEADER] = token
      try {
        // through the whole pipeline (auth, rewrite, proxy), so the refresh is the request a client would make
        await app.inject({ method: 'GET', url, headers })
      } finally {
        // a refresh that never reached the cache (refused before, or the app closing) still releases its lock
        if (refreshes.delete(token)) await store.delIfEquals(lockKey, owner).catch(noop)
      }
    }).catch((err: unknown) => { app.log.debug({ err }, 'cache: background refresh failed') })
      .finally(() => refreshing.delete(e.key))
  }

  /**
   * The route handler. Not async: a fresh L1 hit (the hot case) is answered without a promise; everything that may
   * wait (a store read, a fill, the upstream) goes on in lookupThenProxy.
   */
  function cacheThenProxy (rt: RouteCache, proxy: ProxyHandler): RouteHandlerMethod {
    return function cacheThenProxy (request: FastifyRequest, reply: FastifyReply) {
      const st = begin(request, reply, rt)
      const now = Date.now()
      if (st.phase !== Phase.Lookup || st.revalidate) return lookupThenProxy(st, request, reply, proxy, now, undefined)
      const e = readL1(st, request, now)
      if (e !== undefined && fresh(st, e, now)) {
        const sent = serve(request, reply, st, e, 'HIT', now)
        return sent === reply ? undefined : sent
      }
      return lookupThenProxy(st, request, reply, proxy, now, e)
    }
  }

  /** The rest of a lookup (l1Entry: what L1 held, not fresh enough; undefined when L1 had nothing), then the proxy. */
  async function lookupThenProxy (st: CacheState, request: FastifyRequest, reply: FastifyReply, proxy: ProxyHandler, now: number, l1Entry: CacheEntry | undefined): Promise<FastifyReply> {
    if (st.phase === Phase.Lookup) {
      if (st.revalidate) {
        // RFC 9111 §5.2.1.7: a stored answer that must be revalidated cannot satisfy only-if-cached
        if (st.onlyIfCached && st.lock === null) throw new GW_ERR_CACHE_ONLY_IF_CACHED()
        goUpstream(st, request, reply, request.method === 'HEAD' ? Phase.Pass : Phase.Fill)
      } else {
        let e: CacheEntry | null | undefined = l1Entry
        if (e === undefined) {
          try { e = await readStore(st, request, now) } catch { e = null; bypass(st, reply) }
        }
        if (st.phase === Phase.Lookup) {
          if (e !== null && fresh(st, e, now)) return await serve(request, reply, st, e, 'HIT', now)
          if (e !== null && now < e.staleWhileRevalidateUntil && st.maxAge < 0 && st.minFresh < 0) {
            refreshInBackground(request, e)
            return await serve(request, reply, st, e, 'STALE', now)
          }
          if (e !== null && now < e.staleIfErrorUntil) st.stale = e
          if (st.onlyIfCached) throw new GW_ERR_CACHE_ONLY_IF_CACHED()
          if (request.method === 'HEAD') goUpstream(st, request, reply, Phase.Pass)
          else if (await fill(st, request, reply)) return reply
        }
      }
    }
    try {
      await proxy.forward(request, reply)
      return reply
    } catch (err) {
      const served = staleOnError(request, reply, st, err)
      if (served !== null) return await served
      settle(st, null)
      if (st.phase === Phase.Fill) st.phase = Phase.Pass
      throw err
    }
  }

  /** stale-if-error for a failure thrown by the proxy (unreachable, timed out, no healthy target) */
  function staleOnError (request: FastifyRequest, reply: FastifyReply, st: CacheState, err: unknown): FastifyReply | Promise<FastifyReply> | null {
    const e = st.stale
    const status = (err as { statusCode?: number }).statusCode ?? 500
    if (e === null || status < 500 || reply.sent || st.phase !== Phase.Fill) return null
    const now = Date.now()
    if (now >= e.staleIfErrorUntil) return null
    settle(st, null)
    resetReply(reply, st)
    request.log.warn({ err, code: (err as { code?: string }).code }, 'cache: upstream failed, serving a stale response (stale-if-error)')
    return serve(request, reply, st, e, 'STALE', now)
  }

  /** Removes what the upstream's answer put on the reply, keeping the gateway's own headers. */
  function resetReply (reply: FastifyReply, st: CacheState): void {
    const keep = st.gatewayHeaders
    for (const name of Object.keys(reply.getHeaders())) if (keep === null || !keep.has(name)) reply.removeHeader(name)
  }

  // ---- the response side: storing ----------------------------------------------------------------------------

  interface Storable { freshMs: number, initialAge: number, swrMs: number, sieMs: number, varyNames: string[], tags: string[], headers: Array<[string, string]> }

  /** What to store of this answer, or null when it must not be stored (RFC 9111 §3). */
  function storable (st: CacheState, request: FastifyRequest, reply: FastifyReply, now: number, tagValue: string | string[] | undefined): Storable | null {
    if (request.method !== 'GET' || !CACHEABLE_STATUS.has(reply.statusCode) || reply.hasHeader('set-cookie')) return null
    const rt = st.rt
    const cc = parseCacheControl(reply.getHeader('cache-control') as string | string[] | undefined)
    if (cc.noStore || cc.private || cc.noCache) return null
    const vary = parseVary(reply.getHeader('vary') as string | string[] | undefined)
    if (vary === '*') return null
    const varyNames = vary.filter((n) => !rt.vary.includes(n))
    // an encoded body is only for clients that accept its coding, whatever the upstream's Vary says
    const ce = reply.getHeader('content-encoding')
    if (ce !== undefined && String(ce).trim().toLowerCase() !== 'identity' && !varyNames.includes('accept-encoding') && !rt.vary.includes('accept-encoding')) varyNames.push('accept-encoding')
    const f = freshness(rt.policy, cc, { age: reply.getHeader('age') as string | undefined, expires: reply.getHeader('expires') as string | undefined }, now)
    if (f.freshMs <= 0) return null
    const tags = [...rt.tags]
    if (tagValue !== undefined) {
      for (const t of headerText(tagValue)?.split(/[,\s]+/) ?? []) if (TAG.test(t) && !tags.includes(t) && tags.length < MAX_TAGS) tags.push(t)
    }
    const headers: Array<[string, string]> = []
    const gateway = st.gatewayHeaders
    const all = reply.getHeaders()
    for (const name in all) {
      if (NOT_STORED.has(name) || (gateway !== null && gateway.has(name))) continue
      const v = all[name]
      if (v !== undefined) headers.push([name, headerText(v as string | string[]) as string])
    }
    return { freshMs: f.freshMs, initialAge: f.initialAge, swrMs: f.staleWhileRevalidateMs, sieMs: f.staleIfErrorMs, varyNames, tags, headers }
  }

  /** Writes an entry (and its vary marker and tags), then releases the fill. */
  function commit (st: CacheState, request: FastifyRequest, s: Storable, status: number, body: Buffer, now: number): CacheEntry {
    const key = s.varyNames.length === 0 ? st.baseKey : variantKey(st, request, s.varyNames)
    const freshUntil = now + s.freshMs
    const parts = {
      status,
      headers: s.headers,
      body,
      storedAt: now,
      freshUntil,
      staleWhileRevalidateUntil: freshUntil + s.swrMs,
      staleIfErrorUntil: freshUntil + s.sieMs,
      initialAge: s.initialAge,
      path: st.path,
      tags: s.tags,
      varyNames: s.varyNames,
    }
    const entry = makeEntry(key, parts)
    const ttl = Math.max(s.swrMs, s.sieMs) + s.freshMs
    l1.set(entry, now)
    const writes: Array<Promise<unknown>> = [store.set(key, encodeEntry(parts), ttl)]
    if (s.varyNames.length > 0) {
      const marker = encodeMarker(s.varyNames, st.path, s.tags)
      writes.push(store.set(st.baseKey, marker, st.rt.lifetimeMs))
      const decoded = decodeStored(st.baseKey, marker)
      if (decoded !== null) l1.set(decoded, now)
    }
    for (const tag of s.tags) writes.push(store.sadd(tagKeyOf(tag), s.varyNames.length > 0 ? [key, st.baseKey] : [key], tagTtlMs))
    const written = Promise.all(writes)
    written.then(() => { stats.stored++ }, (err: unknown) => { request.log.debug({ err }, 'cache: storing an entry failed') })
    settle(st, entry, written)
    return entry
  }

  /** RFC 9110 §13.2: the client's conditionals, answered here for a 200 (they were not sent upstream). */
  function conditional (st: CacheState, request: FastifyRequest, reply: FastifyReply, size: number): boolean {
    if (reply.statusCode !== 200 || (st.ifNoneMatch === undefined && st.ifModifiedSince === undefined)) return false
    const etag = reply.getHeader('etag')
    const lm = reply.getHeader('last-modified')
    if (!notModified(st.ifNoneMatch, st.ifModifiedSince, typeof etag === 'string' ? etag : null, typeof lm === 'string' ? lm : null)) return false
    const type = reply.getHeader('content-type')
    const ce = reply.getHeader('content-encoding')
    const cc = reply.getHeader('cache-control')
    if ((ce === undefined || String(ce).trim().toLowerCase() === 'identity') && !(cc !== undefined && /no-transform/i.test(String(cc))) &&
      gz.eligible(type === undefined ? null : String(type), size)) {
      // the validator this client holds is the one it got: weak when its coding made us compress
      gz.varyOnEncoding(reply)
      if (typeof etag === 'string' && gz.negotiate(request.headers['accept-encoding']) !== null) reply.header('etag', weakEtag(etag))
    }
    request.gwCompressDecided = true
    reply.code(304)
    const keep = st.gatewayHeaders
    for (const name of Object.keys(reply.getHeaders())) {
      if ((keep === null || !keep.has(name)) && !NOT_MODIFIED_HEADERS.has(name)) reply.removeHeader(name)
    }
    return true
  }

  function storeStream (st: CacheState, request: FastifyRequest, reply: FastifyReply, s: Storable, payload: Readable, size: number, done: (err: Error | null, value?: unknown) => void): void {
    const max = st.rt.policy.maxEntrySize
    const status = reply.statusCode
    const chunks: Buffer[] = []
    let seen = 0
    let over = false
    const copy = new Transform({
      transform (chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback) {
        if (!over) {
          seen += chunk.length
          if (seen > max) { over = true; chunks.length = 0; settle(st, null) } else chunks.push(chunk)
        }
        cb(null, chunk)
      },
      flush (cb: TransformCallback) {
        if (over) settle(st, null)
        else {
          const body = Buffer.concat(chunks, seen)
          if (status === 200 && !s.headers.some(([n]) => n === 'etag')) s.headers.push(['etag', `"${digest(body, 27)}"`])
          commit(st, request, s, status, body, Date.now())
        }
        cb()
      },
    })
    // an upstream that breaks off, or a client that leaves: nothing is stored
    pipeline(payload, copy, (err) => { if (err != null) settle(st, null) })
    if (conditional(st, request, reply, size)) {
      // the client gets its 304 now; the body still streams into the cache
      copy.resume()
      done(null, null)
      return
    }
    done(null, copy)
  }

  markOnSend(cacheStore, CACHE_STORE_ROLE)
  function cacheStore (request: FastifyRequest, reply: FastifyReply, payload: unknown, done: (err: Error | null, value?: unknown) => void): void {
    const st = request.gwCache
    if (st === null || st.phase !== Phase.Fill) {
      if (st !== null && st.phase === Phase.Pass) for (const name of st.rt.vary) addVary(reply, name)
      done(null, payload)
      return
    }
    const now = Date.now()
    const e = st.stale
    if (e !== null && ERROR_STATUS.has(reply.statusCode) && now < e.staleIfErrorUntil) {
      // stale-if-error for an upstream 5xx answer (RFC 5861 §4)
      if (payload !== null && typeof (payload as Readable).destroy === 'function') (payload as Readable).destroy()
      settle(st, null)
      resetReply(reply, st)
      st.phase = Phase.Served
      st.outcome = 'STALE'
      stats.stale++
      reply.code(e.status)
      entryHeaders(reply, e, 'STALE', now, null, st.rt)
      request.log.warn({ status: reply.statusCode }, 'cache: upstream answered an error, serving a stale response (stale-if-error)')
      done(null, request.method === 'HEAD' ? null : e.body)
      return
    }
    for (const name of st.rt.vary) addVary(reply, name)
    const tagHeader = st.rt.policy.tagHeader
    let tagValue: string | string[] | undefined
    if (tagHeader !== null) {
      tagValue = reply.getHeader(tagHeader) as string | string[] | undefined
      // like a CDN's Surrogate-Key: for the cache, not for clients
      if (tagValue !== undefined) reply.removeHeader(tagHeader)
    }
    const streamed = payload !== null && payload !== undefined && typeof (payload as Readable).pipe === 'function'
    const len = reply.getHeader('content-length')
    const size = !streamed ? (Buffer.isBuffer(payload) || typeof payload === 'string' ? Buffer.byteLength(payload) : -1) : len === undefined ? Infinity : Number(len)
    const s = payload === null || payload === undefined ? null : storable(st, request, reply, now, tagValue)
    // an unknown length (Infinity) is copied while it streams, and dropped once it passes maxEntrySize
    if (s === null || (size !== Infinity && size > st.rt.policy.maxEntrySize)) {
      settle(st, null)
      if (size >= 0 && conditional(st, request, reply, size)) {
        // not stored, not sent: the upstream's body is dropped
        if (streamed) (payload as Readable).destroy()
        done(null, null)
      } else done(null, payload)
      return
    }
    if (streamed) {
      storeStream(st, request, reply, s, payload as Readable, size, done)
      return
    }
    if (!Buffer.isBuffer(payload) && typeof payload !== 'string') { settle(st, null); done(null, payload); return }
    const body = typeof payload === 'string' ? Buffer.from(payload) : payload
    if (reply.statusCode === 200 && !reply.hasHeader('etag')) {
      // a validator of our own, so that clients can revalidate with If-None-Match (RFC 9110 §8.8.3)
      const etag = `"${digest(body, 27)}"`
      reply.header('etag', etag)
      s.headers.push(['etag', etag])
    }
    commit(st, request, s, reply.statusCode, body, now)
    done(null, conditional(st, request, reply, body.length) ? null : body)
  }

  // ---- wiring ------------------------------------------------------------------------------------------------------

  function compileRoute (policy: RoutePolicy, cache: CachePolicy): RouteCache {
    // a session cookie is a credential like the others: an answer to it is never handed to another cookie
    const credentials = ['authorization', 'cookie']
    const keyHeader = policy.auth?.apiKey?.header ?? 'x-api-key'
    if (!credentials.includes(keyHeader)) credentials.push(keyHeader)
    return Object.freeze({
      policy: cache,
      vary: cache.vary,
      credentials,
      // perClient wins over shared: the safer reading of a contradictory declaration
      shared: cache.shared && !cache.perClient,
      lifetimeMs: cache.ttlMs + Math.max(cache.staleWhileRevalidateMs, cache.staleIfErrorMs),
      tags: cache.tags.filter((t) => TAG.test(t)),
    })
  }

  app.decorateRequest('gwCache', null)
  app.decorate('gwCache', {
    async purge (sel: PurgeSelector): Promise<{ purged: number }> {
      const r = await purgeCache(store, sel)
      dropL1(r.invalidation)
      return { purged: r.purged }
    },
    stats (): CacheStats {
      return { ...stats, l1: { enabled: l1.enabled, entries: l1.entries, bytes: l1.bytes, maxEntries: l1.maxEntries, maxBytes: l1.maxBytes } }
    },
  })

  app.adminRoute({
    method: 'DELETE',
    url: '/cache',
    schema: {
      body: {
        type: 'object',
        properties: {
          key: { type: 'string', minLength: 1, maxLength: 8192, description: 'a URL path with its query (every client\'s and variant\'s entry), or a cache key "cache:e:..."' },
          prefix: { type: 'string', minLength: 1, maxLength: 8192, description: 'a path prefix' },
          tag: { type: 'string', minLength: 1, maxLength: 128 },
        },
        additionalProperties: false,
        minProperties: 1,
        maxProperties: 1,
      },
    },
    handler: async function purgeCacheRoute (request) {
      if (store.state !== 'ready') throw new GW_ERR_STORE_UNAVAILABLE()
      let r
      try {
        r = await purgeCache(store, request.body as PurgeSelector)
      } catch (err) {
        if ((err as { code?: string }).code?.startsWith('GW_ERR_') === true) throw err
        throw Object.assign(new GW_ERR_STORE_UNAVAILABLE(), { cause: err })
      }
      dropL1(r.invalidation)
      return { purged: r.purged }
    },
  })
  app.adminRoute({
    method: 'GET',
    url: '/cache',
    handler: async function cacheStats () { return { enabled, store: store.state, ...app.gwCache.stats() } },
  })

  if (!enabled) return

  const unsubscribe = await store.subscribe(INVALIDATE_CHANNEL, function invalidate (message) {
    const inv = parseInvalidation(message)
    if (inv !== null) dropL1(inv)
  })
  // While the store is away this replica cannot hear purges, and it bypasses the cache anyway: what its L1 holds
  // may be outdated when the store comes back.
  store.onStateChange(function dropL1OnStoreChange () { l1.clear() })
  app.addHook('onClose', function closeCache (_app, done) {
    closing = true
    for (const f of inflight.values()) f.resolve(null)
    inflight.clear()
    l1.clear()
    // not awaited: with Redis away an unsubscribe waits for a reconnect that may never come; closing the store
    // drops the subscription anyway
    unsubscribe().catch(noop)
    done()
  })

  app.addHook('onRoute', function attachCache (route: RouteOptions) {
    const policy = route.config?.gw
    const cache = policy?.cache
    if (policy === undefined || cache === null || cache === undefined || policy.websocket) return
    const proxy = route.handler as Partial<ProxyHandler>
    if (typeof proxy.forward !== 'function') throw new Error(`${policy.file} ${policy.id}: a cached route's handler must be the gateway's proxy (app.gwProxy.handlerFor)`)
    const rt = compileRoute(policy, cache)
    route.handler = cacheThenProxy(rt, proxy as ProxyHandler)
    // first of the onSend hooks: the upstream's answer before compression or anything else changes it
    addRouteHook(route, 'onSend', cacheStore, 'first')
  })
}

export default fp(gwCache, { name: 'gw-cache', fastify: '5.x', dependencies: ['gw-store', 'gw-proxy', 'gw-admin', 'gw-compress'] })
