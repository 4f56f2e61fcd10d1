/**
 * gw-proxy: forwards each declared route to a target of its upstream service, and owns the upstream pools
 * (src/upstream/): balancing, active health checks, passive ejection, retries, timeouts.
 *
 * Built on an HTTP/1.1 client of its own (src/upstream/http1-pool.ts) rather than @fastify/reply-from: reply-from
 * has no load balancing (fastify-reply-from#208), retries only the same base URL, and its per-request stream
 * machinery is what the benchmarks found most expensive (../shared/PERFORMANCE.md); undici's Pool, used before,
 * took about 1.16× the CPU per request (bench/README.md, seventh session). Here small bodies are buffered and sent as one
 * Buffer (no stream pipeline), large or unknown-length bodies stream. A buffered answer that no onSend hook needs
 * to see (no cache store, no compression for this client, no user hook) is written straight to the socket
 * (src/direct-reply.ts); everything else goes through Fastify's onSend. onResponse (metrics, access log) runs
 * either way.
 *
 * The handler is not async: each try is an `exchange()` whose outcome comes back to the request's ProxyCall from
 * inside the upstream client's callbacks (src/upstream/http1-pool.ts), and the answer is written from there (no promise between the upstream's last byte
 * and the client's answer). One request, its tries: pick a target -> send -> on a connection failure or a
 * retryable status, report the failure to the pool (passive health) and, when the request may go again, pick
 * ANOTHER target (sent on the next tick), within retry.tries and the upstream's retry budget. What may go again:
 * - GET, HEAD, OPTIONS, PUT, DELETE (idempotent, RFC 9110 §9.2.2): after a connection failure (refused, connect
 *   timeout, reset before the answer was read), or an answer whose status is in retry.statuses;
 * - POST, PATCH: only when the connection could not be opened (refused, connect timeout, DNS): then no byte of
 *   the request left the gateway. Never after that, and never for a retryable status.
 * - only a body the gateway still holds: none, a validated JSON body, or a streamed body with a Content-Length
 *   up to BUFFER_LIMIT, which is read first for that reason when the upstream retries at all. A larger or
 *   chunked body streams through and its request is never retried.
 * Timeouts (first byte, whole response) are not retried: the target may be working on the request, and the
 * client's wait is spent. A body that fails to arrive after its headers is retried like a reset when nothing
 * was sent to the client yet (buffered answers); a streamed answer that breaks ends the client's connection.
 */
import fp from 'fastify-plugin'
import { performance } from 'node:perf_hooks'
import type { FastifyInstance, FastifyReply, FastifyRequest, RouteHandlerMethod } from 'fastify'
import type { IncomingHttpHeaders } from 'node:http'
import { Readable } from 'node:stream'
import type { RequestOptions } from '../src/upstream/http1-pool.js'
import type { GatewayConfig } from '../src/config.js'
import type { Declarations, RoutePolicy } from '../src/policy.js'
import { UpstreamPool, type Target } from '../src/upstream/pool.js'
import { compilePath } from '../src/upstream/rewrite.js'
import { compileForwardHeaders, connectionListed, HOP_BY_HOP } from '../src/upstream/forward-headers.js'
import { clientFault, codeOf, CONNECT_FAILURES, CONNECTION_FAILURES, noHealthyTarget, UPSTREAM_TIMEOUT, upstreamError } from '../src/upstream/failures.js'
import { upstreamCa } from '../src/upstream/target.js'
import { Deadline, exchange, type Exchange, type ExchangeSink } from '../src/upstream/exchange.js'
import { directWritable, writeDirect } from '../src/direct-reply.js'
import { GW_ERR_BAD_PATH, GW_ERR_BAD_REQUEST, GW_ERR_BODY_TOO_LARGE } from '../src/errors.js'

/**
 * A declared route's handler. Fastify calls it as is: it returns at once, and the answer (or the error, through
 * Fastify's error handler) follows from the upstream client's callbacks. A handler that wraps it (the cache) calls `forward`.
 */
export type ProxyHandler = RouteHandlerMethod & {
  /**
   * The same proxying for a wrapping handler: resolves once the answer is handed to the reply (written, or sent
   * into Fastify's onSend), rejects with the error instead of answering it.
   */
  forward (request: FastifyRequest, reply: FastifyReply): Promise<void>
}

export interface GatewayProxy {
  handlerFor (policy: RoutePolicy): ProxyHandler
  readonly upstreams: ReadonlyMap<string, UpstreamPool>
  /**
   * Writes a whole answer straight to the socket (src/direct-reply.ts), with `Connection: close` while the
   * gateway drains, and counts it; only after `directWritable()` said yes. The cache's hits use it too.
   */
  writeDirect (reply: FastifyReply, status: number, body: Buffer): void
  /** answers written straight to the socket rather than through Fastify's onSend */
  readonly stats: { readonly directWrites: number }
}

declare module 'fastify' {
  interface FastifyInstance { gwProxy: GatewayProxy }
  interface FastifyRequest { rawBody?: Buffer }
}

/** Bodies up to this size are collected and sent as one Buffer; larger ones stream. */
export const BUFFER_LIMIT = 256 * 1024

const RESPONSE_DROP = new Set<string>([...HOP_BY_HOP, 'date'])
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE'])

function countedBody (stream: Readable, limit: number): Readable {
  let seen = 0
  const counter = new Readable({ read () { stream.resume() } })
  stream.on('data', (chunk: Buffer) => {
    seen += chunk.length
    if (seen > limit) {
      // stop forwarding and discard the rest; the 413 closes the connection once it is sent
      stream.removeAllListeners('data')
      stream.resume()
      counter.destroy(Object.assign(new GW_ERR_BODY_TOO_LARGE(limit), { headers: { connection: 'close' } }))
      return
    }
    if (!counter.push(chunk)) stream.pause()
  })
  stream.on('end', () => counter.push(null))
  stream.on('error', (err) => counter.destroy(err))
  return counter
}

/** A small request body read into memory, so that the request can be sent again. */
async function collect (stream: Readable, length: number): Promise<Buffer> {
  const chunks: Buffer[] = []
  let seen = 0
  try {
    for await (const chunk of stream) {
      seen += (chunk as Buffer).length
      if (seen > length) throw new GW_ERR_BAD_REQUEST('The request body is longer than its Content-Length')
      chunks.push(chunk as Buffer)
    }
  } catch (err) {
    if (codeOf(err) === 'GW_ERR_BAD_REQUEST') throw err
    throw Object.assign(new GW_ERR_BAD_REQUEST('The request body was cut short'), { cause: err })
  }
  return chunks.length === 1 ? chunks[0] as Buffer : Buffer.concat(chunks, seen)
}

/** Where a wrapping handler (ProxyHandler.forward) learns how the proxying ended; null: the proxy answers itself. */
interface Outcome {
  resolve (): void
  reject (err: unknown): void
}

/**
 * A failure: to the wrapping handler, or to Fastify's error handler (problem+json), as a rejected async handler's
 * would go (fastify/lib/wrap-thenable.js).
 */
function fail (reply: FastifyReply, outcome: Outcome | null, err: unknown): void {
  if (outcome !== null) outcome.reject(err)
  else if (reply.sent) reply.log.error({ err }, 'proxy failed after the answer was sent')
  else reply.send(err instanceof Error ? err : new Error(String(err)))
}

interface ProxyRoute {
  readonly upstream: UpstreamPool
  readonly statuses: ReadonlySet<number>
  copyHeaders (reply: FastifyReply, h: IncomingHttpHeaders, keepLength: boolean): void
  deliverBuffered (request: FastifyRequest, reply: FastifyReply, status: number, buf: Buffer): void
}

function resend (call: ProxyCall): void { call.send() }
function destroyStream (stream: Readable): void { stream.destroy() }

/**
 * One proxied request: its tries, one at a time, each an `exchange()` whose outcome comes back here
 * (`answered` / `failed`) from inside the upstream client's callbacks. A retry is sent on the next tick, outside them.
 */
class ProxyCall implements ExchangeSink {
  attempt = 0
  /** bit set of the targets tried */
  tried = 0

  constructor (
    readonly route: ProxyRoute,
    readonly request: FastifyRequest,
    readonly reply: FastifyReply,
    public target: Target,
    readonly path: string,
    readonly headers: IncomingHttpHeaders,
    readonly body: RequestOptions['body'],
    readonly tries: number,
    readonly idempotent: boolean,
    readonly deadline: Deadline | undefined,
    readonly outcome: Outcome | null,
  ) {}

  send (): void {
    const { target, request } = this
    this.attempt++
    this.tried |= target.bit
    request.gwTarget = target.url
    request.gwUpstreamAt = performance.now()
    target.inflight++
    exchange(target.pool, {
      path: target.basePath + this.path,
      method: request.method,
      headers: this.headers,
      body: this.body,
      // the client's identity headers, prepared and checked once per client (src/client.ts)
      trustedHead: request.client?.head,
    }, BUFFER_LIMIT, this.deadline, this)
  }

  failed (err: unknown): void {
    const { target, deadline, request } = this
    const upstream = this.route.upstream
    target.inflight--
    const cause = deadline?.expired === true ? deadline.reason : err
    const code = codeOf(cause)
    if (clientFault(code, request.raw)) {
      upstream.release(target)
    } else {
      upstream.report(target, code)
      if (this.attempt < this.tries && (this.idempotent ? CONNECTION_FAILURES : CONNECT_FAILURES).has(code)) {
        const next = upstream.retryTarget(request, this.tried)
        if (next !== null) {
          this.target = next
          process.nextTick(resend, this)
          return
        }
      }
    }
    deadline?.clear()
    fail(this.reply, this.outcome, upstreamError(cause, upstream.name))
  }

  answered (res: Exchange): void {
    try {
      if (this.deliver(res)) this.outcome?.resolve()
    } catch (err) {
      // a header the client's side refuses, say: the error handler answers, as for any handler that throws
      fail(this.reply, this.outcome, err)
    }
  }

  /** Hands the answer to the reply (true), or sends the request again (false). */
  deliver (res: Exchange): boolean {
    const { request, reply, target, deadline, route } = this
    const upstream = route.upstream
    request.gwUpstreamMs = performance.now() - request.gwUpstreamAt
    const status = res.statusCode

    if (status >= 500 && this.idempotent && this.attempt < this.tries && route.statuses.has(status)) {
      const next = upstream.retryTarget(request, this.tried)
      if (next !== null) {
        // not from inside the client's callback: the stream's end aborts the upstream request
        if (res.stream !== null) process.nextTick(destroyStream, res.stream)
        target.inflight--
        upstream.report(target, `status ${status}`)
        this.target = next
        process.nextTick(resend, this)
        return false
      }
    }

    const h = res.headers
    const stream = res.stream
    if (stream !== null) {
      // streamed: the timer, the in-flight count and the target's outcome end with the body
      stream.once('close', function streamedAnswerEnded () {
        deadline?.clear()
        target.inflight--
        // a client that went away destroys the stream without an error: not the target's fault
        upstream.report(target, status >= 500 ? `status ${status}` : stream.errored != null ? codeOf(stream.errored) : null)
      })
      reply.code(status)
      route.copyHeaders(reply, h, true)
      reply.send(stream)
      return true
    }
    const buf = res.body as Buffer
    deadline?.clear()
    target.inflight--
    upstream.report(target, status >= 500 ? `status ${status}` : null)
    reply.code(status)
    // HEAD keeps the upstream's Content-Length (RFC 9110 §9.3.2); a buffered body gets Fastify's own
    const head = request.method === 'HEAD'
    route.copyHeaders(reply, h, head)
    if (head) reply.send()
    else route.deliverBuffered(request, reply, status, buf)
    return true
  }
}

async function gwProxy (app: FastifyInstance, opts: { config: GatewayConfig, declarations: Declarations }): Promise<void> {
  const { config, declarations } = opts
  const ca = upstreamCa(config)
  const upstreams = new Map<string, UpstreamPool>()
  for (const [name, policy] of declarations.upstreams) upstreams.set(name, new UpstreamPool(policy, app.log, { ca }))
  app.addHook('onReady', function startHealthChecks (done) {
    for (const u of upstreams.values()) u.start()
    done()
  })
  app.addHook('onClose', async function closeUpstreams () { await Promise.all([...upstreams.values()].map((u) => u.close())) })
  const trust = config.trustProxy !== false
  const stats = { directWrites: 0 }
  function sendDirect (reply: FastifyReply, status: number, body: Buffer): void {
    writeDirect(reply, status, body, app.gwShuttingDown)
    stats.directWrites++
  }

  function handlerFor (policy: RoutePolicy): ProxyHandler {
    // decorated by gw-compress, which may load after this plugin; handlers are made once every plugin is in
    const gz = app.hasDecorator('gwCompress') ? app.gwCompress : undefined
    const upstream = upstreams.get(policy.upstream) as UpstreamPool
    const pathFor = compilePath(policy.rewrite)
    const forwardHeaders = compileForwardHeaders(policy, trust, [], false)
    const responseMs = upstream.policy.timeouts.responseMs
    const bodyLimit = policy.bodyLimit ?? config.bodyLimit
    const retry = upstream.policy.retry
    const statuses = retry?.statuses ?? new Set<number>()
    const maxTries = retry === null ? 1 : retry.tries

    function requestBody (request: FastifyRequest, headers: IncomingHttpHeaders): RequestOptions['body'] {
      if (request.rawBody !== undefined) return request.rawBody
      const body = request.body
      // the framing (Content-Length, chunked) is the pool's: it counts a held body itself
      if (body === undefined || body === null) return null
      if (body instanceof Readable) return headers['content-length'] === undefined ? countedBody(body, bodyLimit) : body
      return typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body)
    }

    /** Copy the upstream's answer headers, without hop-by-hop ones and those its Connection header lists. */
    function copyHeaders (reply: FastifyReply, h: IncomingHttpHeaders, keepLength: boolean): void {
      const listed = connectionListed(h.connection)
      for (const name in h) {
        if (RESPONSE_DROP.has(name) || (listed !== null && listed.has(name))) continue
        if (!keepLength && name === 'content-length') continue
        const v = h[name]
        if (v !== undefined) reply.header(name, v)
      }
    }

    /** The route's part of a ProxyCall: what every request of this route shares. */
    const route: ProxyRoute = { upstream, statuses, copyHeaders, deliverBuffered }

    /** A buffered answer (status and headers are on the reply): straight to the socket when nothing objects. */
    function deliverBuffered (request: FastifyRequest, reply: FastifyReply, status: number, buf: Buffer): void {
      if (directWritable(request, reply, status)) {
        const coding = gz === undefined ? 'untouched' : gz.decide(request, reply, buf.length)
        if (coding === 'untouched' || coding === 'vary') {
          if (coding === 'vary') gz?.varyOnEncoding(reply)
          sendDirect(reply, status, buf)
          return
        }
      }
      reply.send(buf)
    }

    /** The first try; throws what Fastify's error handler should answer (no usable target). */
    function begin (request: FastifyRequest, reply: FastifyReply, path: string, headers: IncomingHttpHeaders, body: RequestOptions['body'], outcome: Outcome | null): void {
      const target = upstream.pick(request, 0)
      if (target === null) throw noHealthyTarget(upstream)
      const idempotent = IDEMPOTENT.has(request.method)
      const replayable = body === null || typeof body === 'string' || Buffer.isBuffer(body)
      upstream.budget?.deposit()
      const deadline = responseMs > 0 ? new Deadline(responseMs, UPSTREAM_TIMEOUT) : undefined
      new ProxyCall(route, request, reply, target, path, headers, body, replayable ? maxTries : 1, idempotent, deadline, outcome).send()
    }

    /** Starts proxying one request; throws what fails before the first try. */
    function run (request: FastifyRequest, reply: FastifyReply, outcome: Outcome | null): void {
      const path = pathFor(request)
      if (path === null) throw new GW_ERR_BAD_PATH()
      const headers = forwardHeaders(request)
      const body = requestBody(request, headers)
      if (maxTries > 1 && body instanceof Readable && body === request.body) {
        const length = Number(headers['content-length'])
        if (length <= BUFFER_LIMIT) {
          // read first, so that a retry can send it again
          collect(body, length).then((buf) => {
            try { begin(request, reply, path, headers, buf, outcome) } catch (err) { fail(reply, outcome, err) }
          }, (err: unknown) => { fail(reply, outcome, err) })
          return
        }
      }
      begin(request, reply, path, headers, body, outcome)
    }

    // not async: the answer is written from the client's callbacks (ProxyCall), with no promise on the way
    const proxy = function proxy (request: FastifyRequest, reply: FastifyReply): void { run(request, reply, null) } as ProxyHandler
    proxy.forward = async function forward (request, reply) {
      await new Promise<void>((resolve, reject) => { run(request, reply, { resolve, reject }) })
    }
    return proxy
  }

  app.decorate('gwProxy', { handlerFor, upstreams, writeDirect: sendDirect, stats })
}

export default fp(gwProxy, { name: 'gw-proxy', fastify: '5.x', dependencies: ['gw-problem', 'gw-trace'] })
