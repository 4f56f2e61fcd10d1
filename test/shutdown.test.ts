import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { request } from 'undici'
import { start } from '../src/server.js'
import { startUpstream } from './helpers/upstream.js'
import { startRedis, redisCommand } from './helpers/redis.js'

const src = join(dirname(fileURLToPath(import.meta.url)), '..', 'src', 'index.js')

function routesDir (upstream: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'gw-routes-'))
  writeFileSync(join(dir, 'svc.mjs'), `import { defineUpstream, defineRoutes } from ${JSON.stringify(src)}
export default [
  defineUpstream({ name: 'svc', targets: [${JSON.stringify(upstream)}] }),
  defineRoutes({ upstream: 'svc', routes: [{ method: 'GET', url: '/slow' }] }),
]
`)
  return dir
}

test('stop(): in-flight requests finish, readiness turns 503, new connections are refused, Redis is closed', async (t) => {
  const redis = await startRedis(t)
  const up = await startUpstream(t, (_req, res) => { setTimeout(() => { res.writeHead(200, { 'content-type': 'text/plain' }); res.end('done') }, 400) })
  const running = await start({ PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'silent', REDIS_URL: redis.url, ROUTES_DIR: routesDir(up.url) })
  t.after(() => running.stop())
  const before = Number(String(await redisCommand(redis, 'INFO', 'clients')).match(/connected_clients:(\d+)/)?.[1])
  assert.ok(before >= 2, 'the gateway and this probe are connected')

  const inflight = Array.from({ length: 5 }, () => request(`${running.url}/slow`).then(async (r) => ({ status: r.statusCode, body: await r.body.text() })))
  await new Promise((r) => setTimeout(r, 100))
  const stopping = running.stop('SIGTERM')
  const results = await Promise.all(inflight)
  assert.deepEqual(results, Array.from({ length: 5 }, () => ({ status: 200, body: 'done' })), 'no accepted request was lost')
  await stopping
  await assert.rejects(request(`${running.url}/slow`), 'the listener is closed')
  const after = Number(String(await redisCommand(redis, 'INFO', 'clients')).match(/connected_clients:(\d+)/)?.[1])
  assert.equal(after, 1, 'only this probe is still connected: the gateway closed Redis')
})

test('during the drain /health/ready answers 503 so load balancers stop sending', async (t) => {
  const up = await startUpstream(t, (_req, res) => { setTimeout(() => { res.end('done') }, 600) })
  const running = await start({ PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'silent', ROUTES_DIR: routesDir(up.url) })
  const pending = request(`${running.url}/slow`)
  await new Promise((r) => setTimeout(r, 100))
  const stopping = running.stop()
  const ready = await running.app.inject('/health/ready')
  assert.equal(ready.statusCode, 503)
  assert.match(ready.json().reason, /shutting down/)
  assert.equal((await pending).statusCode, 200)
  await stopping
})
