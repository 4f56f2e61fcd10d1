/**
 * gw-access-log: one JSON line per request, written from onResponse through the request's pino logger (level info,
 * so it carries `reqId`, `pid` and `hostname`; routes that log at a higher level, like the health probes, are
 * left out). Fastify's own two request lines are off (src/app.ts). ACCESS_LOG=false turns this off.
 *
 * A line never holds a credential: the path's query values of key and token parameters are replaced, the client
 * is named by its id (never its key), and no header is logged (src/app.ts redacts credential headers anywhere).
 *
 *   {"level":30,"time":..,"pid":..,"hostname":..,"reqId":"..","traceId":"..","route":"GET /users/:id",
 *    "method":"GET","path":"/users/7?api_key=[redacted]","status":200,"durationMs":3.2,"upstream":"users",
 *    "target":"http://10.0.0.5:8080","upstreamMs":2.1,"clientId":"acme","cache":"MISS","rateLimit":"allowed",
 *    "error":null,"ip":"203.0.113.9","bytes":512,"msg":"request"}
 */
import fp from 'fastify-plugin'
import { hostname } from 'node:os'
import { pino } from 'pino'
import type { FastifyInstance, FastifyReply, FastifyRequest, HookHandlerDoneFunction } from 'fastify'
import type { GatewayConfig } from '../src/config.js'
import type { RoutePolicy } from '../src/policy.js'
import { parseTraceparent, routeConfig } from './trace.js'

/** Query parameters whose values never reach a log line (compared case-insensitively, after percent-decoding). */
export const SECRET_PARAMS = new Set([
  'api_key', 'apikey', 'api-key', 'key', 'token', 'access_token', 'id_token', 'refresh_token', 'auth', 'authorization',
  'password', 'passwd', 'secret', 'client_secret', 'signature', 'sig', 'jwt', 'code', 'session', 'sessionid',
])
// cheap pre-check: only a query that might hold one of them is taken apart
const MAYBE_SECRET = /key|token|auth|pass|secret|sig|jwt|code|session|%|\+/i
export const REDACTED = '[redacted]'

/** The request target for a log line: the path as sent, with the values of secret query parameters replaced. */
export function loggablePath (url: string): string {
  const q = url.indexOf('?')
  if (q === -1) return url
  const query = url.slice(q + 1)
  if (!MAYBE_SECRET.test(query)) return url
  const parts = query.split('&')
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i] as string
    const eq = part.indexOf('=')
    const raw = eq === -1 ? part : part.slice(0, eq)
    let name = raw
    if (raw.includes('%') || raw.includes('+')) {
      try { name = decodeURIComponent(raw.replace(/\+/g, ' ')) } catch { /* a malformed name stays as written */ }
    }
    if (SECRET_PARAMS.has(name.trim().toLowerCase())) parts[i] = `${raw}=${REDACTED}`
  }
  return url.slice(0, q + 1) + parts.join('&')
}

const round = (ms: number): number => Math.round(ms * 10) / 10
/** round(ms) as JSON, from integers: a double's shortest decimal form is what String(number) spends its time on */
function ms1 (ms: number): string {
  if (!Number.isFinite(ms)) return 'null'
  const tenths = Math.round(ms * 10)
  const whole = Math.trunc(tenths / 10)
  const digit = Math.abs(tenths % 10)
  return digit === 0 ? String(whole) : (tenths < 0 && whole === 0 ? '-0.' : whole + '.') + digit
}

/** requests that took no part in a trace (not proxied, or refused before) still log the caller's trace id */
function callerTraceId (request: FastifyRequest): string | null {
  const given = request.headers.traceparent
  return typeof given === 'string' ? parseTraceparent(given)?.traceId ?? null : null
}

function rateLimitOutcome (reply: FastifyReply, status: number): string | null {
  if (status === 429) return 'denied'
  if (status < 400 || reply.hasHeader('ratelimit-remaining') || reply.hasHeader('x-ratelimit-remaining') || reply.hasHeader('ratelimit')) return 'allowed'
  return null
}

const kLine = Symbol('gw.accessLog.route')
/** a route's part of every line: its name and upstream (and both as JSON), and which outcomes it logs */
interface RouteLine { routeName: string | null, upstreamName: string | null, route: string, upstream: string, cached: boolean, limited: boolean }
/** request ids made or accepted by src/app.ts are of these characters: no JSON escaping needed */
const SAFE = /^[\w.:@-]{1,128}$/
const METHODS: Record<string, string> = Object.fromEntries(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'].map((m) => [m, `"${m}"`]))
/** upstream target URLs are declared ones: a few, each escaped once */
const targets = new Map<string, string>()
function targetJson (target: string | null): string {
  if (target === null) return 'null'
  let out = targets.get(target)
  if (out === undefined) {
    out = JSON.stringify(target)
    if (targets.size < 1024) targets.set(target, out)
  }
  return out
}

/** a JSON value for a line: strings through JSON.stringify, numbers as they are, absent = null */
const j = (v: string | null | undefined): string => v === null || v === undefined ? 'null' : JSON.stringify(v)
const n = (v: number | null): string => v === null || !Number.isFinite(v) ? 'null' : String(v)

async function gwAccessLog (app: FastifyInstance, opts: { config: GatewayConfig }): Promise<void> {
  if (!opts.config.accessLog) return
  // The line is written straight to the logger's destination, as the JSON pino would make of it. Going through
  // request.log.info() cost most of the access log (the bench's `full` row): the child logger, the redaction of
  // every REDACT path on each call, and pino's generic serializer. Nothing here needs redacting: the fields are
  // ours, the path's secret query values are replaced, and no header is written.
  const destination = (app.log as unknown as Record<symbol, { write?: (line: string) => unknown } | undefined>)[pino.symbols.streamSym]
  const write = typeof destination?.write === 'function' ? destination.write.bind(destination) : null
  const head = `{"level":30,"time":`
  const host = `,"pid":${process.pid},"hostname":${JSON.stringify(hostname())},"reqId":`
  // what is the same on every line of a route is made into JSON once, on the route's first line
  function makeLine (routeName: string | null, upstreamName: string | null, cached: boolean, limited: boolean): RouteLine {
    return { routeName, upstreamName, route: ',"route":' + j(routeName), upstream: ',"upstream":' + j(upstreamName), cached, limited }
  }
  const lineless = makeLine(null, null, false, false)
  function routeLine (config: Record<PropertyKey, unknown> | undefined): RouteLine {
    if (config === undefined) return lineless
    let line = config[kLine] as RouteLine | undefined
    if (line === undefined) {
      const gw = config.gw as RoutePolicy | undefined
      line = makeLine(gw?.id ?? (config.url as string | undefined) ?? null, gw?.upstream ?? null, gw?.cache != null, gw?.rateLimit != null)
      config[kLine] = line
    }
    return line
  }
  app.addHook('onResponse', function accessLog (request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction) {
    const log = request.log as FastifyRequest['log'] & { isLevelEnabled?: (level: string) => boolean }
    if (log.isLevelEnabled !== undefined && !log.isLevelEnabled('info')) { done(); return }
    const config = routeConfig(request)
    const status = reply.statusCode
    const length = reply.getHeader('content-length')
    const upstreamMs = request.gwUpstreamMs >= 0
      ? request.gwUpstreamMs
      : request.gwUpstreamAt > 0 ? performance.now() - request.gwUpstreamAt : -1
    const line = routeLine(config)
    const traceId = request.gwTraceId ?? callerTraceId(request)
    const cache = line.cached ? reply.getHeader('x-cache') : undefined
    const rateLimit = line.limited ? rateLimitOutcome(reply, status) : null
    if (write === null) {
      log.info({
        traceId,
        route: line.routeName,
        method: request.method,
        path: loggablePath(request.url),
        status,
        durationMs: round(reply.elapsedTime),
        upstream: line.upstreamName,
        target: request.gwTarget,
        upstreamMs: upstreamMs >= 0 ? round(upstreamMs) : null,
        clientId: request.client?.id ?? null,
        cache: cache === undefined ? null : String(cache),
        rateLimit,
        error: request.gwError,
        ip: request.ip,
        bytes: length === undefined ? null : Number(length),
      }, 'request')
      done()
      return
    }
    const id = String(request.id)
    write(head + Date.now() + host + (SAFE.test(id) ? '"' + id + '"' : JSON.stringify(id)) +
      // trace ids are 32 hex digits (checked where they are made or parsed)
      ',"traceId":' + (traceId === null ? 'null' : '"' + traceId + '"') + line.route +
      ',"method":' + (METHODS[request.method] ?? JSON.stringify(request.method)) +
      ',"path":' + JSON.stringify(loggablePath(request.url)) + ',"status":' + status +
      ',"durationMs":' + ms1(reply.elapsedTime) + line.upstream + ',"target":' + targetJson(request.gwTarget) +
      ',"upstreamMs":' + (upstreamMs >= 0 ? ms1(upstreamMs) : 'null') + ',"clientId":' + j(request.client?.id) +
      ',"cache":' + (cache === undefined ? 'null' : JSON.stringify(String(cache))) +
      ',"rateLimit":' + j(rateLimit) +
      ',"error":' + j(request.gwError) + ',"ip":' + j(request.ip) +
      ',"bytes":' + (length === undefined ? 'null' : n(Number(length))) + ',"msg":"request"}\n')
    done()
  })
}

export default fp(gwAccessLog, { name: 'gw-access-log', fastify: '5.x', dependencies: ['gw-trace'] })
