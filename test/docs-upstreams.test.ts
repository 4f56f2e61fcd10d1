import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pino from 'pino'
import SwaggerParser from '@apidevtools/swagger-parser'
import { stringify as toYaml } from 'yaml'
import type { FastifyInstance } from 'fastify'
import { defineRoutes, defineUpstream, type DeclaredPlugin } from '../src/declare.js'
import { buildApp } from '../src/app.js'
import { build, testConfig } from './helper.js'
import { startUpstream } from './helpers/upstream.js'
import { freePort } from './helpers/redis.js'

type Json = Record<string, any>
const JWT = { JWT_SECRET: 'docs-test-secret-docs-test-secret-0123' }

async function specsDir (t: TestContext, files: Record<string, unknown>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'gw-docs-'))
  t.after(() => rm(dir, { recursive: true, force: true }))
  for (const [name, content] of Object.entries(files)) {
    await writeFile(join(dir, name), typeof content === 'string' ? content : name.endsWith('.json') ? JSON.stringify(content) : toYaml(content))
  }
  return dir
}

/** The gateway's warnings, as the operator sees them in the log. */
function logCapture (): { logger: pino.Logger, warnings: () => string[] } {
  const lines: Json[] = []
  const logger = pino({ level: 'warn' }, { write (s: string) { lines.push(JSON.parse(s)) } })
  return { logger, warnings: () => lines.filter((l) => l.level === 40).map((l) => String(l.msg)) }
}

async function docOf (app: FastifyInstance): Promise<Json> {
  const res = await app.inject({ url: '/openapi.json' })
  assert.equal(res.statusCode, 200)
  const doc = res.json()
  await SwaggerParser.validate(structuredClone(doc))
  return doc
}

async function startupError (routes: DeclaredPlugin[], env: Record<string, string>): Promise<Error & { code?: string }> {
  const err = await buildApp(testConfig({ ...JWT, ...env }), { declarations: routes.map((exported, i) => ({ file: `routes/t-${i}.ts`, exported })) })
    .then(async (app) => { await app.close(); return null }, (e: Error) => e)
  assert.ok(err !== null, 'start-up must fail')
  return err
}

/** An OpenAPI 3.0 document of an inventory service, as many services still publish them. */
const inventory30 = {
  openapi: '3.0.3',
  info: { title: 'Inventory', version: '4.1.0', description: 'Stock levels per warehouse.' },
  paths: {
    '/v1/stock/{sku}': {
      parameters: [{ $ref: '#/components/parameters/Sku' }],
      get: {
        operationId: 'getStock',
        summary: 'Stock of one SKU',
        description: 'Counts per warehouse.',
        parameters: [
          { name: 'warehouse', in: 'query', schema: { type: 'string' }, description: 'only this warehouse' },
          { name: 'X-Client-Id', in: 'header', schema: { type: 'string' }, description: 'set by the gateway' },
        ],
        responses: {
          200: { description: 'The stock', content: { 'application/json': { schema: { $ref: '#/components/schemas/Stock' } } } },
          401: { description: 'the service\'s own idea of auth', content: { 'application/json': { schema: { type: 'object' } } } },
          404: { $ref: '#/components/responses/NotFound' },
        },
      },
      put: {
        summary: 'Set the stock',
        requestBody: { required: true, content: { 'application/json': { schema: { $ref: '#/components/schemas/Stock' } } } },
        responses: { 204: { description: 'Stored' } },
      },
    },
    '/v1/reports/daily': { get: { summary: 'Daily report', responses: { 200: { description: 'CSV', content: { 'text/csv': { schema: { type: 'string' } } } } } } },
  },
  components: {
    parameters: { Sku: { name: 'sku', in: 'path', required: true, description: 'The stock keeping unit', schema: { type: 'string', pattern: '^[A-Z0-9-]+$' }, example: 'KB-1' } },
    schemas: {
      Stock: { type: 'object', properties: { sku: { type: 'string' }, counts: { type: 'array', items: { $ref: '#/components/schemas/Count' } }, note: { type: 'string', nullable: true } }, required: ['sku'] },
      Count: { type: 'object', properties: { warehouse: { type: 'string' }, units: { type: 'integer', minimum: 0, exclusiveMinimum: true } } },
      Unused: { type: 'string' },
    },
    responses: { NotFound: { description: 'No such SKU', content: { 'application/json': { schema: { type: 'object', properties: { error: { type: 'string' } } } } } } },
  },
}

test('an upstream document in openapi/upstreams/<name>: schemas and descriptions merged through the rewrite', async (t) => {
  const up = await startUpstream(t)
  const dir = await specsDir(t, { 'inventory.yaml': inventory30 })
  const log = logCapture()
  const app = await build(t, {
    env: { ...JWT, OPENAPI_UPSTREAMS_DIR: dir },
    loggerInstance: log.logger,
    declare: [
      defineUpstream({ name: 'inventory', targets: [up.url] }),
      defineRoutes({
        upstream: 'inventory',
        prefix: '/stock',
        rewrite: '/v1/stock',
        auth: { apiKey: true, scopes: ['stock'] },
        routes: [{ method: ['GET', 'PUT'], url: '/:id' }, { method: 'GET', url: '/:id/history' }],
      }),
      defineRoutes({ upstream: 'inventory', prefix: '/reports', rewrite: '/v1/reports', routes: [{ method: 'GET', url: '/daily', summary: 'Today\'s report' }] }),
    ],
  })
  const doc = await docOf(app)
  assert.deepEqual(log.warnings(), [])
  const get = doc.paths['/stock/{id}'].get
  // the gateway's path and parameter name; the upstream's description, schema and example
  assert.equal(get.summary, 'Stock of one SKU')
  assert.match(get.description, /^Counts per warehouse\.\n\n\*\*Authentication:\*\*/)
  assert.equal(get.operationId, 'getStockById')
  assert.deepEqual(get.parameters, [
    { schema: { type: 'string', pattern: '^[A-Z0-9-]+$' }, in: 'path', name: 'id', required: true, description: 'The stock keeping unit', example: 'KB-1' },
    { name: 'warehouse', in: 'query', schema: { type: 'string' }, description: 'only this warehouse' },
  ], 'the X-Client-Id header is the gateway\'s to set, not the client\'s')
  // responses: the upstream's, with its components renamed per service; the gateway's own 401
  assert.deepEqual(get.responses['200'].content['application/json'].schema, { $ref: '#/components/schemas/inventory.Stock' })
  assert.equal(get.responses['404'].description, 'No such SKU')
  assert.deepEqual(get.responses['401'], { $ref: '#/components/responses/Unauthorized' })
  const put = doc.paths['/stock/{id}'].put
  assert.deepEqual(put.requestBody.content['application/json'].schema, { $ref: '#/components/schemas/inventory.Stock' })
  assert.equal(put.responses['204'].description, 'Stored')
  // components copied on demand (Count through Stock; Unused not), upgraded from 3.0 to 3.1
  assert.deepEqual(Object.keys(doc.components.schemas).filter((k) => k.startsWith('inventory.')).sort(), ['inventory.Count', 'inventory.Stock'])
  assert.deepEqual(doc.components.schemas['inventory.Stock'].properties.note, { type: ['string', 'null'] })
  assert.deepEqual(doc.components.schemas['inventory.Stock'].properties.counts.items, { $ref: '#/components/schemas/inventory.Count' })
  assert.deepEqual(doc.components.schemas['inventory.Count'].properties.units, { type: 'integer', exclusiveMinimum: 0 })
  // a route the upstream document does not describe: documented from its declaration only
  assert.deepEqual(Object.keys(doc.paths['/stock/{id}/history'].get.responses), ['401', '403', '429', '502', '503', '504', 'default'])
  // the route's own summary wins; the upstream's non-JSON answer is kept
  const report = doc.paths['/reports/daily'].get
  assert.equal(report.summary, 'Today\'s report')
  assert.deepEqual(report.responses['200'].content, { 'text/csv': { schema: { type: 'string' } } })
  // the tag is described from the upstream document when the declaration has no description
  assert.deepEqual(doc.tags, [{ name: 'inventory', description: 'Stock levels per warehouse.' }])
})

test('template rewrites and server base paths map to the upstream\'s paths', async (t) => {
  const up = await startUpstream(t)
  const legacy = {
    openapi: '3.1.0',
    info: { title: 'Legacy', version: '1' },
    servers: [{ url: 'https://legacy.internal/{base}', variables: { base: { default: 'api' } } }],
    paths: {
      '/items/{itemId}/detail': { get: { summary: 'Item detail', parameters: [{ name: 'itemId', in: 'path', required: true, schema: { type: 'integer' } }], responses: { 200: { description: 'Detail', content: { 'application/json': { schema: { type: 'object' } } } } } } },
      '/files': { get: { summary: 'List files', responses: { 200: { description: 'Files' } } } },
    },
  }
  const dir = await specsDir(t, { 'legacy.json': legacy })
  const app = await build(t, {
    env: { ...JWT, OPENAPI_UPSTREAMS_DIR: dir },
    declare: [
      defineUpstream({ name: 'legacy', targets: [up.url] }),
      defineRoutes({
        upstream: 'legacy',
        routes: [
          // the upstream paths are below the server's base path /api
          { method: 'GET', url: '/things/:id', rewrite: '/api/items/:id/detail' },
          { method: 'GET', url: '/list', rewrite: '/api/files' },
        ],
      }),
    ],
  })
  const doc = await docOf(app)
  const thing = doc.paths['/things/{id}'].get
  assert.equal(thing.summary, 'Item detail')
  assert.deepEqual(thing.parameters, [{ schema: { type: 'integer' }, in: 'path', name: 'id', required: true }])
  assert.equal(doc.paths['/list'].get.summary, 'List files')
  assert.equal((await app.inject({ url: '/things/7' })).json().url, '/api/items/7/detail')
})

test('a wildcard route with a prefix rewrite documents each upstream operation below it', async (t) => {
  const up = await startUpstream(t)
  const spec = {
    openapi: '3.1.0',
    info: { title: 'Files', version: '1' },
    paths: {
      '/v2/files': { get: { summary: 'List files', responses: { 200: { description: 'Files' } } } },
      '/v2/files/{name}': { get: { summary: 'One file', parameters: [{ name: 'name', in: 'path', required: true, description: 'file name', schema: { type: 'string' } }], responses: { 200: { description: 'A file' } } }, delete: { summary: 'Delete a file', responses: { 204: { description: 'Deleted' } } } },
      '/v2/other': { post: { summary: 'not a GET or DELETE', responses: { 200: { description: 'ok' } } } },
      '/elsewhere': { get: { summary: 'not below the rewrite', responses: { 200: { description: 'ok' } } } },
    },
  }
  const dir = await specsDir(t, { 'files.json': spec })
  const app = await build(t, {
    env: { ...JWT, OPENAPI_UPSTREAMS_DIR: dir },
    declare: [
      defineUpstream({ name: 'files', targets: [up.url] }),
      defineRoutes({ upstream: 'files', prefix: '/storage', rewrite: '/v2', auth: { apiKey: true }, routes: [{ method: ['GET', 'DELETE'], url: '/*' }, { method: 'GET', url: '/files', summary: 'Our own listing' }] }),
    ],
  })
  const doc = await docOf(app)
  assert.deepEqual(Object.keys(doc.paths), ['/storage/{wildcard}', '/storage/files/{name}', '/storage/files'])
  assert.equal(doc.paths['/storage/files'].get.summary, 'Our own listing', 'a concrete route is not replaced by an expansion')
  const one = doc.paths['/storage/files/{name}']
  assert.equal(one.get.summary, 'One file')
  assert.equal(one.get.operationId, 'getStorageFilesByName')
  assert.equal(one.get.parameters[0].description, 'file name')
  assert.deepEqual(one.get.security, [{ apiKey: [] }])
  assert.equal(one.delete.summary, 'Delete a file')
  assert.ok(one.delete.responses['401'] && one.delete.responses['204'])
  assert.equal(doc.paths['/storage/other'], undefined)
  // the served answers still come from the wildcard route
  const res = await app.inject({ method: 'DELETE', url: '/storage/files/a.txt' })
  assert.equal(res.statusCode, 401)
})

test('conflicts: where a route and the upstream document declare different schemas, the route wins and a warning names both', async (t) => {
  const up = await startUpstream(t)
  const spec = {
    openapi: '3.1.0',
    info: { title: 'Users', version: '1' },
    paths: {
      '/u/{id}': { get: { summary: 'A user', responses: { 200: { description: 'The user', content: { 'application/json': { schema: { $ref: '#/components/schemas/User' } } } } } } },
      '/u': {
        get: { summary: 'Users', responses: { 200: { description: 'Users', content: { 'application/json': { schema: { type: 'array', items: { $ref: '#/components/schemas/User' } } } } } } },
        post: { requestBody: { content: { 'application/json': { schema: { type: 'object', properties: { name: { type: 'string' } } } } } }, responses: { 201: { description: 'Created' } } },
      },
    },
    components: { schemas: { User: { type: 'object', description: 'a user', properties: { id: { type: 'string', description: 'the id' }, name: { type: 'string' } }, required: ['name', 'id'] } } },
  }
  const dir = await specsDir(t, { 'people.json': spec })
  const log = logCapture()
  const User = { type: 'object', properties: { id: { type: 'string' }, name: { type: 'string' } }, required: ['id', 'name'] }
  const app = await build(t, {
    env: { ...JWT, OPENAPI_UPSTREAMS_DIR: dir },
    loggerInstance: log.logger,
    declare: [
      defineUpstream({ name: 'people', targets: [up.url] }),
      defineRoutes({
        upstream: 'people',
        prefix: '/people',
        rewrite: '/u',
        routes: [
          // the same schema (descriptions aside): no warning
          { method: 'GET', url: '/:id', schema: { response: { 200: User } } },
          // a different one: warning, the route's is documented
          { method: 'GET', url: '', schema: { response: { 200: { type: 'array', items: { type: 'string' } } } } },
          { method: 'POST', url: '', schema: { body: { type: 'object', properties: { name: { type: 'string' }, email: { type: 'string' } } } } },
        ],
      }),
    ],
  })
  const doc = await docOf(app)
  const warnings = log.warnings()
  assert.equal(warnings.length, 2, warnings.join('\n'))
  assert.ok(warnings.some((w) => w.includes('people.json') && w.includes('GET /u (route GET /people in routes/test-1.ts)') && w.includes('response 200: the route\'s schema differs')), warnings.join('\n'))
  assert.ok(warnings.some((w) => w.includes('POST /u') && w.includes('request body: the route\'s schema differs')), warnings.join('\n'))
  assert.deepEqual(doc.paths['/people'].get.responses['200'].content['application/json'].schema, { type: 'array', items: { type: 'string' } })
  assert.equal(doc.paths['/people/{id}'].get.responses['200'].description, 'The user', 'the upstream\'s description fills the route\'s default')
  // logged once each, though the document is served in two forms
  await app.inject({ url: '/openapi.yaml' })
  await app.inject({ url: '/docs/yaml' })
  assert.equal(log.warnings().length, 2)
})

test('the upstream\'s `openapi` field names a file; a file that matches no upstream is a warning', async (t) => {
  const up = await startUpstream(t)
  const spec = { openapi: '3.1.0', info: { title: 'Svc', version: '1' }, paths: { '/x': { get: { summary: 'From the named file', responses: { 200: { description: 'ok' } } } } } }
  const dir = await specsDir(t, { 'svc-v3.yml': spec, 'nobody.json': spec })
  const log = logCapture()
  const app = await build(t, {
    env: { ...JWT, OPENAPI_UPSTREAMS_DIR: dir },
    loggerInstance: log.logger,
    declare: [defineUpstream({ name: 'svc', targets: [up.url], openapi: 'svc-v3.yml' }), defineRoutes({ upstream: 'svc', routes: [{ method: 'GET', url: '/x' }] })],
  })
  const doc = await docOf(app)
  assert.equal(doc.paths['/x'].get.summary, 'From the named file')
  assert.deepEqual(log.warnings().map((w) => w.replace(dir, '<dir>')).filter((w) => w.includes('nobody.json')).length, 1)
  assert.match(log.warnings().join('\n'), /nobody\.json: matches no upstream; name it <upstream>\.json or set `openapi: 'nobody\.json'` on the upstream/)
})

test('a broken shipped document stops the start-up, naming the file and where in it', async (t) => {
  const routes = (openapi?: string) => [
    defineUpstream({ name: 'svc', targets: ['http://127.0.0.1:9'], ...(openapi !== undefined ? { openapi } : {}) }),
    defineRoutes({ upstream: 'svc', routes: [{ method: 'GET', url: '/x' }] }),
  ]
  const cases: Array<[string, Record<string, unknown>, string | undefined, RegExp]> = [
    ['not JSON', { 'svc.json': '{ "openapi": "3.1.0", ' }, undefined, /svc\.json {2}upstream svc: is not valid JSON/],
    ['not YAML', { 'svc.yaml': 'openapi: [3.1\n  paths: {' }, undefined, /svc\.yaml {2}upstream svc: is not valid YAML/],
    ['Swagger 2.0', { 'svc.json': { swagger: '2.0', info: {}, paths: {} } }, undefined, /svc\.json {2}upstream svc {2}swagger: Swagger 2\.0 documents are not supported; convert it to OpenAPI 3/],
    ['no version', { 'svc.json': { paths: {} } }, undefined, /openapi: expected an OpenAPI version 3\.0\.x or 3\.1\.x, got undefined/],
    ['a dangling $ref', { 'svc.json': { openapi: '3.1.0', info: { title: 'x', version: '1' }, paths: { '/x': { get: { responses: { 200: { description: 'ok', content: { 'application/json': { schema: { $ref: '#/components/schemas/Nope' } } } } } } } } } }, undefined, /svc\.json {2}upstream svc {2}paths\.\/x\.get\.responses\.200\.content\.application\/json\.schema: \$ref "#\/components\/schemas\/Nope" does not resolve/],
    ['an external $ref', { 'svc.json': { openapi: '3.1.0', info: { title: 'x', version: '1' }, paths: { '/x': { $ref: 'other.yaml#/paths/x' } } } }, undefined, /\$ref "other\.yaml#\/paths\/x" points outside this document; bundle it/],
    ['a response without description', { 'svc.json': { openapi: '3.1.0', info: { title: 'x', version: '1' }, paths: { '/x': { get: { responses: { 200: {} } } } } } }, undefined, /paths\.\/x\.get\.responses\.200: a response needs a description/],
    ['a missing named file', {}, 'svc.json', /svc\.json {2}upstream svc {2}openapi: the file does not exist/],
    ['a file outside the folder', {}, '../svc.json', /upstream svc {2}openapi: expected a \.json, \.yaml or \.yml file in .* or an http\(s\) URL, got "\.\.\/svc\.json"/],
    ['two candidates', { 'svc.json': { openapi: '3.1.0', paths: {} }, 'svc.yaml': { openapi: '3.1.0', paths: {} } }, undefined, /upstream svc: several documents match \(svc\.json, svc\.yaml\); keep one/],
  ]
  for (const [name, files, openapi, expected] of cases) {
    const dir = await specsDir(t, files)
    const err = await startupError(routes(openapi), { OPENAPI_UPSTREAMS_DIR: dir })
    assert.equal(err.code, 'GW_ERR_OPENAPI_UPSTREAM', `${name}: ${err.message}`)
    assert.match(err.message, expected, name)
  }
  // with the docs off, nothing is read
  const dir = await specsDir(t, { 'svc.json': 'not json' })
  const app = await buildApp(testConfig({ ...JWT, DOCS: 'off', OPENAPI_UPSTREAMS_DIR: dir }), { declarations: routes().map((exported, i) => ({ file: `routes/t-${i}.ts`, exported })) })
  await app.close()
})

test('a document at a URL is fetched at start-up; a failure or a timeout is a warning and the gateway starts', async (t) => {
  const spec = { openapi: '3.1.0', info: { title: 'Remote', version: '1' }, paths: { '/x': { get: { summary: 'From the URL', responses: { 200: { description: 'ok' } } } } } }
  const remote = await startUpstream(t, (req, res) => {
    if (req.url === '/openapi.json') { res.writeHead(200, { 'content-type': 'application/json' }); res.end(JSON.stringify(spec)); return }
    if (req.url === '/openapi.yaml') { res.writeHead(200, { 'content-type': 'application/yaml' }); res.end(toYaml(spec)); return }
    if (req.url === '/broken.json') { res.writeHead(200, { 'content-type': 'application/json' }); res.end('{"swagger":"2.0"}'); return }
    if (req.url === '/slow.json') return // never answers
    if (req.url === '/private.json') {
      const ok = req.headers.authorization === 'Basic ' + Buffer.from('reader:pa55word').toString('base64')
      res.writeHead(ok ? 200 : 401, { 'content-type': 'application/json' }); res.end(ok ? JSON.stringify(spec) : '{}'); return
    }
    res.writeHead(500); res.end('no')
  })
  const routes = (openapi: string) => [defineUpstream({ name: 'svc', targets: [remote.url], openapi }), defineRoutes({ upstream: 'svc', routes: [{ method: 'GET', url: '/x' }] })]
  const dir = await specsDir(t, {})
  for (const path of ['/openapi.json', '/openapi.yaml']) {
    const log = logCapture()
    const app = await build(t, { env: { ...JWT, OPENAPI_UPSTREAMS_DIR: dir }, loggerInstance: log.logger, declare: routes(remote.url + path) })
    assert.equal((await docOf(app)).paths['/x'].get.summary, 'From the URL', path)
    assert.deepEqual(log.warnings(), [])
  }
  const failures: Array<[string, RegExp]> = [
    ['/slow.json', /upstream svc: could not load its OpenAPI document from http:\/\/127\.0\.0\.1:\d+\/slow\.json: no answer within 300 ms; its routes are documented from their declarations only/],
    ['/missing.json', /could not load its OpenAPI document from .*\/missing\.json: HTTP 500/],
    ['/broken.json', /the OpenAPI document at .*\/broken\.json is invalid \(swagger: Swagger 2\.0 documents are not supported/],
  ]
  for (const [path, expected] of failures) {
    const log = logCapture()
    const app = await build(t, { env: { ...JWT, OPENAPI_UPSTREAMS_DIR: dir, OPENAPI_FETCH_TIMEOUT: '300ms' }, loggerInstance: log.logger, declare: routes(remote.url + path) })
    const doc = await docOf(app)
    assert.equal(doc.paths['/x'].get.summary, undefined, path)
    assert.match(log.warnings().join('\n'), expected)
  }
  // user info in the URL is sent as Basic credentials, and credentials never reach the log
  const creds = remote.url.replace('http://', 'http://reader:pa55word@')
  const privately = await build(t, { env: { ...JWT, OPENAPI_UPSTREAMS_DIR: dir }, declare: routes(creds + '/private.json') })
  assert.equal((await docOf(privately)).paths['/x'].get.summary, 'From the URL')
  const logged = logCapture()
  await build(t, { env: { ...JWT, OPENAPI_UPSTREAMS_DIR: dir }, loggerInstance: logged.logger, declare: routes(creds + '/missing.json?token=s3cr3t') })
  assert.match(logged.warnings().join('\n'), /from http:\/\/127\.0\.0\.1:\d+\/missing\.json\?…: HTTP 500/)
  assert.ok(!/pa55word|s3cr3t|reader/.test(logged.warnings().join('\n')))
  // a port nobody listens on
  const log = logCapture()
  const closed = `http://127.0.0.1:${await freePort()}/openapi.json`
  const app = await build(t, { env: { ...JWT, OPENAPI_UPSTREAMS_DIR: dir }, loggerInstance: log.logger, declare: routes(closed) })
  assert.ok(app.hasRoute({ method: 'GET', url: '/x' }))
  assert.match(log.warnings().join('\n'), /could not load its OpenAPI document from http:\/\/127\.0\.0\.1:\d+\/openapi\.json: .*ECONNREFUSED/)
})
