/**
 * One target of an upstream service: its keep-alive connection pool, its in-flight count, and its health as seen
 * by the active checks (`healthy`) and by real traffic (`circuit`).
 */
import { readFileSync } from 'node:fs'
import { rootCertificates } from 'node:tls'
import type { GatewayConfig } from '../config.js'
import type { UpstreamPolicy } from '../policy.js'
import { Circuit, CLOSED, HALF_OPEN } from './circuit.js'
import { Http1Pool } from './http1-pool.js'

export interface TargetOptions {
  /** CA certificates (PEM) trusted for https targets; undefined = the system ones */
  ca?: string[] | undefined
}

/** The system CAs plus TARGET_CA_FILE's, or undefined (= the system ones) without it. Read once, at start. */
export function upstreamCa (config: GatewayConfig): string[] | undefined {
  const file = config.env.TARGET_CA_FILE
  if (file === undefined || file === '') return undefined
  return [...rootCertificates, readFileSync(file, 'utf8')]
}

export class Target {
  /** position in the upstream's target list */
  readonly index: number
  /** this target's bit in a "tried already" mask; targets after the 32nd share no bit (never excluded) */
  readonly bit: number
  /** origin and base path, without user info: what logs and the admin API show */
  readonly url: string
  readonly origin: string
  /** ws: or wss: origin for WebSocket routes */
  readonly wsOrigin: string
  /** path of the target URL ("" or "/api"), put before every forwarded path */
  readonly basePath: string
  readonly weight: number
  /** the proxy's keep-alive connections to this target */
  readonly pool: Http1Pool
  /** requests (and WebSocket sessions) in flight */
  inflight = 0
  /** active health: false after `unhealthy` failed checks in a row, true again after `healthy` passed ones */
  passing = true
  readonly circuit: Circuit
  /** smooth weighted round-robin state (see balancer.ts) */
  current = 0
  /** active check bookkeeping */
  checkPassed = 0
  checkFailed = 0
  checking = false
  lastCheck: { ok: boolean, at: string, status: number | null, error: string | null } | null = null

  constructor (url: string, weight: number, index: number, policy: UpstreamPolicy, opts: TargetOptions = {}) {
    const u = new URL(url)
    this.index = index
    this.bit = index < 32 ? 1 << index : 0
    this.origin = u.origin
    this.wsOrigin = (u.protocol === 'https:' ? 'wss://' : 'ws://') + u.host
    this.basePath = u.pathname === '/' ? '' : u.pathname.replace(/\/$/, '')
    this.url = this.origin + this.basePath
    this.weight = weight
    this.circuit = new Circuit(policy.passive)
    this.pool = new Http1Pool(this.origin, {
      connections: policy.maxConnections,
      keepAliveMs: 4_000,
      connectMs: policy.timeouts.connectMs,
      firstByteMs: policy.timeouts.firstByteMs,
      ca: opts.ca,
    })
  }

  /** Can a request go here now? Hot path: two field reads when all is well. */
  usable (): boolean {
    return this.passing && (this.circuit.state === CLOSED || this.circuit.passes())
  }

  /** Takes traffic: passing its active checks (if any) and not ejected. What metrics and the admin API show. */
  get healthy (): boolean {
    return this.passing && this.circuit.state === CLOSED
  }

  get state (): 'healthy' | 'unhealthy' | 'ejected' | 'half-open' {
    if (!this.passing) return 'unhealthy'
    const s = this.circuit.state
    return s === CLOSED ? 'healthy' : s === HALF_OPEN ? 'half-open' : 'ejected'
  }
}
