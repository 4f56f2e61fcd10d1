/**
 * A retry budget per upstream: a token bucket that every first attempt fills by `ratio` tokens and every retry
 * empties by one. During an outage, when every request fails, N requests cause at most RESERVE + ratio × N
 * retries instead of (tries - 1) × N: retries cannot multiply the load on a service that is already down
 * (the same idea as Finagle's RetryBudget and Envoy's retry_budget). The bucket starts full, so a quiet service
 * can still retry its first failures.
 */

/** Tokens the bucket holds at most, and starts with. */
export const RETRY_RESERVE = 10

export class RetryBudget {
  readonly ratio: number
  #tokens: number
  /** retries refused for lack of budget, since start */
  refused = 0
  /** retries made, since start */
  spent = 0

  constructor (ratio: number) {
    this.ratio = ratio
    this.#tokens = ratio > 0 ? RETRY_RESERVE : 0
  }

  /** A first attempt: earns `ratio` of a retry. */
  deposit (): void {
    const t = this.#tokens + this.ratio
    this.#tokens = t > RETRY_RESERVE ? RETRY_RESERVE : t
  }

  /** Is a retry allowed now? Does not spend it. */
  allows (): boolean {
    if (this.#tokens >= 1) return true
    this.refused++
    return false
  }

  /** Spend one retry (after allows() said yes and a target was found). */
  spend (): void {
    this.#tokens -= 1
    this.spent++
  }

  get tokens (): number { return Math.floor(this.#tokens * 100) / 100 }
}
