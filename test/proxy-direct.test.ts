/**
 * The proxy's direct write (src/direct-reply.ts): a buffered answer written straight to the socket must reach the
 * client exactly as Fastify's send pipeline would have sent it, and a route with an onSend hook the direct write
 * cannot reproduce must keep going through that pipeline.
 */
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http'
import type { FastifyInstance } from 'fastify'
import { buildApp } from '../src/app.js'
import { defineRoutes, defineUpstream } from '../src/declare.js'
import { testConfig } from './helper.js'
import { startUpstream, type UpstreamHandler } from './helpers/upstream.js'

interface Answer { status: number, headers: IncomingHttpHeaders, body: Buffer }

async function get (app: FastifyInstance, path: string, headers: Record<string, string> = {}): Promise<Answer> {
  const { port } = app.server.address() as { port: number }
  return await new Promise<Answer>((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path, headers, agent: false }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end()
  })
}

interface GatewayOptions {
  /** a global onSend hook of an embedder's own */
  onSend?: () => void
  env?: Record<string, string>
  /** the route's cache policy */
  cache?: { ttl: string }
  logStream?: { write (line: string): unknown }
}

/** A gateway in front of `handler`, one route GET /api/* to it, listening on 127.0.0.1. */
async function gateway (t: TestContext, handler: UpstreamHandler, opts: GatewayOptions = {}): Promise<FastifyInstance> {
  const up = await startUpstream(t, handler)
  const app = await buildApp(testConfig(opts.env), {
    ...(opts.logStream !== undefined ? { logStream: opts.logStream } : {}),
    declarations: [{
      file: 'routes/test-0.ts',
      exported: [
        defineUpstream({ name: 'svc', targets: [up.url] }),
        defineRoutes({ upstream: 'svc', prefix: '/api', routes: [{ method: 'GET', url: '/*', ...(opts.cache !== undefined ? { cache: opts.cache } : {}) }] }),
      ],
    }],
  })
  const onSend = opts.onSend
  if (onSend !== undefined) {
    app.addHook('onSend', function embedderHook (_request, _reply, payload, done) { onSend(); done(null, payload) })
  }
  t.after(() => app.close())
  await app.listen({ port: 0, host: '127.0.0.1' })
  return app
}

// every byte value, then UTF-8 text with multi-byte characters: a latin1 round trip must keep each byte
function bodyOf (size: number): Buffer {
  const text = Buffer.from('{"name":"Zoë","city":"Kraków","sign":"✓","emoji":"😀"}')
  const out = Buffer.alloc(size)
  for (let i = 0; i < size; i++) out[i] = i < 256 ? i : (text[i % text.length] as number)
  return out
}

const sizes = [0, 1, 1024, 16 * 1024, 16 * 1024 + 1, 200 * 1024]

test('a buffered answer written directly arrives byte for byte, with its length, at every size', async (t) => {
  const bodies = new Map(sizes.map((n) => [String(n), bodyOf(n)]))
  const app = await gateway(t, (req, res) => {
    const body = bodies.get((req.url ?? '').split('/').pop() as string) as Buffer
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length })
    res.end(body)
  })
  for (const n of sizes) {
    const a = await get(app, `/api/${n}`)
    assert.equal(a.status, 200)
    assert.equal(a.headers['content-length'], String(n))
    assert.ok(a.body.equals(bodies.get(String(n)) as Buffer), `the ${n}-byte body is the upstream's, byte for byte`)
    assert.match(String(a.headers['x-request-id']), /^[\w-]{8,}$/)
  }
  assert.equal(app.gwProxy.stats.directWrites, sizes.length, 'every one of them was written directly')
})

test('the direct write sends the same status and headers as Fastify\'s send pipeline', async (t) => {
  const upstream: UpstreamHandler = (req, res) => {
    const status = Number((req.url ?? '').split('/').pop())
    const body = Buffer.from(JSON.stringify({ status, padding: 'x'.repeat(2000) }))
    const headers: Array<[string, string | string[]]> = [
      ['set-cookie', ['a=1; Path=/', 'b=2; Path=/']],
      ['x-upstream', 'yes'],
      ['cache-control', 'public, max-age=5'],
      ['keep-alive', 'timeout=5'],
      ['x-hop', 'dropped'],
      ['connection', 'keep-alive, x-hop'],
      ['content-length', String(body.length)],
    ]
    // one answer without Content-Type: both paths call it application/octet-stream
    if (status !== 202) headers.push(['content-type', 'application/json; charset=utf-8'])
    res.writeHead(status, headers.flatMap(([k, v]) => Array.isArray(v) ? v.flatMap((x) => [k, x]) : [k, v]))
    res.end(body)
  }
  let hookRan = 0
  const direct = await gateway(t, upstream)
  const piped = await gateway(t, upstream, { onSend: () => { hookRan++ } })
  for (const status of [200, 201, 202, 404, 500, 503]) {
    const headers = { 'x-request-id': `req-${status}`, 'accept-encoding': 'identity' }
    const a = await get(direct, `/api/s/${status}`, headers)
    const b = await get(piped, `/api/s/${status}`, headers)
    assert.equal(a.status, status)
    assert.equal(b.status, status)
    const strip = (h: IncomingHttpHeaders): IncomingHttpHeaders => { const { date: _d, ...rest } = h; return rest }
    assert.deepEqual(strip(a.headers), strip(b.headers), `status ${status}: same headers on both paths`)
    assert.ok(a.body.equals(b.body))
    assert.deepEqual(a.headers['set-cookie'], ['a=1; Path=/', 'b=2; Path=/'])
    assert.equal(a.headers['x-hop'], undefined, 'a header the upstream\'s Connection lists is hop-by-hop')
    assert.equal(a.headers['x-request-id'], `req-${status}`)
    // compressible JSON above the threshold: Vary even when sent plain; octet-stream is never compressed
    assert.equal(a.headers.vary, status === 202 ? undefined : 'accept-encoding')
    assert.equal(a.headers['content-type'], status === 202 ? 'application/octet-stream' : 'application/json; charset=utf-8')
  }
  assert.equal(direct.gwProxy.stats.directWrites, 6)
  assert.equal(piped.gwProxy.stats.directWrites, 0)
  assert.equal(hookRan, 6, 'a route with an onSend hook of its own keeps Fastify\'s pipeline, and the hook runs')
})

test('the direct write leaves compression to the compress hook when the client accepts an encoding', async (t) => {
  const json = Buffer.from(JSON.stringify({ items: Array.from({ length: 200 }, (_, i) => ({ id: i, name: `item ${i}` })) }))
  const app = await gateway(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': json.length })
    res.end(json)
  })
  const { gunzipSync } = await import('node:zlib')
  const zipped = await get(app, '/api/items', { 'accept-encoding': 'gzip' })
  assert.equal(zipped.headers['content-encoding'], 'gzip')
  assert.ok(gunzipSync(zipped.body).equals(json))
  assert.equal(app.gwProxy.stats.directWrites, 0, 'compressed by the onSend hook')
  const plain = await get(app, '/api/items')
  assert.equal(plain.headers['content-encoding'], undefined)
  assert.equal(plain.headers.vary, 'accept-encoding')
  assert.ok(plain.body.equals(json))
  assert.equal(app.gwProxy.stats.directWrites, 1, 'sent plain: written directly, with Vary')
})

test('access log and metrics still see a directly written answer', async (t) => {
  const lines: string[] = []
  const app = await gateway(t, (_req, res) => { res.writeHead(201, { 'content-type': 'text/plain', 'content-length': 5 }); res.end('hello') }, {
    env: { ACCESS_LOG: 'true', LOG_LEVEL: 'info', ADMIN_TOKEN: 'admin-token-for-direct-test' },
    logStream: { write: (line: string) => lines.push(line) },
  })
  const a = await get(app, '/api/x', { 'x-request-id': 'direct-log-1' })
  assert.equal(a.status, 201)
  assert.equal(a.body.toString(), 'hello')
  assert.equal(app.gwProxy.stats.directWrites, 1)
  const deadline = Date.now() + 2000
  while (!lines.some((l) => l.includes('direct-log-1')) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
  const line = JSON.parse(lines.find((l) => l.includes('direct-log-1')) as string)
  assert.equal(line.status, 201)
  assert.equal(line.bytes, 5)
  assert.equal(line.upstream, 'svc')
  const metrics = await app.inject({ method: 'GET', url: '/admin/metrics', headers: { authorization: 'Bearer admin-token-for-direct-test' } })
  assert.equal(metrics.statusCode, 200)
  assert.match(metrics.body, /gateway_requests_total\{route="\/api\/\*",method="GET",status_class="2xx",upstream="svc"\} 1\n/)
})

test('a cache hit is written directly; the miss that stores it and a compressed hit go through onSend', async (t) => {
  const json = Buffer.from(JSON.stringify({ items: Array.from({ length: 100 }, (_, i) => ({ id: i, name: `item ${i}` })) }))
  let upstreamCalls = 0
  const app = await gateway(t, (_req, res) => {
    upstreamCalls++
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': json.length })
    res.end(json)
  }, { cache: { ttl: '1m' } })
  const miss = await get(app, '/api/items')
  assert.equal(miss.headers['x-cache'], 'MISS')
  assert.equal(app.gwProxy.stats.directWrites, 0, 'the miss is stored by the onSend hook')
  const hit = await get(app, '/api/items')
  assert.equal(hit.headers['x-cache'], 'HIT')
  assert.equal(app.gwProxy.stats.directWrites, 1)
  assert.ok(hit.body.equals(json))
  assert.equal(hit.headers['content-length'], String(json.length))
  assert.equal(hit.headers['content-type'], 'application/json')
  assert.equal(hit.headers.etag, miss.headers.etag)
  assert.equal(hit.headers.vary, 'accept-encoding')
  assert.match(String(hit.headers.age), /^\d+$/)
  const zipped = await get(app, '/api/items', { 'accept-encoding': 'gzip' })
  assert.equal(zipped.headers['x-cache'], 'HIT')
  assert.equal(zipped.headers['content-encoding'], 'gzip')
  const { gunzipSync } = await import('node:zlib')
  assert.ok(gunzipSync(zipped.body).equals(json))
  assert.equal(app.gwProxy.stats.directWrites, 1, 'a compressed hit goes through Fastify\'s send')
  assert.equal(upstreamCalls, 1)
})
