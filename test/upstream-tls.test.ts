/**
 * TLS termination and HTTP/2 (issue 3, item 7): with TLS_CERT_FILE/TLS_KEY_FILE the gateway serves HTTPS, HTTP/2
 * by ALPN and HTTP/1.1 for clients without it (WebSockets included); upstreams stay HTTP/1.1, plain or HTTPS
 * (with TARGET_CA_FILE for a private CA). The certificate is made in the test with openssl (node:crypto has no
 * X.509 writer); the machine's `openssl` is a prerequisite of this suite, and it fails, not skips, without it.
 */
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { connect as h2connect, type ClientHttp2Session, type IncomingHttpHeaders as H2Headers } from 'node:http2'
import { request as httpsRequest, createServer as createHttpsServer } from 'node:https'
import type { IncomingHttpHeaders } from 'node:http'
import { WebSocket, WebSocketServer, type RawData } from 'ws'
import { defineRoutes, defineUpstream } from '../src/declare.js'
import { build } from './helper.js'
import { echo, startUpstream } from './helpers/upstream.js'
import { listen } from './helpers/upstream-tools.js'

interface Cert { dir: string, cert: string, key: string, pem: string }

function makeCert (t: TestContext): Cert {
  const dir = mkdtempSync(join(tmpdir(), 'gw-tls-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const cert = join(dir, 'cert.pem')
  const key = join(dir, 'key.pem')
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
    '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost', '-keyout', key, '-out', cert,
  ], { stdio: 'pipe' })
  return { dir, cert, key, pem: readFileSync(cert, 'utf8') }
}

const routes = (url: string) => [
  defineUpstream({ name: 'svc', targets: [url] }),
  defineRoutes({
    upstream: 'svc',
    prefix: '/api',
    rewrite: '/v1',
    routes: [
      { method: ['GET', 'POST', 'PUT'], url: '/*' },
      { method: 'GET', url: '/ws', websocket: true, rewrite: '/socket' },
    ],
  }),
]

function h2request (session: ClientHttp2Session, headers: Record<string, string>, body?: Buffer): Promise<{ headers: H2Headers, body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = session.request(headers)
    const chunks: Buffer[] = []
    let head: H2Headers = {}
    req.on('response', (h) => { head = h })
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => resolve({ headers: head, body: Buffer.concat(chunks) }))
    req.on('error', reject)
    req.end(body)
  })
}

test('HTTPS with HTTP/2 by ALPN: requests, bodies both ways, no pseudo-header reaches the upstream', { timeout: 30_000 }, async (t) => {
  const cert = makeCert(t)
  const big = Buffer.alloc(600 * 1024, 'z')
  const up = await startUpstream(t, (req, res, body) => {
    if (req.url === '/v1/download') { res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': big.length }); res.end(big); return }
    echo(req, res, body)
  })
  const app = await build(t, { declare: routes(up.url), env: { TLS_CERT_FILE: cert.cert, TLS_KEY_FILE: cert.key } })
  const port = await listen(app)
  const session = h2connect(`https://127.0.0.1:${port}`, { ca: cert.pem })
  t.after(() => session.close())

  const get = await h2request(session, { ':method': 'GET', ':path': '/api/items/7?sort=asc', 'x-custom': 'yes' })
  assert.equal(session.alpnProtocol, 'h2')
  assert.equal(get.headers[':status'], 200)
  const seen = JSON.parse(get.body.toString())
  assert.equal(seen.url, '/v1/items/7?sort=asc')
  assert.equal(seen.method, 'GET')
  assert.equal(seen.headers['x-custom'], 'yes')
  assert.equal(seen.headers['x-forwarded-proto'], 'https')
  assert.equal(seen.headers['x-forwarded-host'], `127.0.0.1:${port}`)
  assert.equal(seen.headers.host, up.url.slice('http://'.length), 'the upstream gets its own Host')
  assert.deepEqual(Object.keys(seen.headers).filter((h) => h.startsWith(':')), [])
  assert.ok(typeof get.headers['x-request-id'] === 'string')

  const post = await h2request(session, { ':method': 'POST', ':path': '/api/things', 'content-type': 'text/plain' }, Buffer.from('over h2'))
  assert.equal(post.headers[':status'], 200)
  assert.equal(JSON.parse(post.body.toString()).body, 'over h2')

  const upload = Buffer.alloc(400 * 1024, 'u')
  const put = await h2request(session, { ':method': 'PUT', ':path': '/api/blob', 'content-type': 'application/octet-stream', 'content-length': String(upload.length) }, upload)
  assert.equal(put.headers[':status'], 200)
  assert.equal(JSON.parse(put.body.toString()).body.length, upload.length)

  const download = await h2request(session, { ':method': 'GET', ':path': '/api/download' })
  assert.equal(download.headers[':status'], 200)
  assert.ok(download.body.equals(big), 'a streamed 600 KiB answer')

  const missing = await h2request(session, { ':method': 'GET', ':path': '/nope' })
  assert.equal(missing.headers[':status'], 404)
  assert.match(String(missing.headers['content-type']), /^application\/problem\+json/)

  // shutting down ends the idle HTTP/2 session (GOAWAY) instead of waiting for its 72 s timeout
  const ended = new Promise<void>((resolve) => session.once('close', () => resolve()))
  await app.close()
  await ended
})

test('HTTPS falls back to HTTP/1.1 for clients without ALPN h2, WebSockets (wss) included', { timeout: 30_000 }, async (t) => {
  const cert = makeCert(t)
  const up = await startUpstream(t)
  const wss = new WebSocketServer({ server: up.server })
  wss.on('connection', (ws) => ws.on('message', (d: RawData, binary: boolean) => ws.send(d as Buffer, { binary })))
  const app = await build(t, { declare: routes(up.url), env: { TLS_CERT_FILE: cert.cert, TLS_KEY_FILE: cert.key } })
  const port = await listen(app)

  const res = await new Promise<{ version: string, status: number, body: string }>((resolve, reject) => {
    httpsRequest({ host: '127.0.0.1', port, path: '/api/one', ca: cert.pem, agent: false }, (r) => {
      let body = ''
      r.on('data', (c: Buffer) => { body += c.toString() })
      r.on('end', () => resolve({ version: r.httpVersion, status: r.statusCode ?? 0, body }))
    }).on('error', reject).end()
  })
  assert.equal(res.version, '1.1')
  assert.equal(res.status, 200)
  assert.equal(JSON.parse(res.body).url, '/v1/one')

  const ws = new WebSocket(`wss://127.0.0.1:${port}/api/ws`, { ca: cert.pem })
  await new Promise<void>((resolve, reject) => { ws.once('open', () => resolve()); ws.once('error', reject) })
  const echoed = new Promise<string>((resolve) => ws.once('message', (d: RawData) => resolve(d.toString())))
  ws.send('secure hello')
  assert.equal(await echoed, 'secure hello')
  const closed = new Promise<number>((resolve) => ws.once('close', (code: number) => resolve(code)))
  ws.close(4100)
  assert.equal(await closed, 4100)
})

test('an HTTPS upstream: trusted through TARGET_CA_FILE, refused (502) without it', { timeout: 30_000 }, async (t) => {
  const cert = makeCert(t)
  const server = createHttpsServer({ cert: cert.pem, key: readFileSync(cert.key) }, (req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(JSON.stringify({ secure: true, url: req.url, headers: req.headers as IncomingHttpHeaders }))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.after(() => { server.closeAllConnections(); server.close() })
  const url = `https://127.0.0.1:${(server.address() as { port: number }).port}`

  const trusted = await build(t, { declare: routes(url), env: { TARGET_CA_FILE: cert.cert } })
  const ok = await trusted.inject('/api/x')
  assert.equal(ok.statusCode, 200)
  assert.deepEqual([ok.json().secure, ok.json().url], [true, '/v1/x'])

  const untrusted = await build(t, { declare: routes(url) })
  const refused = await untrusted.inject('/api/x')
  assert.equal(refused.statusCode, 502)
  assert.equal(refused.json().type, '/problems/GW_ERR_UPSTREAM_UNAVAILABLE')
})
