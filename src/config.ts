/**
 * Configuration from the environment, read once at start (src/server.ts passes process.env; tests pass objects).
 * Every variable is a row of VARS: its parser, default and the line the README's table shows (a test checks the
 * README lists them all). All errors are reported together; the result is frozen.
 */
import { isAbsolute, resolve } from 'node:path'
import { getHeapStatistics } from 'node:v8'
import { parseDuration, DURATION_HINT } from './duration.js'
import { GW_ERR_CONFIG } from './errors.js'

export interface TargetConfig { url: string, weight: number }

export interface GatewayConfig {
  host: string
  port: number
  logLevel: string
  /** null = the in-process MemoryStore */
  redisUrl: string | null
  redisPrefix: string
  redisCommandTimeoutMs: number
  adminToken: string | null
  trustProxy: boolean | number | string[]
  bodyLimit: number
  /** folder of route files; null with `declarations` given (tests) */
  routesDir: string | null
  /** upstream targets from UPSTREAM_<NAME>, overriding the declared ones */
  upstreamTargets: Readonly<Record<string, TargetConfig[]>>
  tlsCertFile: string | null
  tlsKeyFile: string | null
  shutdownTimeoutMs: number
  accessLog: boolean
  /** Prometheus metrics collected and served */
  metrics: boolean
  /** separate plain-HTTP listener for GET /metrics; 0 = none (metrics only at /admin/metrics) */
  metricsPort: number
  /** address of the metrics listener; null = HOST */
  metricsHost: string | null
  /** worker processes for src/cluster.ts; 0 = os.availableParallelism() */
  workers: number
  /** load shedding (plugins/pressure.ts); 0 = that check is off */
  pressureEventLoopDelayMs: number
  pressureHeapUsedBytes: number
  pressureRssBytes: number
  pressureSampleIntervalMs: number
  pressureRetryAfterS: number
  /** the environment as read, for plugins that define their own variables in VARS */
  env: Readonly<Record<string, string>>
}

type Parse<T> = (raw: string) => T
interface Var { name: string, default: string | null, describe: string, key?: keyof GatewayConfig, parse: Parse<unknown> }

function fail (msg: string): never { throw new Error(msg) }
const int = (min: number, max: number): Parse<number> => (raw) => {
  const n = Number(raw)
  return Number.isInteger(n) && n >= min && n <= max ? n : fail(`expected an integer from ${min} to ${max}, got "${raw}"`)
}
const str: Parse<string> = (raw) => raw
const optional: Parse<string | null> = (raw) => raw === '' ? null : raw
const bool: Parse<boolean> = (raw) => {
  if (/^(1|true|yes|on)$/i.test(raw)) return true
  if (/^(0|false|no|off)$/i.test(raw)) return false
  return fail(`expected true or false, got "${raw}"`)
}
const duration: Parse<number> = (raw) => parseDuration(/^\d+$/.test(raw) ? Number(raw) : raw) ?? fail(`${DURATION_HINT}, got "${raw}"`)
const bytes: Parse<number> = (raw) => {
  const m = /^(\d+)\s*(b|kb|kib|mb|mib)?$/i.exec(raw.trim())
  if (m === null) return fail(`expected a size like 1048576, "512kb" or "10mb", got "${raw}"`)
  const unit = (m[2] ?? 'b').toLowerCase()
  return Number(m[1]) * (unit.startsWith('k') ? 1024 : unit.startsWith('m') ? 1024 * 1024 : 1)
}
/** bytes, or a share of V8's heap limit ("90%") */
const heapBytes: Parse<number> = (raw) => {
  const m = /^(\d+(?:\.\d+)?)\s*%$/.exec(raw.trim())
  if (m === null) return bytes(raw)
  const share = Number(m[1])
  if (share <= 0 || share > 100) return share === 0 ? 0 : fail(`expected a share from 1% to 100%, got "${raw}"`)
  return Math.floor(getHeapStatistics().heap_size_limit * share / 100)
}
const redisUrl: Parse<string | null> = (raw) => {
  if (raw === '') return null
  let u: URL
  try { u = new URL(raw) } catch { return fail(`expected a URL like redis://127.0.0.1:6379, got "${raw}"`) }
  return u.protocol === 'redis:' || u.protocol === 'rediss:' ? raw : fail(`expected a redis:// or rediss:// URL, got "${u.protocol}"`)
}
const trustProxy: Parse<boolean | number | string[]> = (raw) => {
  if (/^(true|false)$/i.test(raw)) return raw.toLowerCase() === 'true'
  if (/^\d+$/.test(raw)) return Number(raw)
  const list = raw.split(',').map((s) => s.trim()).filter(Boolean)
  return list.length > 0 ? list : fail(`expected true, false, a hop count or a comma-separated list of addresses/CIDRs, got "${raw}"`)
}

// ---- parsers of the auth variables (plugins/auth.ts, src/jwt.ts) ----
const list: Parse<string[] | null> = (raw) => {
  const out = raw.split(',').map((s) => s.trim()).filter(Boolean)
  return out.length > 0 ? out : null
}
export const JWT_ALGORITHMS = ['HS256', 'HS384', 'HS512', 'RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA'] as const
const jwtAlgorithms: Parse<string[] | null> = (raw) => {
  const algs = list(raw)
  const bad = (algs ?? []).filter((a) => !(JWT_ALGORITHMS as readonly string[]).includes(a))
  return bad.length === 0 ? algs : fail(`unsupported algorithm${bad.length > 1 ? 's' : ''} ${bad.join(', ')}; supported: ${JWT_ALGORITHMS.join(', ')} ("none" never is)`)
}
const jwtSecret: Parse<Buffer | null> = (raw) => {
  if (raw === '') return null
  const secret = raw.startsWith('base64:') ? Buffer.from(raw.slice(7), 'base64') : Buffer.from(raw)
  // RFC 7518 §3.2: an HMAC key at least as long as the hash output
  return secret.length >= 32 ? secret : fail(`expected at least 32 bytes (RFC 7518 §3.2), got ${secret.length}`)
}
const httpUrl: Parse<string | null> = (raw) => {
  if (raw === '') return null
  let u: URL
  try { u = new URL(raw) } catch { return fail(`expected an https:// (or http://) URL, got "${raw}"`) }
  return u.protocol === 'https:' || u.protocol === 'http:' ? raw : fail(`expected an https:// (or http://) URL, got "${u.protocol}"`)
}
const claimPaths: Parse<string[] | null> = (raw) => {
  const out = list(raw)
  return (out ?? []).every((c) => /^[^.\s]+(\.[^.\s]+)*$/.test(c)) ? out : fail(`expected claim names or dotted paths (comma-separated), got "${raw}"`)
}

export const VARS: Var[] = [
  { name: 'PORT', key: 'port', default: '8080', describe: 'Port the gateway listens on', parse: int(0, 65535) },
  { name: 'HOST', key: 'host', default: '0.0.0.0', describe: 'Address the gateway listens on', parse: str },
  { name: 'LOG_LEVEL', key: 'logLevel', default: 'info', describe: 'pino level: fatal, error, warn, info, debug, trace or silent', parse: (raw) => /^(fatal|error|warn|info|debug|trace|silent)$/.test(raw) ? raw : fail(`expected fatal, error, warn, info, debug, trace or silent, got "${raw}"`) },
  { name: 'REDIS_URL', key: 'redisUrl', default: '', describe: 'Redis shared by all replicas (`redis://host:6379/0`); unset = in-process store for one replica', parse: redisUrl },
  { name: 'REDIS_PREFIX', key: 'redisPrefix', default: 'gw:', describe: 'Prefix of every key and channel the gateway uses in Redis', parse: (raw) => /^[\w:.-]{1,32}$/.test(raw) ? raw : fail(`expected 1-32 characters of [A-Za-z0-9_:.-], got "${raw}"`) },
  { name: 'REDIS_COMMAND_TIMEOUT', key: 'redisCommandTimeoutMs', default: '250ms', describe: 'Longest wait for one Redis command before the gateway applies its fallback (an answer that came in time while the gateway was busy is read before the command is called late)', parse: duration },
  { name: 'ADMIN_TOKEN', key: 'adminToken', default: '', describe: 'Bearer credential for the admin API (`/admin/*`); unset = admin API disabled', parse: (raw) => raw === '' ? null : raw.length >= 16 ? raw : fail('expected at least 16 characters') },
  { name: 'TRUST_PROXY', key: 'trustProxy', default: 'false', describe: 'Trust X-Forwarded-* from: `true`, `false`, a hop count, or addresses/CIDRs (comma-separated)', parse: trustProxy },
  { name: 'BODY_LIMIT', key: 'bodyLimit', default: '10mb', describe: 'Largest request body accepted (413 above)', parse: bytes },
  { name: 'ROUTES_DIR', key: 'routesDir', default: '', describe: 'Folder of route declaration files; default: the `routes/` folder shipped with the gateway', parse: optional },
  { name: 'TLS_CERT_FILE', key: 'tlsCertFile', default: '', describe: 'PEM certificate: serve HTTPS and HTTP/2 (with TLS_KEY_FILE)', parse: optional },
  { name: 'TLS_KEY_FILE', key: 'tlsKeyFile', default: '', describe: 'PEM private key for TLS_CERT_FILE', parse: optional },
  { name: 'TARGET_CA_FILE', default: '', describe: 'PEM CA certificate(s) trusted for `https://` upstream targets, health checks and `wss://` WebSocket targets, in addition to the system CAs (an internal CA)', parse: optional },
  { name: 'SHUTDOWN_TIMEOUT', key: 'shutdownTimeoutMs', default: '10s', describe: 'Longest drain of in-flight requests on SIGTERM before closing', parse: duration },
  { name: 'ACCESS_LOG', key: 'accessLog', default: 'true', describe: 'One JSON access-log line per request', parse: bool },
  // response cache (plugins/cache.ts) and compression (plugins/compress.ts)
  { name: 'CACHE', default: 'true', describe: 'Response cache for routes that declare `cache`; `false` turns it off everywhere (a kill switch: routes then always go upstream)', parse: bool },
  { name: 'CACHE_L1_MAX_ENTRIES', default: '1000', describe: 'Entries each replica keeps in its in-process cache (L1) in front of Redis; 0 = no L1', parse: int(0, 10_000_000) },
  { name: 'CACHE_L1_MAX_BYTES', default: '32mb', describe: 'Bytes (bodies, headers, compressed variants) each replica keeps in its L1; 0 = no L1', parse: bytes },
  { name: 'CACHE_L1_TTL', default: '5s', describe: 'Longest a replica serves its L1 copy without reading Redis again (never past the entry\'s freshness); bounds what a replica that missed a purge message serves', parse: duration },
  { name: 'CACHE_LOCK_TTL', default: '10s', describe: 'Lifetime of the fill lock: while one replica fetches a missing entry, the others wait for it instead of calling the upstream too', parse: (raw) => { const n = duration(raw); return n >= 100 ? n : fail(`expected at least 100ms, got "${raw}"`) } },
  { name: 'CACHE_LOCK_WAIT', default: '5s', describe: 'Longest a request waits for another replica\'s fill of the same entry before it calls the upstream itself', parse: duration },
  { name: 'COMPRESS', default: 'true', describe: 'gzip/brotli compression of proxied responses by Accept-Encoding', parse: bool },
  { name: 'COMPRESS_THRESHOLD', default: '1kb', describe: 'Smallest body compressed (bytes, `1kb`)', parse: bytes },
  { name: 'COMPRESS_BROTLI_QUALITY', default: '4', describe: 'Brotli quality, 0-11 (11 is the smallest output at many times the CPU)', parse: int(0, 11) },
  { name: 'COMPRESS_GZIP_LEVEL', default: '6', describe: 'gzip level, 1-9', parse: int(1, 9) },
  // rate limits (plugins/rate-limit.ts) and the per-IP flood limit (plugins/flood.ts)
  { name: 'RATE_LIMIT_ON_STORE_ERROR', default: 'local', describe: 'When a rate-limit check cannot reach Redis (within REDIS_COMMAND_TIMEOUT): `local` = limit in process at the limit divided by RATE_LIMIT_REPLICAS, `open` = let requests through, `closed` = answer 503', parse: (raw) => /^(local|open|closed)$/.test(raw) ? raw : fail(`expected local, open or closed, got "${raw}"`) },
  { name: 'RATE_LIMIT_REPLICAS', default: '1', describe: 'Number of gateway replicas; with RATE_LIMIT_ON_STORE_ERROR=local each replica allows limit / replicas while Redis is unreachable', parse: int(1, 10_000) },
  { name: 'RATE_LIMIT_LEASE', default: '64', describe: 'Most units of a busy client\'s allowance a replica takes from Redis ahead of use and spends without asking Redis (counted in Redis when taken, so replicas together never exceed a limit; only while the window has room to spare); 0 = every request asks Redis', parse: int(0, 100_000) },
  { name: 'RATE_LIMIT_LEASE_MS', default: '1000', describe: 'How long leased units may be spent before what is left goes back to Redis', parse: int(10, 60_000) },
  { name: 'RATE_LIMIT_HEADERS', default: 'ietf,x', describe: 'Rate-limit headers to send (comma-separated): `ietf` = RateLimit-Limit/-Remaining/-Reset/-Policy, `x` = X-RateLimit-Limit/-Remaining/-Reset, or `none`', parse: (raw) => { const sets = raw.split(',').map((s) => s.trim()).filter(Boolean); return sets.length > 0 && sets.every((s) => /^(ietf|x|none)$/.test(s)) && (!sets.includes('none') || sets.length === 1) ? sets : fail(`expected ietf, x, ietf,x or none, got "${raw}"`) } },
  { name: 'FLOOD_LIMIT', default: '0', describe: 'Requests a second accepted from one client IP (per replica), checked before authentication; above it 429. 0 = off. Behind a load balancer set TRUST_PROXY', parse: int(0, 10_000_000) },
  // API keys and JWT (plugins/auth.ts, src/keys.ts, src/jwt.ts)
  { name: 'API_KEY_CACHE_SIZE', default: '10000', describe: 'API keys each replica keeps in its in-process cache (least used go first: second-chance eviction)', parse: int(1, 10_000_000) },
  { name: 'API_KEY_CACHE_TTL', default: '60s', describe: 'Age after which a cached API key is re-read from the store in the background (revocations reach every replica at once anyway)', parse: duration },
  { name: 'API_KEY_NEGATIVE_TTL', default: '5s', describe: 'How long an unknown API key id is remembered as unknown, sparing the store repeated look-ups', parse: duration },
  { name: 'API_KEY_LAST_USED_FLUSH', default: '5s', describe: 'Interval at which each replica writes the "last used" times of its keys to the store (batched, and on shutdown)', parse: duration },
  { name: 'AUTH_FAILURE_LIMIT', default: '20', describe: 'Failed API key or token attempts from one IP within AUTH_FAILURE_WINDOW (counted across replicas) before it is blocked; 0 = never block', parse: int(0, 1_000_000) },
  { name: 'AUTH_FAILURE_WINDOW', default: '1m', describe: 'Window in which failed authentication attempts are counted', parse: duration },
  { name: 'AUTH_FAILURE_BLOCK', default: '5m', describe: 'How long an IP over AUTH_FAILURE_LIMIT is answered 429', parse: duration },
  { name: 'JWT_SECRET', default: '', describe: 'HMAC secret for HS256/HS384/HS512 tokens: at least 32 bytes, or `base64:<bytes>`', parse: jwtSecret },
  { name: 'JWT_PUBLIC_KEY_FILE', default: '', describe: 'PEM public key (RSA, EC or Ed25519) for RS*/PS*/ES*/EdDSA tokens; not with JWT_JWKS_URL', parse: optional },
  { name: 'JWT_JWKS_URL', default: '', describe: 'JWKS URL of the identity provider: keys are cached and fetched again on an unknown `kid`', parse: httpUrl },
  { name: 'JWT_ISSUER', default: '', describe: 'Accepted `iss` values (comma-separated); when set, a token without `iss` is refused', parse: list },
  { name: 'JWT_AUDIENCE', default: '', describe: 'Accepted `aud` values (comma-separated); when set, a token without `aud` is refused', parse: list },
  { name: 'JWT_ALGORITHMS', default: '', describe: 'Accepted algorithms (comma-separated); default: HS256 with JWT_SECRET, the key\'s own (RS256, ES256, ...) with JWT_PUBLIC_KEY_FILE, RS256,ES256 with JWT_JWKS_URL', parse: jwtAlgorithms },
  { name: 'JWT_SCOPE_CLAIM', default: 'scope,scp', describe: 'Claims holding the scopes, first present wins: a space-separated string or an array (dotted paths for nested claims)', parse: claimPaths },
  { name: 'JWT_CLIENT_CLAIM', default: 'sub', describe: 'Claim holding the client id (X-Client-Id, rate-limit key)', parse: claimPaths },
  { name: 'JWT_PLAN_CLAIM', default: '', describe: 'Claim naming the client\'s rate-limit plan; unset = no plan', parse: claimPaths },
  { name: 'JWT_CLOCK_SKEW', default: '30s', describe: 'Clock skew tolerated on `exp` and `nbf`', parse: duration },
  { name: 'JWT_REQUIRE_EXP', default: 'true', describe: 'Refuse tokens without an `exp` claim', parse: bool },
  { name: 'JWT_FORWARD_TOKEN', default: 'true', describe: 'Forward a verified JWT\'s Authorization header to the upstream (an API key is never forwarded)', parse: bool },
  { name: 'JWT_JWKS_CACHE_TTL', default: '10m', describe: 'Age after which the JWKS is fetched again in the background', parse: duration },
  { name: 'JWT_JWKS_MIN_REFRESH', default: '30s', describe: 'Least time between two JWKS fetches: an unknown `kid` triggers at most one fetch per this interval', parse: duration },
  { name: 'METRICS', key: 'metrics', default: 'true', describe: 'Prometheus metrics (`/admin/metrics`, METRICS_PORT); false = not collected at all', parse: bool },
  { name: 'METRICS_PORT', key: 'metricsPort', default: '0', describe: 'Also serve Prometheus metrics, unauthenticated, at `/metrics` on this separate port (keep it off the public network); 0 = only `/admin/metrics`. With WORKERS > 1 the primary serves it, summed over all workers', parse: int(0, 65535) },
  { name: 'METRICS_HOST', key: 'metricsHost', default: '', describe: 'Address of the METRICS_PORT listener; default: HOST', parse: optional },
  { name: 'WORKERS', key: 'workers', default: 'auto', describe: 'Worker processes started by `npm run start:cluster` (`node dist/src/cluster.js`): a number, or `auto` = one per CPU', parse: (raw) => raw === 'auto' ? 0 : int(1, 1024)(raw) },
  { name: 'PRESSURE_MAX_EVENT_LOOP_DELAY', key: 'pressureEventLoopDelayMs', default: '1s', describe: 'Answer 503 (Retry-After) while the mean event-loop delay is above this; 0 = off', parse: duration },
  { name: 'PRESSURE_MAX_HEAP_USED', key: 'pressureHeapUsedBytes', default: '90%', describe: 'Answer 503 while the V8 heap in use is above this: bytes (`1500mb`) or a share of the heap limit (`90%`); 0 = off', parse: heapBytes },
  { name: 'PRESSURE_MAX_RSS', key: 'pressureRssBytes', default: '0', describe: 'Answer 503 while the resident set size is above this (bytes, `1500mb`); 0 = off', parse: bytes },
  { name: 'PRESSURE_SAMPLE_INTERVAL', key: 'pressureSampleIntervalMs', default: '1s', describe: 'How often event-loop delay and memory are sampled for load shedding', parse: (raw) => { const n = duration(raw); return n >= 10 ? n : fail(`expected at least 10ms, got "${raw}"`) } },
  { name: 'PRESSURE_RETRY_AFTER', key: 'pressureRetryAfterS', default: '10s', describe: 'Retry-After sent with a load-shedding 503', parse: (raw) => Math.max(1, Math.ceil(duration(raw) / 1000)) },
  // API documentation (plugins/docs.ts, src/openapi.ts)
  { name: 'DOCS', default: 'on', describe: 'Serve the OpenAPI document and the docs UI: `on` or `off`', parse: bool },
  { name: 'DOCS_PATH', default: '/docs', describe: 'Path of the browsable docs (Swagger UI); `off` = no UI, the document is still served', parse: (raw) => raw === 'off' ? null : /^(\/[\w.-]+)+$/.test(raw) ? raw : fail(`expected a path like /docs, or off, got "${raw}"`) },
  { name: 'OPENAPI_PATH', default: '/openapi', describe: 'The OpenAPI document is served at `<path>.json` and `<path>.yaml`; `off` = not served', parse: (raw) => raw === 'off' ? null : /^(\/[\w.-]+)+$/.test(raw) && !/\.(json|ya?ml)$/.test(raw) ? raw : fail(`expected a path without extension like /openapi, or off, got "${raw}"`) },
  { name: 'DOCS_TITLE', default: 'API', describe: 'Title of the OpenAPI document (`info.title`)', parse: (raw) => raw.trim() !== '' ? raw : fail('expected a title') },
  { name: 'DOCS_VERSION', default: '1.0.0', describe: 'Version of the API in the OpenAPI document (`info.version`)', parse: (raw) => raw.trim() !== '' ? raw : fail('expected a version') },
  { name: 'DOCS_DESCRIPTION', default: '', describe: 'Description of the API in the OpenAPI document (Markdown)', parse: str },
  { name: 'DOCS_SERVER_URL', default: '', describe: 'Public base URLs of the gateway listed as `servers` (comma-separated); unset = the origin the document is served from', parse: (raw) => raw.split(',').map((s) => s.trim()).filter(Boolean).map((u) => { try { return new URL(u).protocol.startsWith('http') ? u.replace(/\/+$/, '') : fail('') } catch { return fail(`expected http(s) URLs, got "${u}"`) } }) },
  { name: 'OPENAPI_UPSTREAMS_DIR', default: '', describe: 'Folder of upstream OpenAPI documents merged into the docs; default: the `openapi/upstreams/` folder shipped with the gateway', parse: optional },
  { name: 'OPENAPI_FETCH_TIMEOUT', default: '5s', describe: 'Longest wait at start-up for an upstream OpenAPI document declared as a URL (a failure is a warning)', parse: (raw) => { const n = duration(raw); return n >= 1 ? n : fail(`expected at least 1ms, got "${raw}"`) } },
]

/** `UPSTREAM_<NAME>`: comma-separated target URLs for the upstream named <name> (`-` written `_`), each optionally `url|weight`. */
export const UPSTREAM_ENV = /^UPSTREAM_([A-Z0-9_]+)$/
function parseTargets (raw: string): TargetConfig[] {
  const out: TargetConfig[] = []
  for (const part of raw.split(',').map((s) => s.trim()).filter(Boolean)) {
    const [url = '', weight = '1'] = part.split('|')
    out.push({ url: checkTargetUrl(url), weight: int(1, 1000)(weight) })
  }
  return out.length > 0 ? out : fail('expected at least one URL')
}

export function checkTargetUrl (raw: string): string {
  let u: URL
  try { u = new URL(raw) } catch { return fail(`expected an http:// or https:// URL, got "${raw}"`) }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') fail(`expected an http:// or https:// URL, got "${raw}"`)
  if (u.search !== '' || u.hash !== '') fail(`a target URL has no query or fragment, got "${raw}"`)
  return raw.replace(/\/+$/, '')
}

export function loadConfig (env: Record<string, string | undefined>, cwd = process.cwd()): GatewayConfig {
  const errors: string[] = []
  const out: Record<string, unknown> = {}
  const snapshot: Record<string, string> = {}
  for (const [k, v] of Object.entries(env)) if (typeof v === 'string') snapshot[k] = v
  for (const v of VARS) {
    const raw = snapshot[v.name] ?? v.default ?? ''
    try {
      const value = v.parse(raw)
      if (v.key !== undefined) out[v.key] = value
    } catch (err) { errors.push(`${v.name}: ${(err as Error).message}`) }
  }
  const upstreamTargets: Record<string, TargetConfig[]> = {}
  for (const [k, raw] of Object.entries(snapshot)) {
    const m = UPSTREAM_ENV.exec(k)
    if (m === null) continue
    try { upstreamTargets[(m[1] as string).toLowerCase().replace(/_/g, '-')] = parseTargets(raw) } catch (err) { errors.push(`${k}: ${(err as Error).message}`) }
  }
  if ((out.tlsCertFile === null) !== (out.tlsKeyFile === null)) errors.push('TLS_CERT_FILE and TLS_KEY_FILE: give both or neither')
  if (errors.length > 0) throw new GW_ERR_CONFIG(errors.map((e) => `  - ${e}`).join('\n'))
  if (typeof out.routesDir === 'string' && !isAbsolute(out.routesDir)) out.routesDir = resolve(cwd, out.routesDir)
  return Object.freeze({ ...out, upstreamTargets: Object.freeze(upstreamTargets), env: Object.freeze(snapshot) }) as GatewayConfig
}
