/**
 * `node dist/src/cluster.js` (npm run start:cluster): WORKERS gateway processes on one machine, sharing the port
 * (node:cluster; the primary hands out connections round-robin). Each worker is a full replica (src/server.ts)
 * over the shared store, so give it REDIS_URL: with the in-process store every worker keeps its own rate-limit
 * counters, cache and key revocations.
 *
 * The primary only supervises:
 *   - a worker that crashes is replaced (at once, or after a growing delay when it keeps dying young);
 *   - SIGTERM/SIGINT: a rolling shutdown, one worker at a time drains its in-flight requests (SIGTERM to it) while
 *     the others keep serving; a second signal drains all remaining workers at once;
 *   - SIGHUP: a rolling restart (a new worker is listening before an old one drains), e.g. after a deploy;
 *   - METRICS_PORT: GET /metrics summed over every worker (prom-client's AggregatorRegistry).
 */
import cluster, { type Worker } from 'node:cluster'
import { availableParallelism } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import pino from 'pino'
import { AggregatorRegistry, Counter, Gauge, Registry } from 'prom-client'
import type { Server } from 'node:http'
import { ROUTES_DIR } from './app.js'
import { loadConfig } from './config.js'
import { loadDeclarations } from './routes-loader.js'
import { reportStartupError, serveMetrics } from './server.js'

const here = dirname(fileURLToPath(import.meta.url))

export interface ClusterOptions {
  /** the environment of the primary, passed on to every worker */
  env?: Record<string, string | undefined>
  /** the worker's entry point; default: server.js beside this file */
  exec?: string
}

export interface Primary {
  /** number of workers it keeps running */
  readonly size: number
  /** resolves when every first-generation worker is listening */
  readonly ready: Promise<void>
  /** rolling shutdown (idempotent); resolves with the exit code */
  stop (signal?: string): Promise<number>
  /** during a rolling shutdown: drain all remaining workers at once */
  hurry (): void
  /** rolling restart */
  restart (): Promise<void>
}

const YOUNG_MS = 10_000
const MAX_BACKOFF_MS = 30_000

export function runPrimary (opts: ClusterOptions = {}): Primary {
  const env = opts.env ?? process.env
  const config = loadConfig(env)
  const size = config.workers === 0 ? availableParallelism() : config.workers
  // written synchronously: the primary logs rarely, and a line such as 'worker stopped' must be out before the
  // primary signals the next worker, whose lines share the same stdout
  const log = pino({ level: config.logLevel, base: { pid: process.pid, role: 'primary' } }, pino.destination({ dest: 1, sync: true }))
  if (size > 1 && config.redisUrl === null) {
    log.warn({ workers: size }, 'WORKERS > 1 without REDIS_URL: each worker keeps its own rate limits, cache and API-key revocations; set REDIS_URL to share them')
  }
  cluster.setupPrimary({ exec: opts.exec ?? join(here, 'server.js'), args: [] })
  // a retiring worker's last round trips before it exits (syncWithPrimary in src/server.ts)
  cluster.on('message', (worker, msg: { gw?: string, id?: string } | null) => {
    if (msg?.gw === 'sync' && worker.isConnected()) worker.send({ gw: 'synced', id: msg.id })
  })

  const registry = new Registry()
  const liveWorkers = new Gauge({ name: 'gateway_cluster_workers', help: 'Worker processes that are listening', registers: [registry] })
  const restarts = new Counter({ name: 'gateway_cluster_worker_restarts_total', help: 'Workers replaced after they exited unexpectedly', registers: [registry] })

  interface Slot { worker: Worker, startedAt: number, listening: boolean, retiring: boolean }
  const slots = new Set<Slot>()
  let stopping: Promise<number> | null = null
  let failures = 0
  let backoffMs = 0
  let everListening = false
  let metricsServer: Server | null = null
  const workerEnv: Record<string, string> = {}
  for (const [k, v] of Object.entries(env)) if (typeof v === 'string') workerEnv[k] = v

  const countListening = (): void => { liveWorkers.set([...slots].filter((s) => s.listening && !s.retiring).length) }

  function fork (): Promise<Slot> {
    const worker = cluster.fork(workerEnv)
    const slot: Slot = { worker, startedAt: Date.now(), listening: false, retiring: false }
    slots.add(slot)
    return new Promise((resolve, reject) => {
      worker.once('listening', () => {
        slot.listening = true
        everListening = true
        countListening()
        log.info({ worker: worker.id, workerPid: worker.process.pid }, 'worker listening')
        resolve(slot)
      })
      worker.once('exit', (code, signal) => {
        slots.delete(slot)
        countListening()
        if (!slot.listening) reject(new Error(`worker ${worker.id} exited before listening (code ${code ?? signal})`))
        if (slot.retiring || stopping !== null) return
        failures++
        const young = Date.now() - slot.startedAt < YOUNG_MS
        backoffMs = young ? Math.min(MAX_BACKOFF_MS, Math.max(500, backoffMs * 2)) : 0
        // a first-generation worker that cannot start: `ready` rejects and the caller stops the cluster
        if (!everListening) { log.error({ worker: worker.id, code, signal }, 'worker failed to start'); return }
        log.error({ worker: worker.id, workerPid: worker.process.pid, code, signal, restartInMs: backoffMs }, 'worker exited unexpectedly; replacing it')
        restarts.inc()
        setTimeout(() => { if (stopping === null) fork().catch(() => {}) }, backoffMs).unref()
      })
    })
  }

  /** SIGTERM to one worker and wait for its exit (SIGKILL after SHUTDOWN_TIMEOUT and a margin). */
  async function retire (slot: Slot): Promise<number> {
    slot.retiring = true
    countListening()
    const { worker } = slot
    if (worker.isDead()) return worker.process.exitCode ?? 0
    return await new Promise<number>((resolve) => {
      const kill = setTimeout(() => {
        log.error({ worker: worker.id }, 'worker did not drain in time; killing it')
        worker.process.kill('SIGKILL')
      }, config.shutdownTimeoutMs + 5_000)
      worker.once('exit', (code, signal) => {
        clearTimeout(kill)
        log.info({ worker: worker.id, workerPid: worker.process.pid, code, signal }, 'worker stopped')
        resolve(code ?? (signal === null ? 0 : 1))
      })
      worker.process.kill('SIGTERM')
    })
  }

  let parallel = false
  /** drain every remaining worker at once (a second signal during a rolling shutdown) */
  function hurry (): void {
    if (parallel || stopping === null) return
    parallel = true
    log.warn('second signal: draining all remaining workers at once')
    for (const s of slots) if (!s.retiring) void retire(s)
  }

  function stop (reason = 'stop'): Promise<number> {
    if (stopping !== null) return stopping
    stopping = (async () => {
      log.info({ reason, workers: slots.size }, 'rolling shutdown: draining workers one at a time')
      let code = 0
      for (const slot of [...slots]) {
        if (slot.retiring && parallel) continue
        const c = await retire(slot)
        if (c !== 0) code = 1
      }
      // workers retired in parallel after a second signal
      while (slots.size > 0) await new Promise((r) => setTimeout(r, 50))
      if (metricsServer !== null) await new Promise<void>((resolve) => { metricsServer?.close(() => resolve()); metricsServer?.closeAllConnections() })
      log.info({ code }, 'cluster stopped')
      return code
    })()
    return stopping
  }

  let restarting: Promise<void> | null = null
  function restart (): Promise<void> {
    restarting ??= (async () => {
      log.info({ workers: slots.size }, 'rolling restart')
      for (const old of [...slots]) {
        if (stopping !== null) break
        try { await fork() } catch (err) { log.error({ err }, 'a new worker failed to start; the old one keeps serving'); break }
        await retire(old)
      }
      log.info({ workers: slots.size }, 'rolling restart done')
    })().finally(() => { restarting = null })
    return restarting
  }

  const ready = (async () => {
    // a wrong route file is reported once, here, rather than by every worker
    await loadDeclarations(config, ROUTES_DIR)
    if (config.metricsPort > 0 && !config.metrics) log.warn('METRICS_PORT is set but METRICS=false: no metrics listener')
    if (config.metricsPort > 0 && config.metrics) {
      const aggregator = new AggregatorRegistry()
      const host = config.metricsHost ?? config.host
      metricsServer = await serveMetrics(config.metricsPort, host, async () => {
        const workers = await aggregator.clusterMetrics()
        return { contentType: aggregator.contentType, body: workers + await registry.metrics() }
      }, (err) => log.error({ err }, 'cluster metrics scrape failed'))
    }
    await Promise.all(Array.from({ length: size }, () => fork()))
    log.info({ workers: size, port: config.port, failures }, 'cluster listening')
  })()

  return { size, ready, stop, hurry, restart }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  if (!cluster.isPrimary) throw new Error('src/cluster.ts is the primary; workers run src/server.ts')
  let primary: Primary
  try { primary = runPrimary() } catch (err) { reportStartupError(err) }
  primary.ready.catch((err: unknown) => {
    const code = (err as { code?: string }).code
    if (code === 'GW_ERR_CONFIG' || code === 'GW_ERR_ROUTE_DECLARATION') reportStartupError(err)
    process.stderr.write(`cluster failed to start: ${(err as Error).message}\n`)
    void primary.stop('startup failure').then(() => process.exit(1))
  })
  let signalled = false
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.on(signal, () => {
      if (signalled) { primary.hurry(); return }
      signalled = true
      void primary.stop(signal).then((code) => process.exit(code))
    })
  }
  process.on('SIGHUP', () => { void primary.restart() })
}
