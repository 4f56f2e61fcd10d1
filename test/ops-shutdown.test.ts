/**
 * Issue 10, graceful shutdown under load: `node dist/src/server.js` gets SIGTERM while a bounded load is in flight
 * over keep-alive connections (answers held by the upstream until the drain has begun, a streamed answer, an
 * upload still arriving). Every accepted request
 * completes with a whole 200, the answers tell clients to close the connection, the buffered access log is
 * written out, and the process exits 0 without waiting for keep-alive timeouts.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { Agent, request as httpRequest, type IncomingMessage } from 'node:http'
import { join } from 'node:path'
import { startUpstream } from './helpers/upstream.js'
import { freePort } from './helpers/redis.js'
import { DIST, eventually, parseLines, routesDir, spawnNode } from './fixtures/ops/helpers.js'

const BIG = 16 * 64 * 1024

interface Answer { status: number, connection: string | undefined, body: string }

function send (port: number, agent: Agent, method: string, path: string, body?: (req: import('node:http').ClientRequest) => void): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, method, path, agent, headers: body !== undefined ? { 'content-type': 'text/plain', 'content-length': '2000' } : {} }, (res: IncomingMessage) => {
      let text = ''
      res.setEncoding('latin1')
      res.on('data', (c: string) => { text += c })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, connection: res.headers.connection, body: text }))
      res.on('error', reject)
    })
    req.on('error', reject)
    if (body !== undefined) body(req)
    else req.end()
  })
}

test('SIGTERM during a bounded keep-alive load loses no accepted request and exits 0', async (t) => {
  let started = 0
  const up = await startUpstream(t, (req, res, body) => {
    if (req.url === '/api/big') {
      // a streamed answer (no length): 1 MiB in 16 chunks over ~800ms
      res.writeHead(200, { 'content-type': 'application/octet-stream' })
      let i = 0
      const next = (): void => { if (i++ < 16) { res.write(Buffer.alloc(64 * 1024, 97)); setTimeout(next, 50) } else res.end() }
      next()
      return
    }
    // the GETs' answers have a length (collected, then written directly: src/direct-reply.ts), the upload's has
    // none (streamed through Fastify's pipeline): both paths must tell the client to close
    const answer = (): void => {
      if (req.method === 'POST') { res.writeHead(200, { 'content-type': 'text/plain' }); res.end(`got ${body.length}`); return }
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '4' })
      res.end('done')
    }
    // the slow answers wait until the test has seen the gateway begin its drain
    if (req.url === '/slow' && !released) held.push(answer)
    else answer()
  })
  const held: Array<() => void> = []
  let released = false
  const release = (): void => { released = true; for (const answer of held.splice(0)) answer() }
  up.server.on('request', () => { started++ })
  const port = await freePort()
  const gw = spawnNode(t, join(DIST, 'src', 'server.js'), {
    PORT: String(port), HOST: '127.0.0.1', LOG_LEVEL: 'info', ROUTES_DIR: routesDir(t, up.url), SHUTDOWN_TIMEOUT: '20s',
  })
  const agent = new Agent({ keepAlive: true, maxSockets: 40 })
  t.after(() => agent.destroy())
  await eventually(async () => (await send(port, agent, 'GET', '/health/live')).status === 200 ? true : undefined, 'the gateway answers')

  // warm up: open keep-alive connections, so that the load below runs over reused connections
  const warm = await Promise.all(Array.from({ length: 30 }, (_v, i) => send(port, agent, 'GET', `/api/warm${i}`)))
  assert.ok(warm.every((a) => a.status === 200 && a.connection === 'keep-alive'))
  const baseline = started

  const slow = Array.from({ length: 30 }, () => send(port, agent, 'GET', '/slow'))
  const big = send(port, agent, 'GET', '/api/big')
  let finishUpload: () => void = () => {}
  const upload = send(port, agent, 'POST', '/slow', (req) => {
    req.write('x'.repeat(1000))
    finishUpload = () => req.end('y'.repeat(1000))
  })
  // the GETs have reached the upstream; the upload, sent with them, is being read by the gateway (a retryable
  // request's small body is collected before it is forwarded): now stop the gateway
  await eventually(() => started - baseline >= 31 ? true : undefined, 'the load is in flight')
  await new Promise((r) => setTimeout(r, 100))
  gw.proc.kill('SIGTERM')
  // the drain has begun once the listener refuses new connections; then the held answers go out
  await eventually(async () => {
    try { await send(port, new Agent(), 'GET', '/health/live') } catch (err) { return (err as NodeJS.ErrnoException).code === 'ECONNREFUSED' ? true : undefined }
    return undefined
  }, 'the gateway stops accepting connections')
  finishUpload()
  await new Promise((r) => setTimeout(r, 100))
  release()

  const answers = await Promise.all(slow)
  for (const a of answers) assert.deepEqual({ status: a.status, body: a.body }, { status: 200, body: 'done' })
  assert.ok(answers.every((a) => a.connection === 'close'), 'answers sent during the drain close their connection')
  const streamed = await big
  assert.equal(streamed.status, 200)
  assert.equal(streamed.body.length, BIG, 'the streamed answer arrived whole')
  assert.deepEqual(await upload, { status: 200, connection: 'close', body: 'got 2000' })

  assert.equal(await gw.exited, 0)
  assert.doesNotMatch(gw.out, /shutdown timed out/)
  // the buffered access log was written out before exit: one line per request
  const access = parseLines(gw.out).filter((l) => l.msg === 'request')
  assert.equal(access.filter((l) => l.path === '/slow' && l.status === 200).length, 31)
  assert.equal(access.filter((l) => l.path === '/api/big' && l.status === 200).length, 1)
  assert.ok(parseLines(gw.out).some((l) => l.msg === 'shut down'))
  await assert.rejects(send(port, new Agent(), 'GET', '/health/live'), /ECONNREFUSED/)
})
