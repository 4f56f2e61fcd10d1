/**
 * Purging the shared cache, for the admin API (plugins/cache.ts, DELETE /admin/cache) and the CLI
 * (`fastgate cache purge`). Works on the store alone, so the CLI needs no running gateway. Every purge is also
 * published on the invalidation channel: each replica drops the matching in-process (L1) copies.
 *
 *   key     a URL as clients send it (`/users/7?fields=name`): every entry of exactly that path and query, for all
 *           clients and variants; or an internal key (`cache:e:...`): that entry and its variants
 *   prefix  a path prefix (`/users`): every entry whose path starts with it (a string prefix: `/users` also
 *           matches `/users-admin`; write `/users/` to stop at the segment)
 *   tag     every entry tagged so (route `cache.tags`, or the values of the route's `cache.tagHeader` response header)
 */
import type { Store } from './store/types.js'
import type { Stored } from './cache-entry.js'
import { ENTRY_PREFIX, INVALIDATE_CHANNEL, TAG, normalizePath, splitUrl, tagKeyOf, urlKeyPrefix } from './cache-key.js'
import { GW_ERR_BAD_REQUEST } from './errors.js'

export interface PurgeSelector { key?: string, prefix?: string, tag?: string }

/** What a replica drops from its L1, as published on INVALIDATE_CHANNEL (JSON). */
export type Invalidation = { key: string } | { prefix: string } | { tag: string }

export interface PurgeResult {
  /** store keys deleted (entries, vary markers and variants) */
  purged: number
  invalidation: Invalidation
}

/** The L1 invalidation and the store work of a selector; throws GW_ERR_BAD_REQUEST for a malformed one. */
export function purgePlan (sel: PurgeSelector): { scan: string | null, exact: string | null, tag: string | null, invalidation: Invalidation } {
  const given = (['key', 'prefix', 'tag'] as const).filter((f) => sel[f] !== undefined)
  if (given.length !== 1) throw new GW_ERR_BAD_REQUEST('A cache purge takes exactly one of key, prefix or tag')
  if (sel.key !== undefined) {
    const key = sel.key
    if (typeof key !== 'string' || key === '') throw new GW_ERR_BAD_REQUEST('key: expected a URL path like "/users/7?a=1" or a cache key')
    if (key.startsWith(ENTRY_PREFIX)) return { scan: key + ':', exact: key, tag: null, invalidation: { key } }
    if (!key.startsWith('/')) throw new GW_ERR_BAD_REQUEST('key: expected a URL path starting with "/" (with its query, if any) or a cache key "cache:e:..."')
    const { path, query } = splitUrl(key)
    const prefix = urlKeyPrefix(path, query)
    return { scan: prefix, exact: null, tag: null, invalidation: { prefix } }
  }
  if (sel.prefix !== undefined) {
    if (typeof sel.prefix !== 'string' || !sel.prefix.startsWith('/')) throw new GW_ERR_BAD_REQUEST('prefix: expected a path prefix starting with "/"')
    if (sel.prefix.includes('?')) throw new GW_ERR_BAD_REQUEST('prefix: a path prefix has no query; purge one URL with key instead')
    const prefix = ENTRY_PREFIX + normalizePath(sel.prefix)
    return { scan: prefix, exact: null, tag: null, invalidation: { prefix } }
  }
  const tag = sel.tag
  if (typeof tag !== 'string' || !TAG.test(tag)) throw new GW_ERR_BAD_REQUEST('tag: expected 1-128 printable characters without spaces')
  return { scan: null, exact: null, tag, invalidation: { tag } }
}

/**
 * Deletes the selected entries from the store and tells every replica to drop its L1 copies. Rejects when the
 * store is unreachable (nothing is half-announced: the message goes out after the deletes).
 */
export async function purgeCache (store: Store, sel: PurgeSelector): Promise<PurgeResult> {
  const plan = purgePlan(sel)
  let purged = 0
  if (plan.exact !== null) purged += await store.del(plan.exact)
  if (plan.scan !== null) {
    for await (const batch of store.scan(plan.scan)) purged += await store.del(...batch)
  }
  if (plan.tag !== null) {
    const setKey = tagKeyOf(plan.tag)
    const members = (await store.smembers(setKey)).filter((k) => k.startsWith(ENTRY_PREFIX))
    for (let i = 0; i < members.length; i += 500) purged += await store.del(...members.slice(i, i + 500))
    await store.del(setKey)
  }
  await store.publish(INVALIDATE_CHANNEL, JSON.stringify(plan.invalidation))
  return { purged, invalidation: plan.invalidation }
}

/** A published invalidation, or null for anything else on the channel. */
export function parseInvalidation (message: string): Invalidation | null {
  let m: unknown
  try { m = JSON.parse(message) } catch { return null }
  if (typeof m !== 'object' || m === null) return null
  const o = m as Record<string, unknown>
  if (typeof o.key === 'string') return { key: o.key }
  if (typeof o.prefix === 'string') return { prefix: o.prefix }
  if (typeof o.tag === 'string') return { tag: o.tag }
  return null
}

/** Whether an L1 item (its store key and value) is selected by an invalidation. */
export function invalidates (inv: Invalidation, key: string, stored: Stored): boolean {
  if ('key' in inv) return key === inv.key || key.startsWith(inv.key + ':')
  if ('prefix' in inv) return key.startsWith(inv.prefix)
  return stored.tags.includes(inv.tag)
}
