/**
 * API keys as records in the store, shared by plugins/auth.ts (look-ups on the request path), its admin routes
 * and the CLI (src/cli.ts), so the three agree on the format and the fields.
 *
 * A key reads `gw_<id>_<secret>`: a recognisable prefix (secret scanners, logs), a 12-character id that names the
 * record (shown, logged, used by the admin API) and a 43-character base62 secret (256 bits). The store keeps
 * only SHA-256 of the whole key: with 256 bits of entropy a fast hash is enough (no password stretching needed),
 * and a leak of the store gives no usable key. The key itself is shown once, when made or rotated.
 *
 * Store layout (under REDIS_PREFIX): `apikey:<id>` a hash of the fields below, `apikeys` the set of every id,
 * channel `apikeys:changed` carries `<id> <origin>` for each changed key so every replica drops its cached copy (the
 * origin names the writer, which has dropped its own copy already and ignores its echo).
 */
import { hash, randomBytes } from 'node:crypto'
import type { Store } from './store/types.js'
import { parseDuration, DURATION_HINT } from './duration.js'
import { GW_ERR_BAD_REQUEST, GW_ERR_KEY_CONFLICT, GW_ERR_KEY_NOT_FOUND } from './errors.js'

export const KEY_PREFIX = 'gw_'
export const KEY_ID_LENGTH = 12
const SECRET_LENGTH = 43
/** the whole format, checked before any store look-up */
export const KEY_FORMAT = /^gw_([0-9a-z]{12})_[0-9A-Za-z]{43}$/
export const KEY_ID = /^[0-9a-z]{12}$/
export const KEYS_CHANNEL = 'apikeys:changed'

/** a change notice: the key id, and who made it (null for a notice without origin) */
export function parseChange (message: string): { id: string, origin: string | null } {
  const sp = message.indexOf(' ')
  return sp === -1 ? { id: message, origin: null } : { id: message.slice(0, sp), origin: message.slice(sp + 1) }
}
const INDEX = 'apikeys'
const recordKey = (id: string): string => `apikey:${id}`

/** client ids, names and plans travel in X-Client-* headers: printable ASCII only */
export const CLIENT_ID = /^[\x21-\x7e]{1,128}$/
export const SCOPE = /^[\x21-\x7e]{1,128}$/
export const PLAN = /^[a-zA-Z0-9_-]{1,64}$/
const NAME_MAX = 200
const METADATA_MAX = 4096
export const DEFAULT_GRACE_MS = 60 * 60 * 1000

const ALPHA36 = '0123456789abcdefghijklmnopqrstuvwxyz'
const ALPHA62 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'

/** uniform random characters (rejection sampling, no modulo bias) */
function randomString (alphabet: string, length: number): string {
  const limit = 256 - (256 % alphabet.length)
  let out = ''
  while (out.length < length) {
    for (const b of randomBytes(length * 2)) {
      if (b < limit) out += alphabet[b % alphabet.length]
      if (out.length === length) break
    }
  }
  return out
}

const KEY_LENGTH = KEY_PREFIX.length + KEY_ID_LENGTH + 1 + SECRET_LENGTH
const ID_END = KEY_PREFIX.length + KEY_ID_LENGTH

/** The record id of a well-formed key, or null: no store round trip for malformed input. */
export function keyIdOf (key: string): string | null {
  // length first: a 10 kB header never reaches the regex
  if (key.length !== KEY_LENGTH) return null
  return KEY_FORMAT.test(key) ? key.slice(KEY_PREFIX.length, ID_END) : null
}

/**
 * Where the id of `key` would be, when the key has a key's length, prefix and separator; its characters are not
 * checked. Only for a look-up in memory: the cached record's hash then decides, and keyIdOf() checks the whole
 * format before anything reaches the store.
 */
export function keyIdAt (key: string): string | null {
  if (key.length !== KEY_LENGTH || key.charCodeAt(ID_END) !== 95 /* _ */ || !key.startsWith(KEY_PREFIX)) return null
  return key.slice(KEY_PREFIX.length, ID_END)
}

/** SHA-256 of the whole key, as stored (hex) */
export function hashKey (key: string): string {
  // the one-shot crypto.hash (Node >= 20.12) costs about two thirds of createHash().update().digest()
  return hash('sha256', key, 'hex')
}

/**
 * SHA-256 of the whole key as a 32-character latin1 string, the form the request path compares: a digest as a
 * Buffer is a new ArrayBuffer per request, and cost 850 ns against 390 ns for the string.
 */
export function digestKey (key: string): string {
  return hash('sha256', key, 'binary')
}

/** The stored hex hash in digestKey()'s form. */
export function digestOfHex (hex: string): string {
  return Buffer.from(hex, 'hex').toString('latin1')
}

/**
 * Whether two digests (or two keys) are equal, in constant time: every character is compared, with no early exit,
 * so the time taken says nothing about where they differ (their lengths are no secret: a SHA-256 digest's, or the
 * fixed length of a key).
 */
export function sameDigest (a: string, b: string): boolean {
  if (a.length !== b.length) return false
  let diff = 0
  for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i)
  return diff === 0
}

export type KeyStatus = 'active' | 'expired' | 'revoked'

/** A key as stored. Times are epoch ms; 0 = not set. */
export interface KeyRecord {
  id: string
  client: string
  name: string
  scopes: string[]
  plan: string | null
  metadata: Record<string, unknown>
  createdAt: number
  expiresAt: number
  /** SHA-256 (hex) of the current key */
  hash: string
  /** SHA-256 (hex) of the key before the last rotation, valid until prevUntil */
  prevHash: string
  prevUntil: number
  rotatedAt: number
  revokedAt: number
  lastUsedAt: number
}

/** What the admin API and the CLI show: never a hash, never the secret. */
export interface KeyView {
  id: string
  /** the visible part of the key, to recognise it: gw_<id>_… */
  prefix: string
  client: string
  name: string
  scopes: string[]
  plan: string | null
  metadata: Record<string, unknown>
  status: KeyStatus
  createdAt: string
  expiresAt: string | null
  rotatedAt: string | null
  /** the secret before the last rotation stays valid until then */
  previousValidUntil: string | null
  revokedAt: string | null
  lastUsedAt: string | null
}

export interface NewKeyInput {
  client: string
  name: string
  scopes?: string[]
  plan?: string | null
  /** epoch ms; 0 or undefined = never */
  expiresAt?: number
  metadata?: Record<string, unknown>
}

export function statusOf (r: Pick<KeyRecord, 'revokedAt' | 'expiresAt'>, now = Date.now()): KeyStatus {
  if (r.revokedAt !== 0) return 'revoked'
  if (r.expiresAt !== 0 && now >= r.expiresAt) return 'expired'
  return 'active'
}

const iso = (ms: number): string | null => ms === 0 ? null : new Date(ms).toISOString()

export function viewOf (r: KeyRecord, now = Date.now()): KeyView {
  return {
    id: r.id,
    prefix: `${KEY_PREFIX}${r.id}_`,
    client: r.client,
    name: r.name,
    scopes: r.scopes,
    plan: r.plan,
    metadata: r.metadata,
    status: statusOf(r, now),
    createdAt: iso(r.createdAt) as string,
    expiresAt: iso(r.expiresAt),
    rotatedAt: iso(r.rotatedAt),
    previousValidUntil: r.prevHash !== '' && r.prevUntil > now ? iso(r.prevUntil) : null,
    revokedAt: iso(r.revokedAt),
    lastUsedAt: iso(r.lastUsedAt),
  }
}

/** Every problem with the input, or an empty list. Shared by the admin API and the CLI. */
export function checkNewKey (input: NewKeyInput, now = Date.now()): string[] {
  const problems: string[] = []
  if (typeof input.client !== 'string' || !CLIENT_ID.test(input.client)) problems.push('client: 1-128 printable ASCII characters without spaces')
  if (typeof input.name !== 'string' || input.name.trim() === '' || input.name.length > NAME_MAX) problems.push(`name: 1-${NAME_MAX} characters`)
  for (const s of input.scopes ?? []) if (typeof s !== 'string' || !SCOPE.test(s)) problems.push(`scopes: ${JSON.stringify(s)} is not a scope (printable ASCII, no spaces)`)
  if (input.plan != null && (typeof input.plan !== 'string' || !PLAN.test(input.plan))) problems.push('plan: letters, digits, "_" and "-" (1-64)')
  if (input.expiresAt !== undefined && input.expiresAt !== 0 && (!Number.isFinite(input.expiresAt) || input.expiresAt <= now)) problems.push('expiresAt: must be in the future')
  if (input.metadata !== undefined) {
    if (typeof input.metadata !== 'object' || input.metadata === null || Array.isArray(input.metadata)) problems.push('metadata: must be an object')
    else if (JSON.stringify(input.metadata).length > METADATA_MAX) problems.push(`metadata: at most ${METADATA_MAX} bytes of JSON`)
  }
  return problems
}

/** expiry from `expiresAt` (ISO 8601 date) or `expiresIn` (a duration); 0 = never */
export function expiryOf (expiresAt: unknown, expiresIn: unknown, now = Date.now()): number {
  if (expiresAt !== undefined && expiresIn !== undefined) throw new GW_ERR_BAD_REQUEST('Give expiresAt or expiresIn, not both')
  if (expiresAt !== undefined && expiresAt !== null) {
    const t = typeof expiresAt === 'string' ? Date.parse(expiresAt) : NaN
    if (!Number.isFinite(t)) throw new GW_ERR_BAD_REQUEST(`expiresAt: expected an ISO 8601 date like 2030-01-31T00:00:00Z, got ${JSON.stringify(expiresAt)}`)
    return t
  }
  if (expiresIn !== undefined && expiresIn !== null) {
    const ms = parseDuration(expiresIn)
    if (ms === null || ms <= 0) throw new GW_ERR_BAD_REQUEST(`expiresIn: ${DURATION_HINT}, got ${JSON.stringify(expiresIn)}`)
    return now + ms
  }
  return 0
}

function toFields (r: KeyRecord): Record<string, string> {
  return {
    id: r.id,
    client: r.client,
    name: r.name,
    scopes: JSON.stringify(r.scopes),
    plan: r.plan ?? '',
    metadata: JSON.stringify(r.metadata),
    createdAt: String(r.createdAt),
    expiresAt: String(r.expiresAt),
    hash: r.hash,
    prevHash: r.prevHash,
    prevUntil: String(r.prevUntil),
    rotatedAt: String(r.rotatedAt),
    revokedAt: String(r.revokedAt),
    lastUsedAt: String(r.lastUsedAt),
  }
}

function parseJson<T> (raw: string | undefined, fallback: T): T {
  if (raw === undefined || raw === '') return fallback
  try { return JSON.parse(raw) as T } catch { return fallback }
}

const num = (raw: string | undefined): number => {
  const n = Number(raw ?? 0)
  return Number.isFinite(n) ? n : 0
}

/** A record from its stored fields, or null when they are not a key (a half-written or foreign hash). */
export function fromFields (f: Record<string, string>): KeyRecord | null {
  if (f.id === undefined || !KEY_ID.test(f.id) || f.hash === undefined || !/^[0-9a-f]{64}$/.test(f.hash) || f.client === undefined) return null
  const scopes = parseJson<unknown>(f.scopes, [])
  return {
    id: f.id,
    client: f.client,
    name: f.name ?? '',
    scopes: Array.isArray(scopes) ? scopes.filter((s): s is string => typeof s === 'string') : [],
    plan: f.plan === undefined || f.plan === '' ? null : f.plan,
    metadata: parseJson<Record<string, unknown>>(f.metadata, {}),
    createdAt: num(f.createdAt),
    expiresAt: num(f.expiresAt),
    hash: f.hash,
    prevHash: f.prevHash !== undefined && /^[0-9a-f]{64}$/.test(f.prevHash) ? f.prevHash : '',
    prevUntil: num(f.prevUntil),
    rotatedAt: num(f.rotatedAt),
    revokedAt: num(f.revokedAt),
    lastUsedAt: num(f.lastUsedAt),
  }
}

export interface ListFilter { client?: string, status?: KeyStatus | 'all' }

/**
 * The key records in a store. Every change is published on KEYS_CHANNEL so that each replica drops its cached
 * copy at once (revocation, rotation; creation clears a cached "unknown id").
 */
export class KeyRepository {
  /** origin: who writes (a replica's random tag, or "cli"), sent along with each change */
  readonly #store: Store
  constructor (store: Store, readonly origin = 'cli') { this.#store = store }

  async #changed (id: string): Promise<void> { await this.#store.publish(KEYS_CHANNEL, `${id} ${this.origin}`) }

  async get (id: string): Promise<KeyRecord | null> {
    if (!KEY_ID.test(id)) return null
    const f = await this.#store.hgetall(recordKey(id))
    return f === null ? null : fromFields(f)
  }

  async #must (id: string): Promise<KeyRecord> {
    const r = await this.get(id)
    if (r === null) throw new GW_ERR_KEY_NOT_FOUND(KEY_ID.test(id) ? id : '(not a key id)')
    return r
  }

  /** Makes a key; the returned `key` is the only time the secret exists outside the caller. */
  async create (input: NewKeyInput): Promise<{ key: string, record: KeyRecord }> {
    const now = Date.now()
    const problems = checkNewKey(input, now)
    if (problems.length > 0) throw new GW_ERR_BAD_REQUEST(`Invalid API key: ${problems.join('; ')}`)
    let id = randomString(ALPHA36, KEY_ID_LENGTH)
    // 36^12 ids: a clash is improbable, but never overwrite a record
    for (let i = 0; i < 5 && await this.#store.hgetall(recordKey(id)) !== null; i++) id = randomString(ALPHA36, KEY_ID_LENGTH)
    const key = `${KEY_PREFIX}${id}_${randomString(ALPHA62, SECRET_LENGTH)}`
    const record: KeyRecord = {
      id,
      client: input.client,
      name: input.name.trim(),
      scopes: [...new Set(input.scopes ?? [])],
      plan: input.plan ?? null,
      metadata: input.metadata ?? {},
      createdAt: now,
      expiresAt: input.expiresAt ?? 0,
      hash: hashKey(key),
      prevHash: '',
      prevUntil: 0,
      rotatedAt: 0,
      revokedAt: 0,
      lastUsedAt: 0,
    }
    await this.#store.hset(recordKey(id), toFields(record))
    await this.#store.sadd(INDEX, [id])
    await this.#changed(id)
    return { key, record }
  }

  async list (filter: ListFilter = {}): Promise<KeyRecord[]> {
    const ids = await this.#store.smembers(INDEX)
    const now = Date.now()
    const records = await Promise.all(ids.filter((id) => KEY_ID.test(id)).map(async (id) => await this.get(id)))
    return records
      .filter((r): r is KeyRecord => r !== null)
      .filter((r) => (filter.client === undefined || r.client === filter.client) &&
        (filter.status === undefined || filter.status === 'all' || statusOf(r, now) === filter.status))
      .sort((a, b) => a.createdAt - b.createdAt || a.id.localeCompare(b.id))
  }

  /**
   * A new secret; the previous one stays valid for graceMs (0 = refused at once). Only the last previous secret is
   * kept: rotating twice within the grace period ends the first one's grace.
   */
  async rotate (id: string, graceMs = DEFAULT_GRACE_MS): Promise<{ key: string, record: KeyRecord }> {
    const r = await this.#must(id)
    const now = Date.now()
    const status = statusOf(r, now)
    if (status !== 'active') throw new GW_ERR_KEY_CONFLICT(id, `${status}; issue a new key instead`)
    const key = `${KEY_PREFIX}${id}_${randomString(ALPHA62, SECRET_LENGTH)}`
    const next: KeyRecord = {
      ...r,
      hash: hashKey(key),
      prevHash: graceMs > 0 ? r.hash : '',
      prevUntil: graceMs > 0 ? now + graceMs : 0,
      rotatedAt: now,
    }
    await this.#store.hset(recordKey(id), { hash: next.hash, prevHash: next.prevHash, prevUntil: String(next.prevUntil), rotatedAt: String(now) })
    await this.#changed(id)
    return { key, record: next }
  }

  /** Revokes a key on every replica at once; revoking twice is not an error. */
  async revoke (id: string): Promise<KeyRecord> {
    const r = await this.#must(id)
    if (r.revokedAt !== 0) return r
    const now = Date.now()
    await this.#store.hset(recordKey(id), { revokedAt: String(now) })
    await this.#changed(id)
    return { ...r, revokedAt: now }
  }

  async show (id: string): Promise<KeyRecord> { return await this.#must(id) }

  /** "last used" times, batched by the plugin: one field write per key, never a read-modify-write of the record */
  async touch (used: ReadonlyMap<string, number>): Promise<void> {
    await Promise.all([...used].map(async ([id, at]) => { await this.#store.hset(recordKey(id), { lastUsedAt: String(at) }) }))
  }
}
