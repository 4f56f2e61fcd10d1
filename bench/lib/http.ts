/** One-off HTTP requests for set-up and probes (no keep-alive pool left behind), bounded by a timeout. */
import { request } from 'node:http'
import { sleep, type Child } from './procs.js'

export interface Answer { status: number, headers: Record<string, string | string[] | undefined>, body: string }

export async function httpRequest (url: string, opts: { method?: string, headers?: Record<string, string>, body?: string, timeoutMs?: number } = {}): Promise<Answer> {
  return await new Promise((resolve, reject) => {
    const body = opts.body === undefined ? undefined : Buffer.from(opts.body)
    const headers: Record<string, string> = { ...(opts.headers ?? {}) }
    if (body !== undefined) {
      headers['content-length'] = String(body.length)
      headers['content-type'] ??= 'application/json'
    }
    const req = request(url, { method: opts.method ?? 'GET', headers, agent: false }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString() }))
      res.on('error', reject)
    })
    req.setTimeout(opts.timeoutMs ?? 5000, () => req.destroy(new Error(`no answer from ${url} within ${opts.timeoutMs ?? 5000} ms`)))
    req.on('error', reject)
    req.end(body)
  })
}

export function header (a: Answer, name: string): string | undefined {
  const v = a.headers[name.toLowerCase()]
  return Array.isArray(v) ? v.join(', ') : v
}

/**
 * Poll `url` until `ok(answer)` or the deadline; gives up early when `child` exits. Returns the wall time waited
 * (ms), or throws with the last error seen.
 */
export async function waitFor (url: string, ok: (a: Answer) => boolean, deadlineMs: number, child?: Child, everyMs = 20): Promise<number> {
  const start = performance.now()
  let last = 'no answer'
  const maxTries = Math.ceil(deadlineMs / everyMs) + 1
  for (let i = 0; i < maxTries && performance.now() - start < deadlineMs; i++) {
    if (child !== undefined && child.exitCode !== null) throw new Error(`${child.name} exited with code ${child.exitCode}`)
    try {
      const a = await httpRequest(url, { timeoutMs: 2000 })
      if (ok(a)) return performance.now() - start
      last = `HTTP ${a.status} ${a.body.slice(0, 200)}`
    } catch (err) { last = (err as Error).message }
    await sleep(everyMs)
  }
  throw new Error(`${url} not ready after ${Math.round(deadlineMs / 1000)} s: ${last}`)
}

/** a JWT signed with HS256 (node:crypto only) */
export async function signHs256 (claims: Record<string, unknown>, secret: string): Promise<string> {
  const { createHmac } = await import('node:crypto')
  const b64 = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString('base64url')
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`
  return `${head}.${createHmac('sha256', secret).update(head).digest('base64url')}`
}
