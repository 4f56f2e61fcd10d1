/**
 * buildApp(config): the gateway as a Fastify instance, ready to listen or to inject into. Reads no environment
 * and listens on nothing (src/server.ts does both).
 */
import { randomUUID } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import fastify, { LogController, type FastifyInstance, type FastifyServerOptions } from 'fastify'
import autoload from '@fastify/autoload'
import type { GatewayConfig } from './config.js'
import type { Declarations } from './policy.js'
import { loadDeclarations, type DeclarationSource } from './routes-loader.js'
import { mountRoutes } from './mount.js'
import { lazyChildLoggerFactory } from './lazy-logger.js'
import type { Store } from './store/index.js'

const here = dirname(fileURLToPath(import.meta.url))
/** src/ and plugins/ sit side by side both in the sources and in dist/ */
export const PLUGINS_DIR = join(here, '..', 'plugins')
export const ROUTES_DIR = join(here, '..', 'routes')

const REQUEST_ID = /^[\w.:@-]{1,128}$/

export interface BuildOptions {
  /** route declarations given directly instead of read from config.routesDir (tests, embedding) */
  declarations?: readonly DeclarationSource[]
  /** a store made by the caller (it then closes it too) */
  store?: Store
  /** pino options or instance; default: JSON lines at config.logLevel, secrets redacted */
  logger?: FastifyServerOptions['logger']
  loggerInstance?: FastifyServerOptions['loggerInstance']
  /** where the default logger writes its JSON lines (src/server.ts: a buffered stdout; tests: a capture); default stdout */
  logStream?: { write (line: string): unknown }
}

declare module 'fastify' {
  interface FastifyInstance {
    gw: { config: GatewayConfig, declarations: Declarations }
  }
}

/** Header names whose values are credentials: censored wherever a logged object carries headers. */
export const SECRET_HEADERS = ['authorization', 'proxy-authorization', 'x-api-key', 'cookie', 'set-cookie', 'x-admin-token']
// Specific paths only: fast-redact compiles them to property reads, while wildcards would walk every logged object.
export const REDACT = [
  ...['req.headers', 'res.headers', 'headers', 'request.headers', 'response.headers', 'err.headers', 'err.cause.headers']
    .flatMap((at) => SECRET_HEADERS.map((h) => `${at}["${h}"]`)),
  'key', 'apiKey', 'token', 'accessToken', 'refreshToken', 'jwt', 'secret', 'password', 'authorization', 'adminToken',
  'body.key', 'body.token', 'body.password', 'body.secret',
]

export async function buildApp (config: GatewayConfig, opts: BuildOptions = {}): Promise<FastifyInstance> {
  const declarations = await loadDeclarations(config, ROUTES_DIR, opts.declarations)
  const tls = config.tlsCertFile !== null && config.tlsKeyFile !== null
    ? { key: readFileSync(config.tlsKeyFile), cert: readFileSync(config.tlsCertFile), allowHTTP1: true }
    : null
  const options: FastifyServerOptions = {
    // a hop count is accepted at run time (proxy-addr) though the types only list the other forms
    trustProxy: config.trustProxy as FastifyServerOptions['trustProxy'],
    bodyLimit: config.bodyLimit,
    requestIdHeader: false,
    genReqId: (req) => {
      const given = req.headers['x-request-id']
      return typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID()
    },
    // one access line per request comes from plugins/access-log.ts instead of Fastify's two
    logController: new LogController({ disableRequestLogging: true }),
    childLoggerFactory: lazyChildLoggerFactory as unknown as FastifyServerOptions['childLoggerFactory'],
    return503OnClosing: true,
    forceCloseConnections: 'idle',
    routerOptions: { maxParamLength: 1000 },
    ...(opts.loggerInstance !== undefined
      ? { loggerInstance: opts.loggerInstance }
      : { logger: opts.logger ?? { level: config.logLevel, redact: { paths: REDACT, censor: '[redacted]' }, ...(opts.logStream !== undefined ? { stream: opts.logStream } : {}) } }),
  }
  const app = (tls === null ? fastify(options) : fastify({ ...options, http2: true, https: tls } as FastifyServerOptions)) as unknown as FastifyInstance
  app.decorate('gw', { config, declarations })
  app.decorateRequest('client', null)
  await app.register(autoload, {
    dir: PLUGINS_DIR,
    // compiled output also holds .map files; the sources hold .ts that only a TS runtime loads
    ignorePattern: /\.(map|d\.ts)$/,
    options: { config, declarations, store: opts.store },
  })
  for (const file of declarations.files) {
    await app.register(file.plugin as never, { mount: (scope: FastifyInstance) => mountRoutes(scope, file.routes, declarations) })
  }
  return app
}
