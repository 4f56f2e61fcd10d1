/** The load generator: autocannon in this process (pinned to the client core), one fixed load for every row. */
import { createRequire } from 'node:module'

interface AutocannonRequest {
  method?: string
  path?: string
  headers?: Record<string, string>
  setupRequest?: (req: AutocannonRequest, context: unknown) => AutocannonRequest
}
interface AutocannonResult {
  duration: number
  errors: number
  timeouts: number
  non2xx: number
  resets: number
  '2xx': number
  statusCodeStats: Record<string, { count: number }>
  latency: { p50: number, p90: number, p99: number, mean: number, max: number }
  requests: { total: number, sent: number }
}
type Autocannon = (opts: Record<string, unknown>) => Promise<AutocannonResult> & { stop?: () => void }

const autocannon = createRequire(import.meta.url)('autocannon') as Autocannon

export interface LoadSpec {
  /** http://127.0.0.1:port */
  base: string
  path: string
  headers?: Record<string, string>
  /** a new path per request (e.g. cache misses); the function is called for every request, keep it cheap */
  pathPerRequest?: () => string
  /** other headers per request (e.g. another API key each time); called for every request */
  headersPerRequest?: () => Record<string, string>
  /** requests that go round, each connection cycling through them (e.g. several API keys) */
  cycle?: Array<{ path: string, headers?: Record<string, string> }>
}

export interface LoadResult {
  /** 2xx answers per second */
  rps: number
  /** answers of any status */
  completed: number
  ok: number
  durationS: number
  p50: number
  p99: number
  mean: number
  non2xx: number
  errors: number
  timeouts: number
  statusCodes: Record<string, number>
}

export interface LoadOptions { connections: number, durationS: number }

function perRequest (spec: LoadSpec): (req: AutocannonRequest) => AutocannonRequest {
  const path = spec.pathPerRequest
  const headers = spec.headersPerRequest
  const fixed = spec.headers ?? {}
  return function setupRequest (req) {
    if (path !== undefined) req.path = path()
    if (headers !== undefined) req.headers = { ...fixed, ...headers() }
    return req
  }
}

export async function runLoad (spec: LoadSpec, opts: LoadOptions): Promise<LoadResult> {
  const requests: AutocannonRequest[] = spec.cycle !== undefined
    ? spec.cycle.map((r) => ({ method: 'GET', path: r.path, headers: { ...(spec.headers ?? {}), ...(r.headers ?? {}) } }))
    : [{
        method: 'GET',
        path: spec.path,
        headers: spec.headers ?? {},
        ...(spec.pathPerRequest !== undefined || spec.headersPerRequest !== undefined
          ? { setupRequest: perRequest(spec) }
          : {}),
      }]
  const res = await autocannon({
    url: spec.base,
    connections: opts.connections,
    duration: opts.durationS,
    pipelining: 1,
    timeout: 10,
    requests,
  })
  const statusCodes: Record<string, number> = {}
  for (const [code, s] of Object.entries(res.statusCodeStats ?? {})) statusCodes[code] = s.count
  const durationS = res.duration > 0 ? res.duration : opts.durationS
  return {
    rps: res['2xx'] / durationS,
    completed: res.requests.total,
    ok: res['2xx'],
    durationS,
    p50: res.latency.p50,
    p99: res.latency.p99,
    mean: res.latency.mean,
    non2xx: res.non2xx,
    errors: res.errors,
    timeouts: res.timeouts,
    statusCodes,
  }
}
