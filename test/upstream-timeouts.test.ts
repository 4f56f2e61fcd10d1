/**
 * Timeouts per upstream (issue 3, item 4): connect, first byte, whole response; each one exceeded = 504
 * problem+json (or, for an answer already streaming to the client, a cut connection), and each one counts
 * against the target's passive health.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createServer as createTcpServer, type Socket } from 'node:net'
import { request as httpRequest } from 'node:http'
import { defineRoutes, defineUpstream, type UpstreamDeclaration } from '../src/declare.js'
import { build } from './helper.js'
import { startUpstream } from './helpers/upstream.js'
import { ADMIN_TOKEN, listen, targetState, upstreamState } from './helpers/upstream-tools.js'

function declare (upstream: Omit<UpstreamDeclaration, 'name'>) {
  return [
    defineUpstream({ name: 'svc', ...upstream }),
    defineRoutes({ upstream: 'svc', prefix: '/api', routes: [{ method: 'GET', url: '/*' }] }),
  ]
}

function assertTimeout (res: { statusCode: number, headers: Record<string, unknown>, json: () => any }, t0: number): void {
  assert.equal(res.statusCode, 504)
  assert.match(String(res.headers['content-type']), /^application\/problem\+json/)
  assert.equal(res.json().type, '/problems/GW_ERR_UPSTREAM_TIMEOUT')
  // the other timeouts are 30s: an answer this early comes from the one under test
  assert.ok(Date.now() - t0 < 10_000, `answered after ${Date.now() - t0}ms`)
}

test('connect timeout: a target whose TLS handshake never completes = 504', async (t) => {
  // accepts TCP and never says a word: the https connection is never established
  const sockets = new Set<Socket>()
  const silent = createTcpServer((s) => { sockets.add(s); s.on('error', () => {}) })
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve))
  t.after(() => { for (const s of sockets) s.destroy(); silent.close() })
  const port = (silent.address() as { port: number }).port
  const app = await build(t, {
    env: { ADMIN_TOKEN },
    declare: declare({ targets: [`https://127.0.0.1:${port}`], timeouts: { connect: '300ms', firstByte: '30s' }, passive: { failures: 2 } }),
  })
  for (let i = 0; i < 2; i++) {
    const t0 = Date.now()
    assertTimeout(await app.inject('/api/x'), t0)
  }
  assert.equal(targetState(await upstreamState(app, 'svc'), `https://127.0.0.1:${port}`).state, 'ejected', 'timeouts count as failures')
})

test('first-byte timeout: a target that never answers = 504', async (t) => {
  const hang = await startUpstream(t, () => {})
  const app = await build(t, { declare: declare({ targets: [hang.url], timeouts: { firstByte: '300ms' } }) })
  const t0 = Date.now()
  assertTimeout(await app.inject('/api/x'), t0)
  assert.equal(hang.hits, 1, 'a timeout is not retried')
})

test('whole-response timeout: a body that stalls = 504 when buffered, a cut connection when streaming', async (t) => {
  const stall = await startUpstream(t, (req, res) => {
    const big = req.url === '/api/big'
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': big ? 4 * 1024 * 1024 : 1000 })
    // a first part, then nothing more: every chunk arrives well within the first-byte/idle timeout (30s)
    res.write(Buffer.alloc(big ? 64 * 1024 : 10))
  })
  const app = await build(t, { declare: declare({ targets: [stall.url], timeouts: { firstByte: '30s', response: '400ms' } }) })
  const t0 = Date.now()
  assertTimeout(await app.inject('/api/small'), t0)

  // a large answer streams: its status and headers are already at the client when the time is up
  const port = await listen(app)
  const seen = await new Promise<{ status: number, bytes: number, outcome: string }>((resolve) => {
    let bytes = 0
    let status = 0
    httpRequest({ host: '127.0.0.1', port, path: '/api/big', agent: false }, (res) => {
      status = res.statusCode ?? 0
      res.on('data', (c: Buffer) => { bytes += c.length })
      res.on('end', () => resolve({ status, bytes, outcome: 'end' }))
      res.on('error', () => resolve({ status, bytes, outcome: 'cut' }))
      res.on('aborted', () => resolve({ status, bytes, outcome: 'cut' }))
    }).on('error', () => resolve({ status, bytes, outcome: 'cut' })).end()
  })
  assert.equal(seen.status, 200)
  assert.equal(seen.outcome, 'cut', 'the client sees a truncated answer, never a complete-looking one')
  assert.ok(seen.bytes < 4 * 1024 * 1024)
})
