/**
 * The in-process cache in front of Redis (L1): bounded by entries and by bytes, evicting by "second chance" (CLOCK,
 * an approximation of least recently used: a hit sets a flag, the eviction sweep gives a flagged entry one more lap;
 * see ApiKeyCache in plugins/auth.ts for why a hit does not move the entry in the Map),
 * each copy trusted for at most `ttlMs` (and never past its freshness) so that a replica that missed a purge
 * message serves old content for a bounded time only. It also memoizes the compressed variants of a body, so that a
 * hot entry is compressed once per replica and coding, not once per hit.
 */
import type { CacheEntry, Stored } from './cache-entry.js'

interface Item {
  stored: Stored
  expiresAt: number
  size: number
  variants: Map<string, Buffer> | null
  /** read since the eviction sweep last passed it */
  used: boolean
}

/** fixed cost of an item beyond its body and header bytes: the Map slot, the objects, the key */
const OVERHEAD = 256

/**
 * `buf`, or a copy of it in an ArrayBuffer of its own size when it is a small view into a larger one. A value read
 * from Redis is a view into the socket read it came in (up to 64 KiB, shared with other replies): an L1 entry that
 * kept the view would hold the whole read for as long as it lives, unseen by L1's byte count.
 */
export function ownBuffer (buf: Buffer): Buffer {
  if (buf.length * 2 >= buf.buffer.byteLength) return buf
  const own = Buffer.allocUnsafeSlow(buf.length)
  buf.copy(own)
  return own
}

export class L1Cache {
  readonly #map = new Map<string, Item>()
  #bytes = 0

  constructor (readonly maxEntries: number, readonly maxBytes: number, readonly ttlMs: number) {}

  get enabled (): boolean { return this.maxEntries > 0 && this.maxBytes > 0 }
  get entries (): number { return this.#map.size }
  get bytes (): number { return this.#bytes }

  get (key: string, now: number): Stored | undefined {
    const item = this.#map.get(key)
    if (item === undefined) return undefined
    if (item.expiresAt <= now) { this.#remove(key, item); return undefined }
    item.used = true
    return item.stored
  }

  set (stored: Stored, now: number): void {
    if (!this.enabled) return
    let size = OVERHEAD + stored.key.length * 2
    let expiresAt = now + this.ttlMs
    if (stored.kind === 'response') {
      size += stored.body.length
      for (const [n, v] of stored.headers) size += n.length + v.length
      expiresAt = Math.min(expiresAt, stored.freshUntil)
      if (expiresAt <= now) return
    }
    // one large entry must not flush the whole cache
    if (size > this.maxBytes / 4) return
    const old = this.#map.get(stored.key)
    if (old !== undefined) this.#remove(stored.key, old)
    const item: Item = { stored, expiresAt, size, variants: null, used: false }
    this.#map.set(stored.key, item)
    this.#bytes += size
    this.#evict(item)
  }

  /** a compressed body memoized for an entry still held here */
  variant (entry: CacheEntry, coding: string): Buffer | undefined {
    const item = this.#map.get(entry.key)
    return item?.stored === entry ? item.variants?.get(coding) : undefined
  }

  addVariant (entry: CacheEntry, coding: string, body: Buffer): void {
    const item = this.#map.get(entry.key)
    if (item === undefined || item.stored !== entry) return
    if (item.variants === null) item.variants = new Map()
    if (item.variants.has(coding)) return
    item.variants.set(coding, body)
    item.size += body.length
    this.#bytes += body.length
    this.#evict(item)
  }

  delete (key: string): void {
    const item = this.#map.get(key)
    if (item !== undefined) this.#remove(key, item)
  }

  /** drops every item the predicate selects; returns how many */
  deleteWhere (select: (key: string, stored: Stored) => boolean): number {
    let n = 0
    for (const [key, item] of this.#map) {
      if (select(key, item.stored)) { this.#remove(key, item); n++ }
    }
    return n
  }

  clear (): void {
    this.#map.clear()
    this.#bytes = 0
  }

  #remove (key: string, item: Item): void {
    this.#map.delete(key)
    this.#bytes -= item.size
  }

  /**
   * From the oldest end: a used item moves to the newest end with its flag cleared, the first unused one goes.
   * `keep`, the item just stored or grown, is passed over while anything else is left. Every item is passed at
   * most twice (once to clear its flag), so the sweep is bounded.
   */
  #evict (keep: Item): void {
    const map = this.#map
    while (map.size > this.maxEntries || this.#bytes > this.maxBytes) {
      const oldest = map.entries().next()
      if (oldest.done === true) break
      const [key, item] = oldest.value
      if (item.used || (item === keep && map.size > 1)) {
        item.used = false
        map.delete(key)
        map.set(key, item)
        continue
      }
      this.#remove(key, item)
    }
  }
}
