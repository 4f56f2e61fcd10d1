/**
 * Real upstream HTTP servers on 127.0.0.1 for tests: they record what they receive and answer as told.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { TestContext } from 'node:test'

export interface Received {
  method: string
  url: string
  headers: IncomingMessage['headers']
  body: Buffer
}

export interface Upstream {
  url: string
  port: number
  server: Server
  received: Received[]
  /** number of requests seen */
  readonly hits: number
  close (): Promise<void>
  /** listen again on the same port after close() */
  restart (): Promise<void>
}

export type UpstreamHandler = (req: IncomingMessage, res: ServerResponse, body: Buffer) => void

/** By default it answers 200 with a JSON echo of the request. */
export const echo: UpstreamHandler = (req, res, body) => {
  const payload = JSON.stringify({ method: req.method, url: req.url, headers: req.headers, body: body.toString() })
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) })
  res.end(payload)
}

export async function startUpstream (t: TestContext | null, handler: UpstreamHandler = echo, port = 0): Promise<Upstream> {
  const received: Received[] = []
  const sockets = new Set<import('node:net').Socket>()
  const make = (): Server => {
    const server = createServer((req, res) => {
      const chunks: Buffer[] = []
      req.on('data', (c: Buffer) => chunks.push(c))
      req.on('end', () => {
        const body = Buffer.concat(chunks)
        received.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body })
        handler(req, res, body)
      })
    })
    server.on('connection', (s) => { sockets.add(s); s.on('close', () => sockets.delete(s)) })
    return server
  }
  let server = make()
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve))
  const actual = (server.address() as { port: number }).port
  const up: Upstream = {
    url: `http://127.0.0.1:${actual}`,
    port: actual,
    get server () { return server },
    received,
    get hits () { return received.length },
    async close () {
      for (const s of sockets) s.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
    async restart () {
      server = make()
      await new Promise<void>((resolve) => server.listen(actual, '127.0.0.1', resolve))
    },
  }
  t?.after(() => up.close().catch(() => {}))
  return up
}
