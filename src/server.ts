/**
 * The process: read the configuration once, build the gateway, listen (HTTP, or HTTPS with HTTP/2 when given a
 * certificate), and shut down gracefully on SIGTERM/SIGINT: readiness goes 503, no new connections, in-flight
 * requests finish (up to SHUTDOWN_TIMEOUT), then Redis is closed. The only file that reads process.env
 * (src/cluster.ts, the multi-process entry point, reads it for the primary).
 *
 * Logs go to stdout in batches (src/log-destination.ts: 4 KiB at a time, at least every second, and flushed on
 * shutdown and on a crash): one write per line cost 10-25% of throughput (../shared/PERFORMANCE.md).
 * With METRICS_PORT, a second plain listener serves GET /metrics (in a cluster the primary serves it instead).
 */
import cluster from 'node:cluster'
import { createServer, type Server } from 'node:http'
import { pathToFileURL } from 'node:url'
import type { FastifyInstance } from 'fastify'
import { buildApp } from './app.js'
import { loadConfig, type GatewayConfig } from './config.js'
import { LogDestination } from './log-destination.js'
import { applyRuntimeV8Flags } from './node-flags.js'

export interface Running {
  app: FastifyInstance
  config: GatewayConfig
  url: string
  /** http://host:port/metrics when METRICS_PORT is set (and this is not a cluster worker), else null */
  metricsUrl: string | null
  stop: (signal?: string) => Promise<void>
  /** write out buffered log lines now (before an exit that skips the normal shutdown) */
  flushLogs: () => void
}

export interface StartOptions {
  /** where log lines go; default: a buffered stdout */
  logStream?: { write (line: string): unknown }
}

/** the destinations of the servers start() made and that have not stopped, written out on exit by one listener */
const stdoutDestinations = new Set<LogDestination>()
let exitFlushHooked = false
/** characters of log lines written to stdout at once (not in a cluster worker) */
export const STDOUT_BATCH = 64 * 1024

/**
 * stdout in batches of 64 Ki characters (about 240 access lines), written at least every second and on exit
 * (src/log-destination.ts). Each batch is one write handed to the thread pool, and on these machines a write costs
 * far more than its bytes: 4 KiB batches spent about 5% of the gateway's CPU on the bench's `full` row, 64 Ki
 * batches won 3-7% of its requests/s (bench/README.md). A crash that skips the exit handler (SIGKILL, out of
 * memory) can lose one batch; what waits is written at least every second.
 * Cluster workers share one stdout pipe, where only writes up to PIPE_BUF (4096 bytes on Linux) are atomic: their
 * batches stay within 4096 bytes, cut at line ends, so that one batch never splits another worker's line.
 */
function bufferedStdout (): LogDestination {
  const out = cluster.isWorker
    ? new LogDestination(1, { minLength: 2048, maxWrite: 4096 })
    : new LogDestination(1, { minLength: STDOUT_BATCH })
  if (!exitFlushHooked) {
    exitFlushHooked = true
    process.once('exit', () => { for (const d of stdoutDestinations) flushQuietly(d) })
  }
  stdoutDestinations.add(out)
  return out
}

function flushQuietly (stream: unknown): void {
  const s = stream as { flushSync?: () => void } | undefined
  try { s?.flushSync?.() } catch { /* not open yet, or already closed: nothing is buffered */ }
}

/**
 * Every buffered line written, in order, before the process goes on to exit: flush(cb) waits for the batch in
 * flight and writes the rest (flushSync would write the rest first and let the exit cut the one in flight). A
 * stdout that is not read within `timeoutMs` gets what flushSync can do.
 */
async function drainLogs (stream: unknown, timeoutMs = 2000): Promise<void> {
  const s = stream as { flush?: (cb: (err?: Error) => void) => void } | undefined
  if (typeof s?.flush !== 'function') { flushQuietly(stream); return }
  await new Promise<void>((resolve) => {
    const timer = setTimeout(() => { flushQuietly(stream); resolve() }, timeoutMs)
    try {
      s.flush?.(() => { clearTimeout(timer); resolve() })
    } catch { clearTimeout(timer); flushQuietly(stream); resolve() }
  })
}

function urlOf (host: string, port: number, scheme = 'http'): string {
  const h = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host.includes(':') ? `[${host}]` : host
  return `${scheme}://${h}:${port}`
}

/** GET /metrics on its own port, without credentials: meant for a network that only Prometheus reaches. */
export async function serveMetrics (port: number, host: string, scrape: () => Promise<{ contentType: string, body: string }>, onError: (err: unknown) => void): Promise<Server> {
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?', 1)[0]
    if (path !== '/metrics' || (req.method !== 'GET' && req.method !== 'HEAD')) {
      res.writeHead(path === '/metrics' ? 405 : 404, { 'content-type': 'text/plain' }).end(path === '/metrics' ? 'method not allowed\n' : 'not found: the metrics are at /metrics\n')
      return
    }
    scrape().then(({ contentType, body }) => {
      res.writeHead(200, { 'content-type': contentType, 'content-length': Buffer.byteLength(body) })
      res.end(req.method === 'HEAD' ? undefined : body)
    }, (err: unknown) => {
      onError(err)
      res.writeHead(500, { 'content-type': 'text/plain' }).end('metrics collection failed\n')
    })
  })
  server.keepAliveTimeout = 65_000
  await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(port, host, () => { server.off('error', reject); resolve() }) })
  return server
}

export async function start (env: Record<string, string | undefined> = process.env, opts: StartOptions = {}): Promise<Running> {
  applyRuntimeV8Flags()
  const config = loadConfig(env)
  const logStream = opts.logStream ?? bufferedStdout()
  const app = await buildApp(config, { logStream })
  await app.listen({ port: config.port, host: config.host })
  const addr = app.server.address()
  const port = typeof addr === 'object' && addr !== null ? addr.port : config.port
  const url = urlOf(config.host, port, config.tlsCertFile !== null ? 'https' : 'http')

  let metricsServer: Server | null = null
  let metricsUrl: string | null = null
  const metrics = app.gwMetrics
  if (config.metricsPort > 0 && metrics === null) app.log.warn('METRICS_PORT is set but METRICS=false: no metrics listener')
  if (config.metricsPort > 0 && metrics !== null && !cluster.isWorker) {
    const host = config.metricsHost ?? config.host
    try {
      metricsServer = await serveMetrics(config.metricsPort, host, metrics.scrape, (err) => app.log.error({ err }, 'metrics scrape failed'))
    } catch (err) {
      await app.close()
      throw err
    }
    metricsUrl = `${urlOf(host, (metricsServer.address() as { port: number }).port)}/metrics`
  }

  let stopping: Promise<void> | null = null
  const stop = async (signal = 'stop'): Promise<void> => {
    stopping ??= (async () => {
      app.log.info({ signal }, 'shutting down: draining in-flight requests')
      // readiness answers 503 from now on, and every answer carries Connection: close (plugins/pressure.ts)
      app.gwShuttingDown = true
      const force = setTimeout(() => {
        app.log.error({ timeoutMs: config.shutdownTimeoutMs }, 'shutdown timed out; closing remaining connections')
        app.server.closeAllConnections?.()
      }, config.shutdownTimeoutMs)
      force.unref()
      // A keep-alive connection whose answer was already on its way when the drain began becomes idle afterwards;
      // Node's server.close() reaps only the connections idle at that moment and would wait for these until their
      // keep-alive timeout. Reap them as they go idle.
      const reap = setInterval(() => app.server.closeIdleConnections?.(), 100)
      reap.unref()
      const closingMetrics = metricsServer === null
        ? Promise.resolve()
        : new Promise<void>((resolve) => { metricsServer?.close(() => resolve()); metricsServer?.closeAllConnections() })
      try {
        await app.close()
        await closingMetrics
      } finally {
        clearTimeout(force)
        clearInterval(reap)
      }
      app.log.info('shut down')
      await drainLogs(logStream)
      // a stopped server's destination: its flush timer stops, and the exit listener no longer holds it
      if (logStream instanceof LogDestination && stdoutDestinations.delete(logStream)) logStream.end()
    })()
    return await stopping
  }
  return { app, config, url, metricsUrl, stop, flushLogs: () => flushQuietly(logStream) }
}

/**
 * A cluster worker that closed its listener may still receive connections the primary handed over before it read
 * the close: the worker refuses them so the primary gives them to another worker, but only while it is alive. Two
 * round trips over the (ordered) IPC channel make sure every such hand-over has arrived and been answered before
 * the worker exits; a connection lost in between would hang until the client times out.
 */
export async function syncWithPrimary (rounds = 2, timeoutMs = 2000): Promise<void> {
  if (!cluster.isWorker || typeof process.send !== 'function' || !process.connected) return
  for (let i = 0; i < rounds; i++) {
    const id = `${process.pid}:${i}:${Date.now()}`
    await new Promise<void>((resolve) => {
      const timer = setTimeout(done, timeoutMs)
      function done (): void { clearTimeout(timer); process.off('message', onMessage); resolve() }
      function onMessage (msg: unknown): void { if ((msg as { gw?: string, id?: string } | null)?.gw === 'synced' && (msg as { id: string }).id === id) done() }
      process.on('message', onMessage)
      process.send?.({ gw: 'sync', id }, undefined, undefined, (err: Error | null) => { if (err !== null) done() })
    })
  }
}

export function handleSignals (running: Running): void {
  // In a cluster the primary drives the shutdown, one worker at a time (src/cluster.ts): a Ctrl-C, which the
  // terminal sends to every process of the group, must not drain all workers at once.
  if (cluster.isWorker) process.on('SIGINT', () => {})
  for (const signal of cluster.isWorker ? ['SIGTERM'] as const : ['SIGTERM', 'SIGINT'] as const) {
    process.once(signal, () => {
      running.stop(signal).then(async () => { await syncWithPrimary() }).then(() => process.exit(0), (err: unknown) => {
        running.app.log.error({ err }, 'shutdown failed')
        running.flushLogs()
        process.exit(1)
      })
    })
  }
  // a crash still leaves its last log lines (the destination is buffered) and the reason
  process.once('uncaughtException', (err) => {
    running.app.log.fatal({ err }, 'uncaught exception; exiting')
    running.flushLogs()
    process.exit(1)
  })
}

/** Start-up failures are told plainly: which variable, file, route or field, and no stack trace for bad input. */
export function reportStartupError (err: unknown): never {
  const e = err as { code?: string, message?: string }
  if (e.code === 'GW_ERR_CONFIG' || e.code === 'GW_ERR_ROUTE_DECLARATION' || e.code === 'GW_ERR_OPENAPI_UPSTREAM') process.stderr.write(`${e.message ?? String(err)}\n`)
  else process.stderr.write(`gateway failed to start: ${(err as Error)?.stack ?? String(err)}\n`)
  process.exit(1)
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  try {
    const running = await start()
    handleSignals(running)
    running.app.log.info({ url: running.url, metrics: running.metricsUrl, store: running.app.store.kind }, 'gateway listening')
  } catch (err) { reportStartupError(err) }
}
