import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createServer } from 'node:http'
import { defineRoutes, defineUpstream } from '../src/declare.js'
import { build } from './helper.js'
import { startUpstream, type UpstreamHandler } from './helpers/upstream.js'

const routesFor = (url: string, extra: Partial<Parameters<typeof defineRoutes>[0]> = {}) => [
  defineUpstream({ name: 'svc', targets: [url], timeouts: { firstByte: '300ms' } }),
  defineRoutes({ upstream: 'svc', prefix: '/api', rewrite: '/v1', routes: [{ method: ['GET', 'POST', 'PUT', 'DELETE', 'PATCH'], url: '/*' }], ...extra }),
]

test('method, rewritten path, query, headers and body pass through', async (t) => {
  const up = await startUpstream(t)
  const app = await build(t, { declare: routesFor(up.url) })
  const res = await app.inject({ method: 'POST', url: '/api/things/7?b=2&a=%20x', headers: { 'content-type': 'text/plain', 'x-custom': 'yes' }, payload: 'hello' })
  assert.equal(res.statusCode, 200)
  const seen = res.json()
  assert.equal(seen.method, 'POST')
  assert.equal(seen.url, '/v1/things/7?b=2&a=%20x')
  assert.equal(seen.body, 'hello')
  assert.equal(seen.headers['x-custom'], 'yes')
  assert.equal(seen.headers['content-type'], 'text/plain')
  assert.equal(seen.headers['x-forwarded-proto'], 'http')
  assert.equal(seen.headers['x-forwarded-for'], '127.0.0.1')
  assert.ok(seen.headers['x-request-id'])
  assert.equal(res.headers['x-request-id'], seen.headers['x-request-id'])
})

const problemOf = (res: { statusCode: number, headers: Record<string, unknown>, json: () => any, body: string }, status: number, code: string) => {
  assert.equal(res.statusCode, status, res.body)
  assert.match(String(res.headers['content-type']), /^application\/problem\+json/)
  const p = res.json()
  assert.equal(p.status, status)
  assert.equal(p.type, `/problems/${code}`)
  assert.ok(typeof p.title === 'string' && typeof p.detail === 'string' && typeof p.requestId === 'string')
  assert.doesNotMatch(res.body, /\bat .+\.js:\d+|ECONNREFUSED|127\.0\.0\.1:\d+|stack/i, 'no stack trace or upstream internals')
  return p
}

test('large bodies stream both ways, byte for byte, any content type', async (t) => {
  const big = Buffer.alloc(3 * 1024 * 1024)
  for (let i = 0; i < big.length; i++) big[i] = (i * 7) & 0xff
  const up = await startUpstream(t, (req, res, body) => {
    if (req.method === 'POST') {
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ length: body.length, same: body.equals(big), type: req.headers['content-type'] }))
      return
    }
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': big.length })
    res.end(big)
  })
  const app = await build(t, { declare: routesFor(up.url) })
  const post = await app.inject({ method: 'POST', url: '/api/upload', headers: { 'content-type': 'application/x-custom-binary' }, payload: big })
  assert.deepEqual(post.json(), { length: big.length, same: true, type: 'application/x-custom-binary' })
  const get = await app.inject({ method: 'GET', url: '/api/download' })
  assert.equal(get.statusCode, 200)
  assert.equal(get.headers['content-length'], String(big.length))
  assert.ok(get.rawPayload.equals(big))
})

test('hop-by-hop headers are removed both ways; end-to-end headers pass', async (t) => {
  const up = await startUpstream(t, (req, res) => {
    res.setHeader('connection', 'x-upstream-private, keep-alive')
    res.setHeader('keep-alive', 'timeout=5')
    res.setHeader('x-upstream-private', 'secret')
    res.setHeader('proxy-authenticate', 'Basic')
    res.setHeader('x-end-to-end', 'kept')
    res.setHeader('set-cookie', ['a=1', 'b=2'])
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify(req.headers))
  })
  const app = await build(t, { declare: routesFor(up.url) })
  const res = await app.inject({
    method: 'GET',
    url: '/api/h',
    headers: { connection: 'x-drop-me', 'x-drop-me': '1', te: 'trailers', 'proxy-authorization': 'Basic x', 'x-keep': 'yes', trailer: 'x-t' },
  })
  const seen = res.json()
  for (const h of ['x-drop-me', 'te', 'proxy-authorization', 'trailer', 'upgrade']) assert.equal(seen[h], undefined, h)
  assert.equal(seen['x-keep'], 'yes')
  for (const h of ['x-upstream-private', 'keep-alive', 'proxy-authenticate']) assert.equal(res.headers[h], undefined, h)
  assert.notEqual(res.headers.connection, 'x-upstream-private, keep-alive')
  assert.equal(res.headers['x-end-to-end'], 'kept')
  assert.deepEqual(res.headers['set-cookie'], ['a=1', 'b=2'])
})

test('X-Forwarded-*: replaced when the peer is not trusted, appended when it is', async (t) => {
  const up = await startUpstream(t)
  const spoof = { 'x-forwarded-for': '6.6.6.6', 'x-forwarded-host': 'evil.example', 'x-forwarded-proto': 'https', host: 'api.example.com' }
  const untrusted = await build(t, { declare: routesFor(up.url) })
  let seen = (await untrusted.inject({ url: '/api/x', headers: spoof })).json()
  assert.equal(seen.headers['x-forwarded-for'], '127.0.0.1')
  assert.equal(seen.headers['x-forwarded-host'], 'api.example.com')
  assert.equal(seen.headers['x-forwarded-proto'], 'http')
  const trusted = await build(t, { declare: routesFor(up.url), env: { TRUST_PROXY: '127.0.0.1' } })
  seen = (await trusted.inject({ url: '/api/x', headers: spoof })).json()
  assert.equal(seen.headers['x-forwarded-for'], '6.6.6.6, 127.0.0.1')
  assert.equal(seen.headers['x-forwarded-host'], 'evil.example')
  assert.equal(seen.headers['x-forwarded-proto'], 'https')
})

test('X-Request-Id: a sane one is passed on and returned, anything else is replaced', async (t) => {
  const up = await startUpstream(t)
  const app = await build(t, { declare: routesFor(up.url) })
  let res = await app.inject({ url: '/api/x', headers: { 'x-request-id': 'abc-123.def' } })
  assert.equal(res.headers['x-request-id'], 'abc-123.def')
  assert.equal(res.json().headers['x-request-id'], 'abc-123.def')
  res = await app.inject({ url: '/api/x', headers: { 'x-request-id': 'bad id with spaces <script>' } })
  assert.match(String(res.headers['x-request-id']), /^[0-9a-f-]{36}$/)
  assert.equal(res.json().headers['x-request-id'], res.headers['x-request-id'])
})

test('upstream 4xx and 5xx answers pass through unchanged', async (t) => {
  const up = await startUpstream(t, (req, res) => {
    const status = Number(req.url?.split('/').pop())
    res.writeHead(status, { 'content-type': 'text/plain', 'x-from': 'upstream' })
    res.end(`upstream said ${status}`)
  })
  const app = await build(t, { declare: routesFor(up.url) })
  for (const status of [400, 404, 409, 500, 503]) {
    const res = await app.inject({ url: `/api/status/${status}` })
    assert.equal(res.statusCode, status)
    assert.equal(res.body, `upstream said ${status}`)
    assert.equal(res.headers['x-from'], 'upstream')
    assert.equal(res.headers['content-type'], 'text/plain')
  }
})

test('upstream refused = 502, reset = 502, hanging = 504, all problem+json without internals', async (t) => {
  const dead = await startUpstream(t)
  await dead.close()
  let app = await build(t, { declare: routesFor(dead.url) })
  problemOf(await app.inject({ url: '/api/x' }), 502, 'GW_ERR_UPSTREAM_UNAVAILABLE')

  const reset = await startUpstream(t, (req) => { req.socket.destroy() })
  app = await build(t, { declare: routesFor(reset.url) })
  problemOf(await app.inject({ url: '/api/x' }), 502, 'GW_ERR_UPSTREAM_RESET')

  const hang = await startUpstream(t, () => { /* never answers */ })
  app = await build(t, { declare: routesFor(hang.url) })
  const t0 = Date.now()
  problemOf(await app.inject({ url: '/api/x' }), 504, 'GW_ERR_UPSTREAM_TIMEOUT')
  assert.ok(Date.now() - t0 < 5000, 'answered by the first-byte timeout (300ms), not a default one')
})

test('unknown route = 404 problem+json; traversal = 400; too large = 413 (declared and chunked)', async (t) => {
  const up = await startUpstream(t)
  const app = await build(t, { declare: routesFor(up.url), env: { BODY_LIMIT: '1kb' } })
  problemOf(await app.inject({ url: '/nope' }), 404, 'GW_ERR_NOT_FOUND')
  // over a real socket: the raw path reaches the gateway as sent (inject would normalize it first)
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as { port: number }
  const { request } = await import('node:http')
  for (const path of ['/api/a/../../etc/passwd', '/api/a/%2e%2e/secret', '/api/a/%2F..%2Fx', '/api/a//b', '/api/a/..%5cb', '/api/./x']) {
    const res = await new Promise<{ statusCode: number, headers: Record<string, unknown>, body: string }>((resolve, reject) => {
      request({ host: '127.0.0.1', port, path }, (r) => {
        let body = ''
        r.on('data', (c: Buffer) => { body += c.toString() })
        r.on('end', () => resolve({ statusCode: r.statusCode ?? 0, headers: r.headers, body }))
      }).on('error', reject).end()
    })
    problemOf({ ...res, json: () => JSON.parse(res.body) }, 400, 'GW_ERR_BAD_PATH')
  }
  assert.equal(up.hits, 0, 'no traversal reached the upstream')
  problemOf(await app.inject({ method: 'POST', url: '/api/x', headers: { 'content-type': 'text/plain' }, payload: 'x'.repeat(2048) }), 413, 'GW_ERR_BODY_TOO_LARGE')
  const { Readable } = await import('node:stream')
  const chunked = await app.inject({ method: 'POST', url: '/api/x', headers: { 'content-type': 'text/plain', 'transfer-encoding': 'chunked' }, payload: Readable.from([Buffer.alloc(800), Buffer.alloc(800)]) })
  problemOf(chunked, 413, 'GW_ERR_BODY_TOO_LARGE')
  assert.equal(up.received.filter((r) => r.method === 'POST').length, 0, 'nothing too large reached the upstream')
  const ok = await app.inject({ method: 'POST', url: '/api/x', headers: { 'content-type': 'text/plain' }, payload: 'small' })
  assert.equal(ok.json().body, 'small')
})

test('a route with a body schema validates JSON (400) and forwards the original bytes', async (t) => {
  const up = await startUpstream(t)
  const app = await build(t, {
    declare: [[
      defineUpstream({ name: 'svc', targets: [up.url] }),
      defineRoutes({
        upstream: 'svc',
        routes: [{ method: 'POST', url: '/users', schema: { body: { type: 'object', properties: { name: { type: 'string' } }, required: ['name'], additionalProperties: false } } }],
      }),
    ]],
  })
  const raw = '{ "name" :  "Ada" }'
  const ok = await app.inject({ method: 'POST', url: '/users', headers: { 'content-type': 'application/json' }, payload: raw })
  assert.equal(ok.statusCode, 200)
  assert.equal(ok.json().body, raw, 'forwarded byte for byte')
  assert.equal(ok.json().headers['content-length'], String(raw.length))
  const invalid = problemOf(await app.inject({ method: 'POST', url: '/users', headers: { 'content-type': 'application/json' }, payload: '{"nom":"x"}' }), 400, 'GW_ERR_BAD_REQUEST')
  assert.match(invalid.detail, /name/)
  problemOf(await app.inject({ method: 'POST', url: '/users', headers: { 'content-type': 'application/json' }, payload: '{"name":' }), 400, 'GW_ERR_BAD_REQUEST')
  problemOf(await app.inject({ method: 'POST', url: '/users', headers: { 'content-type': 'application/json' }, payload: '{"__proto__":{"x":1},"name":"a"}' }), 400, 'GW_ERR_BAD_REQUEST')
  assert.equal(up.hits, 1)
})

test('HEAD is forwarded as HEAD and keeps the upstream length; 204 and 304 have no body', async (t) => {
  const up = await startUpstream(t, (req, res) => {
    if (req.url === '/api/none') { res.writeHead(204); res.end(); return }
    if (req.url === '/api/same') { res.writeHead(304, { etag: '"x"' }); res.end(); return }
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 5 })
    res.end(req.method === 'HEAD' ? undefined : 'hello')
  })
  const app = await build(t, {
    declare: [[defineUpstream({ name: 'svc', targets: [up.url] }), defineRoutes({ upstream: 'svc', routes: [{ method: 'GET', url: '/api/*' }] })]],
  })
  const head = await app.inject({ method: 'HEAD', url: '/api/x' })
  assert.equal(head.statusCode, 200)
  assert.equal(head.body, '')
  assert.equal(head.headers['content-length'], '5')
  assert.equal(up.received.at(-1)?.method, 'HEAD')
  const none = await app.inject({ url: '/api/none' })
  assert.equal(none.statusCode, 204)
  assert.equal(none.body, '')
  const same = await app.inject({ url: '/api/same' })
  assert.equal(same.statusCode, 304)
  assert.equal(same.headers.etag, '"x"')
})

test('prefix rewrite to the root and template rewrites with parameters', async (t) => {
  const up = await startUpstream(t)
  const app = await build(t, {
    declare: [[
      defineUpstream({ name: 'svc', targets: [`${up.url}/base`] }),
      defineRoutes({
        upstream: 'svc',
        prefix: '/public',
        rewrite: '',
        routes: [
          { method: 'GET', url: '/items' },
          { method: 'GET', url: '/users/:id/avatar', rewrite: '/v2/avatars/:id' },
        ],
      }),
    ]],
  })
  assert.equal((await app.inject('/public/items?sort=name')).json().url, '/base/items?sort=name')
  assert.equal((await app.inject('/public/users/a%20b/avatar?size=2')).json().url, '/base/v2/avatars/a%20b?size=2')
})
