/**
 * Failed-auth throttling: bad keys and bad tokens from one IP are counted across replicas (in Redis) and, over the
 * limit, the IP is blocked on every replica, before any credential is looked at.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHmac } from 'node:crypto'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { defineRoutes, defineUpstream } from '../src/declare.js'
import { build } from './helper.js'
import { redisCommand, startRedis } from './helpers/redis.js'
import { startUpstream } from './helpers/upstream.js'
import { until } from './helpers/wait.js'

const ADMIN = 'admin-token-for-throttle-tests'
const SECRET = 'a-test-hmac-secret-of-32-bytes-or-more!'

function declarations (url: string) {
  return [
    defineUpstream({ name: 'svc', targets: [url] }),
    defineRoutes({ upstream: 'svc', prefix: '/api', auth: { apiKey: true }, routes: [{ method: 'GET', url: '/*' }] }),
    defineRoutes({ upstream: 'svc', prefix: '/jwt', auth: { jwt: true }, routes: [{ method: 'GET', url: '/*' }] }),
  ]
}

const b64 = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString('base64url')
function hs (payload: Record<string, unknown>, secret = SECRET): string {
  const input = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub: 'u1', exp: Math.floor(Date.now() / 1000) + 300, ...payload })}`
  return `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`
}

const key = async (app: FastifyInstance, k: string, ip = '127.0.0.1'): Promise<LightMyRequestResponse> =>
  await app.inject({ url: '/api/x', headers: { 'x-api-key': k }, remoteAddress: ip })
const token = async (app: FastifyInstance, tk: string, ip = '127.0.0.1'): Promise<LightMyRequestResponse> =>
  await app.inject({ url: '/jwt/x', headers: { authorization: `Bearer ${tk}` }, remoteAddress: ip })
const guess = (i: number): string => `gw_${String(i).padStart(12, 'a')}_${'G'.repeat(43)}`


function throttled (res: LightMyRequestResponse): void {
  assert.equal(res.statusCode, 429, res.body)
  assert.match(String(res.headers['content-type']), /^application\/problem\+json/)
  assert.equal(res.json().type, '/problems/GW_ERR_AUTH_THROTTLED')
  assert.ok(Number(res.headers['retry-after']) >= 1)
}

test('brute force across two replicas: the count is shared, the block reaches both, and a right key is refused too', async (t) => {
  const up = await startUpstream(t)
  const redis = await startRedis(t)
  const env = { REDIS_URL: redis.url, ADMIN_TOKEN: ADMIN, AUTH_FAILURE_LIMIT: '6', AUTH_FAILURE_WINDOW: '1m', AUTH_FAILURE_BLOCK: '2s', JWT_SECRET: SECRET }
  const a = await build(t, { declare: declarations(up.url), env })
  const b = await build(t, { declare: declarations(up.url), env })
  const made = (await a.inject({ method: 'POST', url: '/admin/keys', headers: { authorization: `Bearer ${ADMIN}` }, payload: { client: 'acme', name: 'n' } })).json() as { key: string, id: string }
  assert.equal((await key(a, made.key)).statusCode, 200)

  for (let i = 0; i < 3; i++) assert.equal((await key(a, guess(i))).statusCode, 401)
  // a wrong secret for a real id counts as much as an unknown id
  assert.equal((await key(b, `gw_${made.id}_${'W'.repeat(43)}`)).statusCode, 401)
  assert.equal((await key(b, guess(10))).statusCode, 401)
  assert.equal(await redisCommand(redis, 'GET', 'gw:authfail:127.0.0.1'), '5', 'failures of both replicas add up in Redis')
  throttled(await key(b, guess(11)))

  // replica A only counted 3 itself, but it has heard of the block: even the right key is refused now
  assert.ok(await until(async () => (await key(a, made.key)).statusCode === 429, 1000), 'A blocks the IP within a second')
  const hits = up.hits
  throttled(await key(a, made.key))
  throttled(await token(a, hs({})))
  assert.equal(up.hits, hits, 'blocked requests never reach the upstream')
  assert.equal((await key(a, made.key, '10.1.2.3')).statusCode, 200, 'other addresses are not affected')

  // the block ends
  assert.ok(await until(async () => (await key(a, made.key)).statusCode === 200, 10_000))
  assert.equal((await key(b, made.key)).statusCode, 200)
})

test('bad JWTs count; expired ones, revoked keys and missing credentials do not', async (t) => {
  const up = await startUpstream(t)
  const redis = await startRedis(t)
  const app = await build(t, { declare: declarations(up.url), env: { REDIS_URL: redis.url, ADMIN_TOKEN: ADMIN, AUTH_FAILURE_LIMIT: '3', JWT_SECRET: SECRET } })
  const made = (await app.inject({ method: 'POST', url: '/admin/keys', headers: { authorization: `Bearer ${ADMIN}` }, payload: { client: 'acme', name: 'n' } })).json() as { key: string, id: string }
  await app.inject({ method: 'DELETE', url: `/admin/keys/${made.id}`, headers: { authorization: `Bearer ${ADMIN}` } })
  for (let i = 0; i < 5; i++) {
    assert.equal((await token(app, hs({ exp: Math.floor(Date.now() / 1000) - 3600 }))).statusCode, 401)
    assert.equal((await key(app, made.key)).statusCode, 401)
    assert.equal((await app.inject({ url: '/api/x' })).statusCode, 401)
  }
  assert.equal(await redisCommand(redis, 'GET', 'gw:authfail:127.0.0.1'), null, 'nothing counted')
  assert.equal((await token(app, hs({}, 'a-wrong-secret-of-at-least-32-bytes!!'))).statusCode, 401)
  assert.equal((await token(app, 'not.a.jwt')).statusCode, 401)
  throttled(await token(app, hs({ sub: 'forged' }, 'a-wrong-secret-of-at-least-32-bytes!!')))
  throttled(await token(app, hs({})))
})

test('malformed keys are counted locally, without Redis; with Redis down the local count still blocks', async (t) => {
  const up = await startUpstream(t)
  const redis = await startRedis(t)
  const app = await build(t, { declare: declarations(up.url), env: { REDIS_URL: redis.url, ADMIN_TOKEN: ADMIN, AUTH_FAILURE_LIMIT: '4', JWT_SECRET: SECRET } })
  const made = (await app.inject({ method: 'POST', url: '/admin/keys', headers: { authorization: `Bearer ${ADMIN}` }, payload: { client: 'acme', name: 'n' } })).json() as { key: string, id: string }
  assert.equal((await key(app, made.key, '10.0.0.2')).statusCode, 200)

  await redisCommand(redis, 'CONFIG', 'RESETSTAT')
  for (let i = 0; i < 3; i++) assert.equal((await key(app, `junk-${i}`, '10.0.0.1')).statusCode, 401)
  const stats = String(await redisCommand(redis, 'INFO', 'commandstats'))
  assert.ok(!/cmdstat_(evalsha|eval|incr|incrby|hgetall)/.test(stats), stats)
  throttled(await key(app, 'junk-3', '10.0.0.1'))

  await redis.stop()
  // a cached key's wrong secret is known to be wrong without Redis, and counted here
  for (let i = 0; i < 3; i++) assert.equal((await key(app, `gw_${made.id}_${'X'.repeat(43)}`, '10.0.0.2')).statusCode, 401)
  throttled(await key(app, `gw_${made.id}_${'Y'.repeat(43)}`, '10.0.0.2'))
  throttled(await key(app, made.key, '10.0.0.2'))
  // an unknown id cannot be checked: 503, not a failure
  assert.equal((await key(app, guess(1), '10.0.0.3')).statusCode, 503)
})

test('AUTH_FAILURE_LIMIT=0 turns throttling off', async (t) => {
  const up = await startUpstream(t)
  const app = await build(t, { declare: declarations(up.url), env: { AUTH_FAILURE_LIMIT: '0', JWT_SECRET: SECRET } })
  for (let i = 0; i < 50; i++) assert.equal((await key(app, guess(i))).statusCode, 401)
})
