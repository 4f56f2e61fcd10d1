/**
 * A cached response as one binary value: a fixed header (version, kind, status, times), a small JSON block with
 * the response headers, path, tags and upstream Vary names, then the body bytes as received. A hit decodes the
 * small block once and sends the body as a slice of the stored buffer: no base64, no re-serialization.
 *
 *   0  u8   version (1)
 *   1  u8   kind: 1 response, 2 vary marker
 *   2  u16  status
 *   4  f64  storedAt (epoch ms)
 *  12  f64  freshUntil
 *  20  f64  staleWhileRevalidateUntil
 *  28  f64  staleIfErrorUntil
 *  36  u32  initial age (s)
 *  40  u32  length of the JSON block
 *  44  JSON { h: [[name, value], ...], p: path, t: [tags], v: [vary names] }, then the body
 */

const VERSION = 1
const KIND_RESPONSE = 1
const KIND_VARY = 2
const FIXED = 44

export interface CacheEntry {
  readonly kind: 'response'
  /** the store key it lives under */
  readonly key: string
  readonly status: number
  /** response headers to replay, lower-case names (no hop-by-hop, no Date/Age/Content-Length) */
  readonly headers: ReadonlyArray<readonly [string, string]>
  readonly body: Buffer
  readonly storedAt: number
  readonly freshUntil: number
  readonly staleWhileRevalidateUntil: number
  readonly staleIfErrorUntil: number
  readonly initialAge: number
  readonly path: string
  readonly tags: readonly string[]
  /** the upstream's Vary header names this entry was selected by ([] = none) */
  readonly varyNames: readonly string[]
  // derived at decode time, for the hit path
  readonly etag: string | null
  readonly lastModified: string | null
  readonly contentType: string | null
  readonly contentEncoding: string | null
  readonly noTransform: boolean
}

export interface VaryMarker {
  readonly kind: 'vary'
  readonly key: string
  readonly names: readonly string[]
  readonly path: string
  readonly tags: readonly string[]
}

export type Stored = CacheEntry | VaryMarker

interface Meta { h?: Array<[string, string]>, p?: string, t?: string[], v?: string[] }

function write (kind: number, status: number, times: readonly number[], initialAge: number, meta: Meta, body: Buffer | null): Buffer {
  const json = Buffer.from(JSON.stringify(meta))
  const out = Buffer.allocUnsafe(FIXED + json.length + (body?.length ?? 0))
  out.writeUInt8(VERSION, 0)
  out.writeUInt8(kind, 1)
  out.writeUInt16BE(status, 2)
  out.writeDoubleBE(times[0] ?? 0, 4)
  out.writeDoubleBE(times[1] ?? 0, 12)
  out.writeDoubleBE(times[2] ?? 0, 20)
  out.writeDoubleBE(times[3] ?? 0, 28)
  out.writeUInt32BE(Math.min(initialAge, 0xffffffff), 36)
  out.writeUInt32BE(json.length, 40)
  json.copy(out, FIXED)
  if (body !== null) body.copy(out, FIXED + json.length)
  return out
}

export function encodeEntry (e: Omit<CacheEntry, 'kind' | 'key' | 'etag' | 'lastModified' | 'contentType' | 'contentEncoding' | 'noTransform'>): Buffer {
  return write(KIND_RESPONSE, e.status, [e.storedAt, e.freshUntil, e.staleWhileRevalidateUntil, e.staleIfErrorUntil], e.initialAge,
    { h: e.headers as Array<[string, string]>, p: e.path, t: e.tags as string[], v: e.varyNames as string[] }, e.body)
}

export function encodeMarker (names: readonly string[], path: string, tags: readonly string[]): Buffer {
  return write(KIND_VARY, 0, [0, 0, 0, 0], 0, { v: names as string[], p: path, t: tags as string[] }, null)
}

function headerOf (headers: ReadonlyArray<readonly [string, string]>, name: string): string | null {
  for (const [n, v] of headers) if (n === name) return v
  return null
}

/** Builds the in-memory entry (derived fields filled in) from its parts. */
export function makeEntry (key: string, e: Omit<CacheEntry, 'kind' | 'key' | 'etag' | 'lastModified' | 'contentType' | 'contentEncoding' | 'noTransform'>): CacheEntry {
  const cc = headerOf(e.headers, 'cache-control')
  const ce = headerOf(e.headers, 'content-encoding')
  return {
    kind: 'response',
    key,
    ...e,
    etag: headerOf(e.headers, 'etag'),
    lastModified: headerOf(e.headers, 'last-modified'),
    contentType: headerOf(e.headers, 'content-type'),
    contentEncoding: ce === null || ce.trim().toLowerCase() === 'identity' ? null : ce,
    noTransform: cc !== null && /(?:^|,)\s*no-transform\s*(?:,|$)/i.test(cc),
  }
}

function strings (v: unknown): string[] {
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : []
}

/** The stored value under `key`, or null when it is not one of ours (another version, a foreign or torn value). */
export function decodeStored (key: string, buf: Buffer): Stored | null {
  if (buf.length < FIXED || buf.readUInt8(0) !== VERSION) return null
  const kind = buf.readUInt8(1)
  const jsonLength = buf.readUInt32BE(40)
  if (FIXED + jsonLength > buf.length) return null
  let meta: Meta
  try { meta = JSON.parse(buf.toString('utf8', FIXED, FIXED + jsonLength)) as Meta } catch { return null }
  if (typeof meta !== 'object' || meta === null) return null
  const path = typeof meta.p === 'string' ? meta.p : ''
  const tags = strings(meta.t)
  const varyNames = strings(meta.v)
  if (kind === KIND_VARY) return { kind: 'vary', key, names: varyNames, path, tags }
  if (kind !== KIND_RESPONSE) return null
  const headers: Array<[string, string]> = []
  if (Array.isArray(meta.h)) for (const h of meta.h) if (Array.isArray(h) && typeof h[0] === 'string' && typeof h[1] === 'string') headers.push([h[0], h[1]])
  return makeEntry(key, {
    status: buf.readUInt16BE(2),
    storedAt: buf.readDoubleBE(4),
    freshUntil: buf.readDoubleBE(12),
    staleWhileRevalidateUntil: buf.readDoubleBE(20),
    staleIfErrorUntil: buf.readDoubleBE(28),
    initialAge: buf.readUInt32BE(36),
    headers,
    // a view into the stored value, not a copy
    body: buf.subarray(FIXED + jsonLength),
    path,
    tags,
    varyNames,
  })
}

