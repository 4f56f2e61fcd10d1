/**
 * Passive health of one target: a circuit breaker fed by the outcome of real requests.
 *
 * closed     traffic flows; `failures` consecutive failures (connection error, timeout, 5xx) open it
 * open       the target is ejected until `until`; the back-off doubles on each ejection that follows a short
 *            recovery (ejectFor, 2x, 4x ... capped at maxEjectFor) and starts again from ejectFor once the target
 *            has stayed closed for maxEjectFor
 * half-open  the back-off is over and ONE trial request is on its way; its outcome closes or re-opens the breaker.
 *            Nothing else is sent to the target meanwhile. Kong and APISIX never bring a passively ejected target
 *            back without an active check (Kong#7566, APISIX#3616); the trial is what does it here.
 */
import type { UpstreamPolicy } from '../policy.js'

export const CLOSED = 0
export const OPEN = 1
export const HALF_OPEN = 2
export type CircuitState = typeof CLOSED | typeof OPEN | typeof HALF_OPEN

/** What an outcome changed, for the one log line per change. */
export type CircuitChange = null | 'ejected' | 'trial' | 'restored' | 're-ejected'

export class Circuit {
  state: CircuitState = CLOSED
  /** consecutive failures while closed */
  failures = 0
  /** ejections in a row (drives the back-off) */
  ejections = 0
  /** epoch ms when an open breaker lets a trial through */
  until = 0
  /** back-off of the current ejection, ms */
  ejectForMs = 0
  #closedAt = 0
  readonly #policy: UpstreamPolicy['passive']

  constructor (policy: UpstreamPolicy['passive']) {
    this.#policy = policy
  }

  /** May a request be sent now? Closed, or open with its back-off over (that request is the trial). */
  passes (): boolean {
    return this.state === CLOSED || (this.state === OPEN && Date.now() >= this.until)
  }

  /** Called for the target a balancer picked: an open breaker whose back-off is over turns half-open. */
  picked (): CircuitChange {
    if (this.state !== OPEN) return null
    this.state = HALF_OPEN
    return 'trial'
  }

  succeeded (): CircuitChange {
    this.failures = 0
    if (this.state !== HALF_OPEN) return null
    this.state = CLOSED
    this.#closedAt = Date.now()
    return 'restored'
  }

  failed (): CircuitChange {
    const p = this.#policy
    if (p === null) return null
    if (this.state === HALF_OPEN) { this.#eject(p); return 're-ejected' }
    // a request sent before the ejection that fails now changes nothing
    if (this.state === OPEN) return null
    if (++this.failures < p.failures) return null
    this.#eject(p)
    return 'ejected'
  }

  /** An attempt that proved nothing (the client went away, or its request was at fault): a trial is owed again. */
  neutral (): void {
    if (this.state === HALF_OPEN) this.state = OPEN
  }

  /** An active health check saw the target recover: close at once (the ejection count is kept). */
  reset (): boolean {
    const was = this.state
    this.state = CLOSED
    this.failures = 0
    this.#closedAt = Date.now()
    return was !== CLOSED
  }

  #eject (p: NonNullable<UpstreamPolicy['passive']>): void {
    const now = Date.now()
    if (this.state === CLOSED && now - this.#closedAt >= p.maxEjectForMs) this.ejections = 0
    this.ejections++
    // 2^(n-1) grows past the cap quickly; stop doubling there to stay a finite number
    this.ejectForMs = Math.min(p.maxEjectForMs, p.ejectForMs * 2 ** Math.min(this.ejections - 1, 30))
    this.until = now + this.ejectForMs
    this.state = OPEN
    this.failures = 0
  }
}
