/**
 * The shared response cache: two replicas (two buildApp instances) on one private redis-server, a real upstream.
 * What a user sees: X-Cache, Age, bodies, upstream hit counts, and what is left in Redis.
 */
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance } from 'fastify'
import { defineRoutes, defineUpstream, type CacheDeclaration, type RouteDeclaration } from '../src/declare.js'
import { build } from './helper.js'
import { redisCommand, type RedisServer } from './helpers/redis.js'
import { until, withRedis } from './cache-helpers.js'
import { startUpstream, type Upstream, type UpstreamHandler } from './helpers/upstream.js'

interface Setup { a: FastifyInstance, b: FastifyInstance, up: Upstream, redis: RedisServer }

async function setup (t: TestContext, handler: UpstreamHandler, routes: RouteDeclaration[], cache: CacheDeclaration = { ttl: '1m' }, env: Record<string, string> = {}): Promise<Setup> {
  const up = await startUpstream(t, handler)
  return await withRedis(t, async (redis) => {
    const declare = (): Parameters<typeof build>[1] => ({
      env: { REDIS_URL: redis.url, ...env },
      declare: [[defineUpstream({ name: 'svc', targets: [up.url] }), defineRoutes({ upstream: 'svc', prefix: '/api', rewrite: '/v1', cache, routes })]],
    })
    return { a: await build(t, declare()), b: await build(t, declare()), up, redis }
  })
}

/** an upstream answering JSON that names the request number, with the headers given */
function counting (headers: Record<string, string> = {}): UpstreamHandler & { n: number } {
  const h = ((req: import("node:http").IncomingMessage, res: import("node:http").ServerResponse) => {
    h.n++
    const body = JSON.stringify({ n: h.n, url: req.url, auth: req.headers.authorization ?? null, lang: req.headers['accept-language'] ?? null })
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...headers })
    res.end(body)
  }) as unknown as UpstreamHandler & { n: number }
  h.n = 0
  return h
}

async function entryKeys (redis: RedisServer): Promise<string[]> {
  return (await redisCommand(redis, 'KEYS', 'gw:cache:e:*') as string[]).sort()
}


test('a miss on replica A is a hit on replica B, with Age; HEAD uses the GET entry', async (t) => {
  const { a, b, up, redis } = await setup(t, counting(), [{ method: 'GET', url: '/items/:id' }])
  const first = await a.inject('/api/items/1?b=2&a=1')
  assert.equal(first.statusCode, 200)
  assert.equal(first.headers['x-cache'], 'MISS')
  assert.equal(first.json().n, 1)
  assert.equal(first.json().url, '/v1/items/1?b=2&a=1')
  await until(async () => (await entryKeys(redis)).length, (n) => n === 1)
  // same resource, query in another order: one entry
  const second = await b.inject('/api/items/1?a=1&b=2')
  assert.equal(second.statusCode, 200)
  assert.equal(second.headers['x-cache'], 'HIT')
  assert.equal(second.body, first.body)
  assert.equal(second.headers['content-type'], 'application/json')
  assert.match(String(second.headers.age), /^\d+$/)
  assert.ok(second.headers.etag, 'a validator is generated for cached answers')
  const head = await b.inject({ method: 'HEAD', url: '/api/items/1?a=1&b=2' })
  assert.equal(head.statusCode, 200)
  assert.equal(head.headers['x-cache'], 'HIT')
  assert.equal(head.body, '')
  assert.equal(head.headers['content-length'], String(Buffer.byteLength(first.body)))
  assert.equal(up.hits, 1, 'one upstream call for all of them')
  const other = await b.inject('/api/items/2')
  assert.equal(other.headers['x-cache'], 'MISS')
  assert.equal(up.hits, 2)
  const keys = await entryKeys(redis)
  assert.equal(keys.length, 2)
  assert.ok(keys.some((k) => k.startsWith('gw:cache:e:/api/items/1?')), keys.join(','))
  const ttl = Number(await redisCommand(redis, 'PTTL', keys[0] as string))
  assert.ok(ttl > 50_000 && ttl <= 60_000, `route ttl 1m, got ${ttl}`)
})

test('entries expire with the route TTL, capped by the upstream max-age unless the route ignores it', async (t) => {
  const { a, b, up } = await setup(t, counting({ 'cache-control': 'public, max-age=1' }), [
    { method: 'GET', url: '/short' },
    { method: 'GET', url: '/capped' },
    { method: 'GET', url: '/ignored', cache: { ttl: '1m', ignoreUpstreamMaxAge: true } },
  ], { ttl: '400ms' }, { CACHE_L1_TTL: '50ms' })
  assert.equal((await a.inject('/api/short')).headers['x-cache'], 'MISS')
  assert.equal((await b.inject('/api/short')).headers['x-cache'], 'HIT')
  const expired = await until(() => b.inject('/api/short'), (r) => r.headers['x-cache'] === 'MISS', 5000)
  assert.equal(expired.headers['x-cache'], 'MISS', 'the 400ms route TTL ran out')
  const before = up.hits
  // max-age=1 caps a 1m TTL
  assert.equal((await a.inject('/api/ignored')).headers['x-cache'], 'MISS')
  assert.equal((await a.inject('/api/capped')).headers['x-cache'], 'MISS')
  await sleep(1300)
  assert.equal((await b.inject('/api/ignored')).headers['x-cache'], 'HIT', 'ignoreUpstreamMaxAge keeps the route TTL')
  assert.equal((await b.inject('/api/capped')).headers['x-cache'], 'MISS')
  assert.equal(up.hits, before + 3)
})

test('no-store, private, Set-Cookie, uncacheable statuses and Vary: * are never stored', async (t) => {
  const { a, up, redis } = await setup(t, (req, res) => {
    const headers: Record<string, string> = { 'content-type': 'text/plain' }
    let status = 200
    if (req.url?.includes('nostore') === true) headers['cache-control'] = 'no-store'
    if (req.url?.includes('private') === true) headers['cache-control'] = 'private, max-age=60'
    if (req.url?.includes('nocache') === true) headers['cache-control'] = 'no-cache'
    if (req.url?.includes('cookie') === true) headers['set-cookie'] = 'session=abc; HttpOnly'
    if (req.url?.includes('star') === true) headers.vary = '*'
    if (req.url?.includes('error') === true) status = 500
    if (req.url?.includes('created') === true) status = 201
    res.writeHead(status, headers)
    res.end('secret for ' + String(req.url))
  }, [{ method: 'GET', url: '/*' }])
  for (const path of ['nostore', 'private', 'nocache', 'cookie', 'star', 'error', 'created']) {
    const r1 = await a.inject(`/api/${path}`)
    const r2 = await a.inject(`/api/${path}`)
    assert.equal(r1.headers['x-cache'], 'MISS', path)
    assert.equal(r2.headers['x-cache'], 'MISS', path)
  }
  assert.equal(up.hits, 14, 'every request went upstream')
  await sleep(100)
  assert.deepEqual(await entryKeys(redis), [], 'nothing of them in Redis')
  assert.deepEqual(await redisCommand(redis, 'KEYS', 'gw:cache:l:*'), [], 'no lock left behind')
})

test('a request with Cache-Control: no-store bypasses; no-cache revalidates and stores the fresh answer', async (t) => {
  const { a, b, up, redis } = await setup(t, counting(), [{ method: 'GET', url: '/x' }])
  const bypass = await a.inject({ url: '/api/x', headers: { 'cache-control': 'no-store' } })
  assert.equal(bypass.headers['x-cache'], 'BYPASS')
  await sleep(50)
  assert.deepEqual(await entryKeys(redis), [])
  assert.equal((await a.inject('/api/x')).json().n, 2)
  assert.equal((await b.inject('/api/x')).headers['x-cache'], 'HIT')
  const revalidated = await b.inject({ url: '/api/x', headers: { 'cache-control': 'no-cache' } })
  assert.equal(revalidated.headers['x-cache'], 'MISS')
  assert.equal(revalidated.json().n, 3)
  const after = await until(() => a.inject('/api/x'), (r) => r.json().n === 3)
  assert.equal(after.headers['x-cache'], 'HIT')
  assert.equal(after.json().n, 3, 'the revalidated answer replaced the stored one')
  const pragma = await a.inject({ url: '/api/x', headers: { pragma: 'no-cache' } })
  assert.equal(pragma.json().n, 4)
  const onlyCached = await a.inject({ url: '/api/other', headers: { 'cache-control': 'only-if-cached' } })
  assert.equal(onlyCached.statusCode, 404, 'no route /other')
  assert.equal(up.hits, 4)
})

test('only-if-cached: 504 on a miss, the entry on a hit', async (t) => {
  const { a, up } = await setup(t, counting(), [{ method: 'GET', url: '/o' }])
  const miss = await a.inject({ url: '/api/o', headers: { 'cache-control': 'only-if-cached' } })
  assert.equal(miss.statusCode, 504)
  assert.equal(miss.json().type, '/problems/GW_ERR_CACHE_ONLY_IF_CACHED')
  assert.equal(up.hits, 0)
  await a.inject('/api/o')
  const hit = await a.inject({ url: '/api/o', headers: { 'cache-control': 'only-if-cached' } })
  assert.equal(hit.statusCode, 200)
  assert.equal(hit.headers['x-cache'], 'HIT')
  assert.equal(up.hits, 1)
})

test('per-client isolation: credentials never share an entry unless the route says shared', async (t) => {
  const { a, b, up } = await setup(t, counting(), [
    { method: 'GET', url: '/me' },
    { method: 'GET', url: '/catalog', cache: { ttl: '1m', shared: true } },
  ])
  const alice = await a.inject({ url: '/api/me', headers: { authorization: 'Bearer alice' } })
  const bob = await b.inject({ url: '/api/me', headers: { authorization: 'Bearer bob' } })
  const anon = await b.inject('/api/me')
  assert.equal(alice.json().auth, 'Bearer alice')
  assert.equal(bob.headers['x-cache'], 'MISS')
  assert.equal(bob.json().auth, 'Bearer bob', 'bob never sees alice\'s answer')
  assert.equal(anon.headers['x-cache'], 'MISS')
  assert.equal(anon.json().auth, null)
  const alice2 = await b.inject({ url: '/api/me', headers: { authorization: 'Bearer alice' } })
  assert.equal(alice2.headers['x-cache'], 'HIT')
  assert.equal(alice2.json().auth, 'Bearer alice')
  const key = await b.inject({ url: '/api/me', headers: { 'x-api-key': 'k1' } })
  assert.equal(key.headers['x-cache'], 'MISS', 'an API key is a credential too')
  assert.equal(up.hits, 4)
  await a.inject({ url: '/api/catalog', headers: { authorization: 'Bearer alice' } })
  const shared = await b.inject({ url: '/api/catalog', headers: { authorization: 'Bearer bob' } })
  assert.equal(shared.headers['x-cache'], 'HIT', 'shared: true shares across clients')
  assert.equal(up.hits, 5)
})

test('Vary: the route\'s vary headers and the upstream\'s Vary select separate entries', async (t) => {
  const { a, b, up, redis } = await setup(t, (req, res) => {
    const body = `lang=${String(req.headers['accept-language'])} flavor=${String(req.headers['x-flavor'])}`
    const headers: Record<string, string> = { 'content-type': 'text/plain' }
    if (req.url?.startsWith('/v1/upstream-vary') === true) headers.vary = 'Accept-Language'
    res.writeHead(200, headers)
    res.end(body)
  }, [
    { method: 'GET', url: '/route-vary', cache: { ttl: '1m', vary: ['X-Flavor'] } },
    { method: 'GET', url: '/upstream-vary' },
  ])
  const sweet = await a.inject({ url: '/api/route-vary', headers: { 'x-flavor': 'sweet' } })
  const sour = await b.inject({ url: '/api/route-vary', headers: { 'x-flavor': 'sour' } })
  assert.equal(sour.headers['x-cache'], 'MISS')
  assert.match(sour.body, /flavor=sour/)
  const sweet2 = await b.inject({ url: '/api/route-vary', headers: { 'x-flavor': 'sweet' } })
  assert.equal(sweet2.headers['x-cache'], 'HIT')
  assert.equal(sweet2.body, sweet.body)
  assert.match(String(sweet2.headers.vary), /x-flavor/i, 'the route\'s vary is announced to caches downstream')
  assert.equal(up.hits, 2)

  const en = await a.inject({ url: '/api/upstream-vary', headers: { 'accept-language': 'en' } })
  assert.equal(en.headers['x-cache'], 'MISS')
  const fr = await b.inject({ url: '/api/upstream-vary', headers: { 'accept-language': 'fr' } })
  assert.equal(fr.headers['x-cache'], 'MISS', 'another Accept-Language: another variant')
  assert.match(fr.body, /lang=fr/)
  const en2 = await b.inject({ url: '/api/upstream-vary', headers: { 'accept-language': 'en' } })
  assert.equal(en2.headers['x-cache'], 'HIT')
  assert.match(en2.body, /lang=en/)
  const fr2 = await a.inject({ url: '/api/upstream-vary', headers: { 'accept-language': 'fr' } })
  assert.equal(fr2.headers['x-cache'], 'HIT')
  assert.match(fr2.body, /lang=fr/)
  assert.equal(up.hits, 4)
  // a marker and two variants under the URL
  const keys = (await entryKeys(redis)).filter((k) => k.startsWith('gw:cache:e:/api/upstream-vary?'))
  assert.equal(keys.length, 3, keys.join('\n'))
})

test('conditional requests get 304 from the cache, and on a miss without reaching the upstream with them', async (t) => {
  const lastModified = new Date(Date.now() - 3_600_000).toUTCString()
  const { a, b, up } = await setup(t, (req, res) => {
    const headers: Record<string, string> = { 'content-type': 'text/plain' }
    if (req.url === '/v1/tagged') { headers.etag = '"v1"'; headers['last-modified'] = lastModified }
    const body = 'body of ' + String(req.url) + ' inm=' + String(req.headers['if-none-match'])
    // /tagged and /chunked stream (no Content-Length), /plain is buffered
    if (req.url === '/v1/plain') headers['content-length'] = String(Buffer.byteLength(body))
    res.writeHead(200, headers)
    res.end(body)
  }, [{ method: 'GET', url: '/*' }])
  const miss = await a.inject({ url: '/api/tagged', headers: { 'if-none-match': '"v1"' } })
  assert.equal(miss.statusCode, 304, 'answered here after a full fetch')
  assert.equal(miss.headers['x-cache'], 'MISS')
  assert.equal(miss.headers.etag, '"v1"')
  assert.equal(miss.body, '')
  assert.equal(up.received[0]?.headers['if-none-match'], undefined, 'the upstream was asked for the whole response')
  const full = await b.inject('/api/tagged')
  assert.equal(full.statusCode, 200)
  assert.equal(full.headers['x-cache'], 'HIT')
  assert.equal(full.body, 'body of /v1/tagged inm=undefined')
  const inm = await b.inject({ url: '/api/tagged', headers: { 'if-none-match': 'W/"other", W/"v1"' } })
  assert.equal(inm.statusCode, 304)
  assert.equal(inm.headers['x-cache'], 'HIT')
  assert.equal(inm.headers.etag, '"v1"')
  assert.equal(inm.headers['content-type'], undefined)
  const stale = await b.inject({ url: '/api/tagged', headers: { 'if-none-match': '"v0"' } })
  assert.equal(stale.statusCode, 200)
  const ims = await b.inject({ url: '/api/tagged', headers: { 'if-modified-since': new Date().toUTCString() } })
  assert.equal(ims.statusCode, 304)
  const older = await b.inject({ url: '/api/tagged', headers: { 'if-modified-since': new Date(Date.now() - 7_200_000).toUTCString() } })
  assert.equal(older.statusCode, 200)
  // an upstream without validators: the gateway's own ETag works the same
  const plain = await a.inject('/api/plain')
  const etag = String(plain.headers.etag)
  assert.match(etag, /^"[\w-]+"$/)
  const again = await b.inject({ url: '/api/plain', headers: { 'if-none-match': etag } })
  assert.equal(again.statusCode, 304)
  // a streamed answer without validators: stored with one, so the next client can revalidate
  const chunked = await a.inject('/api/chunked')
  assert.equal(chunked.headers['x-cache'], 'MISS')
  assert.equal(chunked.headers.etag, undefined, 'its headers left before the body was seen')
  const hit = await b.inject('/api/chunked')
  assert.equal(hit.headers['x-cache'], 'HIT')
  assert.equal(hit.body, chunked.body)
  assert.match(String(hit.headers.etag), /^"[\w-]+"$/)
  assert.equal((await a.inject({ url: '/api/chunked', headers: { 'if-none-match': String(hit.headers.etag) } })).statusCode, 304)
  assert.equal(up.hits, 3)
})

test('CACHE=false turns the cache off: no X-Cache, every request upstream', async (t) => {
  const { a, up } = await setup(t, counting(), [{ method: 'GET', url: '/x' }], { ttl: '1m' }, { CACHE: 'false' })
  const r1 = await a.inject('/api/x')
  const r2 = await a.inject('/api/x')
  assert.equal(r1.headers['x-cache'], undefined)
  assert.equal(r2.json().n, 2)
  assert.equal(up.hits, 2)
})

test('with the auth plugin: entries per client id (all keys of one client share), after auth and rate limit', async (t) => {
  const ADMIN = 'admin-token-for-cache-tests'
  const up = await startUpstream(t, (req, res) => {
    const body = JSON.stringify({ client: req.headers['x-client-id'] ?? null, url: req.url })
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
    res.end(body)
  })
  const { a, b } = await withRedis(t, async (redis) => {
    const opts = (): Parameters<typeof build>[1] => ({
      env: { REDIS_URL: redis.url, ADMIN_TOKEN: ADMIN },
      declare: [[defineUpstream({ name: 'svc', targets: [up.url] }), defineRoutes({
        upstream: 'svc',
        auth: { apiKey: true },
        cache: { ttl: '1m' },
        routes: [{ method: 'GET', url: '/me' }, { method: 'GET', url: '/limited', rateLimit: { max: 3, per: '1m' } }],
      })]],
    })
    return { a: await build(t, opts()), b: await build(t, opts()) }
  })
  const key = async (client: string): Promise<string> => {
    const r = await a.inject({ method: 'POST', url: '/admin/keys', headers: { authorization: `Bearer ${ADMIN}` }, payload: { client, name: `${client} key` } })
    assert.equal(r.statusCode, 201, r.body)
    return r.json().key as string
  }
  const alice1 = await key('alice')
  const alice2 = await key('alice')
  const bob = await key('bob')
  const r1 = await a.inject({ url: '/me', headers: { 'x-api-key': alice1 } })
  assert.equal(r1.headers['x-cache'], 'MISS')
  assert.equal(r1.json().client, 'alice')
  const r2 = await b.inject({ url: '/me', headers: { 'x-api-key': alice2 } })
  assert.equal(r2.headers['x-cache'], 'HIT', 'another key of the same client')
  assert.equal(r2.json().client, 'alice')
  const r3 = await b.inject({ url: '/me', headers: { 'x-api-key': bob } })
  assert.equal(r3.headers['x-cache'], 'MISS')
  assert.equal(r3.json().client, 'bob')
  const none = await b.inject('/me')
  assert.equal(none.statusCode, 401, 'auth runs before the cache: no entry for the unauthenticated')
  assert.equal(up.hits, 2)
  // a hit still counts against the client's rate limit
  const limited = []
  for (let i = 0; i < 4; i++) limited.push(await a.inject({ url: '/limited', headers: { 'x-api-key': alice1 } }))
  assert.deepEqual(limited.map((r) => r.statusCode), [200, 200, 200, 429])
  assert.deepEqual(limited.slice(0, 3).map((r) => r.headers['x-cache']), ['MISS', 'HIT', 'HIT'])
})

test('without REDIS_URL (one replica, in-process store) the cache works the same', async (t) => {
  const ADMIN = 'admin-token-for-cache-tests'
  const h = counting()
  const up = await startUpstream(t, h)
  const app = await build(t, {
    env: { ADMIN_TOKEN: ADMIN },
    declare: [[defineUpstream({ name: 'svc', targets: [up.url] }), defineRoutes({ upstream: 'svc', cache: { ttl: '1m', tags: ['all'] }, routes: [{ method: 'GET', url: '/*' }] })]],
  })
  assert.equal((await app.inject('/m')).headers['x-cache'], 'MISS')
  assert.equal((await app.inject('/m')).headers['x-cache'], 'HIT')
  const purged = await app.inject({ method: 'DELETE', url: '/admin/cache', headers: { authorization: `Bearer ${ADMIN}` }, payload: { tag: 'all' } })
  assert.deepEqual(purged.json(), { purged: 1 })
  const again = await app.inject('/m')
  assert.equal(again.headers['x-cache'], 'MISS')
  assert.equal(again.json().n, 2)
  assert.equal(up.hits, 2)
})

test('maxEntrySize: larger answers, buffered or streamed, are not stored; Range requests bypass', async (t) => {
  const { a, b, up, redis } = await setup(t, (req, res) => {
    const size = Number(/size=(\d+)/.exec(String(req.url))?.[1] ?? 10)
    const body = Buffer.alloc(size, 'a')
    const chunked = String(req.url).includes('chunked')
    res.writeHead(200, chunked ? { 'content-type': 'text/plain' } : { 'content-type': 'text/plain', 'content-length': String(size) })
    res.end(body)
  }, [{ method: 'GET', url: '/blob' }], { ttl: '1m', maxEntrySize: 1000 })
  for (const q of ['size=2000', 'size=2000&chunked', 'size=900', 'size=900&chunked', 'size=400000&chunked']) {
    const r1 = await a.inject(`/api/blob?${q}`)
    assert.equal(r1.statusCode, 200)
    assert.equal(r1.rawPayload.length, Number(/size=(\d+)/.exec(q)?.[1]), q)
    const r2 = await b.inject(`/api/blob?${q}`)
    assert.equal(r2.headers['x-cache'], Number(/size=(\d+)/.exec(q)?.[1]) <= 1000 ? 'HIT' : 'MISS', q)
    assert.ok(r2.rawPayload.equals(r1.rawPayload), q)
  }
  assert.equal((await redisCommand(redis, 'KEYS', 'gw:cache:e:*') as string[]).length, 2)
  const range = await b.inject({ url: '/api/blob?size=900', headers: { range: 'bytes=0-9' } })
  assert.equal(range.headers['x-cache'], 'BYPASS')
  assert.equal(up.hits, 9)
})

test('a Cookie is a credential: answers to different cookies are kept apart', async (t) => {
  const { a, b, up } = await setup(t, counting(), [{ method: 'GET', url: '/profile' }])
  await a.inject({ url: '/api/profile', headers: { cookie: 'session=one' } })
  assert.equal((await b.inject({ url: '/api/profile', headers: { cookie: 'session=two' } })).headers['x-cache'], 'MISS')
  assert.equal((await b.inject({ url: '/api/profile', headers: { cookie: 'session=one' } })).headers['x-cache'], 'HIT')
  assert.equal(up.hits, 2)
})
