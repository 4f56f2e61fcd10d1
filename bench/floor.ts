/**
 * The `floor` row: the thinnest proxy Fastify 5 allows, the shape ../shared/PERFORMANCE.md measured fastest
 * ("Fastify route + undici Pool.dispatch, reply.hijack(), raw write"): no logger, no hook, the client's headers
 * passed on as they came, the answer collected and written with two headers. It forwards nothing a gateway owes
 * (no X-Forwarded-*, no request id, no hop-by-hop hygiene, no timeout, no retry, no error body): it shows what a
 * Node proxy on Fastify can do at best on this machine, so `--ab . --rows passthrough:floor` measures what the
 * gateway's own work costs. Not in the default table. Run as its own process, like the baseline:
 * `PORT=… UPSTREAM_URL=http://127.0.0.1:… node dist/bench/floor.js`.
 */
import Fastify from 'fastify'
import type { ServerResponse } from 'node:http'
import { Pool, type Dispatcher } from 'undici'

const pool = new Pool(process.env.UPSTREAM_URL ?? 'http://127.0.0.1:9', { connections: 128 })

class Collect implements Dispatcher.DispatchHandler {
  readonly #chunks: Buffer[] = []
  #status = 0
  #type = 'application/octet-stream'
  constructor (private readonly res: ServerResponse) {}

  // undici takes a handler without onRequestStart for one of its legacy shape, and would call none of these
  onRequestStart (): void {}

  onResponseStart (_c: Dispatcher.DispatchController, status: number, headers: Record<string, string | string[] | undefined>): void {
    this.#status = status
    const type = headers['content-type']
    if (typeof type === 'string') this.#type = type
  }

  onResponseData (_c: Dispatcher.DispatchController, chunk: Buffer): void { this.#chunks.push(chunk) }

  onResponseEnd (): void {
    const body = this.#chunks.length === 1 ? this.#chunks[0] as Buffer : Buffer.concat(this.#chunks)
    this.res.writeHead(this.#status, { 'content-type': this.#type, 'content-length': String(body.length) })
    this.res.end(body)
  }

  onResponseError (_c: Dispatcher.DispatchController, err: Error): void { this.fail(err) }

  /** an empty 502, or a cut connection once the answer has begun */
  fail (err: Error): void {
    if (this.res.headersSent) this.res.destroy(err)
    else this.res.writeHead(502, { 'content-length': '0' }).end()
  }
}

const app = Fastify()
app.get('/*', (request, reply) => {
  reply.hijack()
  const handler = new Collect(reply.raw)
  // undici refuses some client headers outright (Transfer-Encoding, Upgrade...): a gateway would drop them first
  try { pool.dispatch({ path: request.url, method: 'GET', headers: request.headers }, handler) } catch (err) { handler.fail(err as Error) }
})
await app.listen({ port: Number(process.env.PORT ?? '0'), host: '127.0.0.1' })
process.stdout.write(`listening ${(app.server.address() as { port: number }).port}\n`)

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.once(signal, () => { app.close().then(async () => { await pool.close(); process.exit(0) }, () => process.exit(1)) })
}
