/**
 * Rate limits as a client sees them, on one gateway (MemoryStore unless said otherwise): headers, 429 problems,
 * per-route and per-plan limits, cost, quotas, keys by client / IP / header, the window boundary, and the pre-auth
 * per-IP flood limit.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance, LightMyRequestResponse, onRequestHookHandler, RouteOptions } from 'fastify'
import { DECLARATION, defineRoutes, defineUpstream, definePlans, type DeclaredPlugin, type RoutesDeclaration } from '../src/declare.js'
import { build as buildApp, type TestBuild } from './helper.js'
import { startRedis, redisCommand } from './helpers/redis.js'
import { startUpstream, type Upstream } from './helpers/upstream.js'

/** this 2-core machine is shared with other test runs: no load shedding (503) in the middle of a count */
async function build (t: Parameters<typeof buildApp>[0], opts: TestBuild = {}): ReturnType<typeof buildApp> {
  return await buildApp(t, { ...opts, env: { PRESSURE_MAX_EVENT_LOOP_DELAY: '0', PRESSURE_MAX_HEAP_USED: '0', ...opts.env } })
}

const ADMIN = 'admin-token-for-rate-limit-tests'
const DAY = 86_400_000

function routes (up: Upstream, decl: Omit<RoutesDeclaration, 'upstream'>): DeclaredPlugin[] {
  return [defineUpstream({ name: 'svc', targets: [up.url] }), defineRoutes({ upstream: 'svc', ...decl })]
}

/** A route file whose routes also get `hook` first in onRequest (stands in for, or counts, what runs before auth). */
function withFirstOnRequest (decl: DeclaredPlugin, hook: onRequestHookHandler): DeclaredPlugin {
  const wrapped = async function declaredWithHook (app: unknown, opts: { mount?: (app: unknown) => void }): Promise<void> {
    (app as FastifyInstance).addHook('onRoute', (route: RouteOptions) => {
      const prev = route.onRequest === undefined ? [] : Array.isArray(route.onRequest) ? route.onRequest : [route.onRequest]
      if (!prev.includes(hook)) route.onRequest = [hook, ...prev] as RouteOptions['onRequest']
    })
    await decl(app, opts)
  } as unknown as DeclaredPlugin
  wrapped[DECLARATION] = decl[DECLARATION]
  return wrapped
}

async function newKey (app: FastifyInstance, client: string, plan?: string): Promise<string> {
  const res = await app.inject({ method: 'POST', url: '/admin/keys', headers: { authorization: `Bearer ${ADMIN}` }, payload: { client, name: client, ...(plan !== undefined ? { plan } : {}) } })
  assert.equal(res.statusCode, 201, res.body)
  return res.json().key as string
}

const statuses = (rs: LightMyRequestResponse[]): number[] => rs.map((r) => r.statusCode)

function assertProblem (res: LightMyRequestResponse, code: string): void {
  assert.equal(res.statusCode, 429)
  assert.match(String(res.headers['content-type']), /^application\/problem\+json/)
  const body = res.json()
  assert.equal(body.type, `/problems/${code}`)
  assert.equal(body.status, 429)
  assert.ok(Number(res.headers['retry-after']) >= 1, 'Retry-After in whole seconds')
}

test('headers on every answer of a limited route; the 429 is a problem with Retry-After', async (t) => {
  const up = await startUpstream(t)
  const app = await build(t, { declare: routes(up, { routes: [{ method: 'GET', url: '/a', rateLimit: { max: 3, per: '1m' } }, { method: 'GET', url: '/free' }] }) })
  const rs: LightMyRequestResponse[] = []
  for (let i = 0; i < 4; i++) rs.push(await app.inject({ url: '/a' }))
  assert.deepEqual(statuses(rs), [200, 200, 200, 429])
  assert.deepEqual(rs.map((r) => r.headers['ratelimit-remaining']), ['2', '1', '0', '0'])
  for (const r of rs) {
    assert.equal(r.headers['ratelimit-limit'], '3')
    assert.equal(r.headers['ratelimit-policy'], '3;w=60')
    assert.equal(r.headers['x-ratelimit-limit'], '3')
    assert.equal(r.headers['x-ratelimit-remaining'], r.headers['ratelimit-remaining'])
    const reset = Number(r.headers['ratelimit-reset'])
    assert.ok(reset >= 1 && reset <= 60, `reset ${reset}`)
    assert.equal(r.headers['x-ratelimit-reset'], r.headers['ratelimit-reset'])
  }
  assertProblem(rs[3] as LightMyRequestResponse, 'GW_ERR_RATE_LIMITED')
  assert.match(rs[3]?.json().detail, /Rate limit of 3 requests per 1m exceeded; retry in \d+ s/)
  assert.ok(Number(rs[3]?.headers['retry-after']) > 55, 'the next request fits once the full window has decayed a little')
  assert.equal(up.hits, 3)
  // a route without rateLimit pays nothing and shows nothing
  const free = await app.inject({ url: '/free' })
  assert.equal(free.statusCode, 200)
  assert.equal(free.headers['ratelimit-limit'], undefined)
  assert.equal(app.store.kind, 'memory')
})

test('RATE_LIMIT_HEADERS chooses the header sets; Retry-After is always sent on 429', async (t) => {
  const up = await startUpstream(t)
  const decl = routes(up, { routes: [{ method: 'GET', url: '/a', rateLimit: { max: 1, per: '10s' } }] })
  const ietf = await build(t, { declare: decl, env: { RATE_LIMIT_HEADERS: 'ietf' } })
  const a = await ietf.inject({ url: '/a' })
  assert.equal(a.headers['ratelimit-limit'], '1')
  assert.equal(a.headers['x-ratelimit-limit'], undefined)
  const none = await build(t, { declare: decl, env: { RATE_LIMIT_HEADERS: 'none' } })
  assert.equal((await none.inject({ url: '/a' })).headers['ratelimit-limit'], undefined)
  const refused = await none.inject({ url: '/a' })
  assertProblem(refused, 'GW_ERR_RATE_LIMITED')
  assert.equal(refused.headers['ratelimit-remaining'], undefined)
  assert.equal(refused.headers['x-ratelimit-remaining'], undefined)
})

test('file-level limit, route-level override; each route counts on its own', async (t) => {
  const up = await startUpstream(t)
  const app = await build(t, {
    declare: routes(up, {
      rateLimit: { max: 4, per: '1m' },
      routes: [{ method: 'GET', url: '/wide' }, { method: 'GET', url: '/narrow', rateLimit: { max: 2, per: '1m' } }, { method: 'GET', url: '/off', rateLimit: false }],
    }),
  })
  const narrow: number[] = []
  for (let i = 0; i < 3; i++) narrow.push((await app.inject({ url: '/narrow' })).statusCode)
  assert.deepEqual(narrow, [200, 200, 429])
  const wide: LightMyRequestResponse[] = []
  for (let i = 0; i < 5; i++) wide.push(await app.inject({ url: '/wide' }))
  assert.deepEqual(statuses(wide), [200, 200, 200, 200, 429], 'the narrow route used none of the wide route\'s allowance')
  assert.equal(wide[0]?.headers['ratelimit-limit'], '4')
  for (let i = 0; i < 6; i++) assert.equal((await app.inject({ url: '/off' })).statusCode, 200)
})

test('cost > 1 counts a request as that many', async (t) => {
  const up = await startUpstream(t)
  const app = await build(t, { declare: routes(up, { routes: [{ method: 'POST', url: '/search', rateLimit: { max: 10, per: '1m', cost: 3 } }] }) })
  const rs: LightMyRequestResponse[] = []
  for (let i = 0; i < 4; i++) rs.push(await app.inject({ method: 'POST', url: '/search', payload: 'q' }))
  assert.deepEqual(statuses(rs), [200, 200, 200, 429])
  assert.deepEqual(rs.map((r) => r.headers['ratelimit-remaining']), ['7', '4', '1', '1'])
  assert.equal(up.hits, 3)
})

test('keyed by IP (TRUST_PROXY honoured) or by a header; a missing header falls back to the IP', async (t) => {
  const up = await startUpstream(t)
  const decl = routes(up, {
    routes: [
      { method: 'GET', url: '/ip', rateLimit: { max: 1, per: '1m', by: 'ip' } },
      { method: 'GET', url: '/tenant', rateLimit: { max: 1, per: '1m', by: 'header:X-Tenant' } },
    ],
  })
  const app = await build(t, { declare: decl, env: { ADMIN_TOKEN: ADMIN } })
  assert.deepEqual([
    (await app.inject({ url: '/ip', remoteAddress: '10.0.0.1' })).statusCode,
    (await app.inject({ url: '/ip', remoteAddress: '10.0.0.1' })).statusCode,
    (await app.inject({ url: '/ip', remoteAddress: '10.0.0.2' })).statusCode,
    // without TRUST_PROXY a forwarded address is not believed
    (await app.inject({ url: '/ip', remoteAddress: '10.0.0.1', headers: { 'x-forwarded-for': '192.0.2.9' } })).statusCode,
  ], [200, 429, 200, 429])
  assert.deepEqual([
    (await app.inject({ url: '/tenant', headers: { 'x-tenant': 'acme' } })).statusCode,
    (await app.inject({ url: '/tenant', headers: { 'x-tenant': 'acme' }, remoteAddress: '10.0.0.7' })).statusCode,
    (await app.inject({ url: '/tenant', headers: { 'x-tenant': 'globex' } })).statusCode,
    (await app.inject({ url: '/tenant', remoteAddress: '10.0.0.8' })).statusCode,
    (await app.inject({ url: '/tenant', remoteAddress: '10.0.0.8' })).statusCode,
  ], [200, 429, 200, 200, 429])
  // any header value is safe in a key: braces (the hash tag's delimiters) cannot make two tenants one, and resetting
  // one tenant leaves the other alone
  const tenant = async (v: string): Promise<number> => (await app.inject({ url: '/tenant', headers: { 'x-tenant': v } })).statusCode
  assert.deepEqual([await tenant('x'), await tenant('x}y'), await tenant('x'), await tenant('x}y')], [200, 200, 429, 429])
  const reset = await app.inject({ method: 'DELETE', url: '/admin/rate-limits?header=X-Tenant&value=x', headers: { authorization: `Bearer ${ADMIN}` } })
  assert.deepEqual(reset.json(), { subject: 'h:x-tenant=x', deleted: 1 })
  assert.deepEqual([await tenant('x'), await tenant('x}y')], [200, 429])

  const behindProxy = await build(t, { declare: decl, env: { TRUST_PROXY: 'true' } })
  assert.deepEqual([
    (await behindProxy.inject({ url: '/ip', headers: { 'x-forwarded-for': '192.0.2.1' } })).statusCode,
    (await behindProxy.inject({ url: '/ip', headers: { 'x-forwarded-for': '192.0.2.1' } })).statusCode,
    (await behindProxy.inject({ url: '/ip', headers: { 'x-forwarded-for': '192.0.2.2' } })).statusCode,
  ], [200, 429, 200])
})

test('route quota: used up -> 429 quota problem until the period ends; the headers show the tighter policy', async (t) => {
  const up = await startUpstream(t)
  const app = await build(t, { declare: routes(up, { routes: [{ method: 'GET', url: '/q', rateLimit: { max: 100, per: '1m', quota: { max: 3, per: '1d' } } }] }) })
  const rs: LightMyRequestResponse[] = []
  for (let i = 0; i < 4; i++) rs.push(await app.inject({ url: '/q' }))
  assert.deepEqual(statuses(rs), [200, 200, 200, 429])
  assert.deepEqual(rs.map((r) => r.headers['ratelimit-limit']), ['3', '3', '3', '3'], 'the quota is closer to exhaustion than 100/min')
  assert.deepEqual(rs.map((r) => r.headers['ratelimit-remaining']), ['2', '1', '0', '0'])
  assert.equal(rs[0]?.headers['ratelimit-policy'], '100;w=60, 3;w=86400')
  const refused = rs[3] as LightMyRequestResponse
  assertProblem(refused, 'GW_ERR_QUOTA_EXCEEDED')
  assert.match(refused.json().detail, /Quota of 3 requests per 1d used up/)
  const toMidnight = ((Math.floor(Date.now() / DAY) + 1) * DAY - Date.now()) / 1000
  assert.ok(Math.abs(Number(refused.headers['retry-after']) - toMidnight) < 3, 'renews at 00:00 UTC')
  assert.ok(Math.abs(Number(refused.headers['ratelimit-reset']) - toMidnight) < 3)
  assert.equal(app.gwRateLimitStats !== undefined && (app.gwRateLimitStats as { quotaExceeded: number }).quotaExceeded, 1)
})

test('plans: a client\'s plan overrides the route\'s limit; plan quotas count across routes; auth routes get plan limits', async (t) => {
  const up = await startUpstream(t)
  const redis = await startRedis(t)
  const app = await build(t, {
    env: { ADMIN_TOKEN: ADMIN, REDIS_URL: redis.url, REDIS_COMMAND_TIMEOUT: '2s' },
    declare: [
      definePlans({
        gold: { rateLimit: { max: 5, per: '1m' } },
        bronze: { rateLimit: { max: 1, per: '1m' }, quota: { max: 3, per: '1d' } },
      }),
      ...routes(up, {
        auth: { apiKey: true },
        routes: [
          { method: 'GET', url: '/limited', rateLimit: { max: 2, per: '1m' } },
          { method: 'GET', url: '/other', rateLimit: { max: 2, per: '1m' } },
          { method: 'GET', url: '/plan-only' },
          { method: 'GET', url: '/never', rateLimit: false },
        ],
      }),
    ],
  })
  const gold = await newKey(app, 'alice', 'gold')
  const bronze = await newKey(app, 'bob', 'bronze')
  const plain = await newKey(app, 'carol')
  const run = async (key: string, url: string, n: number): Promise<LightMyRequestResponse[]> => {
    const out: LightMyRequestResponse[] = []
    for (let i = 0; i < n; i++) out.push(await app.inject({ url, headers: { 'x-api-key': key } }))
    return out
  }
  const g = await run(gold, '/limited', 6)
  assert.deepEqual(statuses(g), [200, 200, 200, 200, 200, 429])
  assert.equal(g[0]?.headers['ratelimit-limit'], '5')
  assert.deepEqual(statuses(await run(plain, '/limited', 3)), [200, 200, 429], 'no plan: the route\'s own limit')
  assert.deepEqual(statuses(await run(bronze, '/limited', 2)), [200, 429])
  // bronze's quota of 3 a day is shared by all routes: 1 used on /limited, 1 on /other, 1 on /plan-only
  assert.deepEqual(statuses(await run(bronze, '/other', 1)), [200])
  const last = await run(bronze, '/plan-only', 2)
  assert.deepEqual(statuses(last), [200, 429])
  assertProblem(last[1] as LightMyRequestResponse, 'GW_ERR_QUOTA_EXCEEDED')
  // an auth route without rateLimit: plan limits apply, clients without a plan are not limited
  assert.deepEqual(statuses(await run(gold, '/plan-only', 6)), [200, 200, 200, 200, 200, 429])
  const p = await run(plain, '/plan-only', 4)
  assert.deepEqual(statuses(p), [200, 200, 200, 200])
  assert.equal(p[0]?.headers['ratelimit-limit'], undefined)
  // rateLimit: false opts a route out of plan limits too
  assert.deepEqual(statuses(await run(gold, '/never', 7)), [200, 200, 200, 200, 200, 200, 200])
  // keys are per client and route, hash-tagged by client; the plan quota has one key per client
  const keys = ((await redisCommand(redis, 'KEYS', 'gw:*')) as string[]).filter((k) => /^gw:(rl|q):/.test(k)).sort()
  assert.ok(keys.includes('gw:q:{c:bob}'), keys.join(' '))
  assert.equal(keys.filter((k) => k.startsWith('gw:rl:{c:alice}:')).length, 2)
  assert.equal(keys.filter((k) => k.startsWith('gw:rl:{c:bob}:')).length, 3)
  assert.equal(keys.filter((k) => k.startsWith('gw:rl:{c:carol}:')).length, 1)
  // two keys of one client share the client's limit (each key is a client object of its own in the key cache)
  const gold2 = await newKey(app, 'alice', 'gold')
  const mixed = [...await run(gold, '/other', 3), ...await run(gold2, '/other', 3)]
  assert.deepEqual(statuses(mixed), [200, 200, 200, 200, 200, 429])
})

test('window boundary: a full window followed at once by a full burst gets no second allowance', async (t) => {
  const up = await startUpstream(t)
  const w = 1000
  const max = 10
  const app = await build(t, { declare: routes(up, { routes: [{ method: 'GET', url: '/b', rateLimit: { max, per: w, by: 'ip' } }] }) })
  let near = 0
  for (let attempt = 0; attempt < 3 && near === 0; attempt++) {
    const ip = `10.1.0.${attempt + 1}`
    const burst = async (n: number): Promise<number> => {
      const rs = await Promise.all(Array.from({ length: n }, async () => await app.inject({ url: '/b', remoteAddress: ip })))
      for (const r of rs) assert.ok(r.statusCode === 200 || r.statusCode === 429)
      return rs.filter((r) => r.statusCode === 200).length
    }
    // the first request starts this client's window: it ends between sent + w and received + w
    const sent = Date.now()
    assert.equal(await burst(1), 1)
    const received = Date.now()
    await sleep(Math.max(0, received + w - 250 - Date.now()))
    const endOfWindow = await burst(max + 5)
    await sleep(Math.max(0, received + w + 30 - Date.now()))
    const startOfNext = await burst(max + 5)
    const into = Date.now() - (sent + w)
    // a fixed window would admit `max` more here; the sliding window only what the steady rate has released
    assert.ok(1 + endOfWindow + startOfNext <= max + Math.floor(max * into / w), `${1 + endOfWindow} + ${startOfNext} passed, ${into}ms into the next window`)
    if (into < 0.4 * w) { near++; assert.ok(startOfNext <= 3) }
  }
  assert.equal(near, 1, 'one attempt got both bursts around the boundary (the machine was not stalled three times)')
})

test('flood limit: refused per IP before authentication runs; other addresses unaffected', async (t) => {
  const up = await startUpstream(t)
  let reachedAuth = 0
  const countAuth: onRequestHookHandler = (_request, _reply, done) => { reachedAuth++; done() }
  const app = await build(t, {
    env: { FLOOD_LIMIT: '5', ADMIN_TOKEN: ADMIN, AUTH_FAILURE_LIMIT: '0' },
    declare: [defineUpstream({ name: 'svc', targets: [up.url] }), withFirstOnRequest(defineRoutes({ upstream: 'svc', auth: { apiKey: true }, routes: [{ method: 'GET', url: '/secure' }] }), countAuth)],
  })
  // at once, so that they all fall within one second of the limiter
  const rs = await Promise.all(Array.from({ length: 20 }, async (_, i) => await app.inject({ url: '/secure', remoteAddress: '198.51.100.7', headers: { 'x-api-key': `gw_bad_${i}` } })))
  const codes = statuses(rs)
  assert.equal(codes.filter((c) => c === 401).length, 5, 'five bad keys reached authentication')
  assert.equal(codes.filter((c) => c === 429).length, 15)
  assert.equal(reachedAuth, 5, 'the refused requests never reached the authentication hook')
  const refused = rs.find((r) => r.statusCode === 429) as LightMyRequestResponse
  assertProblem(refused, 'GW_ERR_FLOOD_LIMITED')
  assert.equal(refused.headers['retry-after'], '1')
  assert.equal(app.gwFloodStats.limited, 15)
  assert.equal((app.gwRateLimitStats as { floodLimited: number }).floodLimited, 15)
  // another address still gets through to authentication
  assert.equal((await app.inject({ url: '/secure', remoteAddress: '198.51.100.8' })).statusCode, 401)
  assert.equal(up.hits, 0)
  // and the limit is per second: after a second and a bit the first address may try again
  await sleep(2100)
  assert.equal((await app.inject({ url: '/secure', remoteAddress: '198.51.100.7' })).statusCode, 401)
})

test('admin API: status and counters, reset of a client\'s limits', async (t) => {
  const up = await startUpstream(t)
  const app = await build(t, { env: { ADMIN_TOKEN: ADMIN }, declare: routes(up, { routes: [{ method: 'GET', url: '/a', rateLimit: { max: 1, per: '1h', quota: { max: 5, per: '1d' } } }] }) })
  const admin = { authorization: `Bearer ${ADMIN}` }
  assert.equal((await app.inject({ url: '/a', remoteAddress: '10.9.9.9' })).statusCode, 200)
  assert.equal((await app.inject({ url: '/a', remoteAddress: '10.9.9.9' })).statusCode, 429)
  const status = await app.inject({ url: '/admin/rate-limits', headers: admin })
  assert.equal(status.statusCode, 200)
  assert.deepEqual({ ...(status.json() as Record<string, unknown>), floodLimited: 0 }, {
    store: 'memory', onStoreError: 'local', replicas: 1, headers: ['ietf', 'x'], lease: 0, leaseMs: 1000, mode: 'shared',
    allowed: 1, limited: 1, quotaExceeded: 0, storeErrors: 0, fallbackChecks: 0, unavailable: 0, fallbackEntered: 0, floodLimited: 0,
    leases: 0, leaseServed: 0, leaseReturned: 0, leaseReturnFailed: 0,
  })
  assert.equal((await app.inject({ url: '/admin/rate-limits' })).statusCode, 401)
  const reset = await app.inject({ method: 'DELETE', url: '/admin/rate-limits?ip=10.9.9.9', headers: admin })
  assert.equal(reset.statusCode, 200)
  assert.deepEqual(reset.json(), { subject: 'ip:10.9.9.9', deleted: 2 })
  assert.equal((await app.inject({ url: '/a', remoteAddress: '10.9.9.9' })).statusCode, 200)
  assert.equal((await app.inject({ method: 'DELETE', url: '/admin/rate-limits', headers: admin })).statusCode, 400)
})
