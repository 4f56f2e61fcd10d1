/**
 * gw-pressure: load shedding with @fastify/under-pressure. While the mean event-loop delay, the V8 heap in use or
 * the resident set size is above its limit (sampled every PRESSURE_SAMPLE_INTERVAL), requests are answered at once
 * with 503 application/problem+json and Retry-After, before any auth, Redis or upstream work, so that the process
 * keeps answering instead of falling over. Health probes and the admin API (metrics, overview) are never shed: an
 * orchestrator must not restart a process for being busy, and the operator must see why it sheds. A limit of 0 turns its check off;
 * with every check off the plugin is not registered at all.
 *
 * Also: while the process drains on shutdown (app.gwShuttingDown), answers carry `Connection: close`, so clients
 * stop reusing a connection that is about to close (RFC 9112 §9.6).
 */
import fp from 'fastify-plugin'
import underPressure, { type FastifyUnderPressureOptions } from '@fastify/under-pressure'
import type { FastifyInstance, FastifyReply, FastifyRequest, HookHandlerDoneFunction } from 'fastify'
import type { GatewayConfig } from '../src/config.js'
import { GW_ERR_OVERLOADED } from '../src/errors.js'
import { problemBody } from './problem.js'
import { markOnSend } from '../src/direct-reply.js'

const OVERLOADED = 'GW_ERR_OVERLOADED'
const OVERLOADED_DETAIL = new GW_ERR_OVERLOADED().message

declare module 'fastify' {
  interface FastifyInstance {
    gwPressure: {
      /** requests shed so far, by the check that tripped */
      readonly shed: Record<string, number>
      /** the limits in force (0 = off) */
      readonly limits: Readonly<{ eventLoopDelayMs: number, heapUsedBytes: number, rssBytes: number }>
    }
  }
}

/** Paths never shed: health probes, metrics, and the (authenticated, low-volume) admin API. */
const EXEMPT = /^\/(?:health\/|admin\/|metrics(?:$|\?))/

function closeWhileDraining (this: FastifyInstance, request: FastifyRequest, reply: FastifyReply, payload: unknown, done: HookHandlerDoneFunction & ((err: Error | null, payload?: unknown) => void)): void {
  if (this.gwShuttingDown && request.raw.httpVersionMajor === 1) reply.header('connection', 'close')
  done(null, payload)
}

// the proxy's direct write (src/direct-reply.ts) adds Connection: close itself while draining
markOnSend(closeWhileDraining, 'replicated')

async function gwPressure (app: FastifyInstance, opts: { config: GatewayConfig }): Promise<void> {
  const { config } = opts
  const limits = Object.freeze({
    eventLoopDelayMs: config.pressureEventLoopDelayMs,
    heapUsedBytes: config.pressureHeapUsedBytes,
    rssBytes: config.pressureRssBytes,
  })
  const shed: Record<string, number> = { eventLoopDelay: 0, heapUsedBytes: 0, rssBytes: 0 }
  app.decorate('gwPressure', { shed, limits })
  app.addHook('onSend', closeWhileDraining)

  if (limits.eventLoopDelayMs === 0 && limits.heapUsedBytes === 0 && limits.rssBytes === 0) return
  const retryAfter = String(config.pressureRetryAfterS)
  // Start-up (loading modules, compiling routes) blocks the loop for a while, and the first samples still hold it:
  // a fresh process, or a worker replacing a crashed one, would shed its first requests. The event-loop check
  // starts two sampling intervals after ready, when a whole interval has been measured after boot.
  let loopCheckFrom = Infinity
  app.addHook('onReady', function startLoopCheck (done) {
    loopCheckFrom = performance.now() + 2 * config.pressureSampleIntervalMs
    done()
  })
  // Called by under-pressure only while a limit is exceeded: undefined lets the request through; any other value is
  // sent as the answer. The problem is written here rather than thrown: an overloaded process should not also log
  // a stack trace per refused request (the access log still has its line, with the error code).
  function shedRequest (request: FastifyRequest, reply: FastifyReply, type: string): unknown {
    if (EXEMPT.test(request.url)) return undefined
    if (type === 'eventLoopDelay' && performance.now() < loopCheckFrom) return undefined
    shed[type] = (shed[type] ?? 0) + 1
    request.gwError = OVERLOADED
    reply.code(503).type('application/problem+json').header('retry-after', retryAfter)
    return problemBody(request, 503, OVERLOADED, OVERLOADED_DETAIL)
  }
  await app.register(underPressure, {
    maxEventLoopDelay: limits.eventLoopDelayMs,
    maxHeapUsedBytes: limits.heapUsedBytes,
    maxRssBytes: limits.rssBytes,
    sampleInterval: config.pressureSampleIntervalMs,
    pressureHandler: shedRequest as NonNullable<FastifyUnderPressureOptions['pressureHandler']>,
  })
}

export default fp(gwPressure, { name: 'gw-pressure', fastify: '5.x', dependencies: ['gw-problem', 'gw-health', 'gw-trace'] })
