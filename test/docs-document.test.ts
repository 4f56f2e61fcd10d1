import { test } from 'node:test'
import assert from 'node:assert/strict'
import SwaggerParser from '@apidevtools/swagger-parser'
import { parse as parseYaml } from 'yaml'
import type { FastifyInstance } from 'fastify'
import { defineRoutes, defineUpstream } from '../src/declare.js'
import { buildApp } from '../src/app.js'
import { build, testConfig } from './helper.js'
import { startUpstream } from './helpers/upstream.js'

type Json = Record<string, any>

/** routes with JWT auth need a verifier configured */
const JWT = { JWT_SECRET: 'docs-test-secret-docs-test-secret-0123' }

async function documentOf (app: FastifyInstance): Promise<Json> {
  const res = await app.inject({ url: '/openapi.json' })
  assert.equal(res.statusCode, 200)
  assert.match(String(res.headers['content-type']), /^application\/json/)
  return res.json()
}

/** A real validator, plus what it does not check for 3.x: unique operation ids, path parameters declared. */
async function assertValid (doc: Json): Promise<void> {
  await SwaggerParser.validate(structuredClone(doc) as never)
  const ids = new Set<string>()
  for (const [path, item] of Object.entries(doc.paths as Json)) {
    for (const [method, op] of Object.entries(item as Json)) {
      assert.ok(!ids.has(op.operationId), `duplicate operationId ${op.operationId}`)
      ids.add(op.operationId)
      const declared = new Set((op.parameters ?? []).filter((p: Json) => p.in === 'path').map((p: Json) => p.name))
      for (const m of path.matchAll(/\{([^}]+)\}/g)) assert.ok(declared.has(m[1]), `${method} ${path}: path parameter ${m[1]} not declared`)
    }
  }
}

const op = (doc: Json, method: string, path: string): Json => {
  const o = doc.paths?.[path]?.[method.toLowerCase()]
  assert.ok(o !== undefined, `${method} ${path} is not in the document; paths: ${Object.keys(doc.paths ?? {}).join(', ')}`)
  return o
}

const Thing = { type: 'object', properties: { id: { type: 'string' }, name: { type: 'string' } }, required: ['id', 'name'] }

function shop (url: string) {
  return [
    defineUpstream({ name: 'things', description: 'Things the shop sells', targets: [url] }),
    defineUpstream({ name: 'people', targets: [url] }),
    defineRoutes({
      upstream: 'things',
      prefix: '/things',
      rewrite: '/internal/v2/things',
      auth: { apiKey: true, jwt: true, scopes: ['things:read'] },
      rateLimit: { max: 100, per: '1m' },
      cache: { ttl: '30s', vary: ['accept-language'], staleIfError: '5m' },
      routes: [
        { method: 'GET', url: '', summary: 'List things', schema: { querystring: { type: 'object', properties: { q: { type: 'string', description: 'search words' } } }, response: { 200: { type: 'array', items: Thing } } } },
        { method: 'GET', url: '/:id', operationId: 'getThing', description: 'One thing by id.', schema: { response: { 200: Thing } } },
        { method: 'POST', url: '', cache: false, rateLimit: { max: 5, per: '10s', quota: { max: 1000, per: '1d' } }, auth: { apiKey: { header: 'x-shop-key', bearer: true }, scopes: ['things:write'] }, schema: { body: Thing, response: { 201: Thing } } },
        { method: ['PUT', 'PATCH'], url: '/:id', cache: false, operationId: 'updateThing' },
      ],
    }),
    defineRoutes({
      upstream: 'people',
      prefix: '/people',
      tags: ['directory'],
      routes: [
        { method: 'GET', url: '/:team/:person', rewrite: '/teams/:team/members/:person' },
        { method: 'DELETE', url: '/*' },
      ],
    }),
  ]
}

test('the document: client paths, tags, operation ids, parameters and schemas; valid OpenAPI 3.1', async (t) => {
  const up = await startUpstream(t)
  const app = await build(t, { declare: shop(up.url), env: JWT })
  const doc = await documentOf(app)
  await assertValid(doc)
  assert.equal(doc.openapi, '3.1.0')
  assert.deepEqual(doc.info, { title: 'API', version: '1.0.0' })

  // paths as clients call them, prefix included; never the upstream's rewritten path
  assert.deepEqual(Object.keys(doc.paths).sort(), ['/people/{team}/{person}', '/people/{wildcard}', '/things', '/things/{id}'])
  assert.ok(!JSON.stringify(doc.paths).includes('/internal/v2'))

  // one tag per upstream service, described from its declaration; a file's own tags win
  assert.deepEqual(doc.tags, [{ name: 'things', description: 'Things the shop sells' }, { name: 'directory' }])
  assert.deepEqual(op(doc, 'GET', '/things').tags, ['things'])
  assert.deepEqual(op(doc, 'GET', '/people/{team}/{person}').tags, ['directory'])

  // operation ids: declared, declared on a multi-method route (method in front), or generated from method + path
  assert.equal(op(doc, 'GET', '/things').operationId, 'getThings')
  assert.equal(op(doc, 'GET', '/things/{id}').operationId, 'getThing')
  assert.equal(op(doc, 'PUT', '/things/{id}').operationId, 'putUpdateThing')
  assert.equal(op(doc, 'PATCH', '/things/{id}').operationId, 'patchUpdateThing')
  assert.equal(op(doc, 'POST', '/things').operationId, 'postThings')
  assert.equal(op(doc, 'GET', '/people/{team}/{person}').operationId, 'getPeopleByTeamByPerson')
  assert.equal(op(doc, 'DELETE', '/people/{wildcard}').operationId, 'deletePeopleWildcard')

  // summaries, descriptions, parameters and schemas as declared
  const list = op(doc, 'GET', '/things')
  assert.equal(list.summary, 'List things')
  assert.deepEqual(list.parameters, [{ schema: { type: 'string' }, in: 'query', name: 'q', required: false, description: 'search words' }])
  assert.deepEqual(list.responses['200'].content['application/json'].schema, { type: 'array', items: Thing })
  assert.match(op(doc, 'GET', '/things/{id}').description, /^One thing by id\./)
  assert.deepEqual(op(doc, 'GET', '/people/{team}/{person}').parameters.map((p: Json) => [p.in, p.name, p.required]), [['path', 'team', true], ['path', 'person', true]])
  const post = op(doc, 'POST', '/things')
  assert.equal(post.requestBody.required, true)
  assert.deepEqual(post.requestBody.content['application/json'].schema, Thing)
  assert.deepEqual(post.responses['201'].content['application/json'].schema, Thing)
  // a route without a response schema: the upstream's answer, passed through
  assert.match(op(doc, 'DELETE', '/people/{wildcard}').responses.default.description, /people service/)
})

test('security: API-key and JWT schemes, either-of alternatives with the scopes each operation needs', async (t) => {
  const up = await startUpstream(t)
  const app = await build(t, { declare: shop(up.url), env: JWT })
  const doc = await documentOf(app)
  assert.deepEqual(Object.keys(doc.components.securitySchemes).sort(), ['apiKey', 'apiKeyBearer', 'apiKey_x-shop-key', 'bearerJwt'])
  assert.deepEqual({ ...doc.components.securitySchemes.apiKey, description: undefined }, { type: 'apiKey', in: 'header', name: 'X-API-Key', description: undefined })
  assert.equal(doc.components.securitySchemes['apiKey_x-shop-key'].name, 'X-Shop-Key')
  assert.deepEqual({ ...doc.components.securitySchemes.bearerJwt, description: undefined }, { type: 'http', scheme: 'bearer', bearerFormat: 'JWT', description: undefined })

  assert.deepEqual(op(doc, 'GET', '/things').security, [{ apiKey: ['things:read'] }, { bearerJwt: ['things:read'] }])
  assert.deepEqual(op(doc, 'POST', '/things').security, [{ 'apiKey_x-shop-key': ['things:write'] }, { apiKeyBearer: ['things:write'] }])
  assert.match(op(doc, 'POST', '/things').description, /API key in the `X-Shop-Key` header \(or as `Authorization: Bearer <key>`\)\. Scopes required: `things:write`/)
  // public routes have no security requirement
  assert.equal(op(doc, 'GET', '/people/{team}/{person}').security, undefined)
  assert.equal(doc.security, undefined)
})

test('policies: problem+json errors, rate-limit headers and the cache behaviour on the operations that have them', async (t) => {
  const up = await startUpstream(t)
  const app = await build(t, { declare: shop(up.url), env: JWT })
  const doc = await documentOf(app)
  const statuses = (o: Json): string[] => Object.keys(o.responses)

  assert.deepEqual(statuses(op(doc, 'GET', '/things')), ['200', '400', '401', '403', '429', '502', '503', '504'])
  assert.deepEqual(statuses(op(doc, 'POST', '/things')), ['201', '400', '401', '403', '413', '429', '502', '503', '504'])
  // public, not rate-limited, no schema: only the upstream failures
  assert.deepEqual(statuses(op(doc, 'GET', '/people/{team}/{person}')), ['502', '503', '504', 'default'])
  assert.deepEqual(op(doc, 'GET', '/things').responses['401'], { $ref: '#/components/responses/Unauthorized' })

  for (const name of ['BadRequest', 'Unauthorized', 'Forbidden', 'PayloadTooLarge', 'TooManyRequests', 'BadGateway', 'ServiceUnavailable', 'GatewayTimeout']) {
    assert.deepEqual(doc.components.responses[name].content, { 'application/problem+json': { schema: { $ref: '#/components/schemas/Problem' } } }, name)
  }
  assert.deepEqual(doc.components.schemas.Problem.required, ['type', 'title', 'status'])
  assert.deepEqual(Object.keys(doc.components.responses.TooManyRequests.headers), ['RateLimit-Limit', 'RateLimit-Remaining', 'RateLimit-Reset', 'RateLimit-Policy', 'Retry-After'])
  assert.deepEqual(Object.keys(doc.components.responses.Unauthorized.headers), ['WWW-Authenticate'])

  // rate-limited and cached GET: both sets of headers on the success answer, and the extensions
  const get = op(doc, 'GET', '/things')
  assert.deepEqual(Object.keys(get.responses['200'].headers), ['RateLimit-Limit', 'RateLimit-Remaining', 'RateLimit-Reset', 'RateLimit-Policy', 'X-Cache', 'Age'])
  assert.deepEqual(get['x-rate-limit'], { limit: 100, window: 60, burst: 100, cost: 1, by: 'client' })
  assert.deepEqual(get['x-cache'], { ttl: 30, scope: 'client', vary: ['accept-language'], staleIfError: 300 })
  assert.match(get.description, /\*\*Rate limit:\*\* 100 requests per minute per client\./)
  assert.match(get.description, /\*\*Cache:\*\* answers are cached by the gateway for 30 seconds, separately for each client, varying on `Accept-Language`/)
  // POST: rate-limited with a quota, not cached
  const post = op(doc, 'POST', '/things')
  assert.deepEqual(Object.keys(post.responses['201'].headers), ['RateLimit-Limit', 'RateLimit-Remaining', 'RateLimit-Reset', 'RateLimit-Policy'])
  assert.deepEqual(post['x-rate-limit'], { limit: 5, window: 10, burst: 5, cost: 1, by: 'client', quota: { limit: 1000, window: 86400 } })
  assert.equal(post['x-cache'], undefined)
  assert.match(post.description, /5 requests per 10 seconds per client\. Quota: 1000 requests per day\./)
  // neither
  const pub = op(doc, 'GET', '/people/{team}/{person}')
  assert.equal(pub['x-rate-limit'], undefined)
  assert.equal(pub['x-cache'], undefined)
  assert.equal(pub.responses.default.headers, undefined)
})

test('only declared routes: admin, health and the docs themselves stay out of the public document', async (t) => {
  const up = await startUpstream(t)
  const app = await build(t, { declare: shop(up.url), env: { ...JWT, ADMIN_TOKEN: 'a-long-enough-admin-token' } })
  assert.equal((await app.inject({ url: '/health/live' })).statusCode, 200)
  const doc = await documentOf(app)
  const text = JSON.stringify(doc.paths)
  for (const hidden of ['/admin', '/health', '/docs', '/openapi', '/metrics', '/problems']) assert.ok(!text.includes(`"${hidden}`), `${hidden} is in the document`)
  assert.ok(app.printRoutes().includes('admin'), 'the admin API is registered (and hidden)')
})

test('served as JSON and YAML (same document), with an ETag; the UI at /docs', async (t) => {
  const up = await startUpstream(t)
  const app = await build(t, { declare: shop(up.url), env: JWT })
  const json = await app.inject({ url: '/openapi.json' })
  const yaml = await app.inject({ url: '/openapi.yaml' })
  assert.equal(yaml.statusCode, 200)
  assert.match(String(yaml.headers['content-type']), /^application\/yaml/)
  assert.deepEqual(parseYaml(yaml.body), json.json())
  assert.ok(json.headers.etag)
  const again = await app.inject({ url: '/openapi.json', headers: { 'if-none-match': String(json.headers.etag) } })
  assert.equal(again.statusCode, 304)
  assert.equal(again.body, '')
  assert.equal((await app.inject({ url: '/openapi.yaml', headers: { 'if-none-match': `"other", W/${String(json.headers.etag)}` } })).statusCode, 304)
  assert.equal((await app.inject({ url: '/openapi.json', headers: { 'if-none-match': '"other"' } })).statusCode, 200)

  const ui = await app.inject({ url: '/docs' })
  assert.equal(ui.statusCode, 200)
  assert.match(String(ui.headers['content-type']), /text\/html/)
  assert.match(ui.body, /swagger-ui-bundle\.js/)
  assert.match(String(ui.headers['content-security-policy']), /script-src 'self'/)
  const bundle = await app.inject({ url: '/docs/static/swagger-ui-bundle.js' })
  assert.equal(bundle.statusCode, 200, 'the UI assets are served by the gateway itself')
  assert.deepEqual((await app.inject({ url: '/docs/json' })).json(), json.json())
})

test('DOCS=off serves nothing; DOCS_PATH and OPENAPI_PATH move or switch off the UI and the document', async (t) => {
  const up = await startUpstream(t)
  const off = await build(t, { declare: shop(up.url), env: { ...JWT, DOCS: 'off' } })
  for (const url of ['/openapi.json', '/openapi.yaml', '/docs', '/docs/json']) assert.equal((await off.inject({ url })).statusCode, 404, url)
  assert.equal(off.hasDecorator('swagger'), false)

  const moved = await build(t, { declare: shop(up.url), env: { ...JWT, DOCS_PATH: '/api-docs', OPENAPI_PATH: '/spec/v1', DOCS_TITLE: 'Shop API', DOCS_VERSION: '2.3.0', DOCS_SERVER_URL: 'https://api.example.com' } })
  assert.equal((await moved.inject({ url: '/openapi.json' })).statusCode, 404)
  assert.equal((await moved.inject({ url: '/docs' })).statusCode, 404)
  assert.equal((await moved.inject({ url: '/api-docs' })).statusCode, 200)
  const doc = (await moved.inject({ url: '/spec/v1.json' })).json()
  assert.deepEqual(doc.info, { title: 'Shop API', version: '2.3.0' })
  assert.deepEqual(doc.servers, [{ url: 'https://api.example.com' }])
  assert.match(String((await moved.inject({ url: '/api-docs' })).headers['content-security-policy']), /connect-src 'self' https:\/\/api\.example\.com/)

  const noUi = await build(t, { declare: shop(up.url), env: { ...JWT, DOCS_PATH: 'off' } })
  assert.equal((await noUi.inject({ url: '/docs' })).statusCode, 404)
  assert.equal((await noUi.inject({ url: '/openapi.json' })).statusCode, 200)

  const noDoc = await build(t, { declare: shop(up.url), env: { ...JWT, OPENAPI_PATH: 'off' } })
  assert.equal((await noDoc.inject({ url: '/openapi.json' })).statusCode, 404)
  assert.equal((await noDoc.inject({ url: '/docs/json' })).statusCode, 200)

  assert.throws(() => testConfig({ DOCS_PATH: 'docs' }), /DOCS_PATH: expected a path like \/docs, or off/)
  assert.throws(() => testConfig({ OPENAPI_PATH: '/openapi.json' }), /OPENAPI_PATH: expected a path without extension/)
})

test('a declared operationId used twice is a start-up error naming both routes', async () => {
  const routes = [
    defineUpstream({ name: 'svc', targets: ['http://127.0.0.1:9'] }),
    defineRoutes({ upstream: 'svc', routes: [{ method: 'GET', url: '/a', operationId: 'same' }, { method: 'GET', url: '/b', operationId: 'same' }] }),
  ]
  const err = await buildApp(testConfig(), { declarations: routes.map((exported, i) => ({ file: `routes/t-${i}.ts`, exported })) }).then(() => null, (e: Error & { code?: string }) => e)
  assert.ok(err !== null)
  assert.equal(err.code, 'GW_ERR_ROUTE_DECLARATION')
  assert.match(err.message, /routes\/t-1\.ts {2}GET \/b {2}operationId: "same" is already the operation id of GET \/a in routes\/t-1\.ts/)
})

test('a WebSocket route is documented as its upgrade: 101, or 426 without the handshake', async (t) => {
  const up = await startUpstream(t)
  const app = await build(t, {
    env: JWT,
    declare: [defineUpstream({ name: 'feed', targets: [up.url] }), defineRoutes({ upstream: 'feed', routes: [{ method: 'GET', url: '/live', websocket: true, summary: 'Live prices' }] })],
  })
  const doc = await documentOf(app)
  await assertValid(doc)
  const live = op(doc, 'GET', '/live')
  assert.deepEqual(Object.keys(live.responses), ['101', '426', '502', '503', '504'])
  assert.match(live.description, /\*\*WebSocket:\*\*/)
  assert.equal((await app.inject({ url: '/live' })).statusCode, 426)
})

test('the docs add nothing to the proxied routes: the same hooks with DOCS on and off, no marker left', async (t) => {
  const up = await startUpstream(t)
  const on = await build(t, { declare: shop(up.url), env: JWT })
  const off = await build(t, { declare: shop(up.url), env: { ...JWT, DOCS: 'off' } })
  // the docs' own routes are GETs: the other methods' route trees, hooks included, must be the same
  for (const method of ['POST', 'PUT', 'PATCH', 'DELETE'] as const) {
    const routes = (app: FastifyInstance): string => app.printRoutes({ method, includeHooks: true, commonPrefix: false })
    assert.ok(routes(on).includes('•'), method)
    assert.equal(routes(on), routes(off), method)
  }
  const res = await on.inject({ url: '/people/core/ada' })
  assert.equal(res.statusCode, 200)
  assert.equal(res.json().url, '/teams/core/members/ada')
  assert.ok(!JSON.stringify(await documentOf(on)).includes('x-gw-route'))
})
