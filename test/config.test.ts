import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { loadConfig, VARS } from '../src/config.js'
import * as errors from '../src/errors.js'
import { build } from './helper.js'

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
const readme = readFileSync(join(root, 'README.md'), 'utf8')

test('defaults: one replica on the in-process store, admin API off, proxies not trusted', () => {
  const c = loadConfig({})
  assert.equal(c.port, 8080)
  assert.equal(c.redisUrl, null)
  assert.equal(c.adminToken, null)
  assert.equal(c.trustProxy, false)
  assert.equal(c.bodyLimit, 10 * 1024 * 1024)
  assert.equal(c.redisCommandTimeoutMs, 250)
  assert.ok(Object.isFrozen(c))
})

test('values are parsed once into their units', () => {
  const c = loadConfig({ TRUST_PROXY: '10.0.0.0/8, 127.0.0.1', BODY_LIMIT: '512kb', SHUTDOWN_TIMEOUT: '2s', REDIS_COMMAND_TIMEOUT: '100', REDIS_URL: 'rediss://cache:6380/2', ACCESS_LOG: 'off' })
  assert.deepEqual(c.trustProxy, ['10.0.0.0/8', '127.0.0.1'])
  assert.equal(c.bodyLimit, 512 * 1024)
  assert.equal(c.shutdownTimeoutMs, 2000)
  assert.equal(c.redisCommandTimeoutMs, 100)
  assert.equal(c.redisUrl, 'rediss://cache:6380/2')
  assert.equal(c.accessLog, false)
  assert.equal(loadConfig({ TRUST_PROXY: '2' }).trustProxy, 2)
  assert.equal(loadConfig({ TRUST_PROXY: 'true' }).trustProxy, true)
})

test('every wrong variable is reported in one error', () => {
  assert.throws(() => loadConfig({ PORT: '70000', LOG_LEVEL: 'loud', ADMIN_TOKEN: 'short', BODY_LIMIT: 'huge', UPSTREAM_USERS: 'ftp://x' }), (err: Error & { code?: string }) => {
    assert.equal(err.code, 'GW_ERR_CONFIG')
    for (const v of ['PORT', 'LOG_LEVEL', 'ADMIN_TOKEN: expected at least 16', 'BODY_LIMIT', 'UPSTREAM_USERS']) assert.match(err.message, new RegExp(`- ${v}`))
    return true
  })
})

test('the README documents every environment variable', () => {
  for (const v of VARS) assert.ok(readme.includes(`| \`${v.name}\` |`), `README.md lacks a row for ${v.name}`)
  assert.ok(readme.includes('`UPSTREAM_<NAME>`'))
  assert.ok(readme.includes('npm ci && npm start') && readme.includes('npm test'))
})

test('every error code is documented, and its problem type resolves', async (t) => {
  const codes = Object.entries(errors).filter(([name, e]) => name.startsWith('GW_ERR_') && typeof e === 'function')
    .map(([name, E]) => {
      const code = (new (E as new (...a: string[]) => { code: string })('a', 'b', 'c')).code
      assert.equal(code, name, 'the export is named after its code')
      return code
    })
  assert.ok(codes.length >= 10)
  for (const code of codes) {
    assert.ok(code.startsWith('GW_ERR_'), code)
    assert.ok(typeof errors.ERROR_DOCS[code] === 'string' && errors.ERROR_DOCS[code].length > 10, `${code} is not documented in ERROR_DOCS`)
  }
  for (const code of Object.keys(errors.ERROR_DOCS)) assert.ok(codes.includes(code), `ERROR_DOCS documents ${code}, which is not defined`)
  // the shipped routes (routes/orders.ts asks for JWTs) need a verifier configured
  const app = await build(t, { env: { JWT_SECRET: 'a-test-secret-of-at-least-32-bytes!!' } })
  const res = await app.inject('/problems/GW_ERR_UPSTREAM_TIMEOUT')
  assert.equal(res.statusCode, 200)
  assert.equal(res.json().description, errors.ERROR_DOCS.GW_ERR_UPSTREAM_TIMEOUT)
  assert.equal((await app.inject('/problems/NOPE')).statusCode, 404)
})
