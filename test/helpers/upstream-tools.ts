/**
 * Small tools for the upstream pool tests (test/upstream-*.test.ts): named targets, the admin view of a pool,
 * polling with a deadline, a log capture, and plain HTTP requests over real sockets.
 */
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http'
import type { FastifyInstance } from 'fastify'
import type { UpstreamHandler } from './upstream.js'

export const ADMIN_TOKEN = 'test-admin-token-0123456789'
export const ADMIN = { authorization: `Bearer ${ADMIN_TOKEN}` }

/** A target that answers 200 with its own name (and the path it was asked for). */
export function named (name: string): UpstreamHandler {
  return (req, res) => {
    const body = JSON.stringify({ target: name, url: req.url })
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
    res.end(body)
  }
}

export interface TargetView { url: string, state: string, healthy: boolean, passing: boolean, ejected: boolean, inflight: number, ejections: number, ejectForMs: number, consecutiveFailures: number }
export interface UpstreamView { name: string, balance: string, available: number, targets: TargetView[], retry: { tokens: number, spent: number, refusedByBudget: number } | null }

/** GET /admin/upstreams/:name (the app must be built with ADMIN_TOKEN). */
export async function upstreamState (app: FastifyInstance, name: string): Promise<UpstreamView> {
  const res = await app.inject({ url: `/admin/upstreams/${name}`, headers: ADMIN })
  if (res.statusCode !== 200) throw new Error(`admin answered ${res.statusCode}: ${res.body}`)
  return res.json() as UpstreamView
}

export function targetState (view: UpstreamView, url: string): TargetView {
  const t = view.targets.find((x) => x.url === url)
  if (t === undefined) throw new Error(`no target ${url} in ${view.targets.map((x) => x.url).join(', ')}`)
  return t
}

/** Poll `check` until it returns true, or fail after `timeoutMs` with `what`. */
export async function until (what: string, check: () => boolean | Promise<boolean>, timeoutMs = 10_000, everyMs = 25): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (await check()) return
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`)
    await new Promise((resolve) => setTimeout(resolve, everyMs))
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/** JSON log lines, for `build(t, { logStream })` with LOG_LEVEL set. */
export function logCapture (): { stream: { write (line: string): void }, lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = []
  return {
    lines,
    stream: {
      write (line: string) {
        for (const l of line.split('\n')) if (l.trim() !== '') lines.push(JSON.parse(l) as Record<string, unknown>)
      },
    },
  }
}

export async function listen (app: FastifyInstance): Promise<number> {
  await app.listen({ port: 0, host: '127.0.0.1' })
  return (app.server.address() as { port: number }).port
}

export interface RawAnswer { statusCode: number, headers: IncomingHttpHeaders, body: string }

/** One HTTP/1.1 request over a new socket, the path sent exactly as given (no normalization). */
export function rawRequest (port: number, path: string, opts: { method?: string, headers?: Record<string, string> } = {}): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path, method: opts.method ?? 'GET', headers: opts.headers, agent: false }, (r) => {
      let body = ''
      r.setEncoding('utf8')
      r.on('data', (c: string) => { body += c })
      r.on('end', () => resolve({ statusCode: r.statusCode ?? 0, headers: r.headers, body }))
      r.on('error', reject)
    })
    req.on('error', reject)
    req.end()
  })
}
