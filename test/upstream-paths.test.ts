/**
 * Path rewriting (issue 3, item 8): prefix strip/replace and templates with parameters; no rewritten path can leave
 * the declared upstream prefix. Sent over real sockets so that the raw path reaches the gateway as written.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { defineRoutes, defineUpstream } from '../src/declare.js'
import { build } from './helper.js'
import { startUpstream } from './helpers/upstream.js'
import { listen, rawRequest } from './helpers/upstream-tools.js'

const TRAVERSALS = [
  '/api/../etc/passwd',
  '/api/a/../../etc/passwd',
  '/api/a/..',
  '/api/.',
  '/api/./x',
  '/api/a/%2e%2e/x',
  '/api/a/%2E%2E/x',
  '/api/a/.%2e/x',
  '/api/a/%2e./x',
  '/api/a/%2e',
  '/api/a/..;/x',
  '/api/a/..%3b/x',
  '/api/a%2F..%2Fadmin',
  '/api/a%2f..%2f..%2fadmin',
  '/api/a%5c..%5cadmin',
  '/api/a\\..\\admin',
  '/api//x',
  '/api/a//b',
  '/api/a/%252e%252e/x',
  '/api/a/%252f',
  '/api/a%00/x',
  '/%61pi/x',
  '/%2fapi/x',
]

test('prefix rewrite: traversal, encoded and doubled separators are refused (400) and never reach the upstream', async (t) => {
  const up = await startUpstream(t)
  const app = await build(t, {
    declare: [[
      defineUpstream({ name: 'svc', targets: [`${up.url}/base`] }),
      defineRoutes({ upstream: 'svc', prefix: '/api', rewrite: '/v1', routes: [{ method: 'GET', url: '/*' }, { method: 'GET', url: '' }] }),
    ]],
  })
  const port = await listen(app)
  for (const path of TRAVERSALS) {
    const res = await rawRequest(port, path)
    assert.ok(res.statusCode === 400 || res.statusCode === 404, `${path}: ${res.statusCode} ${res.body}`)
    if (res.statusCode === 400) assert.equal(JSON.parse(res.body).type, '/problems/GW_ERR_BAD_PATH', path)
  }
  assert.equal(up.hits, 0, `nothing reached the upstream: ${up.received.map((r) => r.url).join(' ')}`)

  // what is harmless passes, inside the upstream prefix
  const allowed: Array<[string, string]> = [
    ['/api/files/report.pdf', '/base/v1/files/report.pdf'],
    ['/api/a%2Eb', '/base/v1/a%2Eb'],
    ['/api/..hidden/x', '/base/v1/..hidden/x'],
    ['/api/x.../y', '/base/v1/x.../y'],
    ['/api/q?path=../../etc&x=%2e%2e', '/base/v1/q?path=../../etc&x=%2e%2e'],
    ['/api', '/base/v1'],
    ['/api?x=1', '/base/v1?x=1'],
    ['/api/', '/base/v1/'],
  ]
  for (const [path, expected] of allowed) {
    const res = await rawRequest(port, path)
    assert.equal(res.statusCode, 200, `${path}: ${res.body}`)
    assert.equal(JSON.parse(res.body).url, expected, path)
  }
})

test('template rewrite: parameters are encoded, dot segments and traversal in parameters are refused', async (t) => {
  const up = await startUpstream(t)
  const app = await build(t, {
    declare: [[
      defineUpstream({ name: 'files', targets: [up.url] }),
      defineRoutes({
        upstream: 'files',
        routes: [
          { method: 'GET', url: '/users/:id/files/:name', rewrite: '/storage/:id/:name' },
          { method: 'GET', url: '/docs/:slug', rewrite: '/v2/documents/:slug/latest' },
        ],
      }),
    ]],
  })
  const port = await listen(app)
  for (const path of [
    '/users/../files/x',
    '/users/./files/x',
    '/users/%2e%2e/files/x',
    '/users/..%2F..%2Fetc/files/passwd',
    '/users/42/files/..',
    '/users/42/files/%2e%2e',
    '/users/42/files/a%2fb',
    '/users/42/files/a%5cb',
    '/docs/..%2f..%2fadmin',
    '/docs/..',
    '/docs/%252e%252e',
  ]) {
    const res = await rawRequest(port, path)
    assert.ok(res.statusCode === 400 || res.statusCode === 404, `${path}: ${res.statusCode} ${res.body}`)
    if (res.statusCode === 400) assert.equal(JSON.parse(res.body).type, '/problems/GW_ERR_BAD_PATH', path)
  }
  assert.equal(up.hits, 0, `nothing reached the upstream: ${up.received.map((r) => r.url).join(' ')}`)

  const allowed: Array<[string, string]> = [
    ['/users/42/files/report.pdf', '/storage/42/report.pdf'],
    ['/users/42/files/report.pdf?v=2', '/storage/42/report.pdf?v=2'],
    ['/users/a%20b/files/x', '/storage/a%20b/x'],
    // a decoded "?" or "=" in a parameter stays part of the segment, it cannot start a query
    ['/users/x%3Fadmin=1/files/y', '/storage/x%3Fadmin%3D1/y'],
    ['/users/%C3%A9t%C3%A9/files/y', '/storage/%C3%A9t%C3%A9/y'],
    ['/docs/intro', '/v2/documents/intro/latest'],
    ['/docs/..hidden', '/v2/documents/..hidden/latest'],
  ]
  for (const [path, expected] of allowed) {
    const res = await rawRequest(port, path)
    assert.equal(res.statusCode, 200, `${path}: ${res.body}`)
    assert.equal(JSON.parse(res.body).url, expected, path)
  }
})
