/**
 * Private redis-server processes on free loopback ports, so a test can stop and restart its Redis mid-flight.
 * No mocks: the same binary the gateway talks to in production.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { createServer } from 'node:net'
import type { TestContext } from 'node:test'

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

export class RedisServer {
  private proc: ChildProcess | null = null
  private started = false
  constructor (private _port: number) {}

  get port (): number { return this._port }

  get url (): string { return `redis://127.0.0.1:${this.port}` }
  get running (): boolean { return this.proc !== null }

  async start (): Promise<void> {
    // The port came from freePort(), which closed it again: another process may take it in between. On the first
    // start only (a restart must keep its port), take another free port and try again.
    for (let attempt = 1; ; attempt++) {
      try {
        await this.startOnce()
        this.started = true
        return
      } catch (err) {
        if (this.started || attempt >= 5 || !/Address already in use/.test((err as Error).message)) throw err
        this._port = await freePort()
      }
    }
  }

  private async startOnce (): Promise<void> {
    if (this.proc !== null) return
    const proc = spawn('redis-server', [
      '--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
      '--protected-mode', 'no', '--loglevel', 'warning', '--daemonize', 'no',
    ], { stdio: ['ignore', 'pipe', 'pipe'] })
    this.proc = proc
    await new Promise<void>((resolve, reject) => {
      let out = ''
      const deadline = setTimeout(() => { proc.kill('SIGKILL'); reject(new Error(`redis-server did not start on ${this.port}: ${out}`)) }, 10_000)
      const ready = (): void => { clearTimeout(deadline); resolve() }
      proc.once('error', (err) => { clearTimeout(deadline); reject(err) })
      proc.once('exit', (code) => { clearTimeout(deadline); this.proc = null; reject(new Error(`redis-server exited with ${code}: ${out}`)) })
      // with --loglevel warning it prints nothing when ready: poll the port with PING
      const poll = async (): Promise<void> => {
        for (let i = 0; i < 200 && this.proc === proc; i++) {
          if (await ping(this.port)) { ready(); return }
          await new Promise((r) => setTimeout(r, 25))
        }
      }
      proc.stdout?.on('data', (d: Buffer) => { out += d.toString() })
      proc.stderr?.on('data', (d: Buffer) => { out += d.toString() })
      void poll()
    })
    proc.removeAllListeners('exit')
    proc.once('exit', () => { if (this.proc === proc) this.proc = null })
  }

  /** stop it the hard way (as a crash would), and wait until it is gone */
  async stop (): Promise<void> {
    const proc = this.proc
    if (proc === null) return
    this.proc = null
    await new Promise<void>((resolve) => { proc.once('exit', () => resolve()); proc.kill('SIGKILL') })
  }

  async restart (): Promise<void> { await this.stop(); await this.start() }
}

async function ping (port: number): Promise<boolean> {
  const { connect } = await import('node:net')
  return await new Promise((resolve) => {
    const s = connect(port, '127.0.0.1')
    s.setTimeout(200)
    s.once('connect', () => s.write('PING\r\n'))
    s.once('data', (d) => { s.destroy(); resolve(d.toString().startsWith('+PONG')) })
    s.once('error', () => { s.destroy(); resolve(false) })
    s.once('timeout', () => { s.destroy(); resolve(false) })
  })
}

/** a fresh redis-server for this test, stopped after it */
export async function startRedis (t: TestContext): Promise<RedisServer> {
  const server = new RedisServer(await freePort())
  await server.start()
  t.after(() => server.stop())
  return server
}

/** run one command against a test redis-server with redis-cli-like raw output (for asserting what is left) */
export async function redisCommand (server: RedisServer, ...args: string[]): Promise<unknown> {
  const { Redis } = await import('ioredis')
  const c = new Redis(server.url, { lazyConnect: true, maxRetriesPerRequest: 0 })
  try {
    await c.connect()
    return await c.call(args[0] as string, ...args.slice(1))
  } finally { c.disconnect() }
}
