/**
 * Configuration from the environment, read once at start (src/server.ts passes process.env; tests pass objects).
 * Every variable is a row of VARS: its parser, default and the line the README's table shows (a test checks the
 * README lists them all). All errors are reported together; the result is frozen.
 */
import { isAbsolute, resolve } from 'node:path'
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

export const VARS: Var[] = [
  { name: 'PORT', key: 'port', default: '8080', describe: 'Port the gateway listens on', parse: int(0, 65535) },
  { name: 'HOST', key: 'host', default: '0.0.0.0', describe: 'Address the gateway listens on', parse: str },
  { name: 'LOG_LEVEL', key: 'logLevel', default: 'info', describe: 'pino level: fatal, error, warn, info, debug, trace or silent', parse: (raw) => /^(fatal|error|warn|info|debug|trace|silent)$/.test(raw) ? raw : fail(`expected fatal, error, warn, info, debug, trace or silent, got "${raw}"`) },
  { name: 'REDIS_URL', key: 'redisUrl', default: '', describe: 'Redis shared by all replicas (`redis://host:6379/0`); unset = in-process store for one replica', parse: redisUrl },
  { name: 'REDIS_PREFIX', key: 'redisPrefix', default: 'gw:', describe: 'Prefix of every key and channel the gateway uses in Redis', parse: (raw) => /^[\w:.-]{1,32}$/.test(raw) ? raw : fail(`expected 1-32 characters of [A-Za-z0-9_:.-], got "${raw}"`) },
  { name: 'REDIS_COMMAND_TIMEOUT', key: 'redisCommandTimeoutMs', default: '250ms', describe: 'Longest wait for one Redis command before the gateway applies its fallback', parse: duration },
  { name: 'ADMIN_TOKEN', key: 'adminToken', default: '', describe: 'Bearer credential for the admin API (`/admin/*`); unset = admin API disabled', parse: (raw) => raw === '' ? null : raw.length >= 16 ? raw : fail('expected at least 16 characters') },
  { name: 'TRUST_PROXY', key: 'trustProxy', default: 'false', describe: 'Trust X-Forwarded-* from: `true`, `false`, a hop count, or addresses/CIDRs (comma-separated)', parse: trustProxy },
  { name: 'BODY_LIMIT', key: 'bodyLimit', default: '10mb', describe: 'Largest request body accepted (413 above)', parse: bytes },
  { name: 'ROUTES_DIR', key: 'routesDir', default: '', describe: 'Folder of route declaration files; default: the `routes/` folder shipped with the gateway', parse: optional },
  { name: 'TLS_CERT_FILE', key: 'tlsCertFile', default: '', describe: 'PEM certificate: serve HTTPS and HTTP/2 (with TLS_KEY_FILE)', parse: optional },
  { name: 'TLS_KEY_FILE', key: 'tlsKeyFile', default: '', describe: 'PEM private key for TLS_CERT_FILE', parse: optional },
  { name: 'SHUTDOWN_TIMEOUT', key: 'shutdownTimeoutMs', default: '10s', describe: 'Longest drain of in-flight requests on SIGTERM before closing', parse: duration },
  { name: 'ACCESS_LOG', key: 'accessLog', default: 'true', describe: 'One JSON access-log line per request', parse: bool },
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
