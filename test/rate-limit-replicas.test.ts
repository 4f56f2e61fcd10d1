/**
 * Several gateway replicas as separate processes (`node dist/src/server.js`, routes from
 * test/fixtures/rate-limit/routes/) sharing one redis-server, driven over real HTTP on 127.0.0.1:
 * exact limits across replicas, and a Redis outage in the middle of a bounded load.
 */
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { dirname, join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import { Agent, request } from 'undici'
import { startRedis, redisCommand } from './helpers/redis.js'
import { startUpstream } from './helpers/upstream.js'

const here = dirname(fileURLToPath(import.meta.url))
const SERVER = join(here, '..', 'src', 'server.js')
const ROUTES = join(here, 'fixtures', 'rate-limit', 'routes')
const ADMIN = 'admin-token-for-replica-tests'

interface Replica { url: string, proc: ChildProcess, lines: string[] }
interface Answer { status: number, headers: Record<string, string | string[] | undefined>, body: string }

async function startReplica (t: TestContext, env: Record<string, string>): Promise<Replica> {
  const proc = spawn(process.execPath, [SERVER], {
    env: {
      PATH: process.env.PATH ?? '',
      PORT: '0',
      HOST: '127.0.0.1',
      ROUTES_DIR: ROUTES,
      LOG_LEVEL: 'info',
      ACCESS_LOG: 'false',
      // this shared 2-core machine is slow at times: no load shedding in the middle of a count
      PRESSURE_MAX_EVENT_LOOP_DELAY: '0',
      PRESSURE_MAX_HEAP_USED: '0',
      ADMIN_TOKEN: ADMIN,
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const lines: string[] = []
  let stderr = ''
  proc.stderr?.on('data', (d: Buffer) => { stderr += d.toString() })
  const exited = once(proc, 'exit')
  t.after(async () => {
    if (proc.exitCode !== null || proc.signalCode !== null) return
    const kill = setTimeout(() => proc.kill('SIGKILL'), 5000)
    proc.kill('SIGTERM')
    await exited
    clearTimeout(kill)
  })
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`replica did not start:\n${stderr}\n${lines.join('\n')}`)), 30_000)
    createInterface({ input: proc.stdout as NodeJS.ReadableStream }).on('line', (line) => {
      lines.push(line)
      try {
        const j = JSON.parse(line) as { msg?: string, url?: string }
        if (j.msg === 'gateway listening' && typeof j.url === 'string') { clearTimeout(timer); resolve(j.url) }
      } catch { /* not JSON */ }
    })
    proc.once('exit', (code) => { clearTimeout(timer); reject(new Error(`replica exited with ${code}:\n${stderr}`)) })
  })
  return { url, proc, lines }
}

async function get (agent: Agent, url: string, headers: Record<string, string> = {}): Promise<Answer> {
  // a request that hangs fails the test here: far longer than REDIS_COMMAND_TIMEOUT
  const res = await request(url, { dispatcher: agent, headers, headersTimeout: 8000, bodyTimeout: 8000 })
  return { status: res.statusCode, headers: res.headers, body: await res.body.text() }
}

async function adminStatus (agent: Agent, r: Replica): Promise<{ mode: string, fallbackChecks: number, storeErrors: number }> {
  const a = await get(agent, `${r.url}/admin/rate-limits`, { authorization: `Bearer ${ADMIN}` })
  assert.equal(a.status, 200, a.body)
  return JSON.parse(a.body)
}

const logged = (r: Replica, msg: RegExp): number => r.lines.filter((l) => msg.test(l)).length

for (const leases of [false, true]) {
  test(`three replicas sharing one Redis: 100 a minute means exactly 100 of 300 concurrent requests (${leases ? 'with leases' : 'RATE_LIMIT_LEASE=0'})`, async (t) => {
    await exactAcrossReplicas(t, leases)
  })
}

async function exactAcrossReplicas (t: TestContext, leases: boolean): Promise<void> {
  const redis = await startRedis(t)
  const up = await startUpstream(t)
  // Exact means every check is decided in Redis: on this shared 2-core machine, three cold replicas, Redis, the
  // upstream and the test compete for the CPU, and an answer can take longer than the 250ms default.
  const env = { REDIS_URL: redis.url, UPSTREAM_RL_SVC: up.url, REDIS_COMMAND_TIMEOUT: '3s', RATE_LIMIT_LEASE: leases ? '64' : '0', RATE_LIMIT_LEASE_MS: '300' }
  const replicas = await Promise.all([0, 1, 2].map(async () => await startReplica(t, env)))
  const agent = new Agent({ connections: 128 })
  t.after(() => agent.close())
  for (const r of replicas) assert.equal((await get(agent, `${r.url}/health/ready`)).status, 200)

  const answers = await Promise.all(Array.from({ length: 300 }, async (_, i) => await get(agent, `${(replicas[i % 3] as Replica).url}/rl/shared`)))
  const ok = answers.filter((a) => a.status === 200)
  const refused = answers.filter((a) => a.status === 429)
  assert.equal(ok.length, 100)
  assert.equal(refused.length, 200)
  assert.equal(up.hits, 100)
  const places = ok.map((a) => Number(a.headers['ratelimit-remaining']))
  if (!leases) {
    // every success saw its own place in the count, whichever replica answered it
    assert.deepEqual(places.sort((x, y) => x - y), Array.from({ length: 100 }, (_, i) => i))
  } else {
    // a replica counts the units it holds as still there: each success has its own place among its replica's
    for (const r of replicas) {
      const mine = answers.map((a, i) => ({ a, i })).filter(({ a, i }) => a.status === 200 && replicas[i % 3] === r).map(({ a }) => Number(a.headers['ratelimit-remaining']))
      assert.equal(new Set(mine).size, mine.length, `distinct places on one replica: ${mine.join(',')}`)
    }
    for (const p of places) assert.ok(p >= 0 && p < 100, `remaining ${p}`)
    let served = 0
    for (const r of replicas) served += (await adminStatus(agent, r) as unknown as { leaseServed: number }).leaseServed
    assert.ok(served > 0, 'some requests were decided from leases')
  }
  for (const a of answers) {
    assert.equal(a.headers['ratelimit-limit'], '100')
    assert.equal(a.headers['x-ratelimit-limit'], '100')
    assert.equal(a.headers['ratelimit-policy'], '100;w=60')
    const reset = Number(a.headers['ratelimit-reset'])
    assert.ok(reset >= 1 && reset <= 60, `reset ${reset}`)
  }
  for (const a of refused) {
    assert.match(String(a.headers['content-type']), /^application\/problem\+json/)
    assert.equal(JSON.parse(a.body).type, '/problems/GW_ERR_RATE_LIMITED')
    assert.equal(a.headers['ratelimit-remaining'], '0')
    assert.equal(a.headers['x-ratelimit-remaining'], '0')
    const retry = Number(a.headers['retry-after'])
    assert.ok(retry > 55 && retry <= 61, `Retry-After ${retry}`)
  }
  // one hash-tagged key for this client and route, gone after two windows
  const keys = (await redisCommand(redis, 'KEYS', 'gw:rl:*')) as string[]
  assert.equal(keys.length, 1)
  assert.match(keys[0] as string, /^gw:rl:\{ip:127\.0\.0\.1\}:[\w-]{12}$/)
  const ttl = Number(await redisCommand(redis, 'PTTL', keys[0] as string))
  assert.ok(ttl > 60_000 && ttl <= 120_000, `pttl ${ttl}`)
  // all 100 units were spent: the count is what was admitted, with or without leases
  assert.equal(Number(await redisCommand(redis, 'HGET', keys[0] as string, 'c')), 100)
}

test('Redis stopped under load: nothing hangs, each replica limits locally at limit/replicas; shared again after restart', async (t) => {
  const redis = await startRedis(t)
  const up = await startUpstream(t)
  const env = { REDIS_URL: redis.url, UPSTREAM_RL_SVC: up.url, RATE_LIMIT_REPLICAS: '3', RATE_LIMIT_ON_STORE_ERROR: 'local', REDIS_COMMAND_TIMEOUT: '1s' }
  const replicas = await Promise.all([0, 1, 2].map(async () => await startReplica(t, env)))
  const agent = new Agent({ connections: 32 })
  t.after(() => agent.close())
  const url = (i: number): string => `${(replicas[i % 3] as Replica).url}/rl/outage`

  // a bounded load (90 requests, 6 at a time); Redis dies when a third of it is sent
  let next = 0
  let stopped: Promise<void> | null = null
  const seen: number[] = []
  await Promise.all(Array.from({ length: 6 }, async () => {
    while (next < 90) {
      const i = next++
      if (i === 30) stopped = redis.stop()
      seen.push((await get(agent, url(i), { 'x-k': 'load' })).status)
    }
  }))
  await stopped
  assert.equal(seen.length, 90, 'every request was answered')
  assert.ok(seen.every((s) => s === 200 || s === 429), `statuses ${[...new Set(seen)].join(',')}`)

  // while Redis is away: each replica allows 30 / 3 = 10 for a fresh key, on its own
  for (const i of [0, 1]) {
    const local: Answer[] = []
    for (let n = 0; n < 15; n++) local.push(await get(agent, url(i), { 'x-k': 'during' }))
    assert.equal(local.filter((a) => a.status === 200).length, 10, `replica ${i}`)
    assert.equal(local[0]?.headers['ratelimit-limit'], '10')
    assert.equal(local[14]?.status, 429)
  }
  for (const r of replicas) {
    const s = await adminStatus(agent, r)
    assert.equal(s.mode, 'fallback')
    assert.equal(r.proc.exitCode, null, 'the process stays up')
    assert.equal((await get(agent, `${r.url}/health/live`)).status, 200)
  }

  // Redis back (empty, on the same port): each replica returns to shared limiting by itself
  await redis.start()
  const deadline = Date.now() + 25_000
  let probe = 0
  for (const r of replicas) {
    while ((await adminStatus(agent, r)).mode !== 'shared') {
      assert.ok(Date.now() < deadline, 'replicas went back to shared limiting')
      await get(agent, `${r.url}/rl/outage`, { 'x-k': `probe-${probe++}` })
      await sleep(100)
    }
  }
  const after = await Promise.all(Array.from({ length: 60 }, async (_, i) => await get(agent, url(i), { 'x-k': 'after' })))
  assert.equal(after.filter((a) => a.status === 200).length, 30, 'exact across replicas again')
  assert.equal(after.find((a) => a.status === 200)?.headers['ratelimit-limit'], '30')
  assert.equal(((await redisCommand(redis, 'KEYS', 'gw:rl:{h:x-k=after}:*')) as string[]).length, 1)
  // logged once per change of state, not per request (the log is buffered: written at least once a second)
  const logDeadline = Date.now() + 10_000
  while (!replicas.every((r) => logged(r, /limits are shared across replicas again/) > 0) && Date.now() < logDeadline) await sleep(100)
  for (const r of replicas) {
    assert.equal(logged(r, /rate limits: store unavailable/), 1)
    assert.equal(logged(r, /limits are shared across replicas again/), 1)
  }
})
