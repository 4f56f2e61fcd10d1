/**
 * The benchmark cannot rot: one short round of `direct` and `passthrough` through the real harness (its own
 * redis-server, upstream and gateway processes) must print the table and write the JSON results. No timing is
 * asserted; the numbers only have to be there.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const RUN = join(dirname(fileURLToPath(import.meta.url)), '..', 'bench', 'run.js')

async function runHarness (args: string[], limitMs: number): Promise<{ code: number | null, stdout: string, stderr: string }> {
  return await new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [RUN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => { stdout += d.toString() })
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
    // SIGTERM lets the harness stop its own children; SIGKILL if even that hangs
    const term = setTimeout(() => child.kill('SIGTERM'), limitMs)
    const kill = setTimeout(() => child.kill('SIGKILL'), limitMs + 5000)
    child.once('error', reject)
    child.once('exit', (code) => { clearTimeout(term); clearTimeout(kill); resolve({ code, stdout, stderr }) })
  })
}

test('bench harness: one short round of direct, floor, passthrough and rateLimit gives the table and the JSON', { timeout: 90_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'bench-smoke-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const out = join(dir, 'result.json')

  // a warm-up that asks for more requests than its 0.3 s give at 10 connections: it goes on, a second at a time
  const res = await runHarness(['--rows', 'direct,floor,passthrough,rateLimit', '--rounds', '1', '--duration', '1', '--warmup', '0.3', '--warmup-requests', '1500', '--connections', '10', '--out', out], 60_000)
  assert.equal(res.code, 0, `harness failed:\n${res.stderr}\n${res.stdout}`)

  // the table: its header, one line per row with numbers (not n/a), and where the JSON went
  assert.match(res.stdout, /^row\s+req\/s\s+p50 ms\s+p99 ms\s+× direct.*redis cmd\/req\s+redis rt\/req\s+redis CPU µs\/req\s+errors$/m)
  assert.match(res.stdout, /^pinning: /m)
  assert.match(res.stdout, /^load: autocannon, 10 connections, 1 s per row after a warm-up of at least 0\.3 s and 1,500 requests, 1 round;/m)
  assert.match(res.stdout, /^direct\s+[\d,]+\s/m)
  assert.match(res.stdout, /^floor\s+[\d,]+\s/m, `floor did not run:\n${res.stdout}\n${res.stderr}`)
  assert.match(res.stdout, /^passthrough\s+[\d,]+\s/m, `passthrough did not run:\n${res.stdout}\n${res.stderr}`)
  assert.match(res.stdout, /^rateLimit\s+[\d,]+\s/m, `rateLimit did not run:\n${res.stdout}\n${res.stderr}`)
  assert.match(res.stdout, /results: /)

  assert.ok(existsSync(out), 'the JSON results file is written')
  const json = JSON.parse(readFileSync(out, 'utf8')) as {
    meta: { rounds: number, durationS: number, connections: number, rows: string[] }
    rows: Array<{ name: string, status: string, reason: string | null, rounds: Array<{ rps: number, completed: number, warmup: { seconds: number, requests: number }, cpuUsPerReq: number | null, rssPeakMb: number | null, errors: number, redis: { cmdsPerReq: number, cpuUsPerReq: number } }>, summary: { rps: number, ratioDirect: number[] } | null }>
  }
  assert.deepEqual(json.meta.rows, ['direct', 'floor', 'passthrough', 'rateLimit'])
  assert.equal(json.meta.rounds, 1)
  assert.equal(json.meta.connections, 10)
  for (const name of ['direct', 'floor', 'passthrough', 'rateLimit']) {
    const row = json.rows.find((r) => r.name === name)
    assert.ok(row !== undefined, `${name} is in the JSON`)
    assert.equal(row.status, 'ok', `${name}: ${row.reason ?? ''}`)
    assert.equal(row.rounds.length, 1)
    const r = row.rounds[0]
    assert.ok(r !== undefined && r.completed > 0 && r.rps > 0, `${name} answered requests`)
    assert.equal(r.errors, 0, `${name} answered without errors`)
    assert.ok(r.warmup.requests >= 1500 && r.warmup.seconds >= 0.3, `${name} was warmed up with at least 1,500 requests: ${JSON.stringify(r.warmup)}`)
    assert.ok(r.rssPeakMb !== null && r.rssPeakMb > 0, `${name} has a peak RSS`)
    assert.ok(row.summary !== null && row.summary.ratioDirect.length === 1)
    // Redis's own CPU is counted: the rate-limited row spends some, a row that never touches Redis next to none
    if (name === 'rateLimit') {
      assert.ok(r.redis.cmdsPerReq > 0 && r.redis.cpuUsPerReq > 0, `rateLimit: Redis commands and CPU per request: ${JSON.stringify(r.redis)}`)
    } else assert.equal(r.redis.cmdsPerReq, 0, `${name} sends no Redis command`)
  }

  // comparing the file with itself: every row, no change
  const cmp = await runHarness(['--compare', out, '--with', out], 20_000)
  assert.equal(cmp.code, 0, cmp.stderr)
  assert.match(cmp.stdout, /^passthrough\s+.*\+0\.0%/m)
})

test('bench harness: --ab puts a gateway row against the baseline, both start orders, and writes the JSON', { timeout: 90_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'bench-smoke-ab-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const out = join(dir, 'ab.json')

  const res = await runHarness(['--ab', '.', '--rows', 'passthrough:baseline', '--slices', '1', '--duration', '1', '--warmup', '0', '--connections', '10', '--out', out], 75_000)
  assert.equal(res.code, 0, `harness failed:\n${res.stderr}\n${res.stdout}`)
  assert.match(res.stdout, /^row\s+B÷A req\/s\s+B÷A CPU/m)
  assert.match(res.stdout, /^passthrough:baseline\s+\d+\.\d{3}\s+\d+\.\d{3}\s/m, `the row did not run:\n${res.stdout}\n${res.stderr}`)

  const json = JSON.parse(readFileSync(out, 'utf8')) as {
    slices: number
    rows: Array<{ row: string, status: string, reason?: string, rps?: number, cpu?: number, orders?: Array<{ firstStarted: string }>, cpuUs?: { a: number, b: number } }>
  }
  assert.equal(json.slices, 1)
  const row = json.rows[0]
  assert.ok(row !== undefined && row.row === 'passthrough:baseline')
  assert.equal(row.status, 'ok', row.reason)
  assert.ok(row.rps !== undefined && row.rps > 0 && row.cpu !== undefined && row.cpu > 0)
  assert.deepEqual(row.orders?.map((o) => o.firstStarted), ['A', 'B'])
  assert.ok(row.cpuUs !== undefined && row.cpuUs.a > 0 && row.cpuUs.b > 0, 'CPU per request of both processes')

  // one reference against itself, or the upstream itself, is refused with a reason rather than measured
  const bad = await runHarness(['--ab', '.', '--rows', 'baseline:baseline', '--slices', '1', '--duration', '0.5', '--warmup', '0', '--out', join(dir, 'bad.json')], 30_000)
  assert.equal(bad.code, 0, bad.stderr)
  assert.match(bad.stdout, /^baseline:baseline\s+n\/a: gateway rows, or a row against a reference \(baseline, floor\)/m)
})
