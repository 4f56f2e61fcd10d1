import { test } from 'node:test'
import assert from 'node:assert/strict'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { spawnSync } from 'node:child_process'
import { buildApp } from '../src/app.js'
import { defineRoutes, defineUpstream } from '../src/declare.js'
import { testConfig, build } from './helper.js'

const here = dirname(fileURLToPath(import.meta.url))
const fixtures = join(here, 'fixtures')

async function declarationError (routesDir: string): Promise<string> {
  const err = await buildApp(testConfig({ ROUTES_DIR: routesDir })).then(() => null, (e: Error & { code?: string }) => e)
  assert.ok(err !== null, 'start-up must fail')
  assert.equal(err.code, 'GW_ERR_ROUTE_DECLARATION')
  return err.message
}

test('a folder of route files loads, skipping files that start with _', async (t) => {
  const app = await buildApp(testConfig({ ROUTES_DIR: join(fixtures, 'routes-ok') }))
  t.after(() => app.close())
  await app.ready()
  assert.deepEqual(app.gw.declarations.routes.map((r) => r.id), ['GET /svc/:id'])
  assert.equal(app.gw.declarations.files.length, 1)
})

test('every wrong declaration is reported at once, naming file, route and field', async () => {
  const msg = await declarationError(join(fixtures, 'routes-bad'))
  const lines = msg.split('\n').filter((l) => l.startsWith('  - '))
  const has = (...parts: string[]) => assert.ok(lines.some((l) => parts.every((p) => l.includes(p))), `expected a line with ${parts.join(' | ')} in:\n${msg}`)
  has('a-upstreams.js', 'upstream svc', 'targets[0]', 'http:// or https://')
  has('a-upstreams.js', 'upstream other', 'timeouts.connect', '5 parsecs')
  has('b-routes.js', 'GET /svc/:id', 'rateLimit.per', 'expected a duration', '"5 parsecs"')
  has('b-routes.js', 'GET /svc/:key', 'url', 'duplicate route')
  has('b-routes.js', 'GET /svc/x', 'cahce', 'unknown field')
  has('c-unknown.js', 'upstream', 'unknown upstream "billing"', 'declared: svc, other')
  has('d-not-a-declaration.js', 'default export', 'not a declaration')
  assert.ok(lines.length >= 7, msg)
})

test('inline declarations: bad route fields, rewrite params, cache on POST, targets from the environment', async (t) => {
  const decl = [
    defineUpstream({ name: 'svc', targets: ['http://127.0.0.1:1'] }),
    defineRoutes({
      upstream: 'svc',
      routes: [
        { method: 'GET', url: '/a/:id', rewrite: '/b/:name' },
        { method: 'POST', url: '/c', cache: { ttl: '1s' } },
        { method: 'FETCH' as never, url: '/d' },
        { method: 'GET', url: '/e', rateLimit: { max: 5, per: '1m', cost: 10 } },
      ],
    }),
  ]
  const err = await build(t, { declare: [decl], env: { UPSTREAM_NOPE: 'http://127.0.0.1:2' } }).then(() => null, (e: Error) => e)
  assert.ok(err !== null)
  assert.match(err.message, /GET \/a\/:id {2}rewrite: uses :name, which the route url "\/a\/:id" does not have/)
  assert.match(err.message, /POST \/c {2}cache: only GET and HEAD responses are cached/)
  assert.match(err.message, /FETCH \/d {2}method: expected one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, got "FETCH"/)
  assert.match(err.message, /GET \/e {2}rateLimit.cost: a cost of 10 is above the burst of 5/)
  assert.match(err.message, /UPSTREAM_NOPE {2}sets targets for upstream "nope", which no route file declares/)
})

test('UPSTREAM_<NAME> replaces the declared targets, with weights', async (t) => {
  const app = await build(t, {
    declare: [[defineUpstream({ name: 'user-svc', targets: ['http://127.0.0.1:1'] }), defineRoutes({ upstream: 'user-svc', routes: [{ method: 'GET', url: '/u' }] })]],
    env: { UPSTREAM_USER_SVC: 'http://127.0.0.1:7001, http://127.0.0.1:7002/api|3' },
  })
  assert.deepEqual(app.gw.declarations.upstreams.get('user-svc')?.targets, [{ url: 'http://127.0.0.1:7001', weight: 1 }, { url: 'http://127.0.0.1:7002/api', weight: 3 }])
})

test('the server prints declaration errors without a stack trace and exits 1', () => {
  const server = join(here, '..', 'src', 'server.js')
  const r = spawnSync(process.execPath, [server], { env: { PATH: process.env.PATH, ROUTES_DIR: join(fixtures, 'routes-bad'), PORT: '0', LOG_LEVEL: 'silent' }, encoding: 'utf8', timeout: 20_000 })
  assert.equal(r.status, 1)
  assert.match(r.stderr, /Invalid route declarations:/)
  assert.match(r.stderr, /rateLimit\.per/)
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace')
})

test('the server reports every bad environment variable at once', () => {
  const server = join(here, '..', 'src', 'server.js')
  const r = spawnSync(process.execPath, [server], { env: { PATH: process.env.PATH, PORT: 'eighty', REDIS_URL: 'http://x', SHUTDOWN_TIMEOUT: '5 parsecs', TLS_CERT_FILE: '/x.pem' }, encoding: 'utf8', timeout: 20_000 })
  assert.equal(r.status, 1)
  for (const v of ['PORT', 'REDIS_URL', 'SHUTDOWN_TIMEOUT', 'TLS_CERT_FILE and TLS_KEY_FILE']) assert.match(r.stderr, new RegExp(`- ${v}`))
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace')
})
