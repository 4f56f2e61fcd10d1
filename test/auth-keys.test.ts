/**
 * API keys end to end against a real redis-server: the admin API, what is kept in Redis, revocation across
 * replicas, expiry, rotation grace, the hot path's constant-time compare and its independence from Redis.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { definePlans, defineRoutes, defineUpstream } from '../src/declare.js'
import { digestKey, digestOfHex, sameDigest } from '../src/keys.js'
import { build } from './helper.js'
import { redisCommand, startRedis, type RedisServer } from './helpers/redis.js'
import { startUpstream, type Upstream } from './helpers/upstream.js'
import { until } from './helpers/wait.js'

const ADMIN = 'admin-token-for-auth-tests'
const KEY = /^gw_[0-9a-z]{12}_[0-9A-Za-z]{43}$/

function declarations (url: string) {
  return [
    defineUpstream({ name: 'svc', targets: [url] }),
    definePlans({ gold: { rateLimit: { max: 100_000, per: '1m' } } }),
    defineRoutes({ upstream: 'svc', prefix: '/api', auth: { apiKey: true, scopes: ['orders:read'] }, routes: [{ method: ['GET', 'POST'], url: '/*' }] }),
    defineRoutes({ upstream: 'svc', prefix: '/write', auth: { apiKey: true, scopes: ['orders:read', 'orders:write'] }, routes: [{ method: 'POST', url: '/*' }] }),
    defineRoutes({ upstream: 'svc', prefix: '/bearer', auth: { apiKey: { header: 'X-Key', bearer: true } }, routes: [{ method: 'GET', url: '/*' }] }),
    defineRoutes({ upstream: 'svc', prefix: '/open', routes: [{ method: 'GET', url: '/*' }] }),
  ]
}

async function gateway (t: Parameters<typeof build>[0], up: Upstream, redis: RedisServer | null, env: Record<string, string> = {}): Promise<FastifyInstance> {
  return await build(t, { declare: declarations(up.url), env: { ADMIN_TOKEN: ADMIN, ...(redis !== null ? { REDIS_URL: redis.url } : {}), ...env } })
}

async function admin (app: FastifyInstance, method: 'GET' | 'POST' | 'DELETE', url: string, payload?: object): Promise<LightMyRequestResponse> {
  return await app.inject({ method, url: `/admin${url}`, headers: { authorization: `Bearer ${ADMIN}` }, ...(payload !== undefined ? { payload } : {}) })
}

async function createKey (app: FastifyInstance, body: object = {}): Promise<{ key: string, id: string }> {
  const res = await admin(app, 'POST', '/keys', { client: 'acme', name: 'acme production', scopes: ['orders:read'], plan: 'gold', ...body })
  assert.equal(res.statusCode, 201, res.body)
  return res.json()
}

async function call (app: FastifyInstance, key: string | null, url = '/api/orders', headers: Record<string, string> = {}): Promise<LightMyRequestResponse> {
  return await app.inject({ url, headers: { ...(key !== null ? { 'x-api-key': key } : {}), ...headers } })
}


const problem = (res: LightMyRequestResponse, status: number, code: string): void => {
  assert.equal(res.statusCode, status, res.body)
  assert.match(String(res.headers['content-type']), /^application\/problem\+json/)
  assert.equal(res.json().type, `/problems/${code}`)
}

test('admin API: create, list, show, rotate and revoke; the key is shown once and used at once', async (t) => {
  const up = await startUpstream(t)
  const redis = await startRedis(t)
  const app = await gateway(t, up, redis)

  const res = await admin(app, 'POST', '/keys', { client: 'acme', name: 'acme production', scopes: ['orders:read'], plan: 'gold', metadata: { team: 'payments' } })
  assert.equal(res.statusCode, 201)
  assert.equal(res.headers['cache-control'], 'no-store')
  const made = res.json()
  assert.match(made.key, KEY)
  assert.equal(made.key.slice(3, 15), made.id)
  assert.equal(res.headers.location, `/admin/keys/${made.id}`)
  assert.deepEqual({ client: made.client, name: made.name, scopes: made.scopes, plan: made.plan, status: made.status, metadata: made.metadata },
    { client: 'acme', name: 'acme production', scopes: ['orders:read'], plan: 'gold', status: 'active', metadata: { team: 'payments' } })
  assert.equal(made.prefix, `gw_${made.id}_`)

  const ok = await call(app, made.key)
  assert.equal(ok.statusCode, 200, ok.body)

  // list and show never carry the key, its secret or its hash
  const list = await admin(app, 'GET', '/keys')
  assert.equal(list.statusCode, 200)
  const listed = list.json().keys
  assert.equal(listed.length, 1)
  assert.equal(listed[0].id, made.id)
  const secret = made.key.slice(16)
  const hash = createHash('sha256').update(made.key).digest('hex')
  for (const body of [list.body, (await admin(app, 'GET', `/keys/${made.id}`)).body]) {
    assert.ok(!body.includes(secret) && !body.includes(hash) && !body.includes('"key"'), body)
  }
  const shown = (await admin(app, 'GET', `/keys/${made.id}`)).json()
  assert.equal(shown.client, 'acme')
  assert.equal(shown.status, 'active')
  assert.deepEqual((await admin(app, 'GET', '/keys?client=someone-else')).json().keys, [])
  assert.equal((await admin(app, 'GET', '/keys?status=active')).json().keys.length, 1)
  problem(await admin(app, 'GET', '/keys?status=sleeping'), 400, 'GW_ERR_BAD_REQUEST')
  problem(await admin(app, 'GET', '/keys/zzzzzzzzzzzz'), 404, 'GW_ERR_KEY_NOT_FOUND')

  const rotated = await admin(app, 'POST', `/keys/${made.id}/rotate`, { grace: '1h' })
  assert.equal(rotated.statusCode, 200, rotated.body)
  assert.equal(rotated.headers['cache-control'], 'no-store')
  const next = rotated.json()
  assert.match(next.key, KEY)
  assert.notEqual(next.key, made.key)
  assert.equal(next.id, made.id)
  assert.ok(next.previousValidUntil !== null)
  assert.equal((await call(app, next.key)).statusCode, 200)
  assert.equal((await call(app, made.key)).statusCode, 200, 'the old secret is valid during the grace period')

  const revoked = await admin(app, 'DELETE', `/keys/${made.id}`)
  assert.equal(revoked.statusCode, 200)
  assert.equal(revoked.json().status, 'revoked')
  problem(await call(app, next.key), 401, 'GW_ERR_AUTH_KEY_REVOKED')
  problem(await call(app, made.key), 401, 'GW_ERR_AUTH_KEY_REVOKED')
  assert.equal((await admin(app, 'DELETE', `/keys/${made.id}`)).statusCode, 200, 'revoking twice is not an error')
  problem(await admin(app, 'POST', `/keys/${made.id}/rotate`), 409, 'GW_ERR_KEY_CONFLICT')
  assert.equal((await admin(app, 'GET', '/keys?status=revoked')).json().keys.length, 1)
})

test('admin API: invalid input is refused with every problem named', async (t) => {
  const up = await startUpstream(t)
  const app = await gateway(t, up, null)
  const bad = await admin(app, 'POST', '/keys', { client: 'has space', name: '', scopes: ['ok', 'not ok'] })
  problem(bad, 400, 'GW_ERR_BAD_REQUEST')
  const detail = bad.json().detail as string
  for (const field of ['client', 'name', 'scopes']) assert.match(detail, new RegExp(field))
  assert.match((await admin(app, 'POST', '/keys', { client: 'a', name: 'n', plan: 'platinum' })).json().detail, /unknown plan "platinum"; declared: gold/)
  assert.match((await admin(app, 'POST', '/keys', { client: 'a', name: 'n', scope: ['x'] })).json().detail, /Unknown field scope/)
  assert.match((await admin(app, 'POST', '/keys', { client: 'a', name: 'n', expiresIn: 'soon' })).json().detail, /expiresIn/)
  assert.match((await admin(app, 'POST', '/keys', { client: 'a', name: 'n', expiresAt: '2001-01-01T00:00:00Z' })).json().detail, /expiresAt: must be in the future/)
  assert.deepEqual((await admin(app, 'GET', '/keys')).json().keys, [])
})

test('admin API refuses without the admin credential, and is off without ADMIN_TOKEN', async (t) => {
  const up = await startUpstream(t)
  const app = await gateway(t, up, null)
  const payload = { client: 'acme', name: 'sneaky' }
  for (const headers of [{}, { authorization: 'Bearer wrong-token-wrong-token' }, { authorization: `Basic ${ADMIN}` }, { 'x-api-key': ADMIN }]) {
    const res = await app.inject({ method: 'POST', url: '/admin/keys', headers, payload })
    problem(res, 401, 'GW_ERR_ADMIN_UNAUTHORIZED')
    assert.match(String(res.headers['www-authenticate']), /^Bearer/)
    problem(await app.inject({ url: '/admin/keys', headers }), 401, 'GW_ERR_ADMIN_UNAUTHORIZED')
  }
  assert.deepEqual((await admin(app, 'GET', '/keys')).json().keys, [], 'nothing was created')

  const closed = await build(t, { declare: declarations(up.url) })
  assert.equal((await closed.inject({ method: 'POST', url: '/admin/keys', headers: { authorization: `Bearer ${ADMIN}` }, payload })).statusCode, 404)
})

test('Redis holds no secret: only SHA-256 hashes of the keys', async (t) => {
  const up = await startUpstream(t)
  const redis = await startRedis(t)
  const app = await gateway(t, up, redis, { API_KEY_LAST_USED_FLUSH: '100ms' })
  const a = await createKey(app, { metadata: { note: 'first' } })
  const b = await createKey(app, { client: 'globex' })
  const rotated = (await admin(app, 'POST', `/keys/${a.id}/rotate`, { grace: '1h' })).json() as { key: string }
  for (const k of [a.key, b.key, rotated.key]) assert.equal((await call(app, k)).statusCode, 200)
  assert.ok(await until(async () => (await admin(app, 'GET', `/keys/${b.id}`)).json().lastUsedAt !== null, 5000))

  const keys = await redisCommand(redis, 'KEYS', '*') as string[]
  assert.ok(keys.length >= 3, keys.join(' '))
  let dump = ''
  for (const k of keys) {
    const type = await redisCommand(redis, 'TYPE', k)
    const value = type === 'hash' ? await redisCommand(redis, 'HGETALL', k) : type === 'set' ? await redisCommand(redis, 'SMEMBERS', k) : type === 'string' ? await redisCommand(redis, 'GET', k) : null
    dump += `${k} ${JSON.stringify(value)}\n`
  }
  for (const k of [a.key, b.key, rotated.key]) {
    assert.ok(!dump.includes(k.slice(16)), `the secret of ${k.slice(0, 16)} is not in Redis`)
    assert.ok(!dump.includes(k), 'no whole key in Redis')
  }
  const record = await redisCommand(redis, 'HGETALL', `gw:apikey:${a.id}`) as string[]
  const fields = Object.fromEntries(record.flatMap((v, i, all) => i % 2 === 0 ? [[v, all[i + 1]]] : []))
  assert.equal(fields.hash, createHash('sha256').update(rotated.key).digest('hex'))
  assert.equal(fields.prevHash, createHash('sha256').update(a.key).digest('hex'))
})

test('a key revoked through replica A is refused by replica B within a second', async (t) => {
  const up = await startUpstream(t)
  const redis = await startRedis(t)
  const a = await gateway(t, up, redis)
  const b = await gateway(t, up, redis)
  const made = await createKey(a)
  // B learns the key (now cached in B for API_KEY_CACHE_TTL, 60 s by default)
  assert.equal((await call(b, made.key)).statusCode, 200)
  assert.equal((await call(b, made.key)).statusCode, 200)
  assert.equal((await admin(a, 'DELETE', `/keys/${made.id}`)).statusCode, 200)
  const refused = await until(async () => (await call(b, made.key)).statusCode === 401, 1000)
  assert.ok(refused, 'replica B refuses the revoked key within a second')
  problem(await call(b, made.key), 401, 'GW_ERR_AUTH_KEY_REVOKED')

  // a key created on A is usable on B at once, even right after B was asked about the same id
  const fresh = await createKey(a)
  assert.equal((await call(b, fresh.key)).statusCode, 200)
})

test('an expired key is refused', async (t) => {
  const up = await startUpstream(t)
  const redis = await startRedis(t)
  const app = await gateway(t, up, redis)
  const made = await createKey(app, { expiresIn: '1500ms' })
  assert.ok(made.key !== undefined)
  assert.equal((await admin(app, 'GET', `/keys/${made.id}`)).json().status, 'active')
  assert.ok(await until(async () => (await call(app, made.key)).statusCode === 401, 10_000))
  const res = await call(app, made.key)
  problem(res, 401, 'GW_ERR_AUTH_KEY_EXPIRED')
  assert.match(String(res.headers['www-authenticate']), /error="invalid_token"/)
  assert.equal((await admin(app, 'GET', `/keys/${made.id}`)).json().status, 'expired')
  problem(await admin(app, 'POST', `/keys/${made.id}/rotate`), 409, 'GW_ERR_KEY_CONFLICT')
  // a date in the past cannot be given at creation
  problem(await admin(app, 'POST', '/keys', { client: 'a', name: 'n', expiresAt: new Date(Date.now() - 1000).toISOString() }), 400, 'GW_ERR_BAD_REQUEST')
})

test('rotation: the old secret works during the grace period and not after; grace 0 ends it at once everywhere', async (t) => {
  const up = await startUpstream(t)
  const redis = await startRedis(t)
  const a = await gateway(t, up, redis)
  const b = await gateway(t, up, redis)
  const made = await createKey(a)
  assert.equal((await call(b, made.key)).statusCode, 200)
  const next = (await admin(a, 'POST', `/keys/${made.id}/rotate`, { grace: '1500ms' })).json() as { key: string, previousValidUntil: string }
  assert.ok(Date.parse(next.previousValidUntil) > Date.now())
  assert.equal((await call(b, next.key)).statusCode, 200, 'the new secret works on the other replica at once')
  assert.equal((await call(b, made.key)).statusCode, 200, 'the old one still works')
  assert.ok(await until(async () => (await call(b, made.key)).statusCode === 401, 10_000), 'the old secret is refused after the grace period')
  problem(await call(b, made.key), 401, 'GW_ERR_AUTH_INVALID_KEY')
  assert.equal((await call(b, next.key)).statusCode, 200)

  const now = (await admin(a, 'POST', `/keys/${made.id}/rotate`, { grace: 0 })).json() as { key: string, previousValidUntil: string | null }
  assert.equal(now.previousValidUntil, null)
  assert.ok(await until(async () => (await call(b, next.key)).statusCode === 401, 1000))
  assert.equal((await call(b, now.key)).statusCode, 200)
})

test('a malformed key is refused without touching Redis', async (t) => {
  const up = await startUpstream(t)
  const redis = await startRedis(t)
  const app = await gateway(t, up, redis)
  const made = await createKey(app)
  // the id is cached now: a key with that id and a secret of the right length but not of the format is still
  // malformed (refused, counted on this replica only: no INCR), though it is looked up in the cache first
  assert.equal((await call(app, made.key)).statusCode, 200)
  const cachedId = `gw_${made.id}_${'!'.repeat(43)}`
  const malformed = ['nope', 'gw_', `${made.key}x`, made.key.slice(0, -1), made.key.replace('gw_', 'GW_'), `gw_${made.id.toUpperCase()}_${made.key.slice(16)}`, 'x'.repeat(5000), cachedId, `gw_${made.id}-${made.key.slice(16)}`]
  await redisCommand(redis, 'CONFIG', 'RESETSTAT')
  for (const k of malformed) problem(await call(app, k), 401, 'GW_ERR_AUTH_INVALID_KEY')
  const stats = String(await redisCommand(redis, 'INFO', 'commandstats'))
  const used = [...stats.matchAll(/cmdstat_([a-z|]+):calls=(\d+)/g)].map((m) => m[1] as string).filter((c) => !/^(info|config\|resetstat|info|ping|client\|.*|select|hello)$/.test(c))
  assert.deepEqual(used, [], `commands sent to Redis: ${used.join(', ')}`)

  // and with Redis gone: still a plain 401, not 503
  await redis.stop()
  for (const k of malformed) problem(await call(app, k), 401, 'GW_ERR_AUTH_INVALID_KEY')
})

test('Redis down: cached keys keep working, unknown ids get 503 with Retry-After, and it recovers', async (t) => {
  const up = await startUpstream(t)
  const redis = await startRedis(t)
  const app = await gateway(t, up, redis)
  const known = await createKey(app)
  const later = await createKey(app)
  assert.equal((await call(app, known.key)).statusCode, 200)
  await redis.stop()
  assert.equal((await call(app, known.key)).statusCode, 200, 'a cached key works without Redis')
  const wrong = `gw_${known.id}_${'A'.repeat(43)}`
  problem(await call(app, wrong), 401, 'GW_ERR_AUTH_INVALID_KEY')
  const res = await call(app, later.key)
  problem(res, 503, 'GW_ERR_STORE_UNAVAILABLE')
  assert.ok(Number(res.headers['retry-after']) > 0)
  // this redis-server comes back empty (no persistence): the store answers again, and says the key is unknown
  await redis.start()
  assert.ok(await until(async () => (await call(app, later.key)).statusCode === 401, 10_000), 'the store answers again')
  problem(await call(app, later.key), 401, 'GW_ERR_AUTH_INVALID_KEY')
  const again = await createKey(app)
  assert.equal((await call(app, again.key)).statusCode, 200)
})

test('API_KEY_CACHE_SIZE bounds the key cache, and the keys in use are the ones it keeps', async (t) => {
  const up = await startUpstream(t)
  const redis = await startRedis(t)
  const app = await gateway(t, up, redis, { API_KEY_CACHE_SIZE: '3' })
  const [a, b, c, d] = [await createKey(app), await createKey(app), await createKey(app), await createKey(app)]
  // a, b, c fill the cache; a is used again, b is not; d's look-up needs room
  for (const k of [a, b, c, a, d]) assert.equal((await call(app, k.key)).statusCode, 200)
  // what the cache holds is what works without Redis: b went, the oldest key not used since
  await redis.stop()
  for (const k of [a, c, d]) assert.equal((await call(app, k.key)).statusCode, 200, `${k.id} is cached`)
  problem(await call(app, b.key), 503, 'GW_ERR_STORE_UNAVAILABLE')
})

test('keys are compared as 32-byte SHA-256 digests in constant time: a secret wrong in one character is refused', async (t) => {
  const up = await startUpstream(t)
  const app = await gateway(t, up, null)
  const made = await createKey(app)
  // the digest the request path compares is the stored SHA-256, as 32 latin1 characters
  const digest = createHash('sha256').update(made.key).digest()
  assert.equal(digestKey(made.key), digest.toString('latin1'))
  assert.equal(digestKey(made.key).length, 32)
  assert.equal(digestOfHex(digest.toString('hex')), digestKey(made.key))
  // sameDigest: equal only when every character is
  const d = digestKey(made.key)
  const flip = (s: string, i: number): string => s.slice(0, i) + String.fromCharCode(s.charCodeAt(i) ^ 1) + s.slice(i + 1)
  assert.equal(sameDigest(d, digestOfHex(digest.toString('hex'))), true)
  assert.equal(sameDigest(d, flip(d, 0)), false)
  assert.equal(sameDigest(d, flip(d, 31)), false)
  assert.equal(sameDigest(d, d.slice(0, 31)), false)

  assert.equal((await call(app, made.key)).statusCode, 200)
  const last = made.key.at(-1) === 'A' ? 'B' : 'A'
  problem(await call(app, made.key.slice(0, -1) + last), 401, 'GW_ERR_AUTH_INVALID_KEY')
  const prefix = `gw_${made.id}_`
  const first = made.key.charAt(prefix.length) === 'A' ? 'B' : 'A'
  problem(await call(app, prefix + first + made.key.slice(prefix.length + 1)), 401, 'GW_ERR_AUTH_INVALID_KEY')
  assert.equal((await call(app, made.key)).statusCode, 200)
})

test('identity to the upstream: spoofed X-Client-* stripped, the API key never forwarded', async (t) => {
  const up = await startUpstream(t)
  const app = await gateway(t, up, null)
  const made = await createKey(app, { scopes: ['orders:read', 'extra'] })
  const spoof = { 'x-client-id': 'admin', 'x-client-scopes': 'everything', 'x-client-plan': 'unlimited', 'x-client-key-id': 'k', 'x-client-auth': 'jwt' }

  let res = await call(app, made.key, '/api/orders', { ...spoof, authorization: 'Basic dXNlcjpwYXNz' })
  assert.equal(res.statusCode, 200)
  let seen = res.json().headers
  assert.equal(seen['x-client-id'], 'acme')
  assert.equal(seen['x-client-scopes'], 'orders:read extra')
  assert.equal(seen['x-client-plan'], 'gold')
  assert.equal(seen['x-client-key-id'], made.id)
  assert.equal(seen['x-client-auth'], 'apiKey')
  assert.equal(seen['x-api-key'], undefined, 'the key header is not forwarded')
  assert.equal(seen.authorization, 'Basic dXNlcjpwYXNz', 'an Authorization the gateway did not use is the upstream\'s business')

  // the key as a bearer token (route: header X-Key or Bearer): Authorization is not forwarded then
  res = await app.inject({ url: '/bearer/x', headers: { authorization: `Bearer ${made.key}`, ...spoof } })
  assert.equal(res.statusCode, 200, res.body)
  seen = res.json().headers
  assert.equal(seen.authorization, undefined)
  assert.equal(seen['x-client-id'], 'acme')
  res = await app.inject({ url: '/bearer/x', headers: { 'x-key': made.key } })
  assert.equal(res.statusCode, 200)
  assert.equal(res.json().headers['x-key'], undefined)
  problem(await app.inject({ url: '/bearer/x', headers: { 'x-api-key': made.key } }), 401, 'GW_ERR_AUTH_REQUIRED')

  // a route without auth forwards no identity, whatever the caller claims
  res = await app.inject({ url: '/open/x', headers: spoof })
  assert.equal(res.statusCode, 200)
  seen = res.json().headers
  for (const h of Object.keys(spoof)) assert.equal(seen[h], undefined, h)
})

test('a key record edited in Redis cannot put headers into upstream requests', async (t) => {
  const up = await startUpstream(t)
  const redis = await startRedis(t)
  const app = await gateway(t, up, redis)
  // the admin API and the CLI refuse such values; a record written by hand is checked before its first use
  const bad = await createKey(app)
  await redisCommand(redis, 'HSET', `gw:apikey:${bad.id}`, 'client', 'acme\r\nx-client-scopes: admin')
  problem(await call(app, bad.key), 401, 'GW_ERR_AUTH_INVALID_KEY')
  assert.equal(up.hits, 0, 'the upstream was not called')

  // odd scopes and plans are dropped, as for a JWT's claims; the key works with what is left
  const odd = await createKey(app, { scopes: ['orders:read'] })
  await redisCommand(redis, 'HSET', `gw:apikey:${odd.id}`, 'scopes', JSON.stringify(['orders:read', 'x\r\nx-client-id: admin']), 'plan', 'gold\r\nx: y')
  const res = await call(app, odd.key)
  assert.equal(res.statusCode, 200, res.body)
  const seen = res.json().headers
  assert.equal(seen['x-client-id'], 'acme')
  assert.equal(seen['x-client-scopes'], 'orders:read')
  assert.equal(seen['x-client-plan'], undefined)
  assert.equal(seen.x, undefined)
  assert.equal(up.hits, 1)
})

test('missing credentials: 401 with WWW-Authenticate; missing scope: 403; the upstream is not called', async (t) => {
  const up = await startUpstream(t)
  const app = await gateway(t, up, null)
  const reader = await createKey(app)
  const writer = await createKey(app, { scopes: ['orders:read', 'orders:write'] })
  const before = up.hits

  let res = await call(app, null)
  problem(res, 401, 'GW_ERR_AUTH_REQUIRED')
  assert.equal(res.headers['www-authenticate'], 'ApiKey realm="api", header="x-api-key"')
  res = await app.inject({ url: '/bearer/x' })
  assert.equal(res.headers['www-authenticate'], 'ApiKey realm="api", header="x-key", Bearer realm="api"')
  res = await app.inject({ url: '/bearer/x', headers: { authorization: 'Bearer gw_nope' } })
  problem(res, 401, 'GW_ERR_AUTH_INVALID_KEY')
  assert.match(String(res.headers['www-authenticate']), /Bearer realm="api", error="invalid_token"/)

  res = await app.inject({ method: 'POST', url: '/write/orders', headers: { 'x-api-key': reader.key } })
  problem(res, 403, 'GW_ERR_AUTH_INSUFFICIENT_SCOPE')
  assert.match(String(res.headers['www-authenticate']), /error="insufficient_scope", scope="orders:read orders:write"/)
  assert.match(res.json().detail, /orders:read orders:write/)
  assert.equal(up.hits, before, 'refused requests never reach the upstream')

  res = await app.inject({ method: 'POST', url: '/write/orders', headers: { 'x-api-key': writer.key } })
  assert.equal(res.statusCode, 200)
  assert.equal((await app.inject({ url: '/open/x' })).statusCode, 200, 'a route without auth needs nothing')
  assert.equal((await app.inject({ method: 'HEAD', url: '/api/orders' })).statusCode, 401, 'the HEAD route Fastify adds is protected too')
})

test('last used: written in batches, and flushed on close', async (t) => {
  const up = await startUpstream(t)
  const redis = await startRedis(t)
  const a = await gateway(t, up, redis, { API_KEY_LAST_USED_FLUSH: '150ms' })
  const made = await createKey(a)
  assert.equal((await admin(a, 'GET', `/keys/${made.id}`)).json().lastUsedAt, null)
  const t0 = Date.now()
  for (let i = 0; i < 20; i++) assert.equal((await call(a, made.key)).statusCode, 200)
  const b = await gateway(t, up, redis)
  assert.ok(await until(async () => (await admin(b, 'GET', `/keys/${made.id}`)).json().lastUsedAt !== null, 5000), 'another replica sees it')
  assert.ok(Date.parse((await admin(b, 'GET', `/keys/${made.id}`)).json().lastUsedAt) >= t0 - 1000)

  const c = await build(t, { declare: declarations(up.url), env: { REDIS_URL: redis.url, API_KEY_LAST_USED_FLUSH: '1h' } })
  const other = await createKey(a)
  assert.equal((await call(c, other.key)).statusCode, 200)
  assert.equal(await redisCommand(redis, 'HGET', `gw:apikey:${other.id}`, 'lastUsedAt'), '0')
  await c.close()
  assert.notEqual(await redisCommand(redis, 'HGET', `gw:apikey:${other.id}`, 'lastUsedAt'), '0', 'flushed on close')
})

test('single replica without Redis: keys live in the in-process store', async (t) => {
  const up = await startUpstream(t)
  const app = await gateway(t, up, null)
  const made = await createKey(app)
  assert.equal((await call(app, made.key)).statusCode, 200)
  assert.equal((await admin(app, 'DELETE', `/keys/${made.id}`)).statusCode, 200)
  assert.ok(await until(async () => (await call(app, made.key)).statusCode === 401, 1000))
})
