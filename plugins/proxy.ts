/**
 * gw-proxy: forwards each declared route to a target of its upstream service.
 *
 * Built on undici's Pool directly rather than @fastify/reply-from: reply-from has no load balancing
 * (fastify-reply-from#208), retries only the same base URL, and its per-request stream machinery is what the
 * benchmarks found most expensive (../shared/PERFORMANCE.md). Here small bodies are buffered and sent as one
 * Buffer (no stream pipeline), large or unknown-length bodies stream, and the reply still goes through Fastify's
 * onSend/onResponse (cache, compression, metrics, access log), unlike a hijacked reply.
 */
import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyReply, FastifyRequest, RouteHandlerMethod } from 'fastify'
import type { IncomingHttpHeaders } from 'node:http'
import { Readable } from 'node:stream'
import type { Dispatcher } from 'undici'
import type { GatewayConfig } from '../src/config.js'
import type { Declarations, RoutePolicy, Rewrite } from '../src/policy.js'
import { IDENTITY_HEADERS } from '../src/client.js'
import { UpstreamPool, type Target } from '../src/upstream/pool.js'
import {
  GW_ERR_BAD_PATH, GW_ERR_BODY_TOO_LARGE, GW_ERR_NO_HEALTHY_TARGET, GW_ERR_UPSTREAM_BAD_RESPONSE, GW_ERR_UPSTREAM_RESET,
  GW_ERR_UPSTREAM_TIMEOUT, GW_ERR_UPSTREAM_UNAVAILABLE,
} from '../src/errors.js'

export interface GatewayProxy {
  handlerFor (policy: RoutePolicy): RouteHandlerMethod
  readonly upstreams: ReadonlyMap<string, UpstreamPool>
}

declare module 'fastify' {
  interface FastifyInstance { gwProxy: GatewayProxy }
  interface FastifyRequest { rawBody?: Buffer }
}

/** Bodies up to this size are collected and sent as one Buffer; larger ones stream. */
export const BUFFER_LIMIT = 256 * 1024

const HOP_BY_HOP = ['connection', 'keep-alive', 'proxy-authenticate', 'proxy-authorization', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade']
const RESPONSE_DROP = new Set([...HOP_BY_HOP, 'date'])
const BODYLESS = new Set(['GET', 'HEAD', 'OPTIONS', 'DELETE'])
// "..", "." segments, doubled or encoded separators, backslashes: never forwarded (issue 3, path rewriting)
const BAD_PATH = /(?:^|\/)\.\.?(?:\/|$)|\/\/|%2e|%2f|%5c|\\|%00/i

function upstreamError (err: unknown, upstream: string): Error {
  const code = (err as { code?: string }).code
  let out: Error
  switch (code) {
    case 'UND_ERR_CONNECT_TIMEOUT': case 'UND_ERR_HEADERS_TIMEOUT': case 'UND_ERR_BODY_TIMEOUT': case 'GW_ERR_UPSTREAM_TIMEOUT':
      out = new GW_ERR_UPSTREAM_TIMEOUT(upstream); break
    case 'ECONNREFUSED': case 'ENOTFOUND': case 'EHOSTUNREACH': case 'ENETUNREACH': case 'EAI_AGAIN':
      out = new GW_ERR_UPSTREAM_UNAVAILABLE(upstream); break
    case 'UND_ERR_SOCKET': case 'ECONNRESET': case 'EPIPE': case 'UND_ERR_CLOSED':
      out = new GW_ERR_UPSTREAM_RESET(upstream); break
    case 'HPE_INVALID_CONSTANT': case 'HPE_INVALID_HEADER_TOKEN': case 'UND_ERR_INVALID_ARG': case 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH':
      out = new GW_ERR_UPSTREAM_BAD_RESPONSE(upstream); break
    case 'GW_ERR_BODY_TOO_LARGE':
      return err as Error
    default:
      out = code?.startsWith('HPE_') === true ? new GW_ERR_UPSTREAM_BAD_RESPONSE(upstream) : new GW_ERR_UPSTREAM_UNAVAILABLE(upstream)
  }
  out.cause = err
  return out
}

/** The path and query to send upstream, or null when the public path is refused. */
function compilePath (rewrite: Rewrite): (request: FastifyRequest) => string | null {
  if (rewrite.kind === 'prefix') {
    const { fromLength, to } = rewrite
    return (request) => {
      const raw = request.raw.url as string
      const q = raw.indexOf('?')
      const path = q === -1 ? raw : raw.slice(0, q)
      if (BAD_PATH.test(path)) return null
      const rest = raw.slice(fromLength)
      return rest === '' || rest.charCodeAt(0) === 63 /* ? */ ? (to === '' ? '/' : to) + rest : to + rest
    }
  }
  const parts = rewrite.parts
  return (request) => {
    const raw = request.raw.url as string
    const q = raw.indexOf('?')
    if (BAD_PATH.test(q === -1 ? raw : raw.slice(0, q))) return null
    const params = request.params as Record<string, string>
    let out = ''
    for (const part of parts) {
      if (typeof part === 'string') { out += part; continue }
      const v = params[part.param] ?? ''
      if (v === '.' || v === '..') return null
      out += encodeURIComponent(v)
    }
    return q === -1 ? out : out + raw.slice(q)
  }
}

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

async function gwProxy (app: FastifyInstance, opts: { config: GatewayConfig, declarations: Declarations }): Promise<void> {
  const { config, declarations } = opts
  const upstreams = new Map<string, UpstreamPool>()
  for (const [name, policy] of declarations.upstreams) upstreams.set(name, new UpstreamPool(policy))
  app.addHook('onClose', async () => { await Promise.all([...upstreams.values()].map((u) => u.close())) })
  const trust = config.trustProxy !== false

  function handlerFor (policy: RoutePolicy): RouteHandlerMethod {
    const upstream = upstreams.get(policy.upstream) as UpstreamPool
    const pathFor = compilePath(policy.rewrite)
    const drop = new Set<string>([...HOP_BY_HOP, 'host', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-request-id', ...IDENTITY_HEADERS])
    if (policy.auth?.apiKey != null) drop.add(policy.auth.apiKey.header)
    const responseMs = upstream.policy.timeouts.responseMs
    const bodyLimit = policy.bodyLimit ?? config.bodyLimit

    function requestHeaders (request: FastifyRequest): IncomingHttpHeaders {
      const incoming = request.headers
      const out: IncomingHttpHeaders = {}
      const connection = incoming.connection
      const listed = connection !== undefined && connection !== 'keep-alive' && connection !== 'close'
        ? new Set(connection.toLowerCase().split(',').map((s) => s.trim()))
        : null
      for (const name in incoming) {
        if (drop.has(name) || (listed !== null && listed.has(name))) continue
        out[name] = incoming[name]
      }
      const remote = request.socket.remoteAddress ?? ''
      const xff = incoming['x-forwarded-for']
      out['x-forwarded-for'] = trust && xff !== undefined ? `${String(xff)}, ${remote}` : remote
      out['x-forwarded-proto'] = request.protocol
      out['x-forwarded-host'] = request.host
      out['x-request-id'] = request.id
      const client = request.client
      if (client !== null) {
        out['x-client-id'] = client.id
        out['x-client-scopes'] = client.scopes.join(' ')
        out['x-client-auth'] = client.via
        if (client.keyId !== null) out['x-client-key-id'] = client.keyId
        if (client.plan !== null) out['x-client-plan'] = client.plan
      }
      return out
    }

    function requestBody (request: FastifyRequest, headers: IncomingHttpHeaders): Dispatcher.DispatchOptions['body'] {
      if (request.rawBody !== undefined) return request.rawBody
      const body = request.body
      if (body === undefined || body === null) {
        if (!BODYLESS.has(request.method)) return null
        delete headers['content-length']
        return null
      }
      if (body instanceof Readable) return headers['content-length'] === undefined ? countedBody(body, bodyLimit) : body
      delete headers['content-length']
      return typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body)
    }

    async function send (request: FastifyRequest, reply: FastifyReply, target: Target, path: string): Promise<FastifyReply> {
      const headers = requestHeaders(request)
      const body = requestBody(request, headers)
      let abort: AbortController | undefined
      let timer: NodeJS.Timeout | undefined
      if (responseMs > 0) {
        abort = new AbortController()
        timer = setTimeout(() => abort?.abort(Object.assign(new Error('response timeout'), { code: 'GW_ERR_UPSTREAM_TIMEOUT' })), responseMs)
      }
      let res: Dispatcher.ResponseData
      target.inflight++
      try {
        res = await target.pool.request({
          path: target.basePath + path,
          method: request.method as Dispatcher.HttpMethod,
          headers,
          body,
          signal: abort?.signal,
        })
      } catch (err) {
        clearTimeout(timer)
        target.inflight--
        throw upstreamError(abort?.signal.aborted === true ? abort.signal.reason : err, upstream.name)
      }
      reply.code(res.statusCode)
      const h = res.headers
      const connection = h.connection
      const listed = connection !== undefined && connection !== 'keep-alive' && connection !== 'close'
        ? new Set(String(connection).toLowerCase().split(',').map((s) => s.trim()))
        : null
      for (const name in h) {
        if (RESPONSE_DROP.has(name) || (listed !== null && listed.has(name))) continue
        const v = h[name]
        if (v !== undefined) reply.header(name, v)
      }
      const len = h['content-length']
      const small = request.method === 'HEAD' || res.statusCode === 204 || res.statusCode === 304 ||
        (len !== undefined && Number(len) <= BUFFER_LIMIT)
      if (!small) {
        // streamed: the timer and in-flight count end with the body
        res.body.once('close', () => { clearTimeout(timer); target.inflight-- })
        return reply.send(res.body)
      }
      let buf: Buffer
      try {
        buf = Buffer.from(await res.body.arrayBuffer())
      } catch (err) {
        throw upstreamError(abort?.signal.aborted === true ? abort.signal.reason : err, upstream.name)
      } finally {
        clearTimeout(timer)
        target.inflight--
      }
      if (request.method === 'HEAD') return reply.send()
      reply.removeHeader('content-length')
      return reply.send(buf)
    }

    return async function proxy (request, reply) {
      const path = pathFor(request)
      if (path === null) throw new GW_ERR_BAD_PATH()
      const target = upstream.pick()
      if (target === null) throw new GW_ERR_NO_HEALTHY_TARGET(upstream.name)
      return await send(request, reply, target, path)
    }
  }

  app.decorate('gwProxy', { handlerFor, upstreams })
}

export default fp(gwProxy, { name: 'gw-proxy', fastify: '5.x', dependencies: ['gw-problem'] })
