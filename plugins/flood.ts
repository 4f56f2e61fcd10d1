/**
 * gw-flood: a ceiling on the requests a second from one client IP, checked in onRequest before authentication or
 * any Redis work, so a flood (of bad API keys, of 404 probes) from one address costs one Map look-up a request.
 * FLOOD_LIMIT requests a second per IP, counted in each replica's own memory (no Redis: cheap, local first);
 * 0 = off. The IP is request.ip, so behind a load balancer set TRUST_PROXY, or every client shares its address.
 *
 * A global hook: it runs before the route-level hooks that authentication adds (plugins/auth.ts), whatever the
 * order the plugins load in; gw-auth may also list 'gw-flood' in its dependencies.
 */
import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyReply, FastifyRequest, HookHandlerDoneFunction } from 'fastify'
import type { GatewayConfig } from '../src/config.js'
import { GW_ERR_FLOOD_LIMITED } from '../src/errors.js'
import { envOf } from '../src/rate-limit-limiter.js'
import { sendProblem } from './problem.js'

export interface FloodStats {
  /** requests refused (429 GW_ERR_FLOOD_LIMITED) */
  limited: number
}

declare module 'fastify' {
  interface FastifyInstance {
    /** counters of the pre-auth per-IP flood limit */
    gwFloodStats: FloodStats
  }
}

/** beyond this many addresses in one second, new ones pass uncounted: memory stays bounded under any flood */
const MAX_TRACKED = 1_000_000

/**
 * A sliding one-second window per address over two generations of counters (this second's and the last one's,
 * weighted by the share of it still inside the window): no per-address timers or objects, and the memory holds
 * only the addresses seen in the last two seconds.
 */
export class FloodCounter {
  readonly #limit: number
  #cur = new Map<string, number>()
  #prev = new Map<string, number>()
  #start: number

  constructor (limit: number, now = Date.now()) {
    this.#limit = limit
    this.#start = now
  }

  /** counts one request from `ip`; false = over the limit (not counted) */
  hit (ip: string, now: number): boolean {
    let into = now - this.#start
    if (into >= 1000) {
      const n = Math.floor(into / 1000)
      this.#prev = n === 1 ? this.#cur : new Map()
      this.#cur = new Map()
      this.#start += n * 1000
      into -= n * 1000
    }
    const c = this.#cur.get(ip)
    if (c === undefined && this.#cur.size >= MAX_TRACKED) return true
    const p = this.#prev.size === 0 ? 0 : this.#prev.get(ip) ?? 0
    const next = (c ?? 0) + 1
    // integers only: prev * (share of the last second still in the window) + this second's, at most limit
    if (p * (1000 - into) + next * 1000 > this.#limit * 1000) return false
    this.#cur.set(ip, next)
    return true
  }
}

async function gwFlood (app: FastifyInstance, opts: { config: GatewayConfig }): Promise<void> {
  const limit = envOf<number>(opts.config, 'FLOOD_LIMIT')
  const stats: FloodStats = { limited: 0 }
  app.decorate('gwFloodStats', stats)
  if (limit === 0) return
  const counter = new FloodCounter(limit)
  const refusal = new GW_ERR_FLOOD_LIMITED(limit)

  app.addHook('onRequest', function floodLimit (request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction) {
    if (counter.hit(request.ip, Date.now())) { done(); return }
    stats.limited++
    reply.header('retry-after', '1')
    // answered here: no done(), so no later hook (authentication) runs for this request
    sendProblem(request, reply, 429, refusal.code, refusal.message)
  })
}

export default fp(gwFlood, { name: 'gw-flood', fastify: '5.x', dependencies: ['gw-problem'] })
