/**
 * The process: read the configuration once, build the gateway, listen (HTTP, or HTTPS with HTTP/2 when given a
 * certificate), and shut down gracefully on SIGTERM/SIGINT: readiness goes 503, no new connections, in-flight
 * requests finish (up to SHUTDOWN_TIMEOUT), then Redis is closed. The only file that reads process.env.
 */
import { pathToFileURL } from 'node:url'
import type { FastifyInstance } from 'fastify'
import { buildApp } from './app.js'
import { loadConfig, type GatewayConfig } from './config.js'

export interface Running { app: FastifyInstance, config: GatewayConfig, url: string, stop: (signal?: string) => Promise<void> }

export async function start (env: Record<string, string | undefined> = process.env): Promise<Running> {
  const config = loadConfig(env)
  const app = await buildApp(config)
  await app.listen({ port: config.port, host: config.host })
  const addr = app.server.address()
  const port = typeof addr === 'object' && addr !== null ? addr.port : config.port
  const scheme = config.tlsCertFile !== null ? 'https' : 'http'
  const url = `${scheme}://${config.host === '0.0.0.0' || config.host === '::' ? '127.0.0.1' : config.host}:${port}`
  let stopping: Promise<void> | null = null
  const stop = async (signal = 'stop'): Promise<void> => {
    stopping ??= (async () => {
      app.log.info({ signal }, 'shutting down: draining in-flight requests')
      app.gwShuttingDown = true
      const force = setTimeout(() => {
        app.log.error({ timeoutMs: config.shutdownTimeoutMs }, 'shutdown timed out; closing remaining connections')
        app.server.closeAllConnections?.()
      }, config.shutdownTimeoutMs)
      force.unref()
      await app.close()
      clearTimeout(force)
      app.log.info('shut down')
    })()
    return await stopping
  }
  return { app, config, url, stop }
}

export function handleSignals (running: Running): void {
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.once(signal, () => {
      running.stop(signal).then(() => process.exit(0), (err: unknown) => {
        running.app.log.error({ err }, 'shutdown failed')
        process.exit(1)
      })
    })
  }
}

/** Start-up failures are told plainly: which variable, file, route or field, and no stack trace for bad input. */
export function reportStartupError (err: unknown): never {
  const e = err as { code?: string, message?: string }
  if (e.code === 'GW_ERR_CONFIG' || e.code === 'GW_ERR_ROUTE_DECLARATION') process.stderr.write(`${e.message ?? String(err)}\n`)
  else process.stderr.write(`gateway failed to start: ${(err as Error)?.stack ?? String(err)}\n`)
  process.exit(1)
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  try {
    const running = await start()
    handleSignals(running)
    running.app.log.info({ url: running.url, store: running.app.store.kind }, 'gateway listening')
  } catch (err) { reportStartupError(err) }
}
