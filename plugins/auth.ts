/**
 * gw-auth: API keys and JWTs, enforced per route (policy.auth), plus the /admin/keys API.
 *
 * Only routes whose policy has `auth` get a hook (an onRequest hook added in onRoute); other routes pay nothing.
 * The hot path is synchronous and free of Redis: an API key is parsed (a malformed key never reaches the store),
 * found in a bounded in-process LRU, hashed (SHA-256) and compared in constant time (sameDigest); once a key has
 * matched, the cached record remembers it in memory and its next requests are compared with it, in constant time
 * too, without hashing again (the store still holds only hashes); a JWT is checked
 * by a fast-jwt verifier compiled at start (with its cache of verified tokens). The store is only read for a key
 * id not in the cache (one HGETALL, shared by concurrent requests; unknown ids are remembered briefly), and
 * "last used" times are written in batches. Revocations and rotations are published by whoever makes them
 * (any replica's admin API, the CLI), and every replica drops its cached copy on receipt.
 *
 * Failed attempts (bad keys, bad tokens) are counted per client IP across replicas (INCR in the store); over the
 * limit the IP is blocked on every replica (published), checked locally before any credential is looked at.
 *
 * When the store is down: cached keys keep working (also past API_KEY_CACHE_TTL), known-unknown ids get 401, and
 * an id the replica has never seen gets 503 GW_ERR_STORE_UNAVAILABLE with Retry-After: the gateway cannot tell
 * a valid key from a guess, and a 401 would tell a paying client its key is bad.
 */
import fp from 'fastify-plugin'
import { randomUUID } from 'node:crypto'
import { Type } from '@sinclair/typebox'
import type { FastifyInstance, FastifyReply, FastifyRequest, HookHandlerDoneFunction, onRequestHookHandler, RouteOptions } from 'fastify'
import { makeClient, type Client } from '../src/client.js'
import type { GatewayConfig } from '../src/config.js'
import { parseDuration, DURATION_HINT } from '../src/duration.js'
import {
  GW_ERR_AUTH_INSUFFICIENT_SCOPE, GW_ERR_AUTH_INVALID_KEY, GW_ERR_AUTH_INVALID_TOKEN, GW_ERR_AUTH_KEY_EXPIRED,
  GW_ERR_AUTH_KEY_REVOKED, GW_ERR_AUTH_REQUIRED, GW_ERR_AUTH_THROTTLED, GW_ERR_BAD_REQUEST, GW_ERR_KEY_NOT_FOUND,
  GW_ERR_ROUTE_DECLARATION, GW_ERR_STORE_UNAVAILABLE,
} from '../src/errors.js'
import { envValue, JwtAuthority, JwtRejected, jwtSettings, type JwtOutcome } from '../src/jwt.js'
import {
  CLIENT_ID, digestKey, digestOfHex, expiryOf, KEY_ID, KEY_PREFIX, keyIdAt, keyIdOf, KeyRepository, KEYS_CHANNEL, parseChange, PLAN, sameDigest, SCOPE, viewOf, type KeyRecord, type KeyStatus,
} from '../src/keys.js'
import type { Declarations, RoutePolicy } from '../src/policy.js'
import type { Store } from '../src/store/types.js'
import { addRouteHook } from '../src/route-hooks.js'

const BLOCK_CHANNEL = 'authfail:blocked'
const STORE_RETRY_AFTER_S = '5'
const REALM = 'api'

// ---- API keys: the in-process cache ----------------------------------------------------------------------------

interface CachedKey {
  readonly id: string
  /** digestKey() form */
  readonly hash: string
  readonly prevHash: string | null
  readonly prevUntil: number
  readonly expiresAt: number
  readonly revoked: boolean
  /** frozen and shared by every request made with this key */
  readonly client: Client
  fetchedAt: number
  /** read since the eviction sweep last passed it (see ApiKeyCache) */
  used: boolean
  /**
   * The key last found to match `hash` (the current secret), in this process's memory only and only while this
   * record is cached: its next requests are compared with it (in constant time) instead of hashing again.
   * Dropped with the entry on rotation, revocation or re-read; never logged, never written anywhere.
   */
  verified: string | null
}

/** Why a key was refused; `count`: 0 = not a guess, 1 = counted locally only, 2 = counted across replicas */
class KeyFailure { constructor (readonly kind: 'malformed' | 'invalid' | 'revoked' | 'expired' | 'unavailable', readonly count: 0 | 1 | 2) {} }
const MALFORMED = new KeyFailure('malformed', 1)
const INVALID = new KeyFailure('invalid', 2)
const REVOKED = new KeyFailure('revoked', 0)
const EXPIRED = new KeyFailure('expired', 0)
const UNAVAILABLE = new KeyFailure('unavailable', 0)

type KeyOutcome = Client | KeyFailure

/** The cached form of a record, or null when the record cannot name a client (a record edited by hand in the store). */
function toCached (r: KeyRecord, now: number): CachedKey | null {
  if (!CLIENT_ID.test(r.client)) return null
  return {
    id: r.id,
    hash: digestOfHex(r.hash),
    prevHash: r.prevHash === '' ? null : digestOfHex(r.prevHash),
    prevUntil: r.prevUntil,
    expiresAt: r.expiresAt,
    revoked: r.revokedAt !== 0,
    // what reaches upstreams in X-Client-* headers: printable ASCII only, as the admin API and the CLI make them
    client: makeClient({ id: r.client, keyId: r.id, scopes: r.scopes.filter((s) => SCOPE.test(s)), plan: r.plan !== null && PLAN.test(r.plan) ? r.plan : null, via: 'apiKey' }),
    fetchedAt: now,
    used: false,
    verified: null,
  }
}

/**
 * Bounded by API_KEY_CACHE_SIZE, evicting by "second chance" (CLOCK) rather than strict LRU: a hit only sets the
 * entry's `used` flag; when the cache is over its size, the sweep takes entries from the oldest end, moves a used
 * one to the newest end (clearing its flag) and evicts the first unused one. A strict LRU moves the entry on every
 * hit (Map delete + set), and V8 keeps each deleted slot in the key's hash chain until the table is rebuilt: one
 * hot key among 10,000 cached ones then costs about 28 µs per look-up (a microbenchmark, Node 20), against about
 * 10 ns for a flag.
 */
class ApiKeyCache {
  readonly #entries = new Map<string, CachedKey>()
  readonly #unknown = new Map<string, number>()
  /** look-ups in flight; an invalidation removes the id, so a look-up that started before it does not fill the cache */
  readonly #loading = new Map<string, Promise<CachedKey | null>>()
  /** key id -> last use (ms), written to the store in batches */
  readonly used = new Map<string, number>()

  readonly #repo: KeyRepository
  readonly #max: number
  readonly #ttlMs: number
  readonly #negativeTtlMs: number

  constructor (repo: KeyRepository, max: number, ttlMs: number, negativeTtlMs: number) {
    this.#repo = repo
    this.#max = max
    this.#ttlMs = ttlMs
    this.#negativeTtlMs = negativeTtlMs
  }

  invalidate (id: string): void {
    this.#loading.delete(id)
    this.#entries.delete(id)
    this.#unknown.delete(id)
  }

  /** after the store comes back: what was cached may have missed a message, so re-read it on next use */
  markStale (): void {
    this.#loading.clear()
    this.#unknown.clear()
    for (const e of this.#entries.values()) e.fetchedAt = 0
  }

  #remember (e: CachedKey): void {
    const entries = this.#entries
    entries.delete(e.id)
    entries.set(e.id, e)
    // every entry is passed at most twice (once to clear its flag): bounded
    while (entries.size > this.#max) {
      const oldest = entries.values().next().value as CachedKey
      entries.delete(oldest.id)
      // the entry just loaded is not evicted for having had no time to be used; with a size of 1 it goes
      if (oldest.used || (oldest === e && entries.size > 0)) {
        oldest.used = false
        entries.set(oldest.id, oldest)
      }
    }
  }

  #forget (id: string, now: number): void {
    this.#unknown.delete(id)
    this.#unknown.set(id, now + this.#negativeTtlMs)
    if (this.#unknown.size > this.#max) this.#unknown.delete(this.#unknown.keys().next().value as string)
  }

  /** one store read per id at a time; the result is cached unless an invalidation came in meanwhile */
  #load (id: string): Promise<CachedKey | null> {
    const inflight = this.#loading.get(id)
    if (inflight !== undefined) return inflight
    const p: Promise<CachedKey | null> = this.#repo.get(id).then((r) => {
      const now = Date.now()
      const e = r === null ? null : toCached(r, now)
      if (this.#loading.get(id) === p) {
        this.#loading.delete(id)
        if (e === null) { this.#entries.delete(id); this.#forget(id, now) } else this.#remember(e)
      }
      return e
    }, (err: unknown) => {
      if (this.#loading.get(id) === p) this.#loading.delete(id)
      throw err
    })
    this.#loading.set(id, p)
    return p
  }

  #refresh (e: CachedKey, now: number): void {
    if (this.#loading.has(e.id)) return
    // while the store is away the stale copy keeps serving; try again in a second
    this.#load(e.id).catch(() => { e.fetchedAt = now - this.#ttlMs + 1000 })
  }

  #check (e: CachedKey, key: string, now: number): KeyOutcome {
    // the key verified before, compared in constant time (sameDigest compares every character); else its hash
    const v = e.verified
    if (v === null || !sameDigest(key, v)) {
      const h = digestKey(key)
      if (sameDigest(h, e.hash)) e.verified = key
      // the secret is checked first: revoked or expired is only told to whoever holds the key. A key that is not
      // even well-formed is counted as malformed (this replica only), as when it misses the cache
      else if (e.prevHash === null || now >= e.prevUntil || !sameDigest(h, e.prevHash)) return keyIdOf(key) === null ? MALFORMED : INVALID
    }
    if (e.revoked) return REVOKED
    if (e.expiresAt !== 0 && now >= e.expiresAt) return EXPIRED
    this.used.set(e.id, now)
    return e.client
  }

  authenticate (key: string): KeyOutcome | Promise<KeyOutcome> {
    const now = Date.now()
    // a cached id first, without the format's regex: the key's hash decides (#check), and the format is checked
    // in full for a key that fails there or misses the cache
    const at = keyIdAt(key)
    const e = at === null ? undefined : this.#entries.get(at)
    if (e !== undefined) {
      e.used = true
      if (now - e.fetchedAt > this.#ttlMs) this.#refresh(e, now)
      return this.#check(e, key, now)
    }
    const id = keyIdOf(key)
    if (id === null) return MALFORMED
    const until = this.#unknown.get(id)
    if (until !== undefined) {
      if (until > now) return INVALID
      this.#unknown.delete(id)
    }
    return this.#load(id).then(
      (found) => found === null ? INVALID : this.#check(found, key, Date.now()),
      () => UNAVAILABLE,
    )
  }

  /** the pending "last used" times of this replica (admin views merge them) */
  lastUsed (id: string): number { return this.used.get(id) ?? 0 }

  async flush (): Promise<void> {
    if (this.used.size === 0) return
    const batch = new Map(this.used)
    this.used.clear()
    try { await this.#repo.touch(batch) } catch {
      // keep them for the next flush, unless newer ones came meanwhile
      for (const [id, at] of batch) if ((this.used.get(id) ?? 0) < at) this.used.set(id, at)
    }
  }
}

// ---- failed-attempt throttling -----------------------------------------------------------------------------------

class AuthThrottle {
  readonly #blocked = new Map<string, number>()
  readonly #local = new Map<string, { n: number, resetAt: number }>()

  readonly #store: Store
  readonly #limit: number
  readonly #windowMs: number
  readonly #blockMs: number

  constructor (store: Store, limit: number, windowMs: number, blockMs: number) {
    this.#store = store
    this.#limit = limit
    this.#windowMs = windowMs
    this.#blockMs = blockMs
  }

  /** false while no IP is blocked: the hot path then does not even read request.ip */
  get anyBlocked (): boolean { return this.#blocked.size > 0 }

  /** ms this IP stays blocked, 0 when it is not: a Map look-up, no store */
  blockedFor (ip: string, now: number): number {
    const until = this.#blocked.get(ip)
    if (until === undefined) return 0
    if (until > now) return until - now
    this.#blocked.delete(ip)
    return 0
  }

  block (ip: string, ms: number): void {
    if (this.#blocked.size >= 100_000) {
      const now = Date.now()
      for (const [k, until] of this.#blocked) if (until <= now) this.#blocked.delete(k)
      if (this.#blocked.size >= 100_000) this.#blocked.delete(this.#blocked.keys().next().value as string)
    }
    this.#blocked.set(ip, Date.now() + ms)
  }

  /** a block announced by any replica (message: "<ms> <ip>") */
  onMessage (message: string): void {
    const sp = message.indexOf(' ')
    const ms = Number(message.slice(0, sp))
    if (sp > 0 && Number.isFinite(ms) && ms > 0) this.block(message.slice(sp + 1), Math.min(ms, this.#blockMs))
  }

  #blockEverywhere (ip: string): number {
    this.block(ip, this.#blockMs)
    this.#store.publish(BLOCK_CHANNEL, `${this.#blockMs} ${ip}`).catch(() => { /* the store is away: this replica still blocks */ })
    return this.#blockMs
  }

  /**
   * Counts a failure; resolves to the ms the IP is now blocked for (0 = not blocked). Shared failures are counted in
   * the store (all replicas add up); local ones (malformed input, or the store away) only here.
   */
  failure (ip: string, shared: boolean): number | Promise<number> {
    const now = Date.now()
    let c = this.#local.get(ip)
    if (c === undefined || c.resetAt <= now) {
      if (this.#local.size >= 100_000) this.#local.clear()
      c = { n: 0, resetAt: now + this.#windowMs }
      this.#local.set(ip, c)
    }
    const n = ++c.n
    if (!shared || this.#store.state !== 'ready') return n >= this.#limit ? this.#blockEverywhere(ip) : 0
    return this.#store.incr(`authfail:${ip}`, 1, this.#windowMs).then(
      (count) => Math.max(count, n) >= this.#limit ? this.#blockEverywhere(ip) : 0,
      () => n >= this.#limit ? this.#blockEverywhere(ip) : 0,
    )
  }
}

// ---- the per-route hook -----------------------------------------------------------------------------------------

function thenable<T> (v: T | Promise<T>): v is Promise<T> {
  return typeof (v as { then?: unknown })?.then === 'function'
}

/** the token of `Authorization: Bearer <token>` (scheme case-insensitive, RFC 9110 §11.1), else undefined */
function bearerOf (value: string | undefined): string | undefined {
  if (value === undefined || value.length < 8) return undefined
  if (value.charCodeAt(6) !== 32 || value.slice(0, 6).toLowerCase() !== 'bearer') return undefined
  const token = value.slice(7).trim()
  return token === '' ? undefined : token
}

const quoted = (s: string): string => s.replace(/["\\]/g, '')

interface AuthContext {
  keys: ApiKeyCache | null
  jwt: JwtAuthority | null
  throttle: AuthThrottle | null
}

const VIA_HEADER = 0
const VIA_BEARER_KEY = 1
const VIA_JWT = 2

function compileHook (policy: RoutePolicy, ctx: AuthContext): onRequestHookHandler {
  const auth = policy.auth as NonNullable<RoutePolicy['auth']>
  const header = auth.apiKey?.header
  const bearerKey = auth.apiKey?.bearer === true
  const verifier = auth.jwt === null || ctx.jwt === null ? null : ctx.jwt.verifierFor(auth.jwt)
  const forwardToken = ctx.jwt?.settings.forwardToken ?? true
  const keys = ctx.keys
  const throttle = ctx.throttle
  const required = auth.scopes
  const scopeList = required.join(' ')

  // RFC 9110 §11.6.1: one challenge per accepted scheme; RFC 6750 §3 for the Bearer error attributes
  const keyChallenge = header === undefined ? null : `ApiKey realm="${REALM}", header="${header}"`
  const bearerChallenge = bearerKey || verifier !== null ? `Bearer realm="${REALM}"` : null
  const challenges = [keyChallenge, bearerChallenge].filter((c) => c !== null).join(', ')
  const wanted = [
    header !== undefined ? `an API key (${header} header${bearerKey ? ' or Authorization: Bearer' : ''})` : null,
    verifier !== null ? 'a JWT (Authorization: Bearer)' : null,
  ].filter((w) => w !== null).join(' or ')

  const withChallenge = <E extends Error>(err: E, via: number, error: string, description?: string): E => {
    const attrs = `, error="${error}"${description !== undefined ? `, error_description="${quoted(description)}"` : ''}${error === 'insufficient_scope' ? `, scope="${quoted(scopeList)}"` : ''}`
    const challenge = via === VIA_HEADER
      ? [keyChallenge + attrs, bearerChallenge].filter((c) => c !== null).join(', ')
      : [keyChallenge, bearerChallenge + attrs].filter((c) => c !== null).join(', ')
    return Object.assign(err, { headers: { 'www-authenticate': challenge } })
  }

  const missing = (): Error => Object.assign(new GW_ERR_AUTH_REQUIRED(wanted), { headers: { 'www-authenticate': challenges } })

  function failureError (f: KeyFailure | JwtRejected, via: number): Error {
    if (f instanceof JwtRejected) return withChallenge(new GW_ERR_AUTH_INVALID_TOKEN(f.reason), via, 'invalid_token', f.reason)
    switch (f.kind) {
      case 'revoked': return withChallenge(new GW_ERR_AUTH_KEY_REVOKED(), via, 'invalid_token', 'the API key has been revoked')
      case 'expired': return withChallenge(new GW_ERR_AUTH_KEY_EXPIRED(), via, 'invalid_token', 'the API key has expired')
      case 'unavailable': return Object.assign(new GW_ERR_STORE_UNAVAILABLE(), { headers: { 'retry-after': STORE_RETRY_AFTER_S } })
      default: return withChallenge(new GW_ERR_AUTH_INVALID_KEY(), via, 'invalid_token', 'the API key is not valid')
    }
  }

  function throttled (ms: number): Error {
    const s = Math.max(1, Math.ceil(ms / 1000))
    return Object.assign(new GW_ERR_AUTH_THROTTLED(s), { headers: { 'retry-after': String(s) } })
  }

  function settle (request: FastifyRequest, outcome: KeyOutcome | JwtOutcome, via: number, done: HookHandlerDoneFunction): void {
    if (outcome instanceof KeyFailure || outcome instanceof JwtRejected) {
      const count = outcome instanceof JwtRejected ? (outcome.counted ? 2 : 0) : outcome.count
      const err = failureError(outcome, via)
      if (count === 0 || throttle === null) { done(err); return }
      const blocked = throttle.failure(request.ip, count === 2)
      if (thenable(blocked)) blocked.then((ms) => done(ms > 0 ? throttled(ms) : err), () => done(err))
      else done(blocked > 0 ? throttled(blocked) : err)
      return
    }
    const client = outcome as Client
    for (let i = 0; i < required.length; i++) {
      if (!client.scopes.includes(required[i] as string)) {
        done(withChallenge(new GW_ERR_AUTH_INSUFFICIENT_SCOPE(scopeList), via, 'insufficient_scope'))
        return
      }
    }
    request.client = client
    // the key is the gateway's credential, never the upstream's; a JWT goes on unless JWT_FORWARD_TOKEN=false
    if (via === VIA_BEARER_KEY || (via === VIA_JWT && !forwardToken)) delete request.raw.headers.authorization
    done()
  }

  return function authenticate (request: FastifyRequest, _reply: FastifyReply, done: HookHandlerDoneFunction): void {
    if (throttle !== null && throttle.anyBlocked) {
      const ms = throttle.blockedFor(request.ip, Date.now())
      if (ms > 0) { done(throttled(ms)); return }
    }
    let outcome: KeyOutcome | JwtOutcome | Promise<KeyOutcome | JwtOutcome>
    let via: number
    const given = header === undefined ? undefined : request.headers[header]
    if (given !== undefined) {
      via = VIA_HEADER
      outcome = typeof given === 'string' ? (keys as ApiKeyCache).authenticate(given) : MALFORMED
    } else {
      const token = bearerOf(request.headers.authorization)
      if (token !== undefined && bearerKey && (verifier === null || token.startsWith(KEY_PREFIX))) {
        via = VIA_BEARER_KEY
        outcome = (keys as ApiKeyCache).authenticate(token)
      } else if (token !== undefined && verifier !== null) {
        via = VIA_JWT
        outcome = verifier.verify(token)
      } else { done(missing()); return }
    }
    if (thenable(outcome)) outcome.then((o) => settle(request, o, via, done), (err: Error) => done(err))
    else settle(request, outcome, via, done)
  }
}

// ---- admin API --------------------------------------------------------------------------------------------------

const STATUSES = ['active', 'expired', 'revoked', 'all']
const CREATE_FIELDS = new Set(['client', 'name', 'scopes', 'plan', 'expiresAt', 'expiresIn', 'metadata'])

/** store failures become 503; our own errors (404, 409, 400) pass */
function storeFailure (err: unknown): Error {
  const code = (err as { code?: string }).code
  if (typeof code === 'string' && code.startsWith('GW_ERR_')) return err as Error
  const out = Object.assign(new GW_ERR_STORE_UNAVAILABLE(), { headers: { 'retry-after': STORE_RETRY_AFTER_S } })
  out.cause = err
  return out
}

function registerAdmin (app: FastifyInstance, repo: KeyRepository, cache: ApiKeyCache | null, declarations: Declarations): void {
  const view = (r: KeyRecord): ReturnType<typeof viewOf> => {
    const pending = cache?.lastUsed(r.id) ?? 0
    return viewOf(pending > r.lastUsedAt ? { ...r, lastUsedAt: pending } : r)
  }
  const idParam = { params: Type.Object({ id: Type.String() }) }
  const idOf = (request: FastifyRequest): string => {
    // ids only: a whole key in a URL would end up in access logs
    const id = (request.params as { id: string }).id
    if (!KEY_ID.test(id)) throw new GW_ERR_KEY_NOT_FOUND('(not a key id: 12 lower-case letters and digits)')
    return id
  }

  app.adminRoute({
    method: 'POST',
    url: '/keys',
    schema: { body: Type.Object({}, { additionalProperties: true }) },
    handler: async function createKey (request, reply) {
      const body = request.body as Record<string, unknown>
      const unknown = Object.keys(body).filter((k) => !CREATE_FIELDS.has(k))
      if (unknown.length > 0) throw new GW_ERR_BAD_REQUEST(`Unknown field${unknown.length > 1 ? 's' : ''} ${unknown.join(', ')}; expected ${[...CREATE_FIELDS].join(', ')}`)
      const plan = body.plan
      if (typeof plan === 'string' && !declarations.plans.has(plan)) {
        const known = [...declarations.plans.keys()]
        throw new GW_ERR_BAD_REQUEST(`plan: unknown plan "${plan}"; declared: ${known.length > 0 ? known.join(', ') : 'none (definePlans in a route file)'}`)
      }
      if (body.scopes !== undefined && !Array.isArray(body.scopes)) throw new GW_ERR_BAD_REQUEST('scopes: expected an array of strings')
      const expiresAt = expiryOf(body.expiresAt, body.expiresIn)
      let made
      try {
        made = await repo.create({
          client: body.client as string,
          name: body.name as string,
          scopes: body.scopes as string[] | undefined,
          plan: (plan ?? null) as string | null,
          expiresAt,
          metadata: body.metadata as Record<string, unknown> | undefined,
        })
      } catch (err) { throw storeFailure(err) }
      cache?.invalidate(made.record.id)
      request.log.info({ keyId: made.record.id, clientId: made.record.client }, 'API key created')
      reply.code(201).header('cache-control', 'no-store').header('location', `/admin/keys/${made.record.id}`)
      return { key: made.key, ...view(made.record) }
    },
  })

  app.adminRoute({
    method: 'GET',
    url: '/keys',
    schema: { querystring: Type.Object({ client: Type.Optional(Type.String()), status: Type.Optional(Type.String()) }) },
    handler: async function listKeys (request) {
      const q = request.query as { client?: string, status?: string }
      if (q.status !== undefined && !STATUSES.includes(q.status)) throw new GW_ERR_BAD_REQUEST(`status: expected one of ${STATUSES.join(', ')}`)
      let records
      try { records = await repo.list({ client: q.client, status: q.status as KeyStatus | 'all' | undefined }) } catch (err) { throw storeFailure(err) }
      return { keys: records.map(view) }
    },
  })

  app.adminRoute({
    method: 'GET',
    url: '/keys/:id',
    schema: idParam,
    handler: async function showKey (request) {
      try { return view(await repo.show(idOf(request))) } catch (err) { throw storeFailure(err) }
    },
  })

  app.adminRoute({
    method: 'POST',
    url: '/keys/:id/rotate',
    schema: idParam,
    handler: async function rotateKey (request, reply) {
      const body = (request.body ?? {}) as { grace?: unknown }
      let graceMs: number | undefined
      if (body.grace !== undefined) {
        const g = parseDuration(body.grace)
        if (g === null) throw new GW_ERR_BAD_REQUEST(`grace: ${DURATION_HINT}, got ${JSON.stringify(body.grace)}`)
        graceMs = g
      }
      let made
      try { made = await repo.rotate(idOf(request), graceMs) } catch (err) { throw storeFailure(err) }
      // this replica at once; the others on the published notice
      cache?.invalidate(made.record.id)
      request.log.info({ keyId: made.record.id, graceMs: made.record.prevUntil === 0 ? 0 : made.record.prevUntil - made.record.rotatedAt }, 'API key rotated')
      reply.header('cache-control', 'no-store')
      return { key: made.key, ...view(made.record) }
    },
  })

  app.adminRoute({
    method: 'DELETE',
    url: '/keys/:id',
    schema: idParam,
    handler: async function revokeKey (request) {
      let r
      try { r = await repo.revoke(idOf(request)) } catch (err) { throw storeFailure(err) }
      cache?.invalidate(r.id)
      request.log.info({ keyId: r.id }, 'API key revoked')
      return view(r)
    },
  })
}

// ---- the plugin -------------------------------------------------------------------------------------------------

/** Problems with the routes' auth policies given this configuration (all of them, naming file and route). */
function checkRoutes (declarations: Declarations, jwt: JwtAuthority | null): string[] {
  const out: string[] = []
  for (const r of declarations.routes) {
    const a = r.auth
    if (a === null) continue
    const at = `${r.file}  ${r.id}  `
    if (a.jwt !== null) {
      if (jwt === null) out.push(`${at}auth.jwt: the route asks for JWT auth but no verifier is configured: set JWT_SECRET, JWT_PUBLIC_KEY_FILE or JWT_JWKS_URL`)
      else for (const p of jwt.check(a.jwt)) out.push(at + p)
    }
    if (a.apiKey !== null) {
      if (!/^[!#$%&'*+.^_`|~0-9a-z-]+$/.test(a.apiKey.header)) out.push(`${at}auth.apiKey.header: ${JSON.stringify(a.apiKey.header)} is not a header name`)
      if (a.apiKey.header === 'authorization') out.push(`${at}auth.apiKey.header: use apiKey: { bearer: true } to accept keys as Authorization: Bearer`)
    }
    for (const s of a.scopes) if (!SCOPE.test(s)) out.push(`${at}auth.scopes: ${JSON.stringify(s)} is not a scope (printable ASCII, no spaces)`)
  }
  return out
}

async function gwAuth (app: FastifyInstance, opts: { config: GatewayConfig, declarations: Declarations }): Promise<void> {
  const { config, declarations } = opts
  const jwt = (() => { const s = jwtSettings(config); return s === null ? null : new JwtAuthority(s, app.log) })()
  const problems = checkRoutes(declarations, jwt)
  if (problems.length > 0) throw new GW_ERR_ROUTE_DECLARATION(problems.map((p) => `  - ${p}`).join('\n'))

  const store = app.store
  // this replica's tag on the change notices it publishes: it drops its own cached copy at once, so it skips the echo
  const repo = new KeyRepository(store, `replica-${randomUUID()}`)
  const authRoutes = declarations.routes.filter((r) => r.auth !== null)
  const usesKeys = authRoutes.some((r) => r.auth?.apiKey != null)
  const usesJwt = authRoutes.some((r) => r.auth?.jwt != null)

  const keys = usesKeys
    ? new ApiKeyCache(repo, envValue(config, 'API_KEY_CACHE_SIZE'), envValue(config, 'API_KEY_CACHE_TTL'), envValue(config, 'API_KEY_NEGATIVE_TTL'))
    : null
  const limit = envValue<number>(config, 'AUTH_FAILURE_LIMIT')
  const throttle = authRoutes.length > 0 && limit > 0
    ? new AuthThrottle(store, limit, envValue(config, 'AUTH_FAILURE_WINDOW'), envValue(config, 'AUTH_FAILURE_BLOCK'))
    : null
  const ctx: AuthContext = { keys, jwt, throttle }

  const unsubscribe: Array<() => Promise<void>> = []
  if (keys !== null) {
    unsubscribe.push(await store.subscribe(KEYS_CHANNEL, function keyChanged (message) {
      const change = parseChange(message)
      if (change.origin !== repo.origin) keys.invalidate(change.id)
    }))
    let wasDown = false
    store.onStateChange((state) => {
      if (state !== 'ready') wasDown = true
      else if (wasDown) { wasDown = false; keys.markStale() }
    })
    const every = envValue<number>(config, 'API_KEY_LAST_USED_FLUSH')
    const timer = setInterval(() => { void keys.flush() }, Math.max(every, 100))
    timer.unref()
    app.addHook('onClose', async function flushLastUsed () {
      clearInterval(timer)
      await keys.flush()
    })
  }
  if (throttle !== null) unsubscribe.push(await store.subscribe(BLOCK_CHANNEL, (m) => throttle.onMessage(m)))
  if (jwt !== null && usesJwt) await jwt.start()
  app.addHook('onClose', async function stopAuth () {
    jwt?.close()
    // an UNSUBSCRIBE sent just as Redis vanished waits for a reconnect (the subscriber connection has no command
    // timeout): never let it hold the shutdown
    await Promise.all(unsubscribe.map(async (u) => {
      let timer: NodeJS.Timeout | undefined
      await Promise.race([u().catch(() => {}), new Promise<void>((resolve) => { timer = setTimeout(resolve, 1000) })])
      clearTimeout(timer)
    }))
  })

  const hooks = new Map<RoutePolicy, onRequestHookHandler>()
  app.addHook('onRoute', function attachAuth (route: RouteOptions) {
    const policy = route.config?.gw
    if (policy?.auth == null) return
    let hook = hooks.get(policy)
    if (hook === undefined) {
      hook = compileHook(policy, ctx)
      hooks.set(policy, hook)
    }
    addRouteHook(route, 'onRequest', hook, 'last')
  })

  registerAdmin(app, repo, keys, declarations)
}

export default fp(gwAuth, { name: 'gw-auth', fastify: '5.x', dependencies: ['gw-store', 'gw-admin', 'gw-problem'] })
