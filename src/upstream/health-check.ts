/**
 * Active health checks of one upstream: every `interval`, a GET of the declared path on each target (over a
 * connection of its own, so a saturated pool of real traffic does not delay the probe and fail it), with a
 * timeout. The results go to UpstreamPool.checked(), which counts them against the healthy/unhealthy thresholds.
 * The timer is unref'd (it never keeps the process alive) and stop() ends it and the probes in flight.
 */
import { Client } from 'undici'
import type { UpstreamPolicy } from '../policy.js'
import type { Target, TargetOptions } from './target.js'

export type CheckResult = { ok: boolean, status: number | null, error: string | null }

const PROBE_HEADERS = { 'user-agent': 'fastgate-health-check', accept: '*/*' }

export class HealthChecker {
  readonly #policy: NonNullable<UpstreamPolicy['healthCheck']>
  readonly #targets: readonly Target[]
  readonly #clients: Client[]
  readonly #report: (target: Target, result: CheckResult) => void
  #stopped = false
  #timer: NodeJS.Timeout | null = null

  constructor (policy: NonNullable<UpstreamPolicy['healthCheck']>, targets: readonly Target[], report: (target: Target, result: CheckResult) => void, opts: TargetOptions = {}) {
    this.#policy = policy
    this.#targets = targets
    this.#report = report
    this.#clients = targets.map((t) => new Client(t.origin, {
      pipelining: 1,
      keepAliveTimeout: Math.max(policy.intervalMs * 2, 4_000),
      connect: { timeout: policy.timeoutMs, ...(opts.ca !== undefined ? { ca: opts.ca } : {}) },
      headersTimeout: policy.timeoutMs,
      bodyTimeout: policy.timeoutMs,
    }))
  }

  start (): void {
    if (this.#timer !== null || this.#stopped) return
    this.#round()
    this.#timer = setInterval(() => this.#round(), this.#policy.intervalMs)
    this.#timer.unref()
  }

  async stop (): Promise<void> {
    if (this.#timer !== null) clearInterval(this.#timer)
    this.#timer = null
    this.#stopped = true
    // destroying the clients ends the probes in flight
    await Promise.all(this.#clients.map((c) => c.destroy().catch(() => {})))
  }

  #round (): void {
    for (const t of this.#targets) {
      // a probe still running (slow target) is not doubled
      if (!t.checking) void this.#probe(t)
    }
  }

  async #probe (t: Target): Promise<void> {
    const p = this.#policy
    const client = this.#clients[t.index] as Client
    t.checking = true
    let result: CheckResult
    try {
      const res = await client.request({
        method: 'GET',
        path: t.basePath + p.path,
        headers: PROBE_HEADERS,
        // connect, headers and body together within the timeout
        signal: AbortSignal.timeout(p.timeoutMs),
      })
      await res.body.dump()
      result = p.expect.has(res.statusCode)
        ? { ok: true, status: res.statusCode, error: null }
        : { ok: false, status: res.statusCode, error: `unexpected status ${res.statusCode}` }
    } catch (err) {
      const e = err as { code?: string, name?: string, message?: string }
      result = { ok: false, status: null, error: e.name === 'TimeoutError' ? 'timeout' : (e.code ?? e.message ?? 'error') }
    } finally {
      t.checking = false
    }
    if (!this.#stopped) this.#report(t, result)
  }
}
