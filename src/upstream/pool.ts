/**
 * An upstream service as a pool of targets: one undici Pool (keep-alive) per target, and the choice of target.
 * Targets are picked round-robin over those that are not ejected.
 */
import { Pool } from 'undici'
import type { UpstreamPolicy } from '../policy.js'

export class Target {
  readonly origin: string
  /** path of the target URL ("" or "/api"), put before every forwarded path */
  readonly basePath: string
  readonly pool: Pool
  inflight = 0
  healthy = true

  constructor (readonly url: string, readonly weight: number, policy: UpstreamPolicy) {
    const u = new URL(url)
    this.origin = u.origin
    this.basePath = u.pathname === '/' ? '' : u.pathname.replace(/\/$/, '')
    this.pool = new Pool(this.origin, {
      connections: policy.maxConnections,
      pipelining: 1,
      keepAliveTimeout: 4_000,
      connect: { timeout: policy.timeouts.connectMs },
      headersTimeout: policy.timeouts.firstByteMs,
      bodyTimeout: policy.timeouts.firstByteMs,
    })
  }
}

export class UpstreamPool {
  readonly name: string
  readonly targets: readonly Target[]
  private next = 0

  constructor (readonly policy: UpstreamPolicy) {
    this.name = policy.name
    this.targets = policy.targets.map((t) => new Target(t.url, t.weight, policy))
  }

  /** the next healthy target, or null when none is */
  pick (): Target | null {
    const n = this.targets.length
    for (let i = 0; i < n; i++) {
      const t = this.targets[(this.next + i) % n] as Target
      if (t.healthy) { this.next = (this.next + i + 1) % n; return t }
    }
    return null
  }

  async close (): Promise<void> {
    await Promise.all(this.targets.map((t) => t.pool.close().catch(() => t.pool.destroy())))
  }
}
