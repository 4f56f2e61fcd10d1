/**
 * build(t, ...): a gateway for one test, torn down after it. Declarations are given inline; the configuration is
 * the environment's defaults plus what the test sets.
 */
import type { TestContext } from 'node:test'
import type { FastifyInstance } from 'fastify'
import { buildApp, type BuildOptions } from '../src/app.js'
import { loadConfig, type GatewayConfig } from '../src/config.js'
import type { DeclaredPlugin } from '../src/declare.js'

export interface TestBuild extends Omit<BuildOptions, 'declarations'> {
  env?: Record<string, string>
  config?: Partial<GatewayConfig>
  /** declarations, as if each were the default export of its own file routes/test-<n>.ts */
  declare?: Array<DeclaredPlugin | DeclaredPlugin[]>
}

export function testConfig (env: Record<string, string> = {}, overrides: Partial<GatewayConfig> = {}): GatewayConfig {
  return { ...loadConfig({ LOG_LEVEL: 'silent', ...env }), ...overrides }
}

export async function build (t: TestContext, opts: TestBuild = {}): Promise<FastifyInstance> {
  const config = testConfig(opts.env, opts.config)
  const declarations = opts.declare?.map((exported, i) => ({ file: `routes/test-${i}.ts`, exported }))
  const app = await buildApp(config, { ...opts, declarations })
  t.after(() => app.close())
  await app.ready()
  return app
}
