/**
 * Target choice. Every balancer skips targets that are unhealthy, ejected, or already tried by this request
 * (`tried`: a mask of Target.bit), and returns null when none is left. Per pick: no allocation, one pass over the
 * targets at most (O(1) for plain round-robin when the next target is usable).
 *
 * round-robin           equal weights: one after the other
 * weighted round-robin  'round-robin' with unequal weights: nginx's smooth weighted round-robin, which spreads the
 *                       heavy target's turns instead of sending them in a burst (weights 5,1,1 give a a b a c a a)
 * least-connections     fewest in-flight requests relative to weight; ties rotate
 * random                weighted random
 * hash                  consistent hashing on a header, a cookie or the client id (else the client IP): a key stays
 *                       on its target, and when a target drops out only its keys move (to the next points on the
 *                       ring). A request without the key falls back to round-robin.
 */
import type { UpstreamPolicy } from '../policy.js'
import type { Target } from './target.js'

/** What a hash balancer reads from a request (a FastifyRequest has all of it). */
export interface BalanceKeySource {
  headers: Record<string, string | string[] | undefined>
  client: { id: string } | null
  ip: string
}

export interface Balancer {
  /** what the admin API shows */
  readonly kind: string
  pick (request: BalanceKeySource | null, tried: number): Target | null
}

class RoundRobin implements Balancer {
  readonly kind = 'round-robin'
  #next = 0
  constructor (private readonly targets: readonly Target[]) {}

  pick (_request: BalanceKeySource | null, tried: number): Target | null {
    const ts = this.targets
    const n = ts.length
    let i = this.#next
    for (let k = 0; k < n; k++) {
      const t = ts[i] as Target
      if (++i === n) i = 0
      if ((tried & t.bit) === 0 && t.usable()) {
        // a retry does not take a turn: the next request still starts after the first target this one got
        if (tried === 0) this.#next = i
        return t
      }
    }
    return null
  }
}

/** nginx's smooth weighted round-robin (ngx_http_upstream_get_peer). */
class SmoothWeighted implements Balancer {
  readonly kind = 'weighted-round-robin'
  constructor (private readonly targets: readonly Target[]) {}

  pick (_request: BalanceKeySource | null, tried: number): Target | null {
    const ts = this.targets
    let best: Target | null = null
    let total = 0
    for (let i = 0; i < ts.length; i++) {
      const t = ts[i] as Target
      if ((tried & t.bit) !== 0 || !t.usable()) continue
      t.current += t.weight
      total += t.weight
      if (best === null || t.current > best.current) best = t
    }
    if (best !== null) best.current -= total
    return best
  }
}

class LeastConnections implements Balancer {
  readonly kind = 'least-connections'
  #start = 0
  constructor (private readonly targets: readonly Target[]) {}

  pick (_request: BalanceKeySource | null, tried: number): Target | null {
    const ts = this.targets
    const n = ts.length
    let best: Target | null = null
    let i = this.#start
    for (let k = 0; k < n; k++) {
      const t = ts[i] as Target
      if (++i === n) i = 0
      if ((tried & t.bit) !== 0 || !t.usable()) continue
      // inflight/weight compared without dividing; the first of equals wins, and the start rotates
      if (best === null || t.inflight * best.weight < best.inflight * t.weight) best = t
    }
    if (++this.#start >= n) this.#start = 0
    return best
  }
}

class WeightedRandom implements Balancer {
  readonly kind = 'random'
  constructor (private readonly targets: readonly Target[]) {}

  pick (_request: BalanceKeySource | null, tried: number): Target | null {
    const ts = this.targets
    let total = 0
    for (let i = 0; i < ts.length; i++) {
      const t = ts[i] as Target
      if ((tried & t.bit) === 0 && t.usable()) total += t.weight
    }
    if (total === 0) return null
    let r = Math.random() * total
    let last: Target | null = null
    for (let i = 0; i < ts.length; i++) {
      const t = ts[i] as Target
      if ((tried & t.bit) !== 0 || !t.usable()) continue
      last = t
      r -= t.weight
      if (r < 0) return t
    }
    return last
  }
}

/** 32-bit FNV-1a with murmur3's finaliser, so that close keys land far apart on the ring. */
export function hash32 (s: string): number {
  let h = 0x811c9dc5
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i)
    h = Math.imul(h, 0x01000193)
  }
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 16
  return h >>> 0
}

/** The value of cookie `name` in a Cookie header (RFC 6265 §4.2.1: `a=1; b=2`), or undefined. */
export function cookieValue (header: string | undefined, name: string): string | undefined {
  if (header === undefined) return undefined
  const n = header.length
  let i = 0
  while (i < n) {
    while (header.charCodeAt(i) === 32) i++
    let end = header.indexOf(';', i)
    if (end === -1) end = n
    const eq = header.indexOf('=', i)
    if (eq !== -1 && eq < end && eq - i === name.length && header.startsWith(name, i)) {
      const v = header.slice(eq + 1, end).trim()
      return v.length > 1 && v.charCodeAt(0) === 34 && v.charCodeAt(v.length - 1) === 34 ? v.slice(1, -1) : v
    }
    i = end + 1
  }
  return undefined
}

type KeyOf = (request: BalanceKeySource) => string | undefined

function keyReader (hash: 'header' | 'cookie' | 'client', name: string): KeyOf {
  if (hash === 'header') {
    return (request) => {
      const v = request.headers[name]
      return Array.isArray(v) ? v[0] : v
    }
  }
  if (hash === 'cookie') {
    return (request) => {
      const c = request.headers.cookie
      return cookieValue(Array.isArray(c) ? c.join('; ') : c, name)
    }
  }
  return (request) => request.client?.id ?? request.ip
}

/** Points on the ring per target on average; a target's share of points follows its weight. */
const POINTS_PER_TARGET = 160

class ConsistentHash implements Balancer {
  readonly kind: string
  readonly #points: Uint32Array
  readonly #owners: Uint16Array
  readonly #keyOf: KeyOf
  readonly #fallback: RoundRobin

  constructor (private readonly targets: readonly Target[], hash: 'header' | 'cookie' | 'client', name: string) {
    this.kind = hash === 'client' ? 'hash:client' : `hash:${hash}:${name}`
    this.#keyOf = keyReader(hash, name)
    this.#fallback = new RoundRobin(targets)
    const totalWeight = targets.reduce((s, t) => s + t.weight, 0)
    const ring: Array<[number, number]> = []
    for (const t of targets) {
      const count = Math.max(1, Math.round(POINTS_PER_TARGET * targets.length * t.weight / totalWeight))
      // points come from the target's URL, not its position: reordering the list moves no key
      for (let i = 0; i < count; i++) ring.push([hash32(`${t.url}#${i}`), t.index])
    }
    ring.sort((a, b) => a[0] - b[0])
    this.#points = Uint32Array.from(ring, (p) => p[0])
    this.#owners = Uint16Array.from(ring, (p) => p[1])
  }

  pick (request: BalanceKeySource | null, tried: number): Target | null {
    const key = request === null ? undefined : this.#keyOf(request)
    if (key === undefined || key === '') return this.#fallback.pick(request, tried)
    const ts = this.targets
    let any = false
    for (let i = 0; i < ts.length && !any; i++) {
      const t = ts[i] as Target
      any = (tried & t.bit) === 0 && t.usable()
    }
    if (!any) return null
    const points = this.#points
    const h = hash32(key)
    let lo = 0
    let hi = points.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if ((points[mid] as number) < h) lo = mid + 1
      else hi = mid
    }
    // walk clockwise to the first usable target not tried yet; one exists (checked above)
    for (let k = 0; k < points.length; k++) {
      if (lo === points.length) lo = 0
      const t = ts[this.#owners[lo++] as number] as Target
      if ((tried & t.bit) === 0 && t.usable()) return t
    }
    return null
  }
}

export function createBalancer (targets: readonly Target[], balance: UpstreamPolicy['balance']): Balancer {
  if (typeof balance === 'object') return new ConsistentHash(targets, balance.hash, balance.name)
  if (balance === 'least-connections') return new LeastConnections(targets)
  if (balance === 'random') return new WeightedRandom(targets)
  const weighted = targets.some((t) => t.weight !== targets[0]?.weight)
  return weighted ? new SmoothWeighted(targets) : new RoundRobin(targets)
}
