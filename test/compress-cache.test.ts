/**
 * Compression and the shared cache together: one stored entry (plain) serves gzip, brotli and plain clients,
 * byte-exact once decoded, from either replica; an upstream that compresses itself gets one entry per set of
 * accepted codings.
 */
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { brotliDecompressSync, gunzipSync, gzipSync } from 'node:zlib'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { FastifyInstance } from 'fastify'
import { defineRoutes, defineUpstream } from '../src/declare.js'
import { build } from './helper.js'
import { redisCommand, type RedisServer } from './helpers/redis.js'
import { startUpstream, type Upstream } from './helpers/upstream.js'
import { withRedis } from './cache-helpers.js'

const BODY = Buffer.from(JSON.stringify({ rows: Array.from({ length: 300 }, (_, i) => ({ i, text: `row number ${i}` })) }))

async function replicas (t: TestContext, handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<{ a: FastifyInstance, b: FastifyInstance, up: Upstream, redis: RedisServer }> {
  const up = await startUpstream(t, handler)
  return await withRedis(t, async (redis) => {
    const opts = (): Parameters<typeof build>[1] => ({
      env: { REDIS_URL: redis.url },
      declare: [[defineUpstream({ name: 'svc', targets: [up.url] }), defineRoutes({ upstream: 'svc', cache: { ttl: '1m' }, routes: [{ method: 'GET', url: '/*' }] })]],
    })
    return { a: await build(t, opts()), b: await build(t, opts()), up, redis }
  })
}

function decoded (res: { headers: Record<string, unknown>, rawPayload: Buffer }): Buffer {
  const enc = res.headers['content-encoding']
  if (enc === 'gzip') return gunzipSync(res.rawPayload)
  if (enc === 'br') return brotliDecompressSync(res.rawPayload)
  assert.equal(enc, undefined)
  return res.rawPayload
}

test('one plain entry serves gzip, br and plain clients on both replicas', async (t) => {
  const { a, b, up, redis } = await replicas(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': BODY.length })
    res.end(BODY)
  })
  const first = await a.inject({ url: '/data', headers: { 'accept-encoding': 'gzip' } })
  assert.equal(first.headers['x-cache'], 'MISS')
  assert.equal(first.headers['content-encoding'], 'gzip')
  assert.ok(decoded(first).equals(BODY))
  const stored = await redisCommand(redis, 'KEYS', 'gw:cache:e:/data?*') as string[]
  assert.equal(stored.length, 1)
  for (const [app, accept, enc] of [[b, 'br', 'br'], [b, 'gzip', 'gzip'], [b, '', undefined], [a, 'gzip, br', 'br'], [a, 'identity', undefined], [b, 'br', 'br']] as const) {
    const res = await app.inject({ url: '/data', headers: accept === '' ? {} : { 'accept-encoding': accept } })
    assert.equal(res.headers['x-cache'], 'HIT')
    assert.equal(res.headers['content-encoding'], enc, accept)
    assert.match(String(res.headers.vary), /accept-encoding/i)
    assert.ok(decoded(res).equals(BODY), `byte-exact for "${accept}"`)
    if (enc !== undefined) {
      assert.equal(Number(res.headers['content-length']), res.rawPayload.length)
      assert.match(String(res.headers.etag), /^W\//, 'weak validator on the compressed form')
    } else assert.match(String(res.headers.etag), /^"/)
  }
  // a 304 answers both forms of the validator
  const etag = String((await b.inject('/data')).headers.etag)
  assert.equal((await b.inject({ url: '/data', headers: { 'accept-encoding': 'gzip', 'if-none-match': `W/${etag}` } })).statusCode, 304)
  assert.equal((await a.inject({ url: '/data', headers: { 'if-none-match': etag } })).statusCode, 304)
  assert.equal(up.hits, 1)
  assert.equal(up.received[0]?.headers['accept-encoding'], 'gzip', 'the client\'s Accept-Encoding still reaches the upstream')
})

test('an upstream that compresses itself: one entry per accepted codings, never a coding the client did not accept', async (t) => {
  const gz = gzipSync(BODY)
  const { a, b, up } = await replicas(t, (req, res) => {
    const accepts = /gzip/.test(String(req.headers['accept-encoding'] ?? ''))
    const body = accepts ? gz : BODY
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length, vary: 'Accept-Encoding', ...(accepts ? { 'content-encoding': 'gzip' } : {}) })
    res.end(body)
  })
  const zipped = await a.inject({ url: '/self', headers: { 'accept-encoding': 'gzip, deflate' } })
  assert.equal(zipped.headers['content-encoding'], 'gzip')
  assert.ok(zipped.rawPayload.equals(gz), 'not encoded a second time')
  const plain = await b.inject({ url: '/self' })
  assert.equal(plain.headers['x-cache'], 'MISS', 'a client without gzip does not get the gzip entry')
  assert.equal(plain.headers['content-encoding'], undefined)
  assert.ok(plain.rawPayload.equals(BODY))
  const brOnly = await b.inject({ url: '/self', headers: { 'accept-encoding': 'br' } })
  assert.equal(brOnly.headers['x-cache'], 'MISS')
  assert.ok(decoded(brOnly).equals(BODY))
  const zipped2 = await b.inject({ url: '/self', headers: { 'accept-encoding': 'deflate, gzip' } })
  assert.equal(zipped2.headers['x-cache'], 'HIT', 'the same accepted codings in another order')
  assert.ok(zipped2.rawPayload.equals(gz))
  const plain2 = await a.inject({ url: '/self' })
  assert.equal(plain2.headers['x-cache'], 'HIT')
  assert.ok(plain2.rawPayload.equals(BODY))
  assert.equal(up.hits, 3)
})
