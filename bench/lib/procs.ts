/**
 * Child processes of the benchmark: every one is registered here and killed when the harness ends, whichever way
 * it ends (normal exit, an error, Ctrl-C, SIGTERM). Each child is also started with bench/lib/watchdog.js
 * preloaded, which ends it within a second if the harness itself is killed with SIGKILL.
 * Per-process CPU and memory come from /proc, so they measure that one process and nothing else.
 */
import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process'
import { closeSync, openSync, readFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { availableParallelism } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
/** the project root (this file runs from dist/bench/lib/) */
export const ROOT = join(here, '..', '..', '..')
export const DIST = join(ROOT, 'dist')
export const WATCHDOG = pathToFileURL(join(here, 'watchdog.js')).href

const live = new Set<ChildProcess>()
let cleanupInstalled = false

/** Kill every child still running (SIGKILL: nothing to wait for). Safe to call from an 'exit' handler. */
export function killAll (): void {
  for (const child of live) {
    try { child.kill('SIGKILL') } catch { /* already gone */ }
  }
  live.clear()
}

/** Children die with the harness: on exit, on an uncaught error, on SIGINT/SIGTERM/SIGHUP. */
export function installCleanup (): void {
  if (cleanupInstalled) return
  cleanupInstalled = true
  process.on('exit', killAll)
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(signal, () => {
      process.stderr.write(`\nbench: ${signal}, stopping every child process\n`)
      killAll()
      process.exit(signal === 'SIGINT' ? 130 : 143)
    })
  }
  process.on('uncaughtException', (err) => {
    process.stderr.write(`bench: ${err.stack ?? String(err)}\n`)
    killAll()
    process.exit(1)
  })
  process.on('unhandledRejection', (err) => {
    process.stderr.write(`bench: unhandled rejection: ${(err as Error)?.stack ?? String(err)}\n`)
    killAll()
    process.exit(1)
  })
}

// ---- CPU pinning -------------------------------------------------------------------------------------------------

export interface Pinning {
  enabled: boolean
  /** core for the measured process (gateway, baseline) */
  server: number | null
  /** core for the load generator, the upstream and redis-server */
  client: number | null
  describe: string
}

function parseCpuList (list: string): number[] {
  const out: number[] = []
  for (const part of list.trim().split(',')) {
    const [a, b] = part.split('-').map((s) => Number(s))
    if (a === undefined || !Number.isInteger(a)) continue
    const end = b !== undefined && Number.isInteger(b) ? b : a
    for (let c = a; c <= end && out.length < 4096; c++) out.push(c)
  }
  return out
}

/** Where taskset exists and at least two cores are ours: the server on the second, everything else on the first. */
export function decidePinning (wanted: boolean): Pinning {
  const off = (why: string): Pinning => ({ enabled: false, server: null, client: null, describe: `no CPU pinning (${why})` })
  if (!wanted) return off('--no-pin')
  const probe = spawnSync('taskset', ['-cp', String(process.pid)], { encoding: 'utf8', timeout: 5000 })
  if (probe.error !== undefined || probe.status !== 0) return off('taskset not found')
  const m = /:\s*([\d,\s-]+)\s*$/.exec(probe.stdout)
  const cores = m === null ? [] : parseCpuList(m[1] as string)
  if (cores.length < 2 || availableParallelism() < 2) return off(`only ${Math.max(cores.length, 1)} core available`)
  const [client, server] = cores as [number, number]
  // the harness itself generates the load: pin all of its threads to the client core
  const self = spawnSync('taskset', ['-a', '-cp', String(client), String(process.pid)], { encoding: 'utf8', timeout: 5000 })
  if (self.status !== 0) return off(`taskset failed: ${self.stderr.trim()}`)
  return {
    enabled: true,
    server,
    client,
    describe: `taskset: gateway/baseline on core ${server}; load generator, upstream and redis-server on core ${client}` +
      (cores.length > 2 ? ` (of ${cores.length} cores; the others stay idle)` : ''),
  }
}

// ---- processes -----------------------------------------------------------------------------------------------------

export interface Child {
  readonly proc: ChildProcess
  readonly pid: number
  readonly name: string
  /** null while running */
  exitCode: number | null
  exitSignal: string | null
  readonly exited: Promise<void>
  /** last stderr/stdout text kept in memory (bounded) */
  tail (): string
  /** SIGTERM, then SIGKILL after graceMs */
  stop (graceMs?: number): Promise<void>
}

export interface SpawnChild {
  name: string
  command: string
  args: string[]
  env: Record<string, string>
  /** pin to this core with taskset (null = not pinned) */
  core: number | null
  /** stdout to this file (else kept as a bounded tail with stderr) */
  stdoutFile?: string
  cwd?: string
}

const TAIL_MAX = 8192

export function spawnChild (spec: SpawnChild): Child {
  const [command, args] = spec.core === null ? [spec.command, spec.args] : ['taskset', ['-c', String(spec.core), spec.command, ...spec.args]]
  let tail = ''
  const keep = (d: Buffer): void => {
    tail += d.toString()
    if (tail.length > TAIL_MAX) tail = tail.slice(-TAIL_MAX)
  }
  let outFd: number | null = null
  if (spec.stdoutFile !== undefined) outFd = openSync(spec.stdoutFile, 'w')
  const options: SpawnOptions = { env: spec.env, cwd: spec.cwd ?? ROOT, stdio: ['ignore', outFd ?? 'pipe', 'pipe'] }
  const proc = spawn(command, args, options)
  if (outFd !== null) closeSync(outFd)
  live.add(proc)
  proc.stdout?.on('data', keep)
  proc.stderr?.on('data', keep)
  let resolveExit: () => void = () => {}
  const exited = new Promise<void>((resolve) => { resolveExit = resolve })
  const child: Child = {
    proc,
    pid: proc.pid ?? -1,
    name: spec.name,
    exitCode: null,
    exitSignal: null,
    exited,
    tail: () => tail,
    async stop (graceMs = 10_000) {
      if (child.exitCode !== null || child.exitSignal !== null || proc.exitCode !== null) return
      proc.kill('SIGTERM')
      const timer = setTimeout(() => { try { proc.kill('SIGKILL') } catch { /* gone */ } }, graceMs)
      await exited
      clearTimeout(timer)
    },
  }
  proc.once('error', (err) => { keep(Buffer.from(`${spec.name}: ${err.message}\n`)); child.exitCode = -1; live.delete(proc); resolveExit() })
  proc.once('exit', (code, signal) => {
    child.exitCode = code ?? -1
    child.exitSignal = signal
    live.delete(proc)
    resolveExit()
  })
  return child
}

/** A minimal environment: the children do not see the caller's variables (an UPSTREAM_X there would break the config). */
export function baseEnv (extra: Record<string, string>): Record<string, string> {
  const env: Record<string, string> = {}
  for (const k of ['PATH', 'HOME', 'TMPDIR', 'LANG', 'TZ']) {
    const v = process.env[k]
    if (v !== undefined) env[k] = v
  }
  return { ...env, NODE_ENV: 'production', ...extra }
}

export function running (child: Child): boolean {
  return child.exitCode === null && child.exitSignal === null
}

// ---- /proc ------------------------------------------------------------------------------------------------------

let clkTck: number | null = null
function ticksPerSecond (): number {
  if (clkTck !== null) return clkTck
  const r = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8', timeout: 5000 })
  const n = Number(r.stdout?.trim())
  clkTck = Number.isInteger(n) && n > 0 ? n : 100
  return clkTck
}

/** user + system CPU time of the whole process (all threads), in microseconds; null when unreadable */
export function cpuMicros (pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // the command name may hold spaces and parentheses: fields are counted after the last ')'
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    const utime = Number(fields[11])
    const stime = Number(fields[12])
    if (!Number.isFinite(utime) || !Number.isFinite(stime)) return null
    return (utime + stime) * 1e6 / ticksPerSecond()
  } catch { return null }
}

/** VmHWM (peak resident set) and VmRSS (current) in MB; null when unreadable */
export function memoryMb (pid: number): { peak: number, current: number } | null {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8')
    const kb = (name: string): number | null => {
      const m = new RegExp(`^${name}:\\s+(\\d+)\\s+kB`, 'm').exec(status)
      return m === null ? null : Number(m[1])
    }
    const peak = kb('VmHWM')
    const current = kb('VmRSS')
    if (peak === null || current === null) return null
    return { peak: peak / 1024, current: current / 1024 }
  } catch { return null }
}

export async function freePort (): Promise<number> {
  return await new Promise((resolve, reject) => {
    const srv = createServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number }
      srv.close(() => resolve(port))
    })
  })
}

export const sleep = async (ms: number): Promise<void> => await new Promise((resolve) => setTimeout(resolve, ms))
