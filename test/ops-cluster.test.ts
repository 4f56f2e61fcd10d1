/**
 * Issue 10, multi-core: `node dist/src/cluster.js` with WORKERS=2 serves from both workers on one port over the
 * shared Redis, sums their metrics on METRICS_PORT, replaces a worker that dies, and on SIGTERM drains the workers
 * one at a time while the others keep serving, then exits 0.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { Agent, request as httpRequest } from 'node:http'
import { join } from 'node:path'
import { startUpstream } from './helpers/upstream.js'
import { freePort, startRedis } from './helpers/redis.js'
import { DIST, eventually, parseLines, parseMetrics, routesDir, spawnNode, value } from './fixtures/ops/helpers.js'

const TOKEN = 'admin-token-for-ops-tests'
const noKeepAlive = new Agent({ keepAlive: false })

/** one request on a new connection (the primary hands each connection to the next worker) */
function get (port: number, path: string, headers: Record<string, string> = {}): Promise<{ status: number, body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path, agent: noKeepAlive, headers: { connection: 'close', ...headers } }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => { body += c })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
      res.on('error', reject)
    })
    req.setTimeout(10_000, () => req.destroy(new Error('timeout')))
    req.on('error', reject)
    req.end()
  })
}

async function workerPid (port: number): Promise<number> {
  const res = await get(port, '/admin/overview', { authorization: `Bearer ${TOKEN}` })
  assert.equal(res.status, 200)
  return (JSON.parse(res.body) as { process: { pid: number } }).process.pid
}

test('WORKERS=2: both workers serve one port; metrics summed; a crashed worker is replaced; rolling SIGTERM', async (t) => {
  const redis = await startRedis(t)
  const up = await startUpstream(t, (req, res) => { setTimeout(() => { res.writeHead(200, { 'content-type': 'text/plain' }); res.end('ok') }, req.url?.includes('hold') === true ? 1500 : 20) })
  let started = 0
  up.server.on('request', (req: { url?: string }) => { if (req.url?.includes('hold') === true) started++ })
  const port = await freePort()
  const metricsPort = await freePort()
  const gw = spawnNode(t, join(DIST, 'src', 'cluster.js'), {
    WORKERS: '2', PORT: String(port), HOST: '127.0.0.1', METRICS_PORT: String(metricsPort), ADMIN_TOKEN: TOKEN,
    REDIS_URL: redis.url, ROUTES_DIR: routesDir(t, up.url), LOG_LEVEL: 'info', SHUTDOWN_TIMEOUT: '10s',
  })
  await gw.waitFor(/"msg":"cluster listening"/, 30_000)
  assert.doesNotMatch(gw.out, /without REDIS_URL/)

  // both workers answer on the one port
  const pids = new Set<number>()
  for (let i = 0; i < 20 && pids.size < 2; i++) pids.add(await workerPid(port))
  assert.equal(pids.size, 2, 'two worker processes served the requests')
  assert.ok(!pids.has(gw.proc.pid as number), 'the primary serves no requests')

  // metrics on METRICS_PORT are the sum over the workers
  for (let i = 0; i < 10; i++) {
    const res = await get(port, '/api/x')
    assert.equal(res.status, 200, res.body)
  }
  const scrape = async (): Promise<ReturnType<typeof parseMetrics>> => {
    const res = await get(metricsPort, '/metrics')
    assert.equal(res.status, 200)
    return parseMetrics(res.body)
  }
  let m = await scrape()
  assert.equal(value(m, 'gateway_requests_total', { route: '/api/*', method: 'GET', status_class: '2xx', upstream: 'svc' }), 10)
  assert.equal(value(m, 'gateway_cluster_workers'), 2)

  // a worker that dies is replaced
  const victim = [...pids][0] as number
  process.kill(victim, 'SIGKILL')
  const replaced = await eventually(async () => {
    const seen = new Set<number>()
    for (let i = 0; i < 6; i++) seen.add(await workerPid(port))
    return !seen.has(victim) && seen.size === 2 ? seen : undefined
  }, 'a new worker serves in place of the killed one', 30_000)
  assert.ok([...replaced].some((p) => !pids.has(p)))
  m = await scrape()
  assert.equal(value(m, 'gateway_cluster_worker_restarts_total'), 1)

  // rolling shutdown under load: slow requests in flight on both workers (each drain takes a while), and a loop of
  // requests on new connections; until the port closes after the last worker, every request is served
  const holds = Array.from({ length: 4 }, () => get(port, '/api/hold'))
  await eventually(() => started >= 4 ? true : undefined, 'the slow requests reach the upstream')
  let sigtermAt = 0
  const results: Array<{ at: number, outcome: number | string }> = []
  const load = (async () => {
    for (let i = 0; i < 400 && gw.proc.exitCode === null; i++) {
      const at = Date.now()
      try { results.push({ at, outcome: (await get(port, '/api/during')).status }) } catch (err) { results.push({ at, outcome: (err as NodeJS.ErrnoException).code ?? String(err) }) }
      await new Promise((r) => setTimeout(r, 10))
    }
  })()
  await new Promise((r) => setTimeout(r, 100))
  sigtermAt = Date.now()
  gw.proc.kill('SIGTERM')
  assert.equal(await gw.exited, 0)
  await load
  for (const h of await Promise.all(holds)) assert.deepEqual(h, { status: 200, body: 'ok' }, 'requests in flight on a draining worker complete')
  const firstRefused = results.findIndex((r) => r.outcome !== 200)
  const served = firstRefused === -1 ? results : results.slice(0, firstRefused)
  // once the last worker closes, the port closes: a connection caught in that instant is reset before any request
  // was read, later ones are refused; no request is answered with an error
  assert.ok(results.slice(firstRefused === -1 ? results.length : firstRefused).every((r) => r.outcome === 'ECONNREFUSED' || r.outcome === 'ECONNRESET'), `after the port closed, connections are refused: ${JSON.stringify(results.map((r) => r.outcome))}`)
  assert.ok(served.some((r) => r.at > sigtermAt), 'requests sent during the rolling shutdown were served')

  // one worker at a time: the first had stopped before the second began to drain
  const lines = parseLines(gw.out)
  const stopped = lines.filter((l) => l.msg === 'worker stopped')
  assert.equal(stopped.length, 2)
  assert.ok(stopped.every((l) => l.code === 0))
  const drains = lines.map((l, i) => ({ l, i })).filter(({ l }) => l.msg === 'shutting down: draining in-flight requests')
  const firstStopped = lines.indexOf(stopped[0] as Record<string, unknown>)
  assert.equal(drains.length, 2)
  assert.ok((drains[0]?.i ?? -1) < firstStopped && firstStopped < (drains[1]?.i ?? -1), 'the second worker began to drain after the first had stopped')
})

test('a configuration error is reported once by the primary, before any worker starts', async (t) => {
  const gw = spawnNode(t, join(DIST, 'src', 'cluster.js'), { WORKERS: 'many', PORT: 'eighty' })
  assert.equal(await gw.exited, 1)
  assert.match(gw.err, /WORKERS: expected/)
  assert.match(gw.err, /PORT: expected/)
  assert.equal(gw.out, '')
})

test('a wrong route file is reported once by the primary, and no worker starts', async (t) => {
  const gw = spawnNode(t, join(DIST, 'src', 'cluster.js'), { WORKERS: '2', PORT: '0', ROUTES_DIR: join(DIST, 'test', 'fixtures', 'routes-bad'), REDIS_URL: 'redis://127.0.0.1:1' })
  assert.equal(await gw.exited, 1)
  assert.equal(gw.err.match(/Invalid route declarations/g)?.length, 1)
  assert.doesNotMatch(gw.out, /worker listening/)
})

test('SIGHUP: a rolling restart replaces every worker while the port keeps serving (in-process store: warned)', async (t) => {
  const up = await startUpstream(t)
  const port = await freePort()
  const gw = spawnNode(t, join(DIST, 'src', 'cluster.js'), {
    WORKERS: '2', PORT: String(port), HOST: '127.0.0.1', ADMIN_TOKEN: TOKEN, ROUTES_DIR: routesDir(t, up.url), LOG_LEVEL: 'info',
  })
  await gw.waitFor(/"msg":"cluster listening"/, 30_000)
  assert.match(gw.out, /"level":40[^\n]*without REDIS_URL/, 'several workers over the in-process store: a warning')
  const before = new Set<number>()
  for (let i = 0; i < 20 && before.size < 2; i++) before.add(await workerPid(port))
  assert.equal(before.size, 2)

  const outcomes: Array<number | string> = []
  let restarting = true
  const load = (async () => {
    for (let i = 0; i < 1000 && restarting; i++) {
      try { outcomes.push((await get(port, '/api/during')).status) } catch (err) { outcomes.push((err as NodeJS.ErrnoException).code ?? String(err)) }
      await new Promise((r) => setTimeout(r, 10))
    }
  })()
  gw.proc.kill('SIGHUP')
  await gw.waitFor(/"msg":"rolling restart done"/, 40_000)
  restarting = false
  await load
  assert.ok(outcomes.length > 0 && outcomes.every((o) => o === 200), `every request during the restart was served: ${JSON.stringify(outcomes)}`)
  const after = new Set<number>()
  for (let i = 0; i < 20 && after.size < 2; i++) after.add(await workerPid(port))
  assert.equal(after.size, 2)
  for (const pid of after) assert.ok(!before.has(pid), 'every worker is new')
  gw.proc.kill('SIGTERM')
  assert.equal(await gw.exited, 0)
})
