/**
 * gw-trace: W3C Trace Context (https://www.w3.org/TR/trace-context/) for proxied routes, and the per-request facts
 * that the access log and the metrics share.
 *
 * Every proxied request takes part in a trace: a valid incoming `traceparent` keeps its trace id and flags, and the
 * gateway's hop gets a new parent id (§3.2.2.3: a participant sends its own span id as parent-id); without one, or
 * with an invalid one, a new trace starts (§4.3) and any `tracestate` is dropped, since it belongs to a trace the
 * gateway could not read (§3.3.1.1). The proxy forwards `request.gwTraceparent`; `tracestate` passes unchanged.
 *
 * Request facts (decorated here, written by their owners, read in onResponse by gw-access-log and gw-metrics):
 *   gwTarget      the upstream target URL the proxy chose (the last try's)
 *   gwUpstreamAt  performance.now() when the proxy dispatched to it; gwUpstreamMs: ms until its response headers
 *   gwError       the error code of a failed request (GW_ERR_..., FST_ERR_...), from the onError hook
 */
import fp from 'fastify-plugin'
import { randomFillSync } from 'node:crypto'
import { createRequire } from 'node:module'
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest, HookHandlerDoneFunction, RouteOptions } from 'fastify'
import { addRouteHook } from '../src/route-hooks.js'

declare module 'fastify' {
  interface FastifyRequest {
    /** 32 hex digits; null on routes that are not proxied */
    gwTraceId: string | null
    /** the traceparent sent upstream for this hop */
    gwTraceparent: string | null
    gwTarget: string | null
    gwUpstreamAt: number
    gwUpstreamMs: number
    gwError: string | null
  }
}

// The route's config without `request.routeOptions`, which builds a new object on every read: Fastify keeps the
// route context under a symbol of its own (lib/symbols.js). Should that ever move, routeOptions is the fallback.
const kRouteContext: unknown = (() => {
  try { return (createRequire(import.meta.url)('fastify/lib/symbols.js') as { kRouteContext?: symbol }).kRouteContext } catch { return undefined }
})()
export function routeConfig (request: FastifyRequest): Record<PropertyKey, unknown> | undefined {
  const context = typeof kRouteContext === 'symbol' ? (request as unknown as Record<symbol, { config?: Record<PropertyKey, unknown> } | undefined>)[kRouteContext] : undefined
  return context !== undefined ? context.config : request.routeOptions.config as unknown as Record<PropertyKey, unknown> | undefined
}

// version-traceid-parentid-flags; a future version may append fields after a dash (§3.2.4)
const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/
const ZERO_TRACE = '0'.repeat(32)
const ZERO_SPAN = '0'.repeat(16)
const ERROR_CODE = /^[A-Z][A-Z0-9_]{2,63}$/

/** The trace id and flags of a valid traceparent, or null. */
export function parseTraceparent (value: string): { traceId: string, flags: string } | null {
  const m = TRACEPARENT.exec(value)
  if (m === null) return null
  const [, version, traceId, parentId, flags, rest] = m as unknown as [string, string, string, string, string, string | undefined]
  if (version === 'ff') return null
  if (version === '00' && rest !== undefined) return null
  if (traceId === ZERO_TRACE || parentId === ZERO_SPAN) return null
  return { traceId, flags }
}

// Random ids come from a pool refilled 4 KiB at a time: one crypto call per ~170 requests instead of two each.
const pool = Buffer.allocUnsafe(4096)
let offset = pool.length
function randomHex (bytes: number): string {
  if (offset + bytes > pool.length) { randomFillSync(pool); offset = 0 }
  const out = pool.toString('hex', offset, offset + bytes)
  offset += bytes
  return out
}
export function newTraceId (): string {
  const id = randomHex(16)
  return id === ZERO_TRACE ? newTraceId() : id
}
export function newSpanId (): string {
  const id = randomHex(8)
  return id === ZERO_SPAN ? newSpanId() : id
}

function startHop (request: FastifyRequest, _reply: FastifyReply, done: HookHandlerDoneFunction): void {
  const given = request.headers.traceparent
  const parent = typeof given === 'string' ? parseTraceparent(given) : null
  let traceId: string
  let flags: string
  if (parent !== null) {
    traceId = parent.traceId
    flags = parent.flags
  } else {
    traceId = newTraceId()
    // sampled: a new trace is offered to the upstream's tracer (parent-based samplers then record it)
    flags = '01'
    if (request.headers.tracestate !== undefined) delete request.headers.tracestate
  }
  request.gwTraceId = traceId
  request.gwTraceparent = `00-${traceId}-${newSpanId()}-${flags}`
  done()
}

function recordError (request: FastifyRequest, _reply: FastifyReply, err: FastifyError, done: HookHandlerDoneFunction): void {
  const code = err.code
  request.gwError = typeof code === 'string' && ERROR_CODE.test(code) ? code : 'ERROR'
  done()
}

async function gwTrace (app: FastifyInstance): Promise<void> {
  app.decorateRequest('gwTraceId', null)
  app.decorateRequest('gwTraceparent', null)
  app.decorateRequest('gwTarget', null)
  app.decorateRequest('gwUpstreamAt', 0)
  app.decorateRequest('gwUpstreamMs', -1)
  app.decorateRequest('gwError', null)
  app.addHook('onError', recordError)
  // only proxied routes take part in traces: the others pay nothing. First of the route's own hooks, so that a
  // request refused by auth or a rate limit is logged with its trace id too.
  app.addHook('onRoute', function traceProxiedRoute (route: RouteOptions) {
    if (route.config?.gw === undefined) return
    addRouteHook(route, 'onRequest', startHop, 'first')
  })
}

export default fp(gwTrace, { name: 'gw-trace', fastify: '5.x' })
