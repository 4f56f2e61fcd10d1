/**
 * Issue 10, access log: one JSON line per request with the fields an operator needs, and never a key, a token, a
 * cookie or an Authorization header, wherever the secret was sent.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { defineRoutes, defineUpstream } from '../src/declare.js'
import { loggablePath } from '../plugins/access-log.js'
import { build } from './helper.js'
import { startUpstream } from './helpers/upstream.js'
import { captureLogs } from './fixtures/ops/helpers.js'

const TOKEN = 'admin-token-for-ops-tests'

function routes (url: string) {
  return [
    defineUpstream({ name: 'svc', targets: [url] }),
    defineRoutes({ upstream: 'svc', prefix: '/api', routes: [{ method: ['GET', 'POST'], url: '/*' }] }),
  ]
}

const SECRETS = ['S3cr3tQueryKey', 'S3cr3tHeaderKey', 'S3cr3tBearer', 'S3cr3tCookie', 'S3cr3tToken', 'S3cr3tAccess', 'S3cr3tKeyParam', 'S3cr3tEncoded', 'S3cr3tAdmin']

test('one line per request with id, route, method, path, status, durations, upstream, target and trace id', async (t) => {
  const up = await startUpstream(t)
  const logs = captureLogs()
  const app = await build(t, { declare: routes(up.url), env: { LOG_LEVEL: 'info' }, logStream: logs })
  const res = await app.inject({ url: '/api/items/7?page=2', headers: { 'x-request-id': 'req-ops-1' } })
  assert.equal(res.statusCode, 200)
  const missing = await app.inject({ method: 'DELETE', url: '/not/declared' })
  assert.equal(missing.statusCode, 404)

  const access = logs.lines.filter((l) => l.msg === 'request')
  assert.equal(access.length, 2, 'one access line per request')
  const line = access.find((l) => l.reqId === 'req-ops-1')
  assert.ok(line !== undefined)
  assert.equal(line.level, 30)
  assert.equal(typeof line.pid, 'number')
  assert.equal(line.route, 'GET,POST /api/*')
  assert.equal(line.method, 'GET')
  assert.equal(line.path, '/api/items/7?page=2')
  assert.equal(line.status, 200)
  assert.equal(typeof line.durationMs, 'number')
  assert.equal(line.upstream, 'svc')
  assert.equal(line.target, up.url)
  assert.equal(typeof line.upstreamMs, 'number')
  assert.ok((line.upstreamMs as number) <= (line.durationMs as number) + 0.1)
  assert.match(String(line.traceId), /^[0-9a-f]{32}$/)
  assert.equal(String((up.received[0]?.headers.traceparent as string).split('-')[1]), line.traceId, 'the logged trace id is the one sent upstream')
  assert.equal(line.clientId, null)
  assert.equal(line.error, null)
  assert.equal(line.ip, '127.0.0.1')
  assert.equal(line.bytes, res.headers['content-length'] === undefined ? null : Number(res.headers['content-length']))

  const miss = access.find((l) => l.status === 404)
  assert.ok(miss !== undefined)
  assert.equal(miss.route, null)
  assert.equal(miss.method, 'DELETE')
  assert.equal(miss.upstream, null)
})

test('keys, tokens, cookies and Authorization never reach the log', async (t) => {
  const up = await startUpstream(t)
  const logs = captureLogs()
  const app = await build(t, { declare: routes(up.url), env: { LOG_LEVEL: 'trace', ADMIN_TOKEN: TOKEN }, logStream: logs })
  const headers = {
    'x-api-key': SECRETS[1] as string,
    authorization: `Bearer ${SECRETS[2] as string}`,
    cookie: `session=${SECRETS[3] as string}`,
  }
  const url = `/api/things?api_key=${SECRETS[0] as string}&token=${SECRETS[4] as string}&access_token=${SECRETS[5] as string}&KEY=${SECRETS[6] as string}&api%5Fkey=${SECRETS[7] as string}&page=3`
  assert.equal((await app.inject({ url, headers })).statusCode, 200)
  // an admin request with a wrong token, and one with the right one
  assert.equal((await app.inject({ url: '/admin/metrics', headers: { authorization: `Bearer ${SECRETS[8] as string}-padding` } })).statusCode, 401)
  assert.equal((await app.inject({ url: '/admin/metrics', headers: { authorization: `Bearer ${TOKEN}` } })).statusCode, 200)
  // a plugin that logs headers or credentials by mistake is censored too
  app.log.info({ req: { headers }, headers, key: SECRETS[1], token: SECRETS[4], err: { headers } }, 'careless line')

  for (const secret of [...SECRETS, TOKEN]) assert.equal(logs.text.includes(secret), false, `${secret} leaked into the log`)
  const line = logs.lines.find((l) => l.msg === 'request' && String(l.path).startsWith('/api/things'))
  assert.equal(line?.path, '/api/things?api_key=[redacted]&token=[redacted]&access_token=[redacted]&KEY=[redacted]&api%5Fkey=[redacted]&page=3')
  const careless = logs.lines.find((l) => l.msg === 'careless line') as { headers: Record<string, string>, key: string, token: string }
  assert.equal(careless.headers.authorization, '[redacted]')
  assert.equal(careless.headers['x-api-key'], '[redacted]')
  assert.equal(careless.headers.cookie, '[redacted]')
  assert.equal(careless.key, '[redacted]')
  assert.equal(careless.token, '[redacted]')
  // the upstream still got what it needs (only the gateway's own log is censored)
  assert.match(String(up.received[0]?.url), new RegExp(SECRETS[0] as string))
})

test('loggablePath keeps everything but the values of secret parameters', () => {
  assert.equal(loggablePath('/a/b'), '/a/b')
  assert.equal(loggablePath('/a?x=1&y=2'), '/a?x=1&y=2')
  assert.equal(loggablePath('/a?monkey=1'), '/a?monkey=1')
  assert.equal(loggablePath('/a?key=1&monkey=2&Token=3'), '/a?key=[redacted]&monkey=2&Token=[redacted]')
  assert.equal(loggablePath('/a?access_token'), '/a?access_token=[redacted]')
  assert.equal(loggablePath('/a?api+key=1&api%2Dkey=2'), '/a?api+key=1&api%2Dkey=[redacted]')
  assert.equal(loggablePath('/a?%ZZ=1&token=2'), '/a?%ZZ=1&token=[redacted]')
})

test('ACCESS_LOG=false: no access lines, other logging unchanged', async (t) => {
  const up = await startUpstream(t)
  const logs = captureLogs()
  const app = await build(t, { declare: routes(up.url), env: { LOG_LEVEL: 'info', ACCESS_LOG: 'false' }, logStream: logs })
  assert.equal((await app.inject('/api/x')).statusCode, 200)
  app.log.info('still here')
  assert.equal(logs.lines.filter((l) => l.msg === 'request').length, 0)
  assert.equal(logs.lines.filter((l) => l.msg === 'still here').length, 1)
})

test('health probes stay out of the access log; a failed request carries its error code', async (t) => {
  const logs = captureLogs()
  const app = await build(t, { declare: routes('http://127.0.0.1:1'), env: { LOG_LEVEL: 'info' }, logStream: logs })
  assert.equal((await app.inject('/health/live')).statusCode, 200)
  const res = await app.inject('/api/down')
  assert.equal(res.statusCode, 502)
  const access = logs.lines.filter((l) => l.msg === 'request')
  assert.equal(access.length, 1)
  assert.equal(access[0]?.status, 502)
  assert.equal(access[0]?.error, 'GW_ERR_UPSTREAM_UNAVAILABLE')
  assert.equal(access[0]?.target, 'http://127.0.0.1:1')
  assert.equal(access[0]?.reqId, res.headers['x-request-id'])
})
