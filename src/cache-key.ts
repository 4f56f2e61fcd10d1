/**
 * Cache keys, shared by the cache plugin (plugins/cache.ts) and the purge (src/cache-purge.ts, the admin API and
 * the CLI), so that both agree on the layout.
 *
 * Store layout (under REDIS_PREFIX):
 *   cache:e:<path>?<q>:<h>        an entry, or a vary marker naming the upstream's Vary headers
 *   cache:e:<path>?<q>:<h>:<v>    the variant of that entry for this request's values of those headers
 *   cache:l:<path>?<q>:<h>[:<v>]  the fill lock of one key (stampede protection)
 *   cache:t:<tag>                 the set of entry keys carrying a tag
 *   channel cache:invalidate      purge messages, so that every replica drops its in-process (L1) copies
 *
 * <path> is the normalized request path in clear, so a purge by path prefix is one SCAN with no reads; <q> is a
 * short hash of the sorted query (a purge by URL matches it); <h> hashes all the key material (method, full path,
 * query, the route's Vary header values, the client) and <v> the values of the upstream's Vary headers, so that no
 * two requests that must not share an answer share a key, whatever the truncations. No hash tags: the cache never
 * runs a script over several keys, and one tag per route would put a whole route on one Redis Cluster node.
 */
import { hash } from 'node:crypto'

export const ENTRY_PREFIX = 'cache:e:'
export const LOCK_PREFIX = 'cache:l:'
export const TAG_PREFIX = 'cache:t:'
export const INVALIDATE_CHANNEL = 'cache:invalidate'

/** Paths longer than this are cut in the key (the hash still covers all of it); a prefix purge sees the cut. */
export const MAX_PATH_IN_KEY = 512

export function digest (material: string | Buffer, length = 22): string {
  return hash('sha256', material, 'base64url').slice(0, length)
}

const PCT = /%[0-9a-fA-F]{2}/g

function normalizePct (m: string): string {
  const c = parseInt(m.slice(1), 16)
  // RFC 3986 §6.2.2.2: decode unreserved characters. "." stays encoded: the proxy refuses "%2e" in a path, and a
  // refused path must never map to the key of an accepted one.
  if ((c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) || c === 0x2d || c === 0x5f || c === 0x7e) {
    return String.fromCharCode(c)
  }
  return m.toUpperCase()
}

/** Percent-encoding normalized (RFC 3986 §6.2.2.1-2): "%7e" and "~" are the same key, "%2f" and "%2F" too. */
export function normalizePath (path: string): string {
  return path.indexOf('%') === -1 ? path : path.replace(PCT, normalizePct)
}

function paramName (pair: string): string {
  const eq = pair.indexOf('=')
  return eq === -1 ? pair : pair.slice(0, eq)
}

/**
 * The query with its parameters sorted by name (the order of repeated names is kept: it can matter upstream) and
 * empty pairs dropped. Values are compared as sent, only their percent-encoding normalized.
 */
export function normalizeQuery (query: string): string {
  if (query === '') return ''
  const pairs = query.split('&').filter((p) => p !== '')
  if (pairs.length > 1) pairs.sort((a, b) => { const x = paramName(a); const y = paramName(b); return x < y ? -1 : x > y ? 1 : 0 })
  let out = ''
  for (let i = 0; i < pairs.length; i++) out += (i === 0 ? '' : '&') + normalizePath(pairs[i] as string)
  return out
}

/** The normalized path and query of a request URL (the path as received, before any rewrite). */
export function splitUrl (url: string): { path: string, query: string } {
  const q = url.indexOf('?')
  const h = url.indexOf('#')
  const end = h === -1 ? url.length : h
  if (q === -1 || q > end) return { path: normalizePath(url.slice(0, end)), query: '' }
  return { path: normalizePath(url.slice(0, q)), query: normalizeQuery(url.slice(q + 1, end)) }
}

/** `cache:e:<path>?<q>:`: every entry of one URL (all clients, all variants) starts with this. */
export function urlKeyPrefix (path: string, query: string): string {
  const p = path.length > MAX_PATH_IN_KEY ? path.slice(0, MAX_PATH_IN_KEY) : path
  return `${ENTRY_PREFIX}${p}?${query === '' ? '-' : digest(query, 16)}:`
}

/** The lock that guards the fill of an entry key. */
export function lockKeyOf (entryKey: string): string {
  return LOCK_PREFIX + entryKey.slice(ENTRY_PREFIX.length)
}

export function tagKeyOf (tag: string): string {
  return TAG_PREFIX + tag
}

/** Tags are short printable strings (they travel in headers and in keys). */
export const TAG = /^[\x21-\x7e]{1,128}$/

/** Key material longer than this is not remembered (a long Vary value or path would make the memo costly). */
export const MEMO_MAX_MATERIAL = 512
export const MEMO_MAX_ENTRIES = 4096

/**
 * The base key of each key material seen lately, so that a hot URL costs one map look-up instead of two SHA-256
 * digests per request. Bounded: emptied when full (the hot keys come back at once), and long material is not kept.
 */
export class KeyMemo {
  private readonly keys = new Map<string, string>()

  baseKey (material: string, path: string, query: string): string {
    const known = this.keys.get(material)
    if (known !== undefined) return known
    const key = urlKeyPrefix(path, query) + digest(material)
    if (material.length <= MEMO_MAX_MATERIAL) {
      if (this.keys.size >= MEMO_MAX_ENTRIES) this.keys.clear()
      this.keys.set(material, key)
    }
    return key
  }

  get size (): number { return this.keys.size }
}
