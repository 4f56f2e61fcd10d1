/**
 * gw-compress: gzip and brotli for proxied routes, chosen by the client's Accept-Encoding (RFC 9110 §12.5.3),
 * above COMPRESS_THRESHOLD bytes, for compressible content types only. Never touches a body the upstream already
 * encoded (any Content-Encoding), a partial response, or one marked Cache-Control: no-transform (RFC 9110 §7.7).
 * Every response whose form depends on Accept-Encoding says so with Vary: Accept-Encoding, also when it goes out
 * plain, so that caches further down keep the variants apart; a strong ETag becomes weak on a compressed body
 * (RFC 9110 §8.8.1: it is no longer the same bytes).
 *
 * Buffered bodies are compressed in one call (up to 64 KiB on the event loop, larger ones on the thread pool);
 * streamed ones through a zlib stream, flushed per chunk when the length is unknown so that a streamed response
 * keeps streaming. Brotli runs at quality COMPRESS_BROTLI_QUALITY (default 4: this is the hot path; 11 costs
 * tens of times the CPU for a few percent).
 *
 * Why not @fastify/compress (the card's package): it decides that a body is "already compressed" by sniffing its
 * first bytes, and then sends it unchanged but labelled with the negotiated Content-Encoding
 * (fastify-compress#347, open). A text body that happens to begin like a zlib header ("x ", "x^", "80", "(4"...) is
 * delivered as undecodable garbage. A gateway knows from the upstream's Content-Encoding header whether a body is
 * encoded, so it has no reason to guess. The cache (plugins/cache.ts) also needs the same negotiation and encoders
 * to serve compressed variants it memoizes per entry, which this plugin exposes as `app.gwCompress`.
 */
import fp from 'fastify-plugin'
import zlib from 'node:zlib'
import { pipeline, type Readable } from 'node:stream'
import type { FastifyInstance, FastifyReply, FastifyRequest, HookHandlerDoneFunction, RouteOptions } from 'fastify'
import { VARS, type GatewayConfig } from '../src/config.js'
import { weakEtag } from '../src/cache-http.js'
import { addRouteHook } from '../src/route-hooks.js'
import { markOnSend } from '../src/direct-reply.js'

export type Coding = 'br' | 'gzip'

export interface GatewayCompression {
  readonly enabled: boolean
  readonly threshold: number
  /** the coding to send for this Accept-Encoding, or null for the body as is */
  negotiate (acceptEncoding: string | string[] | undefined): Coding | null
  /** whether a response of this type and size is compressed for clients that accept it */
  eligible (contentType: string | null, size: number): boolean
  /** for a reply with all its headers set and a body of `size` bytes: untouched, Vary only, or compressed with */
  decide (request: FastifyRequest, reply: FastifyReply, size: number): 'untouched' | 'vary' | Coding
  /** a whole body compressed: synchronously when small, on the thread pool when large */
  encode (body: Buffer, coding: Coding): Buffer | Promise<Buffer>
  /** adds accept-encoding to the reply's Vary */
  varyOnEncoding (reply: FastifyReply): void
  /** the Content-Encoding, ETag and Vary of a compressed reply */
  markEncoded (reply: FastifyReply, coding: Coding): void
}

declare module 'fastify' {
  interface FastifyInstance { gwCompress: GatewayCompression }
  interface FastifyRequest {
    /** set by a hook that already decided the encoding of this reply (the cache's hit path) */
    gwCompressDecided: boolean
  }
}

/** Bodies up to this size are compressed on the event loop; larger ones on libuv's thread pool. */
const SYNC_MAX = 64 * 1024
const SUPPORTED: readonly Coding[] = ['br', 'gzip']

// text (not event streams: compressing them holds events back), JSON, XML, JavaScript, and a few more text formats
const COMPRESSIBLE = /^(?:text\/(?!event-stream)|application\/(?:[\w.-]+\+)?(?:json|xml|javascript|ecmascript|x-javascript|x-ndjson|ndjson|yaml|x-yaml|graphql|wasm|x-www-form-urlencoded)\b|image\/svg\+xml\b|[\w.-]+\/[\w.-]+\+(?:json|xml)\b)/i

function setting<T> (config: GatewayConfig, name: string): T {
  const row = VARS.find((v) => v.name === name)
  if (row === undefined) throw new Error(`${name} has no row in VARS (src/config.ts)`)
  return row.parse(config.env[name] ?? row.default ?? '') as T
}

/** RFC 9110 §12.5.3: the acceptable coding with the highest q; ties go to the server's order (br, then gzip). */
export function parseAcceptEncoding (header: string, supported: readonly Coding[] = SUPPORTED): Coding | null {
  let star = -1
  const q = new Map<string, number>()
  for (const part of header.split(',')) {
    const semi = part.indexOf(';')
    let name = (semi === -1 ? part : part.slice(0, semi)).trim().toLowerCase()
    if (name === '') continue
    if (name === 'x-gzip') name = 'gzip'
    let weight = 1
    if (semi !== -1) {
      const m = /(?:^|;)\s*q\s*=\s*([^;\s]*)/i.exec(part.slice(semi))
      if (m !== null) {
        // a malformed weight makes the coding unacceptable rather than preferred
        weight = /^(?:0(?:\.\d{0,3})?|1(?:\.0{0,3})?)$/.test(m[1] as string) ? Number(m[1]) : 0
      }
    }
    if (name === '*') star = weight
    else if (!q.has(name)) q.set(name, weight)
  }
  let best: Coding | null = null
  let bestQ = 0
  for (const c of supported) {
    const w = q.get(c) ?? (star >= 0 ? star : 0)
    if (w > bestQ) { best = c; bestQ = w }
  }
  return best
}

export function addVary (reply: FastifyReply, name: string): void {
  const current = reply.getHeader('vary')
  if (current === undefined || current === '') { reply.header('vary', name); return }
  const text = Array.isArray(current) ? current.join(', ') : String(current)
  const lower = text.toLowerCase()
  if (lower.trim() === '*') return
  for (const part of lower.split(',')) if (part.trim() === name) return
  reply.header('vary', `${text}, ${name}`)
}

function isEncoded (value: unknown): boolean {
  if (value === undefined) return false
  const v = String(value).trim().toLowerCase()
  return v !== '' && v !== 'identity'
}

async function gwCompress (app: FastifyInstance, opts: { config: GatewayConfig }): Promise<void> {
  const enabled = setting<boolean>(opts.config, 'COMPRESS')
  const threshold = setting<number>(opts.config, 'COMPRESS_THRESHOLD')
  const brotliOptions: zlib.BrotliOptions = { params: { [zlib.constants.BROTLI_PARAM_QUALITY]: setting<number>(opts.config, 'COMPRESS_BROTLI_QUALITY') } }
  const gzipOptions: zlib.ZlibOptions = { level: setting<number>(opts.config, 'COMPRESS_GZIP_LEVEL') }
  const brotliStreaming: zlib.BrotliOptions = { ...brotliOptions, flush: zlib.constants.BROTLI_OPERATION_FLUSH }
  const gzipStreaming: zlib.ZlibOptions = { ...gzipOptions, flush: zlib.constants.Z_SYNC_FLUSH }

  // Most clients send one of a handful of Accept-Encoding and Content-Type values: decide each once.
  const negotiated = new Map<string, Coding | null>()
  const types = new Map<string, boolean>()

  function negotiate (acceptEncoding: string | string[] | undefined): Coding | null {
    if (acceptEncoding === undefined) return null
    const header = Array.isArray(acceptEncoding) ? acceptEncoding.join(',') : acceptEncoding
    let coding = negotiated.get(header)
    if (coding === undefined) {
      coding = parseAcceptEncoding(header)
      if (negotiated.size >= 512) negotiated.clear()
      negotiated.set(header, coding)
    }
    return coding
  }

  function compressible (contentType: string | null): boolean {
    if (contentType === null || contentType === '') return false
    let ok = types.get(contentType)
    if (ok === undefined) {
      ok = COMPRESSIBLE.test(contentType.trim())
      if (types.size >= 512) types.clear()
      types.set(contentType, ok)
    }
    return ok
  }

  function eligible (contentType: string | null, size: number): boolean {
    return enabled && size >= threshold && compressible(contentType)
  }

  function encode (body: Buffer, coding: Coding): Buffer | Promise<Buffer> {
    if (body.length <= SYNC_MAX) return coding === 'br' ? zlib.brotliCompressSync(body, brotliOptions) : zlib.gzipSync(body, gzipOptions)
    return new Promise((resolve, reject) => {
      const cb = (err: Error | null, out: Buffer): void => { if (err !== null) reject(err); else resolve(out) }
      if (coding === 'br') zlib.brotliCompress(body, brotliOptions, cb)
      else zlib.gzip(body, gzipOptions, cb)
    })
  }

  function varyOnEncoding (reply: FastifyReply): void { addVary(reply, 'accept-encoding') }

  function markEncoded (reply: FastifyReply, coding: Coding): void {
    reply.header('content-encoding', coding)
    const etag = reply.getHeader('etag')
    if (typeof etag === 'string') reply.header('etag', weakEtag(etag))
  }

  function onStreamEnd (this: FastifyRequest, err: NodeJS.ErrnoException | null | undefined): void {
    // a client that goes away mid-body is not an error of ours
    if (err != null && err.code !== 'ERR_STREAM_PREMATURE_CLOSE') this.log.warn({ err }, 'compressing a streamed response failed')
  }

  /**
   * What compression does to a reply whose headers are all set, for a body of `size` bytes (Infinity: unknown):
   * 'untouched'; 'vary' (sent as is, but its form depends on Accept-Encoding); or the coding to compress with.
   * The onSend hook below and the proxy's direct write (src/direct-reply.ts) decide with this same function.
   */
  function decide (request: FastifyRequest, reply: FastifyReply, size: number): 'untouched' | 'vary' | Coding {
    if (!enabled || request.gwCompressDecided || request.method === 'HEAD' || size < threshold) return 'untouched'
    const status = reply.statusCode
    if (status < 200 || status === 204 || status === 206 || status === 304 ||
      isEncoded(reply.getHeader('content-encoding')) || reply.hasHeader('content-range')) return 'untouched'
    const cc = reply.getHeader('cache-control')
    if (cc !== undefined && /no-transform/i.test(String(cc))) return 'untouched'
    const type = reply.getHeader('content-type')
    if (!compressible(type === undefined ? null : String(type))) return 'untouched'
    return negotiate(request.headers['accept-encoding']) ?? 'vary'
  }

  function compressReply (request: FastifyRequest, reply: FastifyReply, payload: unknown, done: HookHandlerDoneFunction & ((err: Error | null, value?: unknown) => void)): void {
    if (payload === null || payload === undefined) { done(null, payload); return }
    const streamed = typeof (payload as Readable).pipe === 'function'
    let size: number
    if (streamed) {
      const len = reply.getHeader('content-length')
      size = len === undefined ? Infinity : Number(len)
    } else if (Buffer.isBuffer(payload) || typeof payload === 'string') size = Buffer.byteLength(payload)
    else { done(null, payload); return }
    const coding = decide(request, reply, size)
    if (coding === 'untouched') { done(null, payload); return }
    varyOnEncoding(reply)
    if (coding === 'vary') { done(null, payload); return }
    markEncoded(reply, coding)
    if (streamed) {
      reply.removeHeader('content-length')
      const z = size === Infinity
        ? (coding === 'br' ? zlib.createBrotliCompress(brotliStreaming) : zlib.createGzip(gzipStreaming))
        : (coding === 'br' ? zlib.createBrotliCompress(brotliOptions) : zlib.createGzip(gzipOptions))
      pipeline(payload as Readable, z, onStreamEnd.bind(request))
      done(null, z)
      return
    }
    const body = typeof payload === 'string' ? Buffer.from(payload) : payload as Buffer
    let out: Buffer | Promise<Buffer>
    try { out = encode(body, coding) } catch (err) { done(err as Error); return }
    if (Buffer.isBuffer(out)) {
      reply.header('content-length', out.length)
      done(null, out)
      return
    }
    out.then((buf) => { reply.header('content-length', buf.length); done(null, buf) }, (err: Error) => done(err))
  }

  app.decorateRequest('gwCompressDecided', false)
  markOnSend(compressReply, 'replicated')
  app.decorate('gwCompress', { enabled, threshold, negotiate, eligible, decide, encode, varyOnEncoding, markEncoded })
  if (!enabled) return
  app.addHook('onRoute', function compressRoute (route: RouteOptions) {
    const policy = route.config?.gw
    if (policy === undefined || policy.websocket) return
    addRouteHook(route, 'onSend', compressReply, 'last')
  })
}

export default fp(gwCompress, { name: 'gw-compress', fastify: '5.x' })
