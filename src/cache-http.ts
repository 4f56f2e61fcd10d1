/**
 * The HTTP caching rules the shared cache (plugins/cache.ts) applies, from RFC 9111 (HTTP Caching) and RFC 9110
 * (conditional requests). Pure functions over header values: no I/O, nothing per request that can be hoisted.
 */
import type { CachePolicy } from './policy.js'

type HeaderValue = string | string[] | number | undefined

/** The Cache-Control directives the gateway acts on; -1 = absent. */
export interface CacheControl {
  noStore: boolean
  noCache: boolean
  private: boolean
  public: boolean
  mustRevalidate: boolean
  proxyRevalidate: boolean
  noTransform: boolean
  onlyIfCached: boolean
  maxAge: number
  sMaxAge: number
  minFresh: number
}

const EMPTY: CacheControl = Object.freeze({
  noStore: false, noCache: false, private: false, public: false, mustRevalidate: false, proxyRevalidate: false,
  noTransform: false, onlyIfCached: false, maxAge: -1, sMaxAge: -1, minFresh: -1,
})

// token[=token|quoted-string], comma-separated (RFC 9111 §5.2); directive names are case-insensitive
const DIRECTIVE = /([!#$%&'*+.^_`|~0-9A-Za-z-]+)(?:\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*))?/g

/**
 * RFC 9111 §1.2.2: delta-seconds; a value that is not one makes the response stale at once (0), and a value
 * past 2^31 is taken as 2^31.
 */
function deltaSeconds (raw: string | undefined): number {
  if (raw === undefined) return 0
  const v = raw.startsWith('"') ? raw.slice(1, -1) : raw
  if (!/^\d+$/.test(v)) return 0
  return Math.min(Number(v), 2 ** 31)
}

export function parseCacheControl (value: HeaderValue): CacheControl {
  if (value === undefined) return EMPTY
  const text = Array.isArray(value) ? value.join(',') : String(value)
  if (text === '') return EMPTY
  const cc: CacheControl = { ...EMPTY }
  for (const m of text.matchAll(DIRECTIVE)) {
    const name = (m[1] as string).toLowerCase()
    switch (name) {
      case 'no-store': cc.noStore = true; break
      // a no-cache or private with field names (RFC 9111 §5.2.2.4, §5.2.2.7) is treated as the unqualified form:
      // stricter, never wrong
      case 'no-cache': cc.noCache = true; break
      case 'private': cc.private = true; break
      case 'public': cc.public = true; break
      case 'must-revalidate': cc.mustRevalidate = true; break
      case 'proxy-revalidate': cc.proxyRevalidate = true; break
      case 'no-transform': cc.noTransform = true; break
      case 'only-if-cached': cc.onlyIfCached = true; break
      case 'max-age': if (cc.maxAge === -1) cc.maxAge = deltaSeconds(m[2]); break
      case 's-maxage': if (cc.sMaxAge === -1) cc.sMaxAge = deltaSeconds(m[2]); break
      case 'min-fresh': if (cc.minFresh === -1) cc.minFresh = deltaSeconds(m[2]); break
    }
  }
  return cc
}

/**
 * Statuses the cache stores: the heuristically cacheable ones of RFC 9110 §15.1 except 206 (partial content is
 * never assembled here) and 308 (kept out like 301's sibling 302/307, which need explicit freshness).
 */
export const CACHEABLE_STATUS: ReadonlySet<number> = new Set([200, 203, 204, 300, 301, 404, 405, 410, 414, 501])

/** Upstream answers after which a stale entry may be served instead (RFC 5861 §4: stale-if-error). */
export const ERROR_STATUS: ReadonlySet<number> = new Set([500, 502, 503, 504])

/** The header names of a Vary value, lower-cased; '*' when it varies on anything (never stored). */
export function parseVary (value: HeaderValue): string[] | '*' {
  if (value === undefined) return []
  const text = Array.isArray(value) ? value.join(',') : String(value)
  const out: string[] = []
  for (const part of text.split(',')) {
    const name = part.trim().toLowerCase()
    if (name === '') continue
    if (name === '*') return '*'
    if (!out.includes(name)) out.push(name)
  }
  return out
}

export interface Freshness {
  /** ms the response stays fresh from now; <= 0 = do not store */
  freshMs: number
  /** seconds the response had already spent in caches upstream (its Age) */
  initialAge: number
  staleWhileRevalidateMs: number
  staleIfErrorMs: number
}

function headerString (v: HeaderValue): string | undefined {
  if (v === undefined) return undefined
  return Array.isArray(v) ? v[0] : String(v)
}

/**
 * How long a response may be served from the cache (RFC 9111 §4.2.1): the route's TTL, capped by the upstream's
 * s-maxage, else max-age, else Expires, unless the route ignores the upstream's freshness; minus the time the
 * response already spent in caches (its Age, §4.2.3). Serving stale is refused when the upstream forbids it
 * (must-revalidate, proxy-revalidate, s-maxage: §4.2.4), unless the route ignores the upstream's freshness.
 */
export function freshness (policy: CachePolicy, cc: CacheControl, headers: { age?: HeaderValue, expires?: HeaderValue, date?: HeaderValue }, now: number): Freshness {
  let lifetimeMs = policy.ttlMs
  const ageRaw = headerString(headers.age)
  const initialAge = ageRaw !== undefined && /^\d+$/.test(ageRaw) ? Math.min(Number(ageRaw), 2 ** 31) : 0
  let staleAllowed = true
  if (!policy.ignoreUpstreamMaxAge) {
    let capMs = -1
    if (cc.sMaxAge >= 0) capMs = cc.sMaxAge * 1000
    else if (cc.maxAge >= 0) capMs = cc.maxAge * 1000
    else {
      const expires = headerString(headers.expires)
      if (expires !== undefined) {
        const at = Date.parse(expires)
        // an invalid Expires (e.g. "0") means already expired (RFC 9111 §5.3)
        const date = headerString(headers.date)
        const base = date !== undefined && !Number.isNaN(Date.parse(date)) ? Date.parse(date) : now
        capMs = Number.isNaN(at) ? 0 : Math.max(0, at - base)
      }
    }
    if (capMs >= 0) lifetimeMs = Math.min(lifetimeMs, capMs)
    if (cc.mustRevalidate || cc.proxyRevalidate || cc.sMaxAge >= 0) staleAllowed = false
  }
  return {
    freshMs: lifetimeMs - initialAge * 1000,
    initialAge,
    staleWhileRevalidateMs: staleAllowed ? policy.staleWhileRevalidateMs : 0,
    staleIfErrorMs: staleAllowed ? policy.staleIfErrorMs : 0,
  }
}

/** The opaque-tag of an entity-tag, for the weak comparison of RFC 9110 §8.8.3.2 ('W/"x"' and '"x"' match). */
function opaque (tag: string): string {
  const t = tag.trim()
  return t.startsWith('W/') ? t.slice(2) : t
}

/** RFC 9110 §13.1.2: If-None-Match, weak comparison; '*' matches any current representation. */
export function noneMatch (ifNoneMatch: string, etag: string | null): boolean {
  if (ifNoneMatch.trim() === '*') return true
  if (etag === null) return false
  const want = opaque(etag)
  // entity-tags cannot contain commas except inside the quotes, which a well-formed opaque-tag never has
  for (const part of ifNoneMatch.split(',')) if (opaque(part) === want) return true
  return false
}

/**
 * Whether a GET/HEAD with these conditionals gets 304 Not Modified for a response with this validator (RFC 9110
 * §13.2.2: If-None-Match wins over If-Modified-Since, which only applies with a Last-Modified date).
 */
export function notModified (ifNoneMatch: string | undefined, ifModifiedSince: string | undefined, etag: string | null, lastModified: string | null): boolean {
  if (ifNoneMatch !== undefined) return noneMatch(ifNoneMatch, etag)
  if (ifModifiedSince === undefined || lastModified === null) return false
  const since = Date.parse(ifModifiedSince)
  const modified = Date.parse(lastModified)
  if (Number.isNaN(since) || Number.isNaN(modified)) return false
  return modified <= since
}

/** Headers a 304 carries (RFC 9110 §15.4.5): those that would update a stored response; no content metadata. */
export const NOT_MODIFIED_HEADERS: ReadonlySet<string> = new Set(['cache-control', 'content-location', 'date', 'etag', 'expires', 'vary', 'last-modified'])

/** A strong validator sent for a transformed (compressed) body must become weak (RFC 9110 §8.8.1). */
export function weakEtag (etag: string): string {
  return etag.startsWith('W/') ? etag : 'W/' + etag
}
