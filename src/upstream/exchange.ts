/**
 * One request to one target, through the target's Http1Pool (src/upstream/http1-pool.ts) with a small handler:
 * no stream per answer unless it streams, no promise at all. A small answer (a Content-Length up to
 * `bufferLimit`, or no body: HEAD, 204, 304) is collected and handed over once complete, as one Buffer; anything
 * else is handed over at its head with a Readable that streams it, with backpressure (pause/resume of the socket)
 * and the upstream request aborted when the reader goes away.
 *
 * The outcome goes to an `ExchangeSink`, called back exactly once from inside the pool's callbacks (or from
 * `exchange()` itself when the pool refuses the request outright): no promise, no microtask between the upstream's
 * last byte and the answer's write. A sink must not throw, and must not dispatch to the same pool from inside the
 * callback (plugins/proxy.ts defers its retries).
 *
 * The whole-response timeout is a `Deadline` the caller arms once per request (a plain timer that aborts the try
 * in flight) rather than an AbortController: no EventTarget, no listener per try.
 */
import type { IncomingHttpHeaders } from 'node:http'
import { Readable } from 'node:stream'
import type { Http1Pool, RequestController, RequestHandler, RequestOptions } from './http1-pool.js'

export interface Exchange {
  statusCode: number
  headers: IncomingHttpHeaders
  /** the whole body, when it was small enough to collect */
  body: Buffer | null
  /** the body as a stream, when it was not */
  stream: Readable | null
}

/** Where one exchange's outcome goes: exactly one of the two is called, once. */
export interface ExchangeSink {
  /** the answer: whole (`body`) once complete, or at its headers (`stream`) */
  answered (e: Exchange): void
  /** no answer: the connection failed, the upstream broke or was aborted before the answer was handed over */
  failed (err: unknown): void
}

type Controller = RequestController

const EMPTY = Buffer.alloc(0)

/** A time limit over every try of one request: when it passes, the try in flight is aborted with `reason`. */
export class Deadline {
  expired = false
  #current: ExchangeHandler | null = null
  readonly #timer: NodeJS.Timeout

  constructor (ms: number, readonly reason: Error) {
    this.#timer = setTimeout(expire, ms, this)
  }

  /** the try now in flight (exchange() sets it) */
  attach (handler: ExchangeHandler): void { this.#current = handler }

  expire (): void {
    this.expired = true
    this.#current?.abort(this.reason)
  }

  clear (): void {
    clearTimeout(this.#timer)
    this.#current = null
  }
}

function expire (d: Deadline): void { d.expire() }

class ExchangeHandler implements RequestHandler {
  controller: Controller | null = null
  statusCode = 0
  headers: IncomingHttpHeaders = {}
  chunks: Buffer[] | null = null
  size = 0
  stream: Readable | null = null
  settled = false
  /** the upstream answer is complete or failed: nothing left to abort */
  finished = false

  constructor (
    private readonly bufferLimit: number,
    private readonly head: boolean,
    private readonly deadline: Deadline | undefined,
    private readonly sink: ExchangeSink,
  ) {}

  onRequestStart (controller: Controller): void {
    this.controller = controller
    const d = this.deadline
    if (d !== undefined && d.expired) controller.abort(d.reason)
  }

  /** stops the exchange: before the answer it fails, during a streamed body it destroys the stream */
  abort (reason: Error): void {
    if (this.finished) return
    const c = this.controller
    if (c !== null && !c.aborted) c.abort(reason)
  }

  onResponseStart (controller: Controller, statusCode: number, headers: IncomingHttpHeaders): void {
    if (statusCode < 200) return // 1xx informational: the real answer follows
    this.statusCode = statusCode
    this.headers = headers
    const len = headers['content-length']
    if (this.head || statusCode === 204 || statusCode === 304 || (typeof len === 'string' && Number(len) <= this.bufferLimit)) {
      this.chunks = []
      return
    }
    const self = this
    const stream = new Readable({
      read () { controller.resume() },
      destroy (err, cb) {
        // the reader went away before the end (client gone, reply torn down): stop the upstream request too
        if (!self.finished && !controller.aborted) controller.abort(err ?? new Error('response stream closed'))
        cb(err)
      },
    })
    this.stream = stream
    this.settled = true
    this.sink.answered({ statusCode, headers: this.headers, body: null, stream })
  }

  onResponseData (controller: Controller, chunk: Buffer): void {
    if (this.chunks !== null) { this.chunks.push(chunk); this.size += chunk.length; return }
    if (this.stream !== null && !this.stream.push(chunk)) controller.pause()
  }

  onResponseEnd (): void {
    this.finished = true
    if (this.chunks !== null) {
      const c = this.chunks
      const body = c.length === 0 ? EMPTY : c.length === 1 ? c[0] as Buffer : Buffer.concat(c, this.size)
      this.settled = true
      this.sink.answered({ statusCode: this.statusCode, headers: this.headers, body, stream: null })
      return
    }
    this.stream?.push(null)
  }

  onResponseError (_controller: Controller, err: Error): void {
    this.finished = true
    if (!this.settled) { this.settled = true; this.sink.failed(err); return }
    if (this.stream !== null && !this.stream.destroyed) this.stream.destroy(err)
  }

  /** the pool refused the request before taking it (an invalid header, a closed pool) */
  refused (err: unknown): void {
    this.finished = true
    if (!this.settled) { this.settled = true; this.sink.failed(err) }
  }
}

/** Sends one request to `dispatcher`; its outcome goes to `sink` (see ExchangeSink). */
export function exchange (dispatcher: Http1Pool, opts: RequestOptions, bufferLimit: number, deadline: Deadline | undefined, sink: ExchangeSink): void {
  const handler = new ExchangeHandler(bufferLimit, opts.method === 'HEAD', deadline, sink)
  deadline?.attach(handler)
  try { dispatcher.dispatch(opts, handler) } catch (err) { handler.refused(err) }
}
