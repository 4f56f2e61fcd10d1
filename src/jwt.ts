/**
 * JWT verification for plugins/auth.ts: fast-jwt verifiers compiled once per distinct route policy, a JWKS client,
 * and the mapping of every failure to a 401 reason.
 *
 * Why fast-jwt directly and not @fastify/jwt: @fastify/jwt keeps one verifier per Fastify instance (routes could not
 * narrow issuer, audience or algorithms), surfaces several verification errors as 500 (fastify-jwt#368, #281), and
 * its allowedIss/allowedAud let a token without the claim through. Here every failure is a value mapped to 401,
 * `iss`/`aud` are required claims whenever they are configured, and the algorithm list is pinned per route.
 * Why not get-jwks: it derives the JWKS location from the token's issuer, fetches again on every unknown `kid`
 * (an attacker's random kids become fetches) and converts one kid at a time. The client below caches the whole set,
 * refreshes it in the background, and fetches on an unknown `kid` at most once per JWT_JWKS_MIN_REFRESH.
 *
 * Algorithm confusion: HS* tokens are only ever checked against JWT_SECRET and asymmetric ones only against public
 * keys, each verifier allowing only the algorithms its key type supports; `none` is never accepted.
 */
import { createPublicKey, type JsonWebKey, type KeyObject } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { createVerifier } from 'fast-jwt'
import { request } from 'undici'
import type { FastifyBaseLogger } from 'fastify'
import { VARS, type GatewayConfig } from './config.js'
import { GW_ERR_CONFIG } from './errors.js'
import { CLIENT_ID, PLAN, SCOPE } from './keys.js'
import type { AuthPolicy } from './policy.js'
import { makeClient, type Client } from './client.js'

/** The parsed value of a VARS row without a typed GatewayConfig field (validated by loadConfig already). */
export function envValue<T> (config: GatewayConfig, name: string): T {
  const row = VARS.find((v) => v.name === name)
  if (row === undefined) throw new Error(`no VARS row ${name}`)
  return row.parse(config.env[name] ?? row.default ?? '') as T
}

const HS = new Set(['HS256', 'HS384', 'HS512'])
const MAX_TOKEN_LENGTH = 16 * 1024
const MAX_JWKS_BYTES = 1024 * 1024
const JWKS_TIMEOUT_MS = 5000

/** The algorithms a public key can verify, from its type (never from the token). */
function algorithmsOf (key: KeyObject): string[] {
  switch (key.asymmetricKeyType) {
    case 'rsa': return ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512']
    case 'rsa-pss': return ['PS256', 'PS384', 'PS512']
    case 'ec': {
      const curve = key.asymmetricKeyDetails?.namedCurve
      return curve === 'prime256v1' ? ['ES256'] : curve === 'secp384r1' ? ['ES384'] : curve === 'secp521r1' ? ['ES512'] : []
    }
    case 'ed25519': case 'ed448': return ['EdDSA']
    default: return []
  }
}

const describeKey = (key: KeyObject): string => key.asymmetricKeyType === 'ec' ? `EC ${String(key.asymmetricKeyDetails?.namedCurve)}` : String(key.asymmetricKeyType).toUpperCase()

export interface JwtSettings {
  secret: Buffer | null
  publicKey: { pem: string, algorithms: string[] } | null
  jwksUrl: string | null
  issuer: string[] | null
  audience: string[] | null
  /** every algorithm any route may accept */
  algorithms: string[]
  scopeClaims: string[][]
  clientClaim: string[]
  planClaim: string[] | null
  clockSkewMs: number
  requireExp: boolean
  forwardToken: boolean
  jwksCacheTtlMs: number
  jwksMinRefreshMs: number
}

/** The JWT configuration, or null when none of JWT_SECRET, JWT_PUBLIC_KEY_FILE, JWT_JWKS_URL is set. */
export function jwtSettings (config: GatewayConfig): JwtSettings | null {
  const secret = envValue<Buffer | null>(config, 'JWT_SECRET')
  const keyFile = envValue<string | null>(config, 'JWT_PUBLIC_KEY_FILE')
  const jwksUrl = envValue<string | null>(config, 'JWT_JWKS_URL')
  if (secret === null && keyFile === null && jwksUrl === null) return null
  const problems: string[] = []
  let publicKey: JwtSettings['publicKey'] = null
  let keyObject: KeyObject | null = null
  if (keyFile !== null && jwksUrl !== null) problems.push('JWT_PUBLIC_KEY_FILE and JWT_JWKS_URL: give one or the other')
  if (keyFile !== null) {
    try {
      keyObject = createPublicKey(readFileSync(keyFile))
      const algorithms = algorithmsOf(keyObject)
      if (algorithms.length === 0) problems.push(`JWT_PUBLIC_KEY_FILE: a ${describeKey(keyObject)} key verifies no supported algorithm`)
      publicKey = { pem: keyObject.export({ type: 'spki', format: 'pem' }) as string, algorithms }
    } catch (err) {
      problems.push(`JWT_PUBLIC_KEY_FILE: cannot read a PEM public key from ${keyFile}: ${(err as Error).message}`)
    }
  }
  const defaults = [
    ...(secret !== null ? ['HS256'] : []),
    ...(publicKey !== null ? publicKey.algorithms.slice(0, 1) : []),
    ...(jwksUrl !== null ? ['RS256', 'ES256'] : []),
  ]
  const algorithms = envValue<string[] | null>(config, 'JWT_ALGORITHMS') ?? defaults
  for (const alg of algorithms) {
    if (HS.has(alg)) {
      if (secret === null) problems.push(`JWT_ALGORITHMS: ${alg} needs JWT_SECRET`)
    } else if (publicKey !== null && keyObject !== null) {
      if (!publicKey.algorithms.includes(alg)) problems.push(`JWT_ALGORITHMS: ${alg} does not fit the ${describeKey(keyObject)} key of JWT_PUBLIC_KEY_FILE (it verifies ${publicKey.algorithms.join(', ')})`)
    } else if (jwksUrl === null && keyFile === null) problems.push(`JWT_ALGORITHMS: ${alg} needs JWT_PUBLIC_KEY_FILE or JWT_JWKS_URL`)
  }
  if (problems.length > 0) throw new GW_ERR_CONFIG(problems.map((p) => `  - ${p}`).join('\n'))
  const split = (c: string): string[] => c.split('.')
  const plan = envValue<string[] | null>(config, 'JWT_PLAN_CLAIM')
  return {
    secret,
    publicKey,
    jwksUrl,
    issuer: envValue(config, 'JWT_ISSUER'),
    audience: envValue(config, 'JWT_AUDIENCE'),
    algorithms,
    scopeClaims: (envValue<string[] | null>(config, 'JWT_SCOPE_CLAIM') ?? []).map(split),
    clientClaim: split((envValue<string[] | null>(config, 'JWT_CLIENT_CLAIM') ?? ['sub'])[0] as string),
    planClaim: plan === null ? null : split(plan[0] as string),
    clockSkewMs: envValue(config, 'JWT_CLOCK_SKEW'),
    requireExp: envValue(config, 'JWT_REQUIRE_EXP'),
    forwardToken: envValue(config, 'JWT_FORWARD_TOKEN'),
    jwksCacheTtlMs: envValue(config, 'JWT_JWKS_CACHE_TTL'),
    jwksMinRefreshMs: envValue(config, 'JWT_JWKS_MIN_REFRESH'),
  }
}

// ---- outcomes ---------------------------------------------------------------------------------------------------

/** A verified token's client (via 'jwt', no key id); frozen, shared by every request with the same cached token. */
export type TokenIdentity = Readonly<Client>

/** Why a token was refused (safe to show: never the token or a claim value). */
export class JwtRejected {
  /** counted = a failure that counts towards the per-IP brute-force block (expiry and not-before do not) */
  constructor (readonly reason: string, readonly counted = true) {}
}

export type JwtOutcome = TokenIdentity | JwtRejected

const MALFORMED = new JwtRejected('the token is malformed')
const UNKNOWN_KEY = new JwtRejected('the token is signed with an unknown key')
const BAD_ALG = new JwtRejected('the token algorithm is not accepted')
const NO_CLIENT = new JwtRejected('the token has no usable client id claim')

const REASONS: Record<string, JwtRejected> = {
  FAST_JWT_EXPIRED: new JwtRejected('the token has expired', false),
  FAST_JWT_INACTIVE: new JwtRejected('the token is not valid yet', false),
  FAST_JWT_INVALID_ALGORITHM: BAD_ALG,
  FAST_JWT_INVALID_SIGNATURE: new JwtRejected('the signature is not valid'),
  // a signature of the wrong shape for the key (e.g. an RSA signature on an EC key)
  FAST_JWT_VERIFY_ERROR: new JwtRejected('the signature is not valid'),
  FAST_JWT_MISSING_SIGNATURE: new JwtRejected('the token is not signed'),
  FAST_JWT_MALFORMED: MALFORMED,
  FAST_JWT_INVALID_PAYLOAD: MALFORMED,
  FAST_JWT_INVALID_TYPE: MALFORMED,
  FAST_JWT_INVALID_CRIT_HEADER: new JwtRejected('the token has an unsupported critical header'),
}
/** fast-jwt names the claim in its messages ("The iss claim ...", "None of aud claim values ...") */
const CLAIM = /\b(iss|aud|exp|nbf|sub|iat|jti) claim\b/

function rejection (err: unknown): JwtRejected {
  const e = err as { code?: string, message?: string }
  const known = e.code === undefined ? undefined : REASONS[e.code]
  if (known !== undefined) return known
  // claim errors name a registered claim; anything else stays generic
  const claim = typeof e.message === 'string' ? CLAIM.exec(e.message)?.[1] : undefined
  if (e.code === 'FAST_JWT_MISSING_REQUIRED_CLAIM' && claim !== undefined) return new JwtRejected(`the token has no "${claim}" claim`)
  if ((e.code === 'FAST_JWT_INVALID_CLAIM_VALUE' || e.code === 'FAST_JWT_INVALID_CLAIM_TYPE') && claim !== undefined) return new JwtRejected(`the "${claim}" claim is not accepted`)
  return new JwtRejected('the token could not be verified')
}

// ---- claims -----------------------------------------------------------------------------------------------------

function claimAt (payload: Record<string, unknown>, path: readonly string[]): unknown {
  let v: unknown = payload
  for (const p of path) {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) return undefined
    v = (v as Record<string, unknown>)[p]
  }
  return v
}

type Verify = (token: string) => Record<string, unknown>

// ---- JWKS -------------------------------------------------------------------------------------------------------

interface Jwk { kid: string | undefined, pem: string, algorithms: ReadonlySet<string> }

async function readLimited (body: AsyncIterable<Buffer>, limit: number): Promise<string> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of body) {
    size += chunk.length
    if (size > limit) throw new Error(`JWKS larger than ${limit} bytes`)
    chunks.push(chunk)
  }
  return Buffer.concat(chunks).toString('utf8')
}

export class JwksClient {
  #byKid = new Map<string, Jwk>()
  #all: Jwk[] = []
  #fetchedAt = 0
  #lastAttempt = Number.NEGATIVE_INFINITY
  #inflight: Promise<void> | null = null
  #closed = false
  /** fetches made (for logs and tests) */
  fetches = 0

  readonly #ttlMs: number
  readonly #minRefreshMs: number
  readonly #log: FastifyBaseLogger

  constructor (readonly url: string, ttlMs: number, minRefreshMs: number, log: FastifyBaseLogger) {
    this.#ttlMs = ttlMs
    this.#minRefreshMs = minRefreshMs
    this.#log = log
  }

  get size (): number { return this.#all.length }

  find (kid: string | undefined, alg: string): Jwk | undefined {
    if (kid !== undefined) return this.#byKid.get(kid)
    // no kid: only when exactly one key can verify the algorithm
    let found: Jwk | undefined
    for (const k of this.#all) {
      if (!k.algorithms.has(alg)) continue
      if (found !== undefined) return undefined
      found = k
    }
    return found
  }

  /** a background refresh once the set is older than the TTL */
  keepFresh (now: number): void {
    if (now - this.#fetchedAt > this.#ttlMs && this.#inflight === null && now - this.#lastAttempt >= this.#minRefreshMs) void this.refresh()
  }

  /** fetch now unless one is running (joined) or the last was under JWT_JWKS_MIN_REFRESH ago (then no fetch) */
  async refresh (): Promise<void> {
    if (this.#inflight !== null) return await this.#inflight
    const now = Date.now()
    if (this.#closed || now - this.#lastAttempt < this.#minRefreshMs) return
    this.#lastAttempt = now
    this.#inflight = this.#fetch().finally(() => { this.#inflight = null })
    return await this.#inflight
  }

  close (): void { this.#closed = true }

  async #fetch (): Promise<void> {
    this.fetches++
    try {
      const res = await request(this.url, {
        method: 'GET',
        headers: { accept: 'application/jwk-set+json, application/json' },
        headersTimeout: JWKS_TIMEOUT_MS,
        bodyTimeout: JWKS_TIMEOUT_MS,
        signal: AbortSignal.timeout(JWKS_TIMEOUT_MS),
      })
      if (res.statusCode !== 200) {
        await res.body.dump()
        throw new Error(`HTTP ${res.statusCode}`)
      }
      const doc = JSON.parse(await readLimited(res.body, MAX_JWKS_BYTES)) as { keys?: unknown }
      if (!Array.isArray(doc.keys)) throw new Error('no "keys" array')
      const all: Jwk[] = []
      let skipped = 0
      for (const raw of doc.keys as Array<Record<string, unknown>>) {
        const jwk = this.#parse(raw)
        if (jwk === null) skipped++
        else all.push(jwk)
      }
      this.#all = all
      this.#byKid = new Map(all.filter((k) => k.kid !== undefined).map((k) => [k.kid as string, k]))
      this.#fetchedAt = Date.now()
      this.#log.info({ jwks: this.url, keys: all.length, skipped }, 'JWKS fetched')
    } catch (err) {
      // keep the keys we had: an IdP hiccup must not log everyone out
      this.#log.warn({ jwks: this.url, reason: (err as Error).message, keys: this.#all.length }, 'JWKS fetch failed; keeping the keys already known')
    }
  }

  #parse (raw: Record<string, unknown>): Jwk | null {
    if (typeof raw !== 'object' || raw === null || raw.kty === 'oct') return null
    if (raw.use !== undefined && raw.use !== 'sig') return null
    try {
      const key = createPublicKey({ key: raw as JsonWebKey, format: 'jwk' })
      let algorithms = algorithmsOf(key)
      if (typeof raw.alg === 'string') algorithms = algorithms.filter((a) => a === raw.alg)
      if (algorithms.length === 0) return null
      return { kid: typeof raw.kid === 'string' ? raw.kid : undefined, pem: key.export({ type: 'spki', format: 'pem' }) as string, algorithms: new Set(algorithms) }
    } catch { return null }
  }
}

// ---- per-route verifiers ----------------------------------------------------------------------------------------

type JwtPolicy = NonNullable<AuthPolicy['jwt']>

interface Header { alg: string, kid: string | undefined }

/** Verifies the tokens of one route policy (routes with the same issuer, audience and algorithms share one). */
export class RouteVerifier {
  readonly #algorithms: ReadonlySet<string>
  readonly #hs: Verify | null
  readonly #static: Verify | null
  readonly #jwks: JwksClient | null
  readonly #byKid = new Map<string, { pem: string, verify: Verify | null }>()
  readonly #options: Record<string, unknown>
  readonly #identities = new WeakMap<object, JwtOutcome>()
  readonly #headers = new Map<string, Header>()

  readonly #settings: JwtSettings

  constructor (settings: JwtSettings, algorithms: string[], issuer: string[] | null, audience: string[] | null, jwks: JwksClient | null) {
    this.#settings = settings
    this.#algorithms = new Set(algorithms)
    this.#jwks = jwks
    this.#options = {
      ...(issuer !== null ? { allowedIss: issuer } : {}),
      ...(audience !== null ? { allowedAud: audience } : {}),
      // fast-jwt skips allowedIss/allowedAud when the claim is absent: require it whenever it is configured
      requiredClaims: [...(settings.requireExp ? ['exp'] : []), ...(issuer !== null ? ['iss'] : []), ...(audience !== null ? ['aud'] : [])],
      clockTolerance: settings.clockSkewMs,
      // verified tokens are cached (bounded by their exp), so a repeated token skips the signature check
      cache: 1000,
      cacheTTL: 600_000,
    }
    const hs = algorithms.filter((a) => HS.has(a))
    this.#hs = hs.length > 0 && settings.secret !== null ? this.#make(settings.secret, hs) : null
    const asym = algorithms.filter((a) => !HS.has(a))
    const pk = settings.publicKey
    const fit = pk === null ? [] : asym.filter((a) => pk.algorithms.includes(a))
    this.#static = pk !== null && fit.length > 0 ? this.#make(pk.pem, fit) : null
  }

  #make (key: string | Buffer, algorithms: string[]): Verify {
    return createVerifier({ ...this.#options, key, algorithms } as unknown as Parameters<typeof createVerifier>[0]) as unknown as Verify
  }

  #header (token: string): Header | null {
    const dot = token.indexOf('.')
    if (dot <= 0) return null
    const seg = token.slice(0, dot)
    const known = this.#headers.get(seg)
    if (known !== undefined) return known
    let h: Header
    try {
      const o = JSON.parse(Buffer.from(seg, 'base64url').toString('utf8')) as Record<string, unknown>
      if (typeof o !== 'object' || o === null || typeof o.alg !== 'string') return null
      h = { alg: o.alg, kid: typeof o.kid === 'string' ? o.kid : undefined }
    } catch { return null }
    // a handful of distinct headers in practice; bounded against garbage
    if (this.#headers.size >= 256) this.#headers.clear()
    this.#headers.set(seg, h)
    return h
  }

  #identity (payload: Record<string, unknown>): JwtOutcome {
    const known = this.#identities.get(payload)
    if (known !== undefined) return known
    const s = this.#settings
    const id = claimAt(payload, s.clientClaim)
    let out: JwtOutcome
    if (typeof id !== 'string' || !CLIENT_ID.test(id)) out = NO_CLIENT
    else {
      let scopes: string[] = []
      for (const path of s.scopeClaims) {
        const v = claimAt(payload, path)
        if (typeof v === 'string') { scopes = v.split(' '); break }
        if (Array.isArray(v)) { scopes = v.filter((x): x is string => typeof x === 'string'); break }
      }
      const plan = s.planClaim === null ? undefined : claimAt(payload, s.planClaim)
      out = makeClient({
        id,
        keyId: null,
        via: 'jwt',
        // scopes travel in X-Client-Scopes: odd ones are dropped (they cannot match a declared scope anyway)
        scopes: scopes.filter((x) => SCOPE.test(x)),
        plan: typeof plan === 'string' && PLAN.test(plan) ? plan : null,
      })
    }
    this.#identities.set(payload, out)
    return out
  }

  #run (verify: Verify, token: string): JwtOutcome {
    let payload: Record<string, unknown>
    try { payload = verify(token) } catch (err) { return rejection(err) }
    return this.#identity(payload)
  }

  #forKid (h: Header): Verify | null | undefined {
    const jwk = (this.#jwks as JwksClient).find(h.kid, h.alg)
    if (jwk === undefined) return undefined
    const slot = h.kid ?? ''
    const have = this.#byKid.get(slot)
    if (have !== undefined && have.pem === jwk.pem) return have.verify
    const algorithms = [...this.#algorithms].filter((a) => !HS.has(a) && jwk.algorithms.has(a))
    const verify = algorithms.length > 0 ? this.#make(jwk.pem, algorithms) : null
    if (this.#byKid.size >= 1000) this.#byKid.clear()
    this.#byKid.set(slot, { pem: jwk.pem, verify })
    return verify
  }

  /** Sync when the signing key is known (the usual case); a promise only while an unknown `kid` is looked up. */
  verify (token: string): JwtOutcome | Promise<JwtOutcome> {
    if (token.length > MAX_TOKEN_LENGTH) return MALFORMED
    const h = this.#header(token)
    if (h === null) return MALFORMED
    if (!this.#algorithms.has(h.alg)) return BAD_ALG
    if (HS.has(h.alg)) return this.#hs === null ? BAD_ALG : this.#run(this.#hs, token)
    if (this.#static !== null) return this.#run(this.#static, token)
    const jwks = this.#jwks
    if (jwks === null) return BAD_ALG
    jwks.keepFresh(Date.now())
    const v = this.#forKid(h)
    if (v === null) return BAD_ALG
    if (v !== undefined) return this.#run(v, token)
    return jwks.refresh().then(() => {
      const again = this.#forKid(h)
      return again === undefined ? UNKNOWN_KEY : again === null ? BAD_ALG : this.#run(again, token)
    })
  }
}

/** The JWT side of the gateway: settings, the JWKS client, and one verifier per distinct route policy. */
export class JwtAuthority {
  readonly jwks: JwksClient | null
  readonly #verifiers = new Map<string, RouteVerifier>()

  constructor (readonly settings: JwtSettings, log: FastifyBaseLogger) {
    this.jwks = settings.jwksUrl === null ? null : new JwksClient(settings.jwksUrl, settings.jwksCacheTtlMs, settings.jwksMinRefreshMs, log)
  }

  /** Problems with a route's jwt policy (algorithms outside JWT_ALGORITHMS), as "field: message" lines. */
  check (policy: JwtPolicy): string[] {
    const allowed = this.settings.algorithms
    const extra = (policy.algorithms ?? []).filter((a) => !allowed.includes(a))
    return extra.length === 0 ? [] : [`auth.jwt.algorithms: ${extra.join(', ')} ${extra.length > 1 ? 'are' : 'is'} not among JWT_ALGORITHMS (${allowed.join(', ')}); a route can only narrow the list`]
  }

  verifierFor (policy: JwtPolicy): RouteVerifier {
    const s = this.settings
    const algorithms = policy.algorithms ?? s.algorithms
    const issuer = policy.issuer ?? s.issuer
    const audience = policy.audience ?? s.audience
    const id = JSON.stringify([algorithms, issuer, audience])
    let v = this.#verifiers.get(id)
    if (v === undefined) {
      v = new RouteVerifier(s, algorithms, issuer, audience, this.jwks)
      this.#verifiers.set(id, v)
    }
    return v
  }

  /** first JWKS fetch at start; a failure is logged, not fatal (fetched again on the first token) */
  async start (): Promise<void> { if (this.jwks !== null) await this.jwks.refresh() }

  close (): void { this.jwks?.close() }
}
