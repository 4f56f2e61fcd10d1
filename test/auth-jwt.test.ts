/**
 * JWT auth: keys generated here (node:crypto), tokens signed here (including the forged ones), and a JWKS server
 * on 127.0.0.1 whose key set the tests rotate.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHmac, generateKeyPairSync, randomUUID, sign as cryptoSign, type KeyObject } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { TestContext } from 'node:test'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { defineRoutes, defineUpstream } from '../src/declare.js'
import type { RoutesDeclaration } from '../src/declare.js'
import { build } from './helper.js'
import { startUpstream, type Upstream } from './helpers/upstream.js'
import { until } from './helpers/wait.js'

const SECRET = 'a-test-hmac-secret-of-32-bytes-or-more!'
const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 })
const rsa2 = generateKeyPairSync('rsa', { modulusLength: 2048 })
const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' })
const RSA_PUBLIC_PEM = rsa.publicKey.export({ type: 'spki', format: 'pem' }) as string

const b64 = (v: unknown): string => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url')
const now = (): number => Math.floor(Date.now() / 1000)

/** a compact JWS made by hand, so forged and odd tokens can be made too */
function jwt (header: Record<string, unknown>, payload: unknown, key: KeyObject | string | Buffer | null): string {
  const input = `${b64(header)}.${b64(payload)}`
  const alg = String(header.alg)
  let sig = ''
  if (key !== null && alg.startsWith('HS')) sig = createHmac(`sha${alg.slice(2)}`, key as string | Buffer).update(input).digest('base64url')
  else if (key !== null && alg.startsWith('RS')) sig = cryptoSign(`sha${alg.slice(2)}`, Buffer.from(input), key as KeyObject).toString('base64url')
  else if (key !== null && alg.startsWith('ES')) sig = cryptoSign(`sha${alg.slice(2)}`, Buffer.from(input), { key: key as KeyObject, dsaEncoding: 'ieee-p1363' }).toString('base64url')
  return `${input}.${sig}`
}

const claims = (extra: Record<string, unknown> = {}): Record<string, unknown> =>
  ({ sub: 'user-42', iat: now(), exp: now() + 300, scope: 'orders:read profile', ...extra })

const hs = (extra: Record<string, unknown> = {}, header: Record<string, unknown> = {}): string => jwt({ alg: 'HS256', typ: 'JWT', ...header }, claims(extra), SECRET)
const rs = (extra: Record<string, unknown> = {}, header: Record<string, unknown> = {}, key: KeyObject = rsa.privateKey): string => jwt({ alg: 'RS256', typ: 'JWT', ...header }, claims(extra), key)
const es = (extra: Record<string, unknown> = {}, header: Record<string, unknown> = {}): string => jwt({ alg: 'ES256', typ: 'JWT', ...header }, claims(extra), ec.privateKey)

function routes (url: string, more: RoutesDeclaration[] = []) {
  return [
    defineUpstream({ name: 'svc', targets: [url] }),
    defineRoutes({ upstream: 'svc', prefix: '/jwt', auth: { jwt: true }, routes: [{ method: ['GET', 'POST'], url: '/*' }] }),
    defineRoutes({ upstream: 'svc', prefix: '/orders', auth: { jwt: true, scopes: ['orders:read'] }, routes: [{ method: 'GET', url: '/*' }] }),
    ...more.map((m) => defineRoutes(m)),
  ]
}

async function gateway (t: TestContext, up: Upstream, env: Record<string, string>, more: RoutesDeclaration[] = []): Promise<FastifyInstance> {
  return await build(t, { declare: routes(up.url, more), env })
}

const bearer = async (app: FastifyInstance, token: string, url = '/jwt/x'): Promise<LightMyRequestResponse> =>
  await app.inject({ url, headers: { authorization: `Bearer ${token}` } })

function refused (res: LightMyRequestResponse, reason: RegExp | null = null, status = 401, code = 'GW_ERR_AUTH_INVALID_TOKEN'): void {
  assert.equal(res.statusCode, status, res.body)
  assert.match(String(res.headers['content-type']), /^application\/problem\+json/)
  const body = res.json()
  assert.equal(body.type, `/problems/${code}`)
  if (reason !== null) assert.match(body.detail, reason)
  if (status === 401) assert.match(String(res.headers['www-authenticate']), /Bearer realm="api"/)
}

function publicKeyFile (t: TestContext, pem: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'gw-jwt-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, 'public.pem')
  writeFileSync(file, pem)
  return file
}

interface Jwks { url: string, keys: object[], hits: number }
async function startJwks (t: TestContext, keys: object[]): Promise<Jwks> {
  const state: Jwks = { url: '', keys, hits: 0 }
  const server = createServer((req, res) => {
    state.hits++
    const body = JSON.stringify({ keys: state.keys })
    res.writeHead(200, { 'content-type': 'application/jwk-set+json', 'content-length': Buffer.byteLength(body) })
    res.end(body)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.after(() => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()) }))
  state.url = `http://127.0.0.1:${(server.address() as { port: number }).port}/.well-known/jwks.json`
  return state
}
const jwk = (key: KeyObject, kid: string, alg: string): object => ({ ...key.export({ format: 'jwk' }), kid, alg, use: 'sig' })


test('HS256: a valid token passes; the client goes upstream; Authorization is forwarded unless JWT_FORWARD_TOKEN=false', async (t) => {
  const up = await startUpstream(t)
  const app = await gateway(t, up, { JWT_SECRET: SECRET, JWT_PLAN_CLAIM: 'plan' })
  const token = hs({ plan: 'gold' })
  const res = await app.inject({ url: '/jwt/x', headers: { authorization: `Bearer ${token}`, 'x-client-id': 'spoofed', 'x-client-scopes': 'admin' } })
  assert.equal(res.statusCode, 200, res.body)
  const seen = res.json().headers
  assert.equal(seen['x-client-id'], 'user-42')
  assert.equal(seen['x-client-scopes'], 'orders:read profile')
  assert.equal(seen['x-client-plan'], 'gold')
  assert.equal(seen['x-client-auth'], 'jwt')
  assert.equal(seen['x-client-key-id'], undefined)
  assert.equal(seen.authorization, `Bearer ${token}`, 'the upstream may need the token itself')
  // the scheme is case-insensitive (RFC 9110 §11.1); a cached token answers the same
  assert.equal((await app.inject({ url: '/jwt/x', headers: { authorization: `bearer ${token}` } })).statusCode, 200)

  const hidden = await gateway(t, up, { JWT_SECRET: SECRET, JWT_FORWARD_TOKEN: 'false' })
  const r2 = await bearer(hidden, token)
  assert.equal(r2.statusCode, 200)
  assert.equal(r2.json().headers.authorization, undefined)
  assert.equal(r2.json().headers['x-client-plan'], undefined, 'no JWT_PLAN_CLAIM: no plan')

  refused(await bearer(app, jwt({ alg: 'HS256' }, claims(), 'another-secret-of-at-least-32-bytes!!')), /signature/)
  const missing = await app.inject({ url: '/jwt/x' })
  refused(missing, /JWT/, 401, 'GW_ERR_AUTH_REQUIRED')
  assert.equal(missing.headers['www-authenticate'], 'Bearer realm="api"')
  refused(await app.inject({ url: '/jwt/x', headers: { authorization: `Basic ${b64('u:p')}` } }), null, 401, 'GW_ERR_AUTH_REQUIRED')
  assert.equal(up.hits, 3, 'refused requests never reach the upstream')
})

test('exp and nbf, with the clock skew; odd claims are 401, never 500', async (t) => {
  const up = await startUpstream(t)
  const app = await gateway(t, up, { JWT_SECRET: SECRET, JWT_CLOCK_SKEW: '30s' })
  const expired = await bearer(app, hs({ exp: now() - 120 }))
  refused(expired, /expired/)
  assert.match(String(expired.headers['www-authenticate']), /error="invalid_token", error_description="the token has expired"/)
  assert.equal((await bearer(app, hs({ exp: now() - 5 }))).statusCode, 200, 'within the skew')
  refused(await bearer(app, hs({ nbf: now() + 120 })), /not valid yet/)
  assert.equal((await bearer(app, hs({ nbf: now() + 5 }))).statusCode, 200, 'within the skew')
  refused(await bearer(app, hs({ exp: undefined })), /no "exp" claim/)
  refused(await bearer(app, hs({ exp: 'tomorrow' })), /"exp" claim/)
  refused(await bearer(app, hs({ nbf: 'later' })), /"nbf" claim/)
  refused(await bearer(app, jwt({ alg: 'HS256' }, [1, 2, 3], SECRET)), /malformed/)
  refused(await bearer(app, jwt({ alg: 'HS256' }, 'just a string', SECRET)), /malformed/)
  refused(await bearer(app, hs({}, { crit: ['x-unknown'], 'x-unknown': 1 })), /critical/)
  refused(await bearer(app, hs({ sub: undefined })), /client id/)
  refused(await bearer(app, hs({ sub: 'has\nnewline' })), /client id/)
  for (const garbage of ['abc', 'a.b', 'a.b.c', '...', `${b64({ alg: 'HS256' })}.!!!.x`, 'x'.repeat(20_000)]) refused(await bearer(app, garbage))

  const lax = await gateway(t, up, { JWT_SECRET: SECRET, JWT_REQUIRE_EXP: 'false' })
  assert.equal((await bearer(lax, hs({ exp: undefined }))).statusCode, 200)
})

test('iss and aud: wrong ones refused, missing ones refused when configured; routes narrow them', async (t) => {
  const up = await startUpstream(t)
  const app = await gateway(t, up, { JWT_SECRET: SECRET, JWT_ISSUER: 'https://idp.example/,https://other.example/', JWT_AUDIENCE: 'gateway' }, [
    { upstream: 'svc', prefix: '/billing', auth: { jwt: { audience: 'billing' } }, routes: [{ method: 'GET', url: '/*' }] },
  ])
  const good = { iss: 'https://idp.example/', aud: 'gateway' }
  assert.equal((await bearer(app, hs(good))).statusCode, 200)
  assert.equal((await bearer(app, hs({ ...good, iss: 'https://other.example/' }))).statusCode, 200)
  assert.equal((await bearer(app, hs({ ...good, aud: ['someone', 'gateway'] }))).statusCode, 200)
  refused(await bearer(app, hs({ ...good, iss: 'https://evil.example/' })), /"iss" claim/)
  refused(await bearer(app, hs({ ...good, iss: undefined })), /no "iss" claim/)
  refused(await bearer(app, hs({ ...good, aud: 'someone-else' })), /"aud" claim/)
  refused(await bearer(app, hs({ ...good, aud: undefined })), /no "aud" claim/)
  refused(await bearer(app, hs({ ...good, aud: [] })), /"aud" claim/)

  // /billing accepts only aud=billing
  refused(await bearer(app, hs(good), '/billing/x'), /"aud" claim/)
  assert.equal((await bearer(app, hs({ ...good, aud: 'billing' }), '/billing/x')).statusCode, 200)
  refused(await bearer(app, hs({ ...good, aud: 'billing' })), /"aud" claim/)
})

test('algorithms are pinned: alg none, a wrong alg and HS256 signed with the RSA public key are refused', async (t) => {
  const up = await startUpstream(t)
  const keyFile = publicKeyFile(t, RSA_PUBLIC_PEM)
  const app = await gateway(t, up, { JWT_PUBLIC_KEY_FILE: keyFile })
  assert.equal((await bearer(app, rs())).statusCode, 200, 'RS256 is the default for an RSA key')
  refused(await bearer(app, jwt({ alg: 'none', typ: 'JWT' }, claims(), null)), /algorithm/)
  refused(await bearer(app, `${jwt({ alg: 'none' }, claims(), null)}c2ln`), /algorithm/)
  refused(await bearer(app, jwt({ alg: 'NONE' }, claims(), null)), /algorithm/)
  refused(await bearer(app, jwt({ alg: 'HS256' }, claims(), RSA_PUBLIC_PEM)), /algorithm/)
  refused(await bearer(app, es()), /algorithm/)
  refused(await bearer(app, jwt({ alg: 'RS512' }, claims(), rsa.privateKey)), /algorithm/)
  refused(await bearer(app, rs({}, {}, rsa2.privateKey)), /signature/)
  refused(await bearer(app, jwt({ alg: 'RS256' }, claims(), null)), /not signed|signature/)

  // a secret and a public key together: HS* only ever meets the secret, RS* only the public key
  const both = await gateway(t, up, { JWT_PUBLIC_KEY_FILE: keyFile, JWT_SECRET: SECRET, JWT_ALGORITHMS: 'HS256,RS256' }, [
    { upstream: 'svc', prefix: '/rsa-only', auth: { jwt: { algorithms: ['RS256'] } }, routes: [{ method: 'GET', url: '/*' }] },
  ])
  assert.equal((await bearer(both, hs())).statusCode, 200)
  assert.equal((await bearer(both, rs())).statusCode, 200)
  refused(await bearer(both, jwt({ alg: 'HS256' }, claims(), RSA_PUBLIC_PEM)), /signature/)
  refused(await bearer(both, hs(), '/rsa-only/x'), /algorithm/)
  assert.equal((await bearer(both, rs(), '/rsa-only/x')).statusCode, 200)
})

test('JWKS: RS256 and ES256 keys, an unknown kid fetches the set again (key rotation), a removed key is refused', async (t) => {
  const up = await startUpstream(t)
  const jwks = await startJwks(t, [jwk(rsa.publicKey, 'k1', 'RS256')])
  const app = await gateway(t, up, { JWT_JWKS_URL: jwks.url, JWT_JWKS_MIN_REFRESH: '200ms' })
  assert.equal(jwks.hits, 1, 'fetched once at start')
  assert.equal((await bearer(app, rs({}, { kid: 'k1' }))).statusCode, 200)
  assert.equal((await bearer(app, rs({ sub: 'other' }, { kid: 'k1' }))).statusCode, 200)
  assert.equal(jwks.hits, 1, 'known keys need no fetch')

  // the IdP adds an EC key and starts signing with it
  jwks.keys = [jwk(rsa.publicKey, 'k1', 'RS256'), jwk(ec.publicKey, 'k2', 'ES256')]
  await new Promise((r) => setTimeout(r, 250))
  const res = await bearer(app, es({}, { kid: 'k2' }))
  assert.equal(res.statusCode, 200, res.body)
  assert.equal(jwks.hits, 2)
  refused(await bearer(app, rs({}, { kid: 'k2' })), /algorithm/, 401)

  // the IdP drops k1: once the set has been fetched again, k1 tokens are refused
  jwks.keys = [jwk(ec.publicKey, 'k2', 'ES256')]
  await new Promise((r) => setTimeout(r, 250))
  refused(await bearer(app, rs({}, { kid: 'k3' }, rsa2.privateKey)), /unknown key/)
  assert.equal(jwks.hits, 3)
  assert.ok(await until(async () => (await bearer(app, rs({}, { kid: 'k1' }))).statusCode === 401, 5000))
  refused(await bearer(app, rs({}, { kid: 'k1' })), /unknown key/)
  assert.equal((await bearer(app, es({}, { kid: 'k2' }))).statusCode, 200)
  // a kid in the set does not make a key of another kid acceptable
  refused(await bearer(app, es({}, { kid: 'k2' }).replace(/\.[^.]+$/, `.${rs({}, { kid: 'k2' }).split('.')[2] ?? ''}`)), /signature/)
})

test('JWKS: fetches on unknown kids are rate-limited', async (t) => {
  const up = await startUpstream(t)
  const jwks = await startJwks(t, [jwk(rsa.publicKey, 'k1', 'RS256')])
  const app = await gateway(t, up, { JWT_JWKS_URL: jwks.url, JWT_JWKS_MIN_REFRESH: '1m', AUTH_FAILURE_LIMIT: '0' })
  assert.equal(jwks.hits, 1)
  const forged = Array.from({ length: 20 }, () => rs({}, { kid: randomUUID() }, rsa2.privateKey))
  const answers = await Promise.all(forged.map(async (tk) => await bearer(app, tk)))
  for (const r of answers) refused(r, /unknown key/)
  for (const tk of forged.slice(0, 5)) refused(await bearer(app, tk), /unknown key/)
  assert.equal(jwks.hits, 1, 'random kids do not turn into fetches')
  assert.equal((await bearer(app, rs({}, { kid: 'k1' }))).statusCode, 200)
})

test('scopes: from a scope string, an scp array or a nested claim; a missing scope is 403', async (t) => {
  const up = await startUpstream(t)
  const app = await gateway(t, up, { JWT_SECRET: SECRET })
  assert.equal((await bearer(app, hs({ scope: 'profile orders:read' }), '/orders/1')).statusCode, 200)
  assert.equal((await bearer(app, hs({ scope: undefined, scp: ['orders:read'] }), '/orders/1')).statusCode, 200)
  const res = await bearer(app, hs({ scope: 'profile' }), '/orders/1')
  refused(res, /orders:read/, 403, 'GW_ERR_AUTH_INSUFFICIENT_SCOPE')
  assert.equal(res.headers['www-authenticate'], 'Bearer realm="api", error="insufficient_scope", scope="orders:read"')
  refused(await bearer(app, hs({ scope: 'orders:readx orders' }), '/orders/1'), null, 403, 'GW_ERR_AUTH_INSUFFICIENT_SCOPE')
  refused(await bearer(app, hs({ scope: undefined }), '/orders/1'), null, 403, 'GW_ERR_AUTH_INSUFFICIENT_SCOPE')

  const nested = await gateway(t, up, { JWT_SECRET: SECRET, JWT_SCOPE_CLAIM: 'realm_access.roles', JWT_CLIENT_CLAIM: 'client_id' })
  const ok = await bearer(nested, hs({ scope: undefined, client_id: 'svc-a', realm_access: { roles: ['orders:read', 'x'] } }), '/orders/1')
  assert.equal(ok.statusCode, 200, ok.body)
  assert.equal(ok.json().headers['x-client-id'], 'svc-a')
  assert.equal(ok.json().headers['x-client-scopes'], 'orders:read x')
  refused(await bearer(nested, hs({ realm_access: { roles: ['orders:read'] } }), '/orders/1'), /client id/)
})

test('either-of: one route takes an API key (header or Bearer) or a JWT', async (t) => {
  const up = await startUpstream(t)
  const admin = 'admin-token-for-jwt-tests'
  const app = await gateway(t, up, { JWT_SECRET: SECRET, ADMIN_TOKEN: admin }, [
    { upstream: 'svc', prefix: '/both', auth: { apiKey: { bearer: true }, jwt: true, scopes: ['orders:read'] }, routes: [{ method: 'GET', url: '/*' }] },
  ])
  const made = (await app.inject({ method: 'POST', url: '/admin/keys', headers: { authorization: `Bearer ${admin}` }, payload: { client: 'acme', name: 'n', scopes: ['orders:read'] } })).json() as { key: string }
  const viaHeader = await app.inject({ url: '/both/x', headers: { 'x-api-key': made.key } })
  assert.equal(viaHeader.json().headers['x-client-auth'], 'apiKey')
  const viaBearer = await bearer(app, made.key, '/both/x')
  assert.equal(viaBearer.statusCode, 200)
  assert.equal(viaBearer.json().headers['x-client-auth'], 'apiKey')
  assert.equal(viaBearer.json().headers.authorization, undefined, 'a key sent as Bearer is not forwarded')
  const viaJwt = await bearer(app, hs(), '/both/x')
  assert.equal(viaJwt.json().headers['x-client-auth'], 'jwt')
  assert.equal(viaJwt.json().headers['x-client-id'], 'user-42')
  refused(await bearer(app, 'gw_not_a_key', '/both/x'), null, 401, 'GW_ERR_AUTH_INVALID_KEY')
  refused(await bearer(app, 'not-a-jwt', '/both/x'), /malformed/)
  const none = await app.inject({ url: '/both/x' })
  refused(none, /API key .* or a JWT/, 401, 'GW_ERR_AUTH_REQUIRED')
  assert.equal(none.headers['www-authenticate'], 'ApiKey realm="api", header="x-api-key", Bearer realm="api"')
  refused(await bearer(app, hs({ scope: 'nothing' }), '/both/x'), null, 403, 'GW_ERR_AUTH_INSUFFICIENT_SCOPE')
})

test('start-up: a jwt route without a verifier fails naming the route; bad JWT settings fail too', async (t) => {
  const up = await startUpstream(t)
  await assert.rejects(gateway(t, up, {}), (err: Error & { code?: string }) => {
    assert.equal(err.code, 'GW_ERR_ROUTE_DECLARATION')
    assert.match(err.message, /routes\/test-1\.ts {2}GET,POST \/jwt\/\* {2}auth\.jwt: .*no verifier is configured: set JWT_SECRET, JWT_PUBLIC_KEY_FILE or JWT_JWKS_URL/)
    assert.match(err.message, /GET \/orders\/\*/)
    return true
  })
  await assert.rejects(gateway(t, up, { JWT_SECRET: SECRET }, [
    { upstream: 'svc', prefix: '/rs', auth: { jwt: { algorithms: ['RS256'] } }, routes: [{ method: 'GET', url: '/*' }] },
  ]), /GET \/rs\/\* {2}auth\.jwt\.algorithms: RS256 is not among JWT_ALGORITHMS \(HS256\)/)
  await assert.rejects(gateway(t, up, { JWT_SECRET: 'short' }), /JWT_SECRET: expected at least 32 bytes/)
  await assert.rejects(gateway(t, up, { JWT_SECRET: SECRET, JWT_ALGORITHMS: 'HS256,none' }), /JWT_ALGORITHMS: unsupported algorithm none/)
  await assert.rejects(gateway(t, up, { JWT_SECRET: SECRET, JWT_ALGORITHMS: 'RS256' }), /JWT_ALGORITHMS: RS256 needs JWT_PUBLIC_KEY_FILE or JWT_JWKS_URL/)
  await assert.rejects(gateway(t, up, { JWT_PUBLIC_KEY_FILE: publicKeyFile(t, RSA_PUBLIC_PEM), JWT_ALGORITHMS: 'ES256' }), /ES256 does not fit the RSA key/)
  await assert.rejects(gateway(t, up, { JWT_PUBLIC_KEY_FILE: '/nonexistent/key.pem' }), /JWT_PUBLIC_KEY_FILE: cannot read/)
})

test('secrets never reach the logs: no key, no token, no Authorization', async (t) => {
  const up = await startUpstream(t)
  const lines: string[] = []
  const admin = 'admin-token-for-log-tests'
  const app = await build(t, {
    declare: routes(up.url, [{ upstream: 'svc', prefix: '/key', auth: { apiKey: { bearer: true } }, routes: [{ method: 'GET', url: '/*' }] }]),
    env: { JWT_SECRET: SECRET, ADMIN_TOKEN: admin, LOG_LEVEL: 'trace' },
    // the gateway's own logger (its redaction included), written here
    logStream: { write: (l: string) => { lines.push(l) } },
  })
  const made = (await app.inject({ method: 'POST', url: '/admin/keys', headers: { authorization: `Bearer ${admin}` }, payload: { client: 'acme', name: 'n' } })).json() as { key: string, id: string }
  const token = hs()
  await app.inject({ url: '/key/x', headers: { 'x-api-key': made.key } })
  await app.inject({ url: '/key/x', headers: { authorization: `Bearer ${made.key}` } })
  await app.inject({ url: '/key/x', headers: { 'x-api-key': `${made.key.slice(0, -2)}zz` } })
  await app.inject({ url: '/jwt/x', headers: { authorization: `Bearer ${token}` } })
  await app.inject({ url: '/jwt/x', headers: { authorization: `Bearer ${token.slice(0, -4)}AAAA` } })
  await app.inject({ method: 'POST', url: `/admin/keys/${made.id}/rotate`, headers: { authorization: `Bearer ${admin}` } })
  const log = lines.join('')
  assert.ok(log.length > 0, 'something was logged')
  assert.ok(log.includes(made.id), 'key ids are logged')
  for (const secret of [made.key.slice(16), token.split('.')[2] as string, SECRET, admin]) assert.ok(!log.includes(secret), 'no secret in the log')
})
