/**
 * An upstream service as a pool of targets: the balancer that picks one, the active health checker, the passive
 * circuit breaker of each target, and the retry budget. The proxy (plugins/proxy.ts) and the WebSocket proxy
 * (plugins/websocket.ts) call pick() / retryTarget() and report() each attempt's outcome exactly once; every state
 * change is logged once, here (never one line per request).
 */
import type { FastifyBaseLogger } from 'fastify'
import type { UpstreamPolicy } from '../policy.js'
import { createBalancer, type BalanceKeySource, type Balancer } from './balancer.js'
import { CLOSED, OPEN, type CircuitChange } from './circuit.js'
import { HealthChecker, type CheckResult } from './health-check.js'
import { RetryBudget } from './retry-budget.js'
import { Target, type TargetOptions } from './target.js'

export { Target } from './target.js'

/** How long close() waits for requests in flight before cutting their connections. */
const CLOSE_GRACE_MS = 2_000

export interface TargetSnapshot {
  url: string
  weight: number
  state: Target['state']
  /** takes traffic: passes its active checks and is not ejected */
  healthy: boolean
  /** passes its active checks (always true without them) */
  passing: boolean
  ejected: boolean
  ejectedUntil: string | null
  /** back-off of the current (or last) ejection */
  ejectForMs: number
  ejections: number
  consecutiveFailures: number
  inflight: number
  lastCheck: Target['lastCheck']
}

export interface UpstreamSnapshot {
  name: string
  balance: string
  available: number
  targets: TargetSnapshot[]
  healthCheck: { path: string, intervalMs: number, timeoutMs: number, healthy: number, unhealthy: number, expect: number[] } | null
  passive: UpstreamPolicy['passive']
  timeouts: UpstreamPolicy['timeouts']
  retry: { tries: number, statuses: number[], budget: number, tokens: number, spent: number, refusedByBudget: number } | null
}

export class UpstreamPool {
  readonly name: string
  readonly policy: UpstreamPolicy
  readonly targets: readonly Target[]
  readonly balancer: Balancer
  /** null when retries are off */
  readonly budget: RetryBudget | null
  readonly #checker: HealthChecker | null
  readonly #log: FastifyBaseLogger

  constructor (policy: UpstreamPolicy, log: FastifyBaseLogger, opts: TargetOptions = {}) {
    if (policy.targets.length === 0) throw new Error(`upstream ${policy.name} has no targets`)
    this.name = policy.name
    this.policy = policy
    this.#log = log
    this.targets = policy.targets.map((t, i) => new Target(t.url, t.weight, i, policy, opts))
    this.balancer = createBalancer(this.targets, policy.balance)
    this.budget = policy.retry === null ? null : new RetryBudget(policy.retry.budget)
    this.#checker = policy.healthCheck === null
      ? null
      : new HealthChecker(policy.healthCheck, this.targets, (t, r) => this.checked(t, r), opts)
  }

  /**
   * A target for a request (its headers, cookie or client feed hash balancing), skipping the targets in `tried`,
   * or null when none is usable. An ejected target whose back-off is over is handed out as the one trial.
   */
  pick (request: BalanceKeySource | null, tried: number): Target | null {
    const t = this.balancer.pick(request, tried)
    if (t !== null && t.circuit.state === OPEN) this.#changed(t, t.circuit.picked(), null)
    return t
  }

  /** Another target for a retry, when the budget allows one; spends it. */
  retryTarget (request: BalanceKeySource | null, tried: number): Target | null {
    const budget = this.budget
    if (budget === null || !budget.allows()) return null
    const t = this.pick(request, tried)
    if (t !== null) budget.spend()
    return t
  }

  /** The outcome of one attempt on a target: null = it answered (< 500), else why it failed. */
  report (t: Target, failure: string | null): void {
    const c = t.circuit
    if (failure === null) {
      if (c.failures !== 0 || c.state !== CLOSED) this.#changed(t, c.succeeded(), null)
    } else this.#changed(t, c.failed(), failure)
  }

  /** An attempt whose outcome says nothing about the target (the client's fault or departure). */
  release (t: Target): void {
    t.circuit.neutral()
  }

  /** Seconds until some target may take traffic again, for Retry-After on 503. */
  retryAfterSeconds (): number {
    const now = Date.now()
    let ms = this.policy.healthCheck?.intervalMs ?? Infinity
    for (const t of this.targets) if (t.passing && t.circuit.state === OPEN) ms = Math.min(ms, t.circuit.until - now)
    return Number.isFinite(ms) ? Math.max(1, Math.ceil(ms / 1000)) : 1
  }

  /** An active check result (from HealthChecker). */
  checked (t: Target, r: CheckResult): void {
    const hc = this.policy.healthCheck
    if (hc === null) return
    t.lastCheck = { ok: r.ok, at: new Date().toISOString(), status: r.status, error: r.error }
    if (r.ok) {
      t.checkFailed = 0
      t.checkPassed++
      if (!t.passing && t.checkPassed >= hc.healthy) {
        t.passing = true
        // the check proves the target is back; a passive ejection still running ends with it
        const wasEjected = t.circuit.reset()
        this.#log.info({ upstream: this.name, target: t.url, state: 'healthy', passed: t.checkPassed, ejectionCleared: wasEjected }, 'upstream target healthy again')
      }
    } else {
      t.checkPassed = 0
      t.checkFailed++
      if (t.passing && t.checkFailed >= hc.unhealthy) {
        t.passing = false
        this.#log.warn({ upstream: this.name, target: t.url, state: 'unhealthy', failed: t.checkFailed, status: r.status, reason: r.error }, 'upstream target unhealthy')
      }
    }
  }

  #changed (t: Target, change: CircuitChange, reason: string | null): void {
    if (change === null) return
    const c = t.circuit
    const base = { upstream: this.name, target: t.url }
    switch (change) {
      case 'ejected':
        this.#log.warn({ ...base, state: 'ejected', reason, ejectForMs: c.ejectForMs, ejections: c.ejections }, 'upstream target ejected')
        break
      case 're-ejected':
        this.#log.warn({ ...base, state: 'ejected', reason, ejectForMs: c.ejectForMs, ejections: c.ejections }, 'upstream target failed its trial request, ejected again')
        break
      case 'trial':
        this.#log.info({ ...base, state: 'half-open' }, 'upstream target back-off over, sending one trial request')
        break
      case 'restored':
        this.#log.info({ ...base, state: 'healthy' }, 'upstream target passed its trial request, restored')
        break
    }
  }

  snapshot (): UpstreamSnapshot {
    const p = this.policy
    const hc = p.healthCheck
    return {
      name: this.name,
      balance: this.balancer.kind,
      available: this.targets.filter((t) => t.usable()).length,
      targets: this.targets.map((t) => ({
        url: t.url,
        weight: t.weight,
        state: t.state,
        healthy: t.healthy,
        passing: t.passing,
        ejected: t.circuit.state !== CLOSED,
        ejectedUntil: t.circuit.state === OPEN ? new Date(t.circuit.until).toISOString() : null,
        ejectForMs: t.circuit.ejectForMs,
        ejections: t.circuit.ejections,
        consecutiveFailures: t.circuit.failures,
        inflight: t.inflight,
        lastCheck: t.lastCheck,
      })),
      healthCheck: hc === null ? null : { path: hc.path, intervalMs: hc.intervalMs, timeoutMs: hc.timeoutMs, healthy: hc.healthy, unhealthy: hc.unhealthy, expect: [...hc.expect] },
      passive: p.passive,
      timeouts: p.timeouts,
      retry: p.retry === null || this.budget === null
        ? null
        : { tries: p.retry.tries, statuses: [...p.retry.statuses], budget: p.retry.budget, tokens: this.budget.tokens, spent: this.budget.spent, refusedByBudget: this.budget.refused },
    }
  }

  /** Start the active health checks (no-op without a healthCheck declaration). */
  start (): void { this.#checker?.start() }

  async close (): Promise<void> {
    await this.#checker?.stop()
    // close() lets requests in flight finish; one stuck on a hanging target must not hold the shutdown
    await Promise.all(this.targets.map(async (t) => {
      let timer: NodeJS.Timeout | undefined
      const late = new Promise<'late'>((resolve) => { timer = setTimeout(resolve, CLOSE_GRACE_MS, 'late') })
      const done = await Promise.race([t.pool.close().then(() => 'closed' as const, () => 'late' as const), late])
      clearTimeout(timer)
      if (done === 'late') await t.pool.destroy().catch(() => {})
    }))
  }
}
