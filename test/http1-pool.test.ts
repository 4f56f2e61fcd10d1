/**
 * The proxy's HTTP/1.1 client (src/upstream/http1-pool.ts) on its own, against real servers on 127.0.0.1:
 * connection reuse and limits, every body framing, request bodies, and each failure with the code the proxy's
 * error mapping reads. (The proxy's own tests cover it end to end: test/proxy.test.ts, test/upstream-*.test.ts.)
 */
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http'
import { createServer as createNetServer, type Socket } from 'node:net'
import { Readable } from 'node:stream'
import type { IncomingHttpHeaders } from 'node:http'
import { Http1Pool, type Http1PoolOptions, type RequestController, type RequestOptions } from '../src/upstream/http1-pool.js'

interface Answer { status: number, headers: IncomingHttpHeaders, body: Buffer }

const DEFAULTS: Http1PoolOptions = { connections: 4, keepAliveMs: 4_000, connectMs: 2_000, firstByteMs: 5_000 }

function pool (t: TestContext, url: string, opts: Partial<Http1PoolOptions> = {}): Http1Pool {
  const p = new Http1Pool(url, { ...DEFAULTS, ...opts })
  t.after(async () => { await p.destroy() })
  return p
}

/** One request through the pool, as a promise: the answer, or the error the handler was given. */
async function send (p: Http1Pool, opts: Partial<RequestOptions> = {}, onStart?: (c: RequestController) => void): Promise<Answer> {
  return await new Promise<Answer>((resolve, reject) => {
    let status = 0
    let headers: IncomingHttpHeaders = {}
    const chunks: Buffer[] = []
    p.dispatch({ method: 'GET', path: '/', headers: {}, body: null, ...opts }, {
      onRequestStart (c) { onStart?.(c) },
      onResponseStart (_c, s, h) { status = s; headers = h },
      onResponseData (_c, chunk) { chunks.push(chunk) },
      onResponseEnd () { resolve({ status, headers, body: Buffer.concat(chunks) }) },
      onResponseError (_c, err) { reject(err) },
    })
  })
}

async function httpServer (t: TestContext, handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<{ url: string, connections: () => number }> {
  let connections = 0
  const server = createHttpServer(handler)
  server.on('connection', () => { connections++ })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.after(async () => { server.closeAllConnections(); await new Promise((resolve) => server.close(resolve)) })
  return { url: `http://127.0.0.1:${(server.address() as { port: number }).port}`, connections: () => connections }
}

/** A raw TCP server: `onRequest` gets each socket's first request bytes and writes what it likes. */
async function rawServer (t: TestContext, onRequest: (socket: Socket, request: string) => void): Promise<string> {
  const sockets = new Set<Socket>()
  const server = createNetServer((socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => {})
    let seen = ''
    socket.on('data', (d) => {
      seen += d.toString('latin1')
      if (seen.includes('\r\n\r\n')) { const r = seen; seen = ''; onRequest(socket, r) }
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.after(async () => { for (const s of sockets) s.destroy(); await new Promise((resolve) => server.close(resolve)) })
  return `http://127.0.0.1:${(server.address() as { port: number }).port}`
}

const codeOf = (err: unknown): string | undefined => (err as { code?: string }).code

test('keep-alive: sequential requests share one connection; headers come as lower-case names, repeats as arrays', async (t) => {
  const up = await httpServer(t, (req, res) => {
    res.setHeader('X-Path', req.url ?? '')
    res.setHeader('Set-Cookie', ['a=1', 'b=2'])
    res.end(`hello ${req.url ?? ''}`)
  })
  const p = pool(t, up.url)
  for (let i = 0; i < 20; i++) {
    const a = await send(p, { path: `/n/${i}` })
    assert.equal(a.status, 200)
    assert.equal(a.body.toString(), `hello /n/${i}`)
    assert.equal(a.headers['x-path'], `/n/${i}`)
    assert.deepEqual(a.headers['set-cookie'], ['a=1', 'b=2'])
  }
  assert.equal(up.connections(), 1)
  assert.deepEqual(p.stats, { connections: 1, idle: 1, waiting: 0 })
})

test('at most `connections` connections; the requests beyond wait and are all answered', async (t) => {
  let inFlight = 0
  let most = 0
  const up = await httpServer(t, (_req, res) => {
    inFlight++
    most = Math.max(most, inFlight)
    setTimeout(() => { inFlight--; res.end('ok') }, 20)
  })
  const p = pool(t, up.url, { connections: 2 })
  const answers = await Promise.all(Array.from({ length: 8 }, async (_, i) => await send(p, { path: `/${i}` })))
  assert.deepEqual(answers.map((a) => a.status), Array(8).fill(200))
  assert.equal(most, 2)
  assert.equal(up.connections(), 2)
})

test('answers: chunked, close-delimited, 1xx before the answer, HEAD with a length, 204', async (t) => {
  const up = await httpServer(t, (req, res) => {
    if (req.url === '/chunked') { res.write('one,'); setTimeout(() => res.end('two'), 10); return }
    if (req.url === '/early') { res.writeEarlyHints({ link: '</a.css>; rel=preload' }); res.end('after hints'); return }
    if (req.url === '/empty') { res.writeHead(204).end(); return }
    res.writeHead(200, { 'content-length': 11 }).end(req.method === 'HEAD' ? undefined : 'hello world')
  })
  const p = pool(t, up.url)
  const chunked = await send(p, { path: '/chunked' })
  assert.equal(chunked.body.toString(), 'one,two')
  assert.equal(chunked.headers['transfer-encoding'], 'chunked')
  const early = await send(p, { path: '/early' })
  assert.equal(early.status, 200)
  assert.equal(early.body.toString(), 'after hints')
  const head = await send(p, { method: 'HEAD', path: '/len' })
  assert.equal(head.headers['content-length'], '11')
  assert.equal(head.body.length, 0)
  const empty = await send(p, { path: '/empty' })
  assert.equal(empty.status, 204)
  // and the connection is still good after all of them
  assert.equal((await send(p, { path: '/len' })).body.toString(), 'hello world')
  assert.equal(up.connections(), 1)

  const raw = await rawServer(t, (socket) => { socket.end('HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end') })
  const closeDelimited = await send(pool(t, raw), { path: '/' })
  assert.equal(closeDelimited.body.toString(), 'until the end')
})

test('request bodies: a Buffer with its length, a stream with a given length, a stream without one (chunked)', async (t) => {
  const seen: Array<{ length: string | undefined, chunked: boolean, body: string }> = []
  const up = await httpServer(t, (req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      seen.push({ length: req.headers['content-length'], chunked: req.headers['transfer-encoding'] === 'chunked', body: Buffer.concat(chunks).toString() })
      res.end('ok')
    })
  })
  const p = pool(t, up.url)
  await send(p, { method: 'POST', body: Buffer.from('buffered'), headers: { 'content-length': '999' } })
  await send(p, { method: 'PUT', body: Readable.from([Buffer.from('str'), Buffer.from('eamed')]), headers: { 'content-length': '8' } })
  await send(p, { method: 'POST', body: Readable.from([Buffer.from('no '), Buffer.from('length')]) })
  await send(p, { method: 'POST', body: null })
  assert.deepEqual(seen, [
    // the body's own length wins over a stale header
    { length: '8', chunked: false, body: 'buffered' },
    { length: '8', chunked: false, body: 'streamed' },
    { length: undefined, chunked: true, body: 'no length' },
    { length: '0', chunked: false, body: '' },
  ])
  assert.equal(up.connections(), 1)
})

test('failures carry the codes the proxy maps: refused, cut short, malformed, timeouts, a refused header', async (t) => {
  // nothing listens there once the server is gone
  const dead = createHttpServer()
  await new Promise<void>((resolve) => dead.listen(0, '127.0.0.1', resolve))
  const deadPort = (dead.address() as { port: number }).port
  await new Promise((resolve) => dead.close(resolve))
  await assert.rejects(send(pool(t, `http://127.0.0.1:${deadPort}`)), (err) => codeOf(err) === 'ECONNREFUSED')

  const cut = await rawServer(t, (socket) => { socket.end('HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part') })
  await assert.rejects(send(pool(t, cut)), (err) => codeOf(err) === 'UND_ERR_SOCKET')

  const garbage = await rawServer(t, (socket) => { socket.write('NOT HTTP AT ALL\r\n\r\n') })
  await assert.rejects(send(pool(t, garbage)), (err) => /^HPE_/.test(codeOf(err) ?? ''))

  const silent = await rawServer(t, () => {})
  await assert.rejects(send(pool(t, silent, { firstByteMs: 100 })), (err) => codeOf(err) === 'UND_ERR_HEADERS_TIMEOUT')

  const stalls = await rawServer(t, (socket) => { socket.write('HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nfirst part') })
  await assert.rejects(send(pool(t, stalls, { firstByteMs: 100 })), (err) => codeOf(err) === 'UND_ERR_BODY_TIMEOUT')

  let requests = 0
  const counting = await rawServer(t, (socket) => { requests++; socket.end('HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n') })
  const p = pool(t, counting)
  await assert.rejects(send(p, { headers: { 'x-injected': 'a\r\nx-evil: 1' } }), (err) => codeOf(err) === 'UND_ERR_INVALID_ARG')
  await assert.rejects(send(p, { headers: { 'bad name': 'x' } }), (err) => codeOf(err) === 'UND_ERR_INVALID_ARG')
  assert.equal((await send(p)).status, 200)
  assert.equal(requests, 1, 'the refused requests sent nothing')
})

test('abort: the request ends at once with the reason, and its connection is not reused', async (t) => {
  const up = await httpServer(t, (_req, res) => { res.write('partial') })
  const p = pool(t, up.url)
  const reason = Object.assign(new Error('deadline'), { code: 'GW_ERR_UPSTREAM_TIMEOUT' })
  let controller: RequestController | undefined
  const pending = send(p, {}, (c) => { controller = c })
  setTimeout(() => controller?.abort(reason), 30)
  await assert.rejects(pending, (err) => err === reason)
  await new Promise((resolve) => setTimeout(resolve, 20))
  assert.equal(p.stats.connections, 0)
})

test("keep-alive limits: the target's shorter Keep-Alive timeout is honoured, Connection: close is", async (t) => {
  const short = await httpServer(t, (_req, res) => { res.setHeader('keep-alive', 'timeout=1'); res.end('x') })
  const p = pool(t, short.url)
  await send(p)
  await send(p)
  // timeout=1 less the one-second margin leaves nothing: each answer closes its connection
  assert.equal(short.connections(), 2)

  const closing = await httpServer(t, (_req, res) => { res.setHeader('connection', 'close'); res.end('x') })
  const q = pool(t, closing.url)
  await send(q)
  await send(q)
  assert.equal(closing.connections(), 2)
})

test('close() lets the request in flight finish, then refuses new ones', async (t) => {
  const up = await httpServer(t, (_req, res) => { setTimeout(() => res.end('late but whole'), 50) })
  const p = pool(t, up.url)
  const pending = send(p)
  await new Promise((resolve) => setTimeout(resolve, 10))
  const closing = p.close()
  assert.throws(() => p.dispatch({ method: 'GET', path: '/', body: null }, {}), (err) => codeOf(err) === 'UND_ERR_CLOSED')
  assert.equal((await pending).body.toString(), 'late but whole')
  await closing
  assert.equal(p.stats.connections, 0)
})
