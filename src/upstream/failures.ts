/**
 * Upstream failures: which ones may be retried, and the gateway error (502/503/504) each one becomes. Shared by
 * the HTTP proxy and the WebSocket proxy. Match on `err.code` (undici stamps its own; Node's net errors carry
 * theirs), never on classes.
 */
import {
  GW_ERR_NO_HEALTHY_TARGET, GW_ERR_UPSTREAM_BAD_RESPONSE, GW_ERR_UPSTREAM_RESET, GW_ERR_UPSTREAM_TIMEOUT,
  GW_ERR_UPSTREAM_UNAVAILABLE,
} from '../errors.js'
import type { UpstreamPool } from './pool.js'

/** The connection could not be opened: not one byte of the request was sent. */
export const CONNECT_FAILURES: ReadonlySet<string> = new Set(['ECONNREFUSED', 'UND_ERR_CONNECT_TIMEOUT', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN'])
/** ...or it broke under the request before the answer was read. */
export const CONNECTION_FAILURES: ReadonlySet<string> = new Set([...CONNECT_FAILURES, 'UND_ERR_SOCKET', 'ECONNRESET', 'EPIPE'])

/** The reason a whole-response (or handshake) timeout aborts with; one shared object, it carries no request data. */
export const UPSTREAM_TIMEOUT = Object.assign(new Error('upstream response timeout'), { code: 'GW_ERR_UPSTREAM_TIMEOUT' })

export function codeOf (err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code
  return typeof code === 'string' ? code : 'error'
}

/** Did the attempt fail because of the client (a body too large or cut short, a client gone), not the target? */
export function clientFault (code: string, raw: { readableAborted?: boolean }): boolean {
  return code === 'GW_ERR_BODY_TOO_LARGE' || code === 'GW_ERR_BAD_REQUEST' || raw.readableAborted === true
}

/** The gateway error for an upstream failure, with the original as `cause` (logged, never shown to clients). */
export function upstreamError (err: unknown, upstream: string): Error {
  const code = codeOf(err)
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
    case 'GW_ERR_BODY_TOO_LARGE': case 'GW_ERR_BAD_REQUEST': case 'GW_ERR_UPSTREAM_BAD_RESPONSE':
      return err as Error
    default:
      out = code.startsWith('HPE_') ? new GW_ERR_UPSTREAM_BAD_RESPONSE(upstream) : new GW_ERR_UPSTREAM_UNAVAILABLE(upstream)
  }
  out.cause = err
  return out
}

/** 503 at once when every target is unhealthy or ejected, with Retry-After: when one may be back. */
export function noHealthyTarget (upstream: UpstreamPool): Error {
  return Object.assign(new GW_ERR_NO_HEALTHY_TARGET(upstream.name), { headers: { 'retry-after': String(upstream.retryAfterSeconds()) } })
}
