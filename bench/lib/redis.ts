/**
 * The benchmark's own redis-server (a free loopback port, no persistence), pinned with the load generator, and
 * the counters the table shows: commands and socket reads per request from INFO, before and after a measured run.
 */
import { connect } from 'node:net'
import { Redis } from 'ioredis'
import { spawnChild, freePort, sleep, type Child } from './procs.js'

export interface RedisCounters {
  /** every command executed, those run inside Lua scripts included, without the harness's own INFO */
  commands: number
  /** EVAL/EVALSHA/FCALL calls (each one atomic script) */
  scripts: number
  /** read events on client sockets: one per round trip, however many pipelined commands it carried */
  reads: number
  byCommand: Record<string, number>
  /** redis-server's own CPU time (user + system, all its threads), µs */
  cpuUs: number
}

export interface BenchRedis {
  url: string
  port: number
  child: Child
  version: string
  counters (): Promise<RedisCounters>
  flush (): Promise<void>
  client: Redis
  stop (): Promise<void>
}

const SCRIPT_COMMANDS = new Set(['eval', 'evalsha', 'eval_ro', 'evalsha_ro', 'fcall', 'fcall_ro'])

export function parseInfo (info: string): RedisCounters {
  const byCommand: Record<string, number> = {}
  let commands = 0
  let scripts = 0
  let reads = 0
  let cpuUs = 0
  for (const line of info.split('\n')) {
    const cmd = /^cmdstat_([^:]+):calls=(\d+)/.exec(line)
    if (cmd !== null) {
      const name = (cmd[1] as string).toLowerCase()
      if (name === 'info') continue
      const calls = Number(cmd[2])
      byCommand[name] = calls
      commands += calls
      if (SCRIPT_COMMANDS.has(name)) scripts += calls
      continue
    }
    const r = /^total_reads_processed:(\d+)/.exec(line)
    if (r !== null) { reads = Number(r[1]); continue }
    // seconds with six decimals; the *_main_thread and *_children lines are not counted
    const cpu = /^used_cpu_(?:sys|user):([\d.]+)\s*$/.exec(line)
    if (cpu !== null) cpuUs += Math.round(Number(cpu[1]) * 1e6)
  }
  return { commands, scripts, reads, byCommand, cpuUs }
}

/** after − before; `reads` leaves out the harness's own INFO call */
export function diffCounters (before: RedisCounters, after: RedisCounters): RedisCounters {
  const byCommand: Record<string, number> = {}
  for (const [k, v] of Object.entries(after.byCommand)) {
    const d = v - (before.byCommand[k] ?? 0)
    if (d > 0) byCommand[k] = d
  }
  return {
    commands: after.commands - before.commands,
    scripts: after.scripts - before.scripts,
    reads: Math.max(0, after.reads - before.reads - 1),
    byCommand,
    cpuUs: Math.max(0, after.cpuUs - before.cpuUs),
  }
}

const lastLine = (text: string): string => text.trim().split('\n').filter((l) => !/oO0OoO0O|WARNING Memory overcommit/.test(l)).slice(-2).join(' | ')

async function ping (port: number): Promise<boolean> {
  return await new Promise((resolve) => {
    const s = connect(port, '127.0.0.1')
    s.setTimeout(500)
    s.once('connect', () => s.write('PING\r\n'))
    s.once('data', (d) => { s.destroy(); resolve(d.toString().startsWith('+PONG')) })
    s.once('error', () => { s.destroy(); resolve(false) })
    s.once('timeout', () => { s.destroy(); resolve(false) })
  })
}

export async function startRedis (core: number | null, alsoEnv: Record<string, string> = {}): Promise<BenchRedis> {
  const port = await freePort()
  const child = spawnChild({
    name: 'redis-server',
    command: 'redis-server',
    args: ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--protected-mode', 'yes',
      '--loglevel', 'warning', '--daemonize', 'no', '--maxmemory', '512mb', '--maxmemory-policy', 'allkeys-lru'],
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...alsoEnv },
    core,
  })
  let up = false
  for (let i = 0; i < 200 && child.exitCode === null && !up; i++) {
    up = await ping(port)
    if (!up) await sleep(50)
  }
  if (!up) {
    await child.stop(1000)
    throw new Error(`redis-server did not start on port ${port}: ${lastLine(child.tail()) || 'is redis-server installed?'}`)
  }
  const client = new Redis({ host: '127.0.0.1', port, lazyConnect: true, maxRetriesPerRequest: 1, connectTimeout: 2000, commandTimeout: 10_000 })
  client.on('error', () => { /* reported through the failing call */ })
  try { await client.connect() } catch (err) {
    client.disconnect()
    await child.stop(1000)
    throw new Error(`cannot connect to the bench redis-server: ${(err as Error).message}`)
  }
  const server = String(await client.call('INFO', 'server'))
  const version = /redis_version:(\S+)/.exec(server)?.[1] ?? '?'
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    child,
    version,
    client,
    async counters () { return parseInfo(String(await client.call('INFO', 'all'))) },
    async flush () { await client.flushall() },
    async stop () {
      client.disconnect()
      await child.stop(3000)
    },
  }
}
