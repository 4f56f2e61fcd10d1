/**
 * The proxy's HTTP/1.1 client: keep-alive connections to one target (http: or https:), one request at a time on
 * each, with Node's own HTTP parser (llhttp in C++, the one node:http uses) reading the answers.
 *
 * Why not undici's Pool, which this replaces for proxied requests: side by side (`npm run bench -- --ab`, see
 * bench/README.md, seventh session) the gateway answered about 1.3× the requests at about 0.75× the CPU with this
 * client. undici builds and validates a Request object, queues it, runs its llhttp in WebAssembly (every callback a
 * crossing), turns the raw headers into an object through Buffers, and keeps timers of its own; here one string
 * is written per request and the parser hands over strings.
 *
 * What it does, as the proxy needs it (src/upstream/exchange.ts drives it through the same handler and
 * controller calls as undici's `dispatch()`):
 * - up to `connections` connections; further requests wait in order for one to come free;
 * - request bodies: none, a string or Buffer (Content-Length), or a Readable: with the Content-Length the caller
 *   gives, else chunked; written with backpressure; a body that fails aborts its request;
 * - answers: 1xx skipped, HEAD / 204 / 304 without a body, Content-Length, chunked or close-delimited bodies,
 *   backpressure through pause()/resume();
 * - timeouts: connect (`UND_ERR_CONNECT_TIMEOUT`), first byte of the answer's head (`UND_ERR_HEADERS_TIMEOUT`),
 *   and the gap between body chunks while the reader wants more (`UND_ERR_BODY_TIMEOUT`): the codes undici used,
 *   which src/upstream/failures.ts maps to 504;
 * - failures: the socket's own error codes (ECONNREFUSED, ECONNRESET, EPIPE...), `UND_ERR_SOCKET` when the target
 *   closes the connection before the answer is complete, the parser's `HPE_*` codes for a malformed answer;
 * - keep-alive: an idle connection is closed after `keepAliveMs`, or sooner when the target's Keep-Alive header
 *   announces a shorter timeout (less one second, as undici does), and never reused after `Connection: close`,
 *   an answer cut short, or an aborted request;
 * - header values are checked (no CR, LF or NUL: nothing can be smuggled into the request), `Host` is the target's.
 */
import { connect as netConnect, isIP, type Socket } from 'node:net'
import { connect as tlsConnect } from 'node:tls'
import { createRequire } from 'node:module'
import type { Readable } from 'node:stream'
import type { IncomingHttpHeaders } from 'node:http'

interface Parser {
  initialize (type: number, resource: object, maxHeaderSize: number, lenient: number): void
  execute (data: Buffer): number | Error
  finish (): number | Error | undefined
  close (): void
  [key: number]: unknown
}
const { HTTPParser } = createRequire(import.meta.url)('_http_common') as { HTTPParser: { new (): Parser, RESPONSE: number, kOnHeaders: number, kOnHeadersComplete: number, kOnBody: number, kOnMessageComplete: number } }
const kOnHeaders = HTTPParser.kOnHeaders | 0
const kOnHeadersComplete = HTTPParser.kOnHeadersComplete | 0
const kOnBody = HTTPParser.kOnBody | 0
const kOnMessageComplete = HTTPParser.kOnMessageComplete | 0
/** async_hooks resource for the parser: answers are not tracked as async resources of their own */
const PARSER_RESOURCE = {}

/** the controller handed to a request's handler, as undici's DispatchController */
export interface RequestController {
  readonly aborted: boolean
  readonly paused: boolean
  abort (reason: Error): void
  pause (): void
  resume (): void
}

/** the subset of undici's DispatchHandler the pool calls */
export interface RequestHandler {
  onRequestStart? (controller: RequestController, context: unknown): void
  onResponseStart? (controller: RequestController, statusCode: number, headers: IncomingHttpHeaders, statusMessage?: string): void
  onResponseData? (controller: RequestController, chunk: Buffer): void
  onResponseEnd? (controller: RequestController, trailers: IncomingHttpHeaders): void
  onResponseError? (controller: RequestController, err: Error): void
}

export interface RequestOptions {
  path: string
  method: string
  headers?: IncomingHttpHeaders | null
  body?: string | Buffer | Readable | null
  /**
   * Header lines (`name: value\r\n` each) the caller built from values it checked itself (a client's identity:
   * Client.head, src/client.ts), written after `headers` as they are.
   */
  trustedHead?: string | null
}

export interface Http1PoolOptions {
  connections: number
  keepAliveMs: number
  connectMs: number
  /** head and body-gap timeout; 0 = none */
  firstByteMs: number
  /** CA certificates for https targets; undefined = the system ones */
  ca?: string[] | undefined
}

function failure (message: string, code: string): Error {
  return Object.assign(new Error(message), { code })
}

/** CR, LF and NUL would end the header early (request smuggling); other controls are refused as undici did */
const INVALID_VALUE = /[^\t\x20-\x7e\x80-\xff]/
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/
/** hop-by-hop or framing headers the pool writes itself (or refuses), never copied from the caller */
const OWN = new Set(['host', 'content-length', 'transfer-encoding', 'connection', 'keep-alive', 'upgrade', 'expect'])
const EXPECTS_BODY = new Set(['POST', 'PUT', 'PATCH'])

/** The request's head, every header checked; `length` is the body's byte length, or -1 for chunked, or null for none. */
function requestHead (opts: RequestOptions, host: string, length: number | null): string {
  const { method, path, headers } = opts
  if (INVALID_VALUE.test(path) || path.includes(' ')) throw failure('invalid request path', 'UND_ERR_INVALID_ARG')
  let head = `${method} ${path} HTTP/1.1\r\nhost: ${host}\r\n`
  if (headers != null) {
    for (const name in headers) {
      const v = headers[name]
      if (v === undefined || OWN.has(name)) continue
      if (!TOKEN.test(name)) throw failure(`invalid header name ${JSON.stringify(name)}`, 'UND_ERR_INVALID_ARG')
      if (typeof v === 'string') {
        if (INVALID_VALUE.test(v)) throw failure(`invalid ${name} header`, 'UND_ERR_INVALID_ARG')
        head += name + ': ' + v + '\r\n'
      } else {
        for (const one of v) {
          if (INVALID_VALUE.test(one)) throw failure(`invalid ${name} header`, 'UND_ERR_INVALID_ARG')
          head += name + ': ' + one + '\r\n'
        }
      }
    }
  }
  if (opts.trustedHead != null) head += opts.trustedHead
  if (length === -1) head += 'transfer-encoding: chunked\r\n'
  else if (length !== null) head += 'content-length: ' + String(length) + '\r\n'
  return head + '\r\n'
}

/** The raw header list (name, value, ...) as an object: lower-case names, repeated ones as arrays. */
function headerObject (raw: readonly string[]): IncomingHttpHeaders {
  const out: Record<string, string | string[]> = {}
  for (let i = 0; i < raw.length; i += 2) {
    const name = (raw[i] as string).toLowerCase()
    const value = raw[i + 1] as string
    const had = out[name]
    if (had === undefined) out[name] = value
    else if (typeof had === 'string') out[name] = [had, value]
    else had.push(value)
  }
  return out as IncomingHttpHeaders
}

/** Keep-Alive: timeout=N (seconds), as milliseconds, or null. */
function keepAliveHint (value: string | string[] | undefined): number | null {
  if (typeof value !== 'string') return null
  const m = /(?:^|[\s,])timeout\s*=\s*(\d+)/i.exec(value)
  return m === null ? null : Number(m[1]) * 1000
}

class PoolRequest implements RequestController {
  aborted = false
  paused = false
  /** the answer is complete or failed: nothing more goes to the handler */
  done = false
  constructor (readonly conn: Connection, readonly handler: RequestHandler, readonly head: boolean) {}

  abort (reason: Error): void {
    if (this.done || this.aborted) return
    this.aborted = true
    this.conn.fail(this, reason)
  }

  pause (): void {
    if (this.done || this.paused) return
    this.paused = true
    this.conn.pauseReading()
  }

  resume (): void {
    if (!this.paused) return
    this.paused = false
    if (!this.done) this.conn.resumeReading()
  }
}

const IDLE = 0
const HEAD = 1
const BODY = 2

class Connection {
  readonly socket: Socket
  readonly parser: Parser
  current: PoolRequest | null = null
  /** HEAD (waiting for the answer's head) or BODY (reading its body), IDLE between requests */
  phase = IDLE
  /** reusable after the answer in progress */
  reusable = true
  /** the request body is still being written */
  writing = false
  /** stops writing the request body (its listeners off), once the exchange is over */
  stopBody: (() => void) | null = null
  rawHeaders: string[] = []
  /** a 1xx head was seen: its message end is not the answer's */
  informational = false
  idleLimitMs: number
  /** the Keep-Alive header idleLimitMs was last worked out from */
  keepAliveSeen: string | string[] | undefined = undefined
  /**
   * Head and body-gap timeout, re-armed with refresh() on every request and chunk and never cleared while the
   * connection lives (a cleared timer cannot be refreshed): when it fires with nothing to time, it is ignored.
   */
  #requestTimer: NodeJS.Timeout | null = null
  /** the same for the keep-alive limit while idle */
  #idleTimer: NodeJS.Timeout | null = null
  #idleTimerMs = 0
  #connectTimer: NodeJS.Timeout | null

  constructor (readonly pool: Http1Pool) {
    const o = pool.options
    const target = pool.target
    this.idleLimitMs = o.keepAliveMs
    const secure = target.protocol === 'https:'
    const host = target.hostname.startsWith('[') ? target.hostname.slice(1, -1) : target.hostname
    const port = Number(target.port !== '' ? target.port : secure ? 443 : 80)
    this.socket = secure
      ? tlsConnect({ host, port, ALPNProtocols: ['http/1.1'], ...(isIP(host) === 0 ? { servername: host } : {}), ...(o.ca !== undefined ? { ca: o.ca } : {}) })
      : netConnect({ host, port })
    this.socket.setNoDelay(true)
    this.#connectTimer = o.connectMs > 0 ? setTimeout(connectTimedOut, o.connectMs, this) : null
    this.socket.once(secure ? 'secureConnect' : 'connect', () => {
      if (this.#connectTimer !== null) { clearTimeout(this.#connectTimer); this.#connectTimer = null }
    })

    const parser = this.parser = new HTTPParser()
    parser.initialize(HTTPParser.RESPONSE, PARSER_RESOURCE, 0, 0)
    parser[kOnHeaders] = (headers: string[]) => { for (let i = 0; i < headers.length; i++) this.rawHeaders.push(headers[i] as string) }
    parser[kOnHeadersComplete] = (_major: number, _minor: number, headers: string[] | undefined, _method: unknown, _url: unknown, status: number, statusMessage: string, upgrade: boolean, keepAlive: boolean): number => {
      return this.onHead(headers, status, statusMessage, upgrade, keepAlive)
    }
    parser[kOnBody] = (chunk: Buffer) => { this.onBody(chunk) }
    parser[kOnMessageComplete] = () => { this.onEnd() }

    this.socket.on('data', (data: Buffer) => {
      if (this.current === null) {
        // nothing was asked: a target that talks out of turn is not reused
        this.destroy()
        return
      }
      const r = this.parser.execute(data)
      if (r instanceof Error) this.failCurrent(r)
    })
    this.socket.on('end', () => {
      // a body delimited by the connection's end is complete now
      if (this.current !== null && this.phase === BODY) {
        const r = this.parser.finish()
        // the end came before the Content-Length or the last chunk: cut short, as a reset is
        if (r instanceof Error) this.failCurrent(Object.assign(failure('the target closed the connection before the answer was complete', 'UND_ERR_SOCKET'), { cause: r }))
      }
      this.reusable = false
    })
    this.socket.on('error', (err: Error) => { this.failCurrent(err) })
    this.socket.on('close', () => {
      this.reusable = false
      if (this.#connectTimer !== null) clearTimeout(this.#connectTimer)
      if (this.#requestTimer !== null) clearTimeout(this.#requestTimer)
      if (this.#idleTimer !== null) clearTimeout(this.#idleTimer)
      this.failCurrent(failure('the target closed the connection before the answer was complete', 'UND_ERR_SOCKET'))
      this.parser.close()
      this.pool.closed(this)
    })
  }

  send (opts: RequestOptions, handler: RequestHandler): void {
    const ex = new PoolRequest(this, handler, opts.method === 'HEAD')
    this.current = ex
    this.phase = HEAD
    this.armRequestTimer()
    handler.onRequestStart?.(ex, null)
    if (ex.done) return
    const body = opts.body ?? null
    const socket = this.socket
    try {
      if (body === null) {
        const length = EXPECTS_BODY.has(opts.method) ? 0 : null
        socket.write(requestHead(opts, this.pool.host, length), 'latin1')
      } else if (typeof body === 'string' || Buffer.isBuffer(body)) {
        const buf = typeof body === 'string' ? Buffer.from(body) : body
        const head = requestHead(opts, this.pool.host, buf.length)
        socket.cork()
        socket.write(head, 'latin1')
        socket.write(buf)
        socket.uncork()
      } else {
        const given = opts.headers?.['content-length']
        const length = typeof given === 'string' && /^\d+$/.test(given) ? Number(given) : -1
        socket.write(requestHead(opts, this.pool.host, length), 'latin1')
        this.streamBody(ex, body, length === -1)
      }
    } catch (err) {
      this.fail(ex, err as Error)
    }
  }

  streamBody (ex: PoolRequest, body: Readable, chunked: boolean): void {
    const socket = this.socket
    this.writing = true
    const onData = (chunk: Buffer | string): void => {
      const buf = typeof chunk === 'string' ? Buffer.from(chunk) : chunk
      if (buf.length === 0) return
      const ok = chunked
        ? (socket.write(buf.length.toString(16) + '\r\n', 'latin1'), socket.write(buf), socket.write('\r\n', 'latin1'))
        : socket.write(buf)
      if (!ok) body.pause()
    }
    const onDrain = (): void => { body.resume() }
    const cleanup = (): void => {
      this.writing = false
      this.stopBody = null
      body.off('data', onData)
      body.off('end', onEnd)
      body.off('error', onError)
      socket.off('drain', onDrain)
    }
    const onEnd = (): void => {
      cleanup()
      if (chunked && !socket.destroyed) socket.write('0\r\n\r\n', 'latin1')
    }
    const onError = (err: Error): void => {
      cleanup()
      this.fail(ex, err)
    }
    this.stopBody = cleanup
    body.on('data', onData)
    body.once('end', onEnd)
    body.once('error', onError)
    socket.on('drain', onDrain)
    if (body.destroyed && body.errored != null) onError(body.errored as Error)
  }

  onHead (headers: string[] | undefined, status: number, statusMessage: string, upgrade: boolean, keepAlive: boolean): number {
    const ex = this.current
    let raw = this.rawHeaders
    if (headers !== undefined) {
      if (raw.length === 0) raw = headers
      else for (let i = 0; i < headers.length; i++) raw.push(headers[i] as string)
    }
    if (this.rawHeaders.length !== 0) this.rawHeaders = []
    if (ex === null) return 0
    if (upgrade || status === 101) {
      this.failCurrent(failure('the target switched protocols on a proxied request', 'UND_ERR_SOCKET'))
      return 0
    }
    if (status < 200) {
      this.informational = true
      this.armRequestTimer()
      return 0
    }
    this.phase = BODY
    this.armRequestTimer()
    if (!keepAlive) this.reusable = false
    const h = headerObject(raw)
    // a target sends the same Keep-Alive value on every answer: read it once per value, not once per answer
    const ka = h['keep-alive']
    if (ka !== this.keepAliveSeen) {
      this.keepAliveSeen = ka
      const hint = keepAliveHint(ka)
      if (hint !== null) this.idleLimitMs = Math.min(this.pool.options.keepAliveMs, hint - 1000)
    }
    ex.handler.onResponseStart?.(ex, status, h, statusMessage)
    // HEAD: no body follows, whatever Content-Length says
    return ex.head ? 1 : 0
  }

  onBody (chunk: Buffer): void {
    const ex = this.current
    if (ex === null || ex.done) return
    if (!ex.paused) this.armRequestTimer()
    ex.handler.onResponseData?.(ex, chunk)
  }

  onEnd (): void {
    if (this.informational) { this.informational = false; return }
    const ex = this.current
    if (ex === null) return
    this.current = null
    this.phase = IDLE
    ex.done = true
    // an answer that came before the whole request was sent leaves the connection mid-request; the rest of the
    // body is left to its source (Node's server discards what a finished response did not read)
    if (this.writing) { this.reusable = false; this.stopBody?.() }
    if (ex.paused) this.socket.resume()
    ex.handler.onResponseEnd?.(ex, {})
    this.pool.released(this)
  }

  /** the request in flight fails with `err`; the connection is not reused */
  fail (ex: PoolRequest, err: Error): void {
    if (this.current !== ex || ex.done) return
    this.current = null
    ex.done = true
    this.reusable = false
    this.stopBody?.()
    this.socket.destroy()
    ex.handler.onResponseError?.(ex, err)
  }

  failCurrent (err: Error): void {
    const ex = this.current
    if (ex !== null) this.fail(ex, err)
    else this.destroy()
  }

  pauseReading (): void {
    // the timer runs on and is ignored while the reader holds the body back
    this.socket.pause()
  }

  resumeReading (): void {
    this.armRequestTimer()
    this.socket.resume()
  }

  armRequestTimer (): void {
    const ms = this.pool.options.firstByteMs
    if (ms <= 0) return
    if (this.#requestTimer === null) this.#requestTimer = setTimeout(requestTimedOut, ms, this).unref()
    else this.#requestTimer.refresh()
  }

  timedOut (): void {
    const ex = this.current
    if (ex === null || ex.done || ex.paused) return
    this.fail(ex, this.phase === HEAD
      ? failure('the target sent no answer in time', 'UND_ERR_HEADERS_TIMEOUT')
      : failure('the target stopped sending the answer', 'UND_ERR_BODY_TIMEOUT'))
  }

  connectTimedOut (): void {
    this.#connectTimer = null
    const err = failure('connecting to the target timed out', 'UND_ERR_CONNECT_TIMEOUT')
    if (this.current !== null) this.fail(this.current, err)
    else this.socket.destroy(err)
  }

  /** the connection goes idle: it closes after its keep-alive limit unless a request takes it first */
  idle (): void {
    const ms = this.idleLimitMs
    if (ms <= 0) { this.end(); return }
    const t = this.#idleTimer
    // a Timeout keeps its duration: a new one only when the target announced a different limit
    if (t === null || this.#idleTimerMs !== ms) {
      if (t !== null) clearTimeout(t)
      this.#idleTimer = setTimeout(idleTimedOut, ms, this).unref()
      this.#idleTimerMs = ms
    } else t.refresh()
  }

  destroy (): void {
    this.reusable = false
    this.socket.destroy()
  }

  end (): void {
    this.reusable = false
    this.socket.end()
  }
}

function requestTimedOut (c: Connection): void { c.timedOut() }
function connectTimedOut (c: Connection): void { c.connectTimedOut() }
function idleTimedOut (c: Connection): void {
  // a request took the connection since it went idle: the next idle spell re-arms the timer
  if (c.current === null) c.end()
}

interface Waiting { opts: RequestOptions, handler: RequestHandler }

export class Http1Pool {
  readonly target: URL
  /** the Host header */
  readonly host: string
  readonly #idle: Connection[] = []
  readonly #all = new Set<Connection>()
  #waiting: Waiting[] = []
  #closing = false
  /** close() and destroy() calls waiting for the last connection to go */
  readonly #onDrained: Array<() => void> = []

  constructor (origin: string, readonly options: Http1PoolOptions) {
    this.target = new URL(origin)
    if (this.target.protocol !== 'http:' && this.target.protocol !== 'https:') throw new Error(`not an http(s) origin: ${origin}`)
    this.host = this.target.host
  }

  /** connections open (or opening) and idle ones among them */
  get stats (): { connections: number, idle: number, waiting: number } {
    return { connections: this.#all.size, idle: this.#idle.length, waiting: this.#waiting.length }
  }

  /** Sends a request (or queues it for a free connection); its outcome goes to the handler. Throws (code UND_ERR_CLOSED) once the pool is closing. */
  dispatch (opts: RequestOptions, handler: RequestHandler): void {
    if (this.#closing) throw failure('the upstream pool is closed', 'UND_ERR_CLOSED')
    let c = this.#idle.pop()
    while (c !== undefined && !c.reusable) c = this.#idle.pop()
    if (c === undefined) {
      if (this.#all.size >= this.options.connections) {
        this.#waiting.push({ opts, handler })
        return
      }
      c = new Connection(this)
      this.#all.add(c)
    }
    c.send(opts, handler)
  }

  /** an answer is complete: the connection takes the next waiting request, or goes idle, or closes */
  released (c: Connection): void {
    if (!c.reusable) { c.destroy(); return }
    const next = this.#waiting.shift()
    if (next !== undefined) {
      // not from inside the parser's callback that ended the answer
      process.nextTick(sendWaiting, c, next)
      return
    }
    if (this.#closing) { c.end(); return }
    c.idle()
    this.#idle.push(c)
  }

  closed (c: Connection): void {
    this.#all.delete(c)
    const i = this.#idle.indexOf(c)
    if (i !== -1) this.#idle.splice(i, 1)
    const next = this.#waiting.shift()
    if (next !== undefined) {
      // a waiting request gets a connection of its own, even while closing: close() lets it finish
      const fresh = new Connection(this)
      this.#all.add(fresh)
      fresh.send(next.opts, next.handler)
      return
    }
    if (this.#closing && this.#all.size === 0) for (const resolve of this.#onDrained.splice(0)) resolve()
  }

  /** Lets requests in flight and waiting finish, then closes every connection. */
  async close (): Promise<void> {
    this.#closing = true
    for (const c of this.#idle.splice(0)) c.end()
    if (this.#all.size === 0 && this.#waiting.length === 0) return
    await new Promise<void>((resolve) => { this.#onDrained.push(resolve) })
  }

  /** Cuts every connection; requests in flight and waiting fail. */
  async destroy (): Promise<void> {
    this.#closing = true
    const waiting = this.#waiting
    this.#waiting = []
    for (const w of waiting) w.handler.onResponseError?.(NO_CONTROLLER, failure('the upstream pool was destroyed', 'UND_ERR_DESTROYED'))
    for (const c of [...this.#all]) c.failCurrent(failure('the upstream pool was destroyed', 'UND_ERR_DESTROYED'))
    for (const c of [...this.#all]) c.destroy()
    if (this.#all.size === 0) return
    await new Promise<void>((resolve) => { this.#onDrained.push(resolve) })
  }
}

function sendWaiting (c: Connection, w: Waiting): void {
  if (c.reusable && c.current === null) { c.send(w.opts, w.handler); return }
  // the connection went away in between: the request goes on a fresh one (or waits again)
  if (c.current === null) c.destroy()
  try { c.pool.dispatch(w.opts, w.handler) } catch (err) { w.handler.onResponseError?.(NO_CONTROLLER, err as Error) }
}

/** for a request that never got a connection */
const NO_CONTROLLER: RequestController = { aborted: true, paused: false, abort () {}, pause () {}, resume () {} }
