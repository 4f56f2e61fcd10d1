/**
 * The request headers sent to an upstream, for the HTTP proxy and the WebSocket proxy alike.
 *
 * Removed: hop-by-hop headers (RFC 9110 §7.6.1) and those the Connection header lists, HTTP/2 pseudo-headers
 * (`:method`, `:path`, `:authority`, `:scheme`: RFC 9113 §8.3, never valid HTTP/1.1 field names), Host (the target's
 * own is set by the client library), the route's API key header, and every incoming copy of the headers the gateway
 * sets itself (identity, X-Forwarded-*, X-Request-Id; traceparent is replaced), so that a client cannot spoof them.
 * Added: X-Forwarded-For/Proto/Host (appended to trusted values, else replaced), X-Request-Id, traceparent, and the
 * authenticated client's identity (or, for the HTTP proxy, the client's prepared header lines: see `withIdentity`).
 */
import type { FastifyRequest } from 'fastify'
import type { IncomingHttpHeaders } from 'node:http'
import { IDENTITY_HEADERS, identityHeaders } from '../client.js'
import type { RoutePolicy } from '../policy.js'

export const HOP_BY_HOP = ['connection', 'keep-alive', 'proxy-authenticate', 'proxy-authorization', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade'] as const

export type ForwardHeaders = (request: FastifyRequest) => IncomingHttpHeaders

/** The Connection header's list of hop-by-hop names, or null when it lists none. */
export function connectionListed (connection: string | string[] | undefined): Set<string> | null {
  if (connection === undefined || connection === 'keep-alive' || connection === 'close') return null
  return new Set(String(connection).toLowerCase().split(',').map((s) => s.trim()))
}

/**
 * `withIdentity`: add the client's identity headers to the object. The HTTP proxy leaves them out and hands the
 * client's prepared header lines (`Client.head`) to its upstream client instead.
 */
export function compileForwardHeaders (policy: RoutePolicy, trust: boolean, alsoDrop: readonly string[] = [], withIdentity = true): ForwardHeaders {
  const drop = new Set<string>([
    ...HOP_BY_HOP, 'host', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-request-id',
    ...IDENTITY_HEADERS, ...alsoDrop,
  ])
  // RFC 7239 Forwarded from an untrusted peer is a spoof; from a trusted proxy it passes along
  if (!trust) drop.add('forwarded')
  if (policy.auth?.apiKey != null) drop.add(policy.auth.apiKey.header)

  return function forwardHeaders (request) {
    const incoming = request.headers
    const out: IncomingHttpHeaders = {}
    const listed = connectionListed(incoming.connection)
    for (const name in incoming) {
      if (drop.has(name) || name.charCodeAt(0) === 58 /* : */ || (listed !== null && listed.has(name))) continue
      out[name] = incoming[name]
    }
    const remote = request.socket.remoteAddress ?? ''
    const xff = incoming['x-forwarded-for']
    out['x-forwarded-for'] = trust && xff !== undefined ? `${String(xff)}, ${remote}` : remote
    out['x-forwarded-proto'] = request.protocol
    out['x-forwarded-host'] = request.host
    out['x-request-id'] = request.id
    // the gateway's own hop (plugins/trace.ts) replaces the caller's traceparent
    const traceparent = request.gwTraceparent
    if (traceparent !== null && traceparent !== undefined) out.traceparent = traceparent
    const client = request.client
    if (withIdentity && client !== null) Object.assign(out, identityHeaders(client))
    return out
  }
}
