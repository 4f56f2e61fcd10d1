/**
 * Writing a whole, buffered answer straight to the socket instead of through Fastify's send pipeline.
 *
 * `reply.send(buffer)` runs the route's onSend hooks one after the other, checks the payload's type, writes the
 * head with `writeHead` and then the body as a second chunk (one `writev` of two buffers). On the proxy's hot
 * path that pipeline was most of what the gateway still spent above the socket work (bench: `--profile
 * passthrough`). When every onSend hook of the route is one whose work the caller does itself (they register in
 * markOnSend(hook, 'replicated'): compression decides before the write, load shedding's `Connection: close` is added here),
 * the answer is written directly: the reply's headers (X-Request-Id, RateLimit-*, whatever earlier hooks set)
 * plus the body's Content-Type and Content-Length, then the body (Node corks the socket in `end()`: head and body
 * leave in one writev). Sending small bodies as a latin1 string joined to the head was tried: no gain above the
 * noise, and more garbage to collect.
 *
 * The reply is then hijacked, which skips only onSend: onResponse hooks (metrics, access log) still run when the
 * response finishes, and `reply.statusCode` / `reply.getHeader()` read what was written. HTTP/2 answers, replies
 * with trailers, and routes with any other onSend hook (a user's own, the cache's store) keep Fastify's path.
 */
import { randomBytes } from 'node:crypto'
import { createRequire } from 'node:module'
import type { FastifyReply, FastifyRequest } from 'fastify'

type Symbols = { kRouteContext: symbol, kReplyHeaders: symbol, kReplyTrailers: symbol }
const symbols: Symbols | null = (() => {
  try {
    const s = createRequire(import.meta.url)('fastify/lib/symbols.js') as Partial<Symbols>
    return typeof s.kRouteContext === 'symbol' && typeof s.kReplyHeaders === 'symbol' && typeof s.kReplyTrailers === 'symbol' ? s as Symbols : null
  } catch { return null }
})()

// Fastify binds every hook to its instance when it builds a route's context, so the functions found there are
// not the ones registered: a hook is recognised by a name that carries this process's own random token.
const TOKEN = randomBytes(6).toString('hex')
const MARK = /\[gw-on-send ([\w-]+) ([0-9a-f]{12})\]$/

/**
 * Marks an onSend hook before it is registered. 'replicated': a direct write reproduces its whole effect;
 * any other role names a hook that a caller of `directWritable(…, role)` knows to be a no-op for its reply.
 */
export function markOnSend<F extends (...args: never[]) => unknown> (hook: F, role: string): F {
  if (roleOf(hook) !== null) return hook
  Object.defineProperty(hook, 'name', { value: `${hook.name} [gw-on-send ${role} ${TOKEN}]` })
  return hook
}

function roleOf (hook: unknown): string | null {
  if (typeof hook !== 'function') return null
  const m = MARK.exec(hook.name)
  return m !== null && m[2] === TOKEN ? m[1] as string : null
}

const kOthers = Symbol('gw.direct.otherOnSend')
type Context = { onSend?: unknown[] | null, [kOthers]?: ReadonlyArray<string | null> }
type Headers = Record<string, string | number | string[] | undefined>
type Internals = Record<symbol, unknown>

/** The roles of the route's onSend hooks that a direct write would skip (null: unknown), worked out once per route. */
function otherOnSendHooks (context: Context): ReadonlyArray<string | null> {
  let others = context[kOthers]
  if (others === undefined) {
    others = (context.onSend ?? []).map(roleOf).filter((role) => role !== 'replicated')
    context[kOthers] = others
  }
  return others
}

/**
 * Whether an answer of `status` may be written directly: HTTP/1, not HEAD, a status that carries a body (not
 * 204 or 304), no trailers, and no onSend hook on its route other than replicated ones and one of the role
 * `also` (a hook the caller knows to be a no-op for this reply).
 */
export function directWritable (request: FastifyRequest, reply: FastifyReply, status: number, also?: string): boolean {
  if (symbols === null || request.raw.httpVersionMajor !== 1 || request.method === 'HEAD' || status === 204 || status === 304) return false
  const r = reply as unknown as Internals
  if (r[symbols.kReplyTrailers] !== null) return false
  const context = r[symbols.kRouteContext] as Context | undefined
  if (context === undefined) return false
  const others = otherOnSendHooks(context)
  return others.length === 0 || (others.length === 1 && also !== undefined && others[0] === also)
}

/** The headers set on the reply so far (lower-case names); writing to it is `reply.header()` without the checks. */
function replyHeaders (reply: FastifyReply): Headers {
  return (reply as unknown as Internals)[(symbols as Symbols).kReplyHeaders] as Headers
}

/**
 * Writes status, the reply's headers and `body` and ends the response; only after `directWritable()` said yes.
 * The caller has put every header of the answer on the reply; Content-Length is the body's, a missing
 * Content-Type is application/octet-stream (what `reply.send(buffer)` would say).
 */
export function writeDirect (reply: FastifyReply, status: number, body: Buffer, closing: boolean): void {
  const headers = replyHeaders(reply)
  if (headers['content-type'] === undefined) headers['content-type'] = 'application/octet-stream'
  headers['content-length'] = String(body.length)
  if (closing) headers.connection = 'close'
  const res = reply.raw
  // before hijack(): should a header be refused here, the error still reaches Fastify's error handler
  res.writeHead(status, headers)
  reply.hijack()
  res.end(body)
}
