/**
 * What the gateway build offers, read from its own configuration table (src/config.ts VARS) and its plugins
 * folder, so a row whose feature is missing reports "n/a: <reason>" instead of measuring something else.
 */
import { existsSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { VARS } from '../../src/config.js'
import { DIST } from './procs.js'

export interface Features {
  vars: ReadonlySet<string>
  plugins: readonly string[]
  /** env name of the HS256 secret, or null */
  jwtSecretVar: string | null
  /** env that turns the in-process L1 cache off, or null */
  cacheL1Off: Record<string, string> | null
  /** env that turns Prometheus metrics on, {} when they are always on, null when there are none */
  metricsOn: Record<string, string> | null
  /** env that turns metrics off for the rows that should not pay for them ({} = no switch) */
  metricsOff: Record<string, string>
  /** where the probe of the `full` row looks for Prometheus text (with and without the admin token) */
  metricsPath: string
  hasPlugin (prefix: string): boolean
}

const first = (vars: ReadonlySet<string>, names: string[]): string | null => names.find((n) => vars.has(n)) ?? null

export function discoverFeatures (): Features {
  const vars = new Set(VARS.map((v) => v.name))
  const dir = join(DIST, 'plugins')
  const plugins = existsSync(dir) ? readdirSync(dir).filter((n) => n.endsWith('.js')).map((n) => n.replace(/\.js$/, '')) : []
  const hasPlugin = (prefix: string): boolean => plugins.some((p) => p === prefix || p.startsWith(prefix + '-') || p.startsWith(prefix + '.'))

  const jwtSecretVar = first(vars, ['JWT_SECRET', 'JWT_HS256_SECRET', 'AUTH_JWT_SECRET', 'JWT_SHARED_SECRET'])

  let cacheL1Off: Record<string, string> | null = null
  const l1Bool = first(vars, ['CACHE_L1', 'CACHE_L1_ENABLED'])
  const l1Size = first(vars, ['CACHE_L1_MAX_ENTRIES', 'CACHE_L1_ENTRIES', 'CACHE_L1_MAX', 'CACHE_L1_SIZE', 'CACHE_L1_MAX_BYTES'])
  if (l1Bool !== null) cacheL1Off = { [l1Bool]: 'false' }
  else if (l1Size !== null) cacheL1Off = { [l1Size]: '0' }

  let metricsOn: Record<string, string> | null = null
  let metricsOff: Record<string, string> = {}
  const metricsVar = first(vars, ['METRICS', 'METRICS_ENABLED'])
  if (metricsVar !== null) { metricsOn = { [metricsVar]: 'true' }; metricsOff = { [metricsVar]: 'false' } } else if (hasPlugin('metrics')) metricsOn = {}
  // plugins/metrics.ts serves GET /admin/metrics (admin token); /metrics only on a separate METRICS_PORT
  const metricsPath = hasPlugin('metrics') ? '/admin/metrics' : '/metrics'

  return { vars, plugins, jwtSecretVar, cacheL1Off, metricsOn, metricsOff, metricsPath, hasPlugin }
}
