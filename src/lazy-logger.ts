/**
 * The per-request logger, made only when something is logged.
 *
 * Fastify gives every request a pino child carrying its `reqId`. With Fastify's own request lines off (the access
 * log writes its line directly, plugins/access-log.ts) most requests log nothing, yet each paid for a child:
 * pino's child() serializes the bindings and builds a new logger object (about 2% of the gateway's CPU in the
 * bench's `full` profile). This stand-in answers the level questions from the parent and makes the real child,
 * with the same bindings and options, on the first line it writes: the lines are the same as before.
 */
import type { FastifyBaseLogger } from 'fastify'

type Bindings = Record<string, unknown>
type Options = Record<string, unknown>
type LogFn = (...args: unknown[]) => void

export class LazyChildLogger {
  #parent: FastifyBaseLogger
  #bindings: Bindings
  #opts: Options
  #real: FastifyBaseLogger | null = null

  constructor (parent: FastifyBaseLogger, bindings: Bindings, opts: Options) {
    this.#parent = parent
    this.#bindings = bindings
    this.#opts = opts
  }

  #child (): FastifyBaseLogger {
    return (this.#real ??= this.#parent.child(this.#bindings, this.#opts))
  }

  get level (): string { return this.#real?.level ?? this.#parent.level }
  set level (value: string) { this.#child().level = value }

  isLevelEnabled (level: string): boolean {
    const target = (this.#real ?? this.#parent) as FastifyBaseLogger & { isLevelEnabled?: (l: string) => boolean }
    return typeof target.isLevelEnabled === 'function' ? target.isLevelEnabled(level) : true
  }

  bindings (): Bindings {
    const real = this.#child() as FastifyBaseLogger & { bindings?: () => Bindings }
    return typeof real.bindings === 'function' ? real.bindings() : this.#bindings
  }

  fatal (...args: unknown[]): void { (this.#child().fatal as LogFn)(...args) }
  error (...args: unknown[]): void { (this.#child().error as LogFn)(...args) }
  warn (...args: unknown[]): void { (this.#child().warn as LogFn)(...args) }
  info (...args: unknown[]): void { (this.#child().info as LogFn)(...args) }
  debug (...args: unknown[]): void { (this.#child().debug as LogFn)(...args) }
  trace (...args: unknown[]): void { (this.#child().trace as LogFn)(...args) }
  silent (): void {}
  child (bindings: Bindings, opts?: Options): FastifyBaseLogger { return this.#child().child(bindings, opts) }
}

/**
 * Fastify's childLoggerFactory: lazy children for requests of routes that log at the app's level with its
 * serializers; a route with a level or serializers of its own gets pino's child at once.
 */
export function lazyChildLoggerFactory (logger: FastifyBaseLogger, bindings: Bindings, opts: Options): FastifyBaseLogger {
  if (opts.level !== undefined || opts.serializers !== undefined) return logger.child(bindings, opts)
  return new LazyChildLogger(logger, bindings, opts) as unknown as FastifyBaseLogger
}
