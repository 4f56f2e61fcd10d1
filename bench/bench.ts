/**
 * The benchmark run: one redis-server and one upstream for the whole run, then for each round every selected row
 * one after another with the same load. Each gateway/baseline row is its own process, pinned to its own core,
 * measured by its own CPU time and peak RSS; Redis commands are counted from INFO around the measured run.
 */
import { randomBytes } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { cpus, loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { spawnSync } from 'node:child_process'
import { GATEWAY_NODE_FLAGS } from '../src/node-flags.js'
import { discoverFeatures, type Features } from './lib/features.js'
import { waitFor } from './lib/http.js'
import { runLoad, type LoadResult, type LoadSpec } from './lib/load.js'
import { baseEnv, cpuMicros, decidePinning, DIST, freePort, memoryMb, ROOT, running, spawnChild, WATCHDOG, type Child, type Pinning } from './lib/procs.js'
import { diffCounters, startRedis, type BenchRedis } from './lib/redis.js'
import { median } from './lib/table.js'
import { NotAvailable, ROWS, type RowDef } from './rows.js'

export const RESULT_VERSION = 1

export interface BenchOptions {
  rows: string[]
  rounds: number
  durationS: number
  warmupS: number
  warmupRequests: number
  connections: number
  pin: boolean
  /** keep one process per row for all rounds (shows RSS growth from round to round) */
  sameProcess: boolean
  /** run the gateway of this row under --cpu-prof, profiles written into this folder */
  profileDir: string | null
  /** progress lines (stderr) */
  log: (line: string) => void
}

export interface RoundMetrics {
  round: number
  rps: number
  p50: number
  p99: number
  meanMs: number
  completed: number
  durationS: number
  /** the warm-up before this round's measured run: seconds and requests (absent in older files) */
  warmup?: { seconds: number, requests: number }
  /** µs of CPU (user + system, all threads) of the measured process per answered request */
  cpuUsPerReq: number | null
  /** VmHWM of the measured process after the run (MB) */
  rssPeakMb: number | null
  /** VmRSS after the run (MB) */
  rssMb: number | null
  /** cpuUsPerReq: redis-server's own CPU time per request (it runs on the load generator's core) */
  redis: { cmdsPerReq: number, scriptsPerReq: number, readsPerReq: number, cpuUsPerReq: number, byCommand: Record<string, number> }
  errors: number
  statusCodes: Record<string, number>
  ratioDirect: number | null
  ratioBaseline: number | null
  cpuRatioBaseline: number | null
}

export interface RowSummary {
  rps: number | null
  p50: number | null
  p99: number | null
  cpuUsPerReq: number | null
  cpuRatioBaseline: number | null
  rssPeakMb: number | null
  redisCmdsPerReq: number | null
  redisCpuUsPerReq: number | null
  redisReadsPerReq: number | null
  ratioDirect: number[]
  ratioBaseline: number[]
  errors: number
}

export interface RowResult {
  name: string
  kind: RowDef['kind']
  describe: string
  status: 'ok' | 'n/a'
  reason: string | null
  rounds: RoundMetrics[]
  failures: Array<{ round: number, reason: string }>
  summary: RowSummary | null
  profile?: string | null
  /** the measured run of the last round on the monotonic clock, to cut the profile to it */
  window?: { startUs: number, endUs: number }
}

export interface BenchMeta {
  version: number
  date: string
  node: string
  cpus: string
  pinning: string
  connections: number
  durationS: number
  warmupS: number
  /** the warm-up's least number of answers (absent in files written before it existed: time only) */
  warmupRequests?: number
  rounds: number
  redis: string
  commit: string
  rows: string[]
  sameProcess?: boolean
  /** 1-minute load average before and after the run: a busy neighbour shows here */
  loadAverage?: { before: number, after: number }
}

export interface BenchResult { meta: BenchMeta, rows: RowResult[] }

export interface Server { child: Child, base: string, logFile: string | null, spec: LoadSpec | null }

export interface Infra {
  pinning: Pinning
  redis: BenchRedis
  upstream: Child
  upstreamUrl: string
  tmp: string
  features: Features
  adminToken: string
  jwtSecret: string
  stop (): Promise<void>
}

export async function startInfra (pin: boolean, log: (line: string) => void): Promise<Infra> {
  const pinning = decidePinning(pin)
  const tmp = mkdtempSync(join(tmpdir(), 'fastgate-bench-'))
  const redis = await startRedis(pinning.client)
  let upstream: Child | null = null
  try {
    const port = await freePort()
    upstream = spawnChild({
      name: 'upstream',
      command: process.execPath,
      args: ['--import', WATCHDOG, join(DIST, 'bench', 'upstream.js')],
      // if the harness is SIGKILLed, the upstream's watchdog takes redis-server down with it
      env: baseEnv({ PORT: String(port), BENCH_WATCHDOG_KILL: String(redis.child.pid) }),
      core: pinning.client,
    })
    const upstreamUrl = `http://127.0.0.1:${port}`
    await waitFor(upstreamUrl + '/items/1', (a) => a.status === 200, 15_000, upstream)
    log(`redis-server ${redis.version} on ${redis.url}; upstream on ${upstreamUrl}; ${pinning.describe}`)
    const up = upstream
    return {
      pinning,
      redis,
      upstream: up,
      upstreamUrl,
      tmp,
      features: discoverFeatures(),
      adminToken: randomBytes(24).toString('hex'),
      jwtSecret: randomBytes(32).toString('hex'),
      async stop () {
        await up.stop(3000)
        await redis.stop()
        rmSync(tmp, { recursive: true, force: true })
      },
    }
  } catch (err) {
    await upstream?.stop(1000)
    await redis.stop()
    rmSync(tmp, { recursive: true, force: true })
    throw err
  }
}

/** The gateway's environment for a row: a clean env with our loopback services, plus the row's own switches. */
export function gatewayEnv (infra: Infra, port: number, extra: Record<string, string>, routesDir = join(DIST, 'bench', 'routes')): Record<string, string> {
  const f = infra.features
  return baseEnv({
    PORT: String(port),
    HOST: '127.0.0.1',
    REDIS_URL: infra.redis.url,
    ROUTES_DIR: routesDir,
    UPSTREAM_BENCH: infra.upstreamUrl,
    ADMIN_TOKEN: infra.adminToken,
    LOG_LEVEL: 'info',
    ACCESS_LOG: 'false',
    ...(f.jwtSecretVar !== null ? { [f.jwtSecretVar]: infra.jwtSecret } : {}),
    ...f.metricsOff,
    ...extra,
  })
}

export function nodeArgs (script: string, profile: { dir: string, name: string } | null, flags: readonly string[] = []): string[] {
  const prof = profile === null ? [] : ['--cpu-prof', '--cpu-prof-dir', profile.dir, '--cpu-prof-name', profile.name]
  return ['--import', WATCHDOG, ...flags, ...prof, script]
}

/** Start a gateway process and wait for /health/ready; a failed start reports the gateway's own words. */
export async function startGateway (infra: Infra, name: string, env: Record<string, string>, port: number, profile: { dir: string, name: string } | null, readyMs = 30_000, dist = DIST): Promise<Server> {
  const logFile = join(infra.tmp, `${name}.log`)
  const child = spawnChild({
    name: `gateway (${name})`,
    command: process.execPath,
    // the gateway as deployed (Dockerfile, npm start); the baseline keeps Node's defaults
    args: nodeArgs(join(dist, 'src', 'server.js'), profile, GATEWAY_NODE_FLAGS),
    env,
    core: infra.pinning.server,
    stdoutFile: logFile,
  })
  const base = `http://127.0.0.1:${port}`
  try {
    await waitFor(base + '/health/ready', (a) => a.status === 200, readyMs, child)
  } catch (err) {
    await child.stop(2000)
    const words = lastLines(child.tail(), 4) || lastLines(readTail(logFile), 4)
    throw new NotAvailable(`gateway did not start: ${words || (err as Error).message}`)
  }
  return { child, base, logFile, spec: null }
}

/** Start the process a row measures (the upstream itself for `direct`); a gateway from `dist` (default: this build). */
export async function startServer (row: RowDef, infra: Infra, profile: { dir: string, name: string } | null, dist = DIST, name = row.name): Promise<Server> {
  if (row.kind === 'upstream') {
    if (profile !== null) throw new NotAvailable('direct is the upstream alone: nothing to profile')
    return { child: infra.upstream, base: infra.upstreamUrl, logFile: null, spec: null }
  }
  const port = await freePort()
  if (row.kind === 'reference') {
    // always this build's: a reference does not change with the gateway
    const child = spawnChild({
      name: row.name,
      command: process.execPath,
      args: nodeArgs(join(DIST, 'bench', `${row.name}.js`), profile),
      env: baseEnv({ PORT: String(port), UPSTREAM_URL: infra.upstreamUrl }),
      core: infra.pinning.server,
    })
    const base = `http://127.0.0.1:${port}`
    try {
      await waitFor(base + '/items/1', (a) => a.status === 200, 20_000, child)
    } catch (err) {
      await child.stop(2000)
      const missing = /missing: (.*)/.exec(child.tail())
      throw new NotAvailable(missing !== null ? missing[1] as string : `${row.name} did not start: ${lastLines(child.tail(), 3) || (err as Error).message}`)
    }
    return { child, base, logFile: null, spec: null }
  }
  const extra = row.env?.(infra.features) ?? {}
  return await startGateway(infra, name, gatewayEnv(infra, port, extra, join(dist, 'bench', 'routes')), port, profile, 30_000, dist)
}

function readTail (file: string): string {
  try { return readFileSync(file, 'utf8').slice(-4000) } catch { return '' }
}

/** the last n meaningful lines of a process's output: stack frames left out, pino JSON lines reduced to their message */
export function lastLines (text: string, n: number): string {
  return text.trim().split('\n').filter((l) => l.trim() !== '' && !/^\s+at /.test(l) && !/^\s*\^+\s*$/.test(l)).slice(-n).map((l) => {
    try {
      const j = JSON.parse(l) as { msg?: string, err?: { message?: string } }
      return [j.msg, j.err?.message].filter(Boolean).join(': ')
    } catch { return l }
  }).join(' | ').slice(0, 400)
}

export interface Measured {
  load: LoadResult
  cpuUs: number | null
  mem: { peak: number, current: number } | null
  redis: ReturnType<typeof diffCounters>
  /** the measured run on the monotonic clock (µs), the clock V8 stamps profile samples with */
  window: { startUs: number, endUs: number }
  /** how long the warm-up before it took, and how many requests it sent */
  warmup: { seconds: number, requests: number }
}

const monotonicUs = (): number => Number(process.hrtime.bigint() / 1000n)

export interface WarmUpOptions {
  connections: number
  /** at least this long (s); 0 = no warm-up at all */
  warmupS: number
  /** and until the process has answered at least this many requests (0 = time only) */
  warmupRequests: number
}

/** the warm-up as the table's header says it */
export function describeWarmUp (warmupS: number, warmupRequests = 0): string {
  if (warmupS <= 0) return 'no warm-up'
  return `a warm-up of at least ${warmupS} s` + (warmupRequests > 0 ? ` and ${warmupRequests.toLocaleString('en-US')} requests` : '')
}

/** the warm-up's bound in time, whatever warmupRequests asks: a row that slow is measured as it is by then */
export const WARMUP_MAX_S = 20

/**
 * Load until the process is warm: at least `warmupS` seconds, then one more second at a time until it has answered
 * `warmupRequests` requests (at most WARMUP_MAX_S in all). V8 compiles the hot path with its optimizing compiler
 * after a number of calls, not of seconds: a fresh gateway answered at about a quarter of its steady rate for its
 * first second under load and reached that rate after 4,000-6,000 requests, the baseline after about 7,500
 * (bench/README.md, tenth session); a slow row gets there later in seconds. What is measured after it is the
 * steady state that a long-running gateway is in.
 */
export async function warmUp (spec: LoadSpec, opts: WarmUpOptions): Promise<{ seconds: number, requests: number }> {
  if (opts.warmupS <= 0) return { seconds: 0, requests: 0 }
  const first = await runLoad(spec, { connections: opts.connections, durationS: opts.warmupS })
  let seconds = first.durationS
  let requests = first.completed
  while (requests < opts.warmupRequests && seconds < WARMUP_MAX_S) {
    const r = await runLoad(spec, { connections: opts.connections, durationS: Math.min(1, WARMUP_MAX_S - seconds) })
    seconds += r.durationS
    requests += r.completed
    // nothing answers: more load will not warm it (the measured run reports the errors)
    if (r.completed === 0) break
  }
  return { seconds, requests }
}

/** warm-up, then the measured run between two snapshots of the process's CPU time and Redis's counters */
export async function measure (pid: number, spec: LoadSpec, infra: Infra, opts: WarmUpOptions & { durationS: number }): Promise<Measured> {
  const warmup = await warmUp(spec, opts)
  const r0 = await infra.redis.counters()
  const cpu0 = cpuMicros(pid)
  const startUs = monotonicUs()
  const load = await runLoad(spec, { connections: opts.connections, durationS: opts.durationS })
  const endUs = monotonicUs()
  const cpu1 = cpuMicros(pid)
  const r1 = await infra.redis.counters()
  const mem = memoryMb(pid)
  return { load, cpuUs: cpu0 === null || cpu1 === null ? null : cpu1 - cpu0, mem, redis: diffCounters(r0, r1), window: { startUs, endUs }, warmup }
}

function toRound (round: number, m: Measured): RoundMetrics {
  const n = Math.max(1, m.load.completed)
  return {
    round,
    rps: m.load.rps,
    p50: m.load.p50,
    p99: m.load.p99,
    meanMs: m.load.mean,
    completed: m.load.completed,
    durationS: m.load.durationS,
    warmup: { seconds: Math.round(m.warmup.seconds * 10) / 10, requests: m.warmup.requests },
    cpuUsPerReq: m.cpuUs === null || m.load.completed === 0 ? null : m.cpuUs / m.load.completed,
    rssPeakMb: m.mem?.peak ?? null,
    rssMb: m.mem?.current ?? null,
    redis: { cmdsPerReq: m.redis.commands / n, scriptsPerReq: m.redis.scripts / n, readsPerReq: m.redis.reads / n, cpuUsPerReq: m.redis.cpuUs / n, byCommand: m.redis.byCommand },
    errors: m.load.non2xx + m.load.errors,
    statusCodes: m.load.statusCodes,
    ratioDirect: null,
    ratioBaseline: null,
    cpuRatioBaseline: null,
  }
}

function gitCommit (): string {
  const head = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8', timeout: 5000 })
  if (head.status !== 0) return 'unknown'
  const dirty = spawnSync('git', ['status', '--porcelain', '--untracked-files=no'], { cwd: ROOT, encoding: 'utf8', timeout: 5000 })
  return head.stdout.trim() + (dirty.stdout?.trim() ? ' (with uncommitted changes)' : '')
}

export function rowsByName (names: readonly string[]): RowDef[] {
  const out: RowDef[] = []
  for (const n of names) {
    const row = ROWS.find((r) => r.name.toLowerCase() === n.toLowerCase())
    if (row === undefined) throw new Error(`unknown row "${n}"; rows: ${ROWS.map((r) => r.name).join(', ')}`)
    if (!out.includes(row)) out.push(row)
  }
  return out
}

export async function runBench (opts: BenchOptions): Promise<BenchResult> {
  const rows = rowsByName(opts.rows)
  const loadBefore = loadavg()[0] ?? 0
  const infra = await startInfra(opts.pin, opts.log)
  const results = new Map<string, RowResult>(rows.map((r) => [r.name, {
    name: r.name, kind: r.kind, describe: r.describe, status: 'ok', reason: null, rounds: [], failures: [], summary: null,
  }]))
  const kept = new Map<string, Server>()
  const naForGood = new Map<string, string>()
  try {
    for (let round = 1; round <= opts.rounds; round++) {
      for (const row of rows) {
        const res = results.get(row.name) as RowResult
        const why = naForGood.get(row.name)
        if (why !== undefined) continue
        if (!opts.sameProcess && row.kind === 'gateway') await infra.redis.flush()
        const profile = opts.profileDir === null || row.kind === 'upstream' ? null : { dir: opts.profileDir, name: `${row.name}-${new Date().toISOString().replace(/[:.]/g, '-')}.cpuprofile` }
        let server: Server | null = kept.get(row.name) ?? null
        try {
          if (server === null) {
            server = await startServer(row, infra, profile)
            if (opts.sameProcess && row.kind !== 'upstream') kept.set(row.name, server)
          }
          const spec = server.spec ?? await row.prepare({ base: server.base, adminToken: infra.adminToken, jwtSecret: infra.jwtSecret, logFile: server.logFile, features: infra.features })
          if (opts.sameProcess) server.spec = spec
          const m = await measure(server.child.pid, spec, infra, opts)
          if (!running(server.child)) throw new Error(`${server.child.name} exited during the run (code ${server.child.exitCode}): ${lastLines(server.child.tail(), 3)}`)
          const r = toRound(round, m)
          res.rounds.push(r)
          res.window = m.window
          opts.log(`round ${round}/${opts.rounds}  ${row.name.padEnd(13)} ${Math.round(r.rps).toLocaleString('en-US').padStart(7)} req/s  p99 ${r.p99} ms  ` +
            `${r.cpuUsPerReq === null ? '' : `${r.cpuUsPerReq.toFixed(0)} µs CPU/req  `}errors ${r.errors}`)
        } catch (err) {
          const reason = (err as Error).message
          if (err instanceof NotAvailable) naForGood.set(row.name, reason)
          else res.failures.push({ round, reason })
          opts.log(`round ${round}/${opts.rounds}  ${row.name.padEnd(13)} n/a: ${reason}`)
        } finally {
          if (server !== null && row.kind !== 'upstream' && !opts.sameProcess) {
            await server.child.stop(15_000)
            if (profile !== null) res.profile = join(profile.dir, profile.name)
          }
        }
      }
    }
  } finally {
    for (const s of kept.values()) await s.child.stop(15_000)
    await infra.stop()
  }

  for (const row of rows) {
    const res = results.get(row.name) as RowResult
    const forGood = naForGood.get(row.name)
    if (res.rounds.length === 0) {
      res.status = 'n/a'
      res.reason = forGood ?? res.failures[0]?.reason ?? 'no round completed'
    }
  }
  addRatios([...results.values()])
  return {
    meta: {
      version: RESULT_VERSION,
      date: new Date().toISOString(),
      node: process.version,
      cpus: `${cpus().length} × ${cpus()[0]?.model.trim() ?? '?'}`,
      pinning: infra.pinning.describe,
      connections: opts.connections,
      durationS: opts.durationS,
      warmupS: opts.warmupS,
      warmupRequests: opts.warmupRequests,
      rounds: opts.rounds,
      redis: infra.redis.version,
      commit: gitCommit(),
      rows: rows.map((r) => r.name),
      sameProcess: opts.sameProcess,
      loadAverage: { before: loadBefore, after: loadavg()[0] ?? 0 },
    },
    rows: [...results.values()],
  }
}

/** ratios within one round (same conditions), then the medians */
export function addRatios (rows: RowResult[]): void {
  const direct = rows.find((r) => r.name === 'direct')
  const baseline = rows.find((r) => r.name === 'baseline')
  const inRound = (row: RowResult | undefined, round: number): RoundMetrics | undefined => row?.rounds.find((r) => r.round === round)
  for (const row of rows) {
    for (const r of row.rounds) {
      const d = inRound(direct, r.round)
      const b = inRound(baseline, r.round)
      r.ratioDirect = d !== undefined && d.rps > 0 ? r.rps / d.rps : null
      r.ratioBaseline = b !== undefined && b.rps > 0 ? r.rps / b.rps : null
      r.cpuRatioBaseline = b?.cpuUsPerReq != null && r.cpuUsPerReq !== null && b.cpuUsPerReq > 0 ? r.cpuUsPerReq / b.cpuUsPerReq : null
    }
    if (row.rounds.length === 0) { row.summary = null; continue }
    const pick = (f: (r: RoundMetrics) => number | null): number[] => row.rounds.map(f).filter((x): x is number => x !== null)
    const peaks = pick((r) => r.rssPeakMb)
    row.summary = {
      rps: median(pick((r) => r.rps)),
      p50: median(pick((r) => r.p50)),
      p99: median(pick((r) => r.p99)),
      cpuUsPerReq: median(pick((r) => r.cpuUsPerReq)),
      cpuRatioBaseline: median(pick((r) => r.cpuRatioBaseline)),
      rssPeakMb: peaks.length === 0 ? null : Math.max(...peaks),
      redisCmdsPerReq: median(pick((r) => r.redis.cmdsPerReq)),
      redisReadsPerReq: median(pick((r) => r.redis.readsPerReq)),
      // older result files have no Redis CPU
      redisCpuUsPerReq: median(pick((r) => r.redis.cpuUsPerReq ?? null)),
      ratioDirect: pick((r) => r.ratioDirect),
      ratioBaseline: pick((r) => r.ratioBaseline),
      errors: row.rounds.reduce((s, r) => s + r.errors, 0),
    }
  }
}
