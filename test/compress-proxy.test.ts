/**
 * Compression of proxied responses (plugins/compress.ts): gzip and brotli by Accept-Encoding, byte-exact once
 * decoded; above the threshold only; never a second encoding on an encoded upstream body; proxied routes only.
 */
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { gunzipSync, brotliDecompressSync, gzipSync } from 'node:zlib'
import { request as httpRequest } from 'node:http'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { FastifyInstance } from 'fastify'
import { defineRoutes, defineUpstream } from '../src/declare.js'
import { parseAcceptEncoding } from '../plugins/compress.js'
import { build } from './helper.js'
import { startUpstream } from './helpers/upstream.js'

const JSON_BODY = Buffer.from(JSON.stringify({ items: Array.from({ length: 400 }, (_, i) => ({ id: i, name: `item ${i}`, tags: ['a', 'b'] })) }))
// a text that begins like a zlib header ("x " passes the deflate check: 0x7820 % 31 == 0): a sniffing compressor
// would send it unchanged but labelled as encoded (fastify-compress#347)
const TRICKY = Buffer.from('x ' + 'the quick brown fox jumps over the lazy dog. '.repeat(100))
const LARGE = Buffer.from('line of streamed text\n'.repeat(20_000)) // ~440 KB: above the proxy's buffer limit
const GZIPPED = gzipSync(JSON_BODY)

function upstreamHandler (req: IncomingMessage, res: ServerResponse): void {
  const url = String(req.url)
  const send = (status: number, headers: Record<string, string>, body: Buffer, chunked = false): void => {
    res.writeHead(status, chunked ? headers : { ...headers, 'content-length': String(body.length) })
    res.end(body)
  }
  if (url === '/json') return send(200, { 'content-type': 'application/json', etag: '"strong"' }, JSON_BODY)
  if (url === '/small') return send(200, { 'content-type': 'application/json' }, Buffer.from('{"ok":true}'))
  if (url === '/tricky') return send(200, { 'content-type': 'text/plain; charset=utf-8' }, TRICKY)
  if (url === '/encoded') return send(200, { 'content-type': 'application/json', 'content-encoding': 'gzip', vary: 'Accept-Encoding' }, GZIPPED)
  if (url === '/chunked') return send(200, { 'content-type': 'application/json' }, JSON_BODY, true)
  if (url === '/large') return send(200, { 'content-type': 'text/plain' }, LARGE)
  if (url === '/png') return send(200, { 'content-type': 'image/png' }, JSON_BODY)
  if (url === '/no-transform') return send(200, { 'content-type': 'application/json', 'cache-control': 'no-transform' }, JSON_BODY)
  if (url === '/events') return send(200, { 'content-type': 'text/event-stream' }, JSON_BODY, true)
  return send(404, { 'content-type': 'text/plain' }, Buffer.from('no'))
}

async function gateway (t: TestContext, env: Record<string, string> = {}): Promise<FastifyInstance> {
  const up = await startUpstream(t, upstreamHandler)
  return await build(t, {
    env,
    declare: [[defineUpstream({ name: 'svc', targets: [up.url] }), defineRoutes({ upstream: 'svc', routes: [{ method: 'GET', url: '/*' }] })]],
  })
}

function decode (encoding: string | undefined, body: Buffer): Buffer {
  if (encoding === 'gzip') return gunzipSync(body)
  if (encoding === 'br') return brotliDecompressSync(body)
  assert.equal(encoding, undefined, `unexpected content-encoding ${String(encoding)}`)
  return body
}

test('gzip, br and identity by Accept-Encoding, byte-exact once decoded', async (t) => {
  const app = await gateway(t)
  for (const [accept, expected] of [['gzip', 'gzip'], ['br', 'br'], ['gzip, deflate, br', 'br'], ['br;q=0.5, gzip', 'gzip'], ['*', 'br'], ['br;q=0, *', 'gzip'], ['identity', undefined], ['', undefined], ['deflate', undefined]] as const) {
    const res = await app.inject({ url: '/json', headers: accept === '' ? {} : { 'accept-encoding': accept } })
    assert.equal(res.statusCode, 200)
    assert.equal(res.headers['content-encoding'], expected, accept)
    assert.match(String(res.headers.vary), /accept-encoding/i, `Vary for ${accept}`)
    assert.ok(decode(res.headers['content-encoding'] as string | undefined, res.rawPayload).equals(JSON_BODY), accept)
    if (expected !== undefined) {
      assert.equal(Number(res.headers['content-length']), res.rawPayload.length)
      assert.ok(res.rawPayload.length < JSON_BODY.length / 3)
      assert.equal(res.headers.etag, 'W/"strong"', 'a strong validator turns weak on a compressed body')
    } else assert.equal(res.headers.etag, '"strong"')
  }
})

test('a text that looks like a zlib header is compressed like any other', async (t) => {
  const app = await gateway(t)
  for (const enc of ['gzip', 'br']) {
    const res = await app.inject({ url: '/tricky', headers: { 'accept-encoding': enc } })
    assert.equal(res.headers['content-encoding'], enc)
    assert.ok(decode(enc, res.rawPayload).equals(TRICKY))
  }
})

test('an encoded upstream body passes unchanged; small, binary, no-transform and event streams stay plain', async (t) => {
  const app = await gateway(t)
  const enc = await app.inject({ url: '/encoded', headers: { 'accept-encoding': 'gzip, br' } })
  assert.equal(enc.headers['content-encoding'], 'gzip')
  assert.ok(enc.rawPayload.equals(GZIPPED), 'not encoded twice')
  assert.ok(gunzipSync(enc.rawPayload).equals(JSON_BODY))
  const small = await app.inject({ url: '/small', headers: { 'accept-encoding': 'gzip' } })
  assert.equal(small.headers['content-encoding'], undefined)
  assert.equal(small.body, '{"ok":true}')
  for (const url of ['/png', '/no-transform', '/events']) {
    const res = await app.inject({ url, headers: { 'accept-encoding': 'gzip, br' } })
    assert.equal(res.headers['content-encoding'], undefined, url)
    assert.ok(res.rawPayload.equals(JSON_BODY), url)
  }
})

test('streamed bodies (chunked, and larger than the proxy buffers) are compressed as they stream', async (t) => {
  const app = await gateway(t)
  await app.listen({ port: 0, host: '127.0.0.1' })
  const port = (app.server.address() as { port: number }).port
  const get = async (path: string, accept: string): Promise<{ headers: IncomingMessage['headers'], body: Buffer }> => await new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path, headers: { 'accept-encoding': accept } }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => resolve({ headers: res.headers, body: Buffer.concat(chunks) }))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end()
  })
  for (const [path, original] of [['/chunked', JSON_BODY], ['/large', LARGE]] as const) {
    for (const enc of ['gzip', 'br']) {
      const res = await get(path, enc)
      assert.equal(res.headers['content-encoding'], enc, path)
      assert.equal(res.headers['content-length'], undefined)
      assert.ok(decode(enc, res.body).equals(original), `${path} ${enc}`)
    }
    const plain = await get(path, 'identity')
    assert.equal(plain.headers['content-encoding'], undefined)
    assert.ok(plain.body.equals(original))
  }
})

test('COMPRESS_THRESHOLD and COMPRESS=false; routes that are not proxied are left alone', async (t) => {
  const low = await gateway(t, { COMPRESS_THRESHOLD: '5' })
  assert.equal((await low.inject({ url: '/small', headers: { 'accept-encoding': 'gzip' } })).headers['content-encoding'], 'gzip')
  const health = await low.inject({ url: '/health/live', headers: { 'accept-encoding': 'gzip' } })
  assert.equal(health.headers['content-encoding'], undefined, 'the gateway\'s own routes are not compressed')
  const off = await gateway(t, { COMPRESS: 'false' })
  const res = await off.inject({ url: '/json', headers: { 'accept-encoding': 'gzip' } })
  assert.equal(res.headers['content-encoding'], undefined)
  assert.ok(res.rawPayload.equals(JSON_BODY))
})

test('Accept-Encoding negotiation (RFC 9110 §12.5.3)', () => {
  assert.equal(parseAcceptEncoding('gzip'), 'gzip')
  assert.equal(parseAcceptEncoding('GZIP'), 'gzip')
  assert.equal(parseAcceptEncoding('x-gzip'), 'gzip')
  assert.equal(parseAcceptEncoding('gzip;q=0.8, br;q=0.9'), 'br')
  assert.equal(parseAcceptEncoding('gzip;q=1, br;q=1'), 'br')
  assert.equal(parseAcceptEncoding('br;q=0, gzip;q=0'), null)
  assert.equal(parseAcceptEncoding('*;q=0'), null)
  assert.equal(parseAcceptEncoding('*;q=0.1, gzip;q=0'), 'br')
  assert.equal(parseAcceptEncoding('compress, deflate'), null)
  assert.equal(parseAcceptEncoding('gzip;q=abc'), null)
  assert.equal(parseAcceptEncoding(''), null)
})
