/**
 * The log destination (src/log-destination.ts): batches in order, written at least every flushEveryMs; a stalled
 * reader never makes a write wait, the backlog is bounded, and what was lost is counted and reported; two
 * processes on one pipe (cluster workers) never split each other's lines.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { LogDestination } from '../src/log-destination.js'
import { STDOUT_BATCH } from '../src/server.js'
import { until } from './helpers/wait.js'

const MODULE = fileURLToPath(new URL('../src/log-destination.js', import.meta.url))

function tempDir (t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'gw-log-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

const line = (i: number, pad = 0): string => JSON.stringify({ i, pad: 'x'.repeat(pad) }) + '\n'

test('lines wait for a batch and go out in order: at minLength, at least every flushEveryMs, and on flush', async (t) => {
  const file = join(tempDir(t), 'out.log')
  const fd = openSync(file, 'w')
  const dest = new LogDestination(fd, { minLength: 200, flushEveryMs: 100 })
  t.after(() => { dest.end(); closeSync(fd) })
  const size = (): number => statSync(file).size
  const flushed = async (): Promise<void> => { await new Promise<void>((resolve) => { dest.flush(() => { resolve() }) }) }

  dest.write(line(0))
  dest.write(line(1))
  await new Promise((resolve) => setTimeout(resolve, 20))
  assert.equal(size(), 0, 'two short lines wait')
  for (let i = 2; i < 12; i++) dest.write(line(i))
  assert.ok(await until(async () => size() > 0, 3000), 'past minLength the batch is written')
  dest.write(line(12))
  assert.ok(await until(async () => readFileSync(file, 'utf8').endsWith(line(12)), 3000), 'the timer writes what waits')
  dest.write(line(13))
  await flushed()
  const got = readFileSync(file, 'utf8').split('\n').filter((l) => l !== '').map((l) => (JSON.parse(l) as { i: number }).i)
  assert.deepEqual(got, Array.from({ length: 14 }, (_, i) => i))
})

test('the gateway\'s stdout batch: 64 Ki characters wait as one batch and go out whole, in order, multi-byte characters intact', async (t) => {
  const file = join(tempDir(t), 'out.log')
  const fd = openSync(file, 'w')
  const dest = new LogDestination(fd, { minLength: STDOUT_BATCH, flushEveryMs: 0 })
  t.after(() => { dest.end(); closeSync(fd) })
  const size = (): number => statSync(file).size
  // lines of about 320 characters, with characters of 2 and 3 UTF-8 bytes
  const lineOf = (i: number): string => JSON.stringify({ i, path: `/items/${i}?q=é€`, pad: 'x'.repeat(280) }) + '\n'
  let chars = 0
  let i = 0
  for (let next = lineOf(i); chars + next.length < STDOUT_BATCH; next = lineOf(++i)) { dest.write(next); chars += next.length }
  await new Promise((resolve) => setTimeout(resolve, 50))
  assert.equal(size(), 0, `${i} lines (${chars} characters) under the batch size wait`)
  // the line that crosses the batch size sends the batch, itself included; the next one waits for the next batch
  dest.write(lineOf(i++))
  dest.write(lineOf(i++))
  assert.ok(await until(async () => size() > 0, 3000), 'past the batch size the batch is written')
  await new Promise((resolve) => setTimeout(resolve, 50))
  const text = readFileSync(file, 'utf8')
  assert.ok(text.endsWith(lineOf(i - 2)), 'one write, whole: the file ends with the line that crossed the batch size')
  const got = text.split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as { i: number, path: string })
  assert.deepEqual(got.map((l) => l.i), Array.from({ length: i - 1 }, (_, k) => k))
  assert.equal(got[7]?.path, '/items/7?q=é€')
  await new Promise<void>((resolve) => { dest.flush(() => { resolve() }) })
  assert.ok(readFileSync(file, 'utf8').endsWith(lineOf(i - 1)), 'flush writes the line that waited')
})

test('a stalled reader: writing never waits, the backlog is bounded, what is dropped is counted and reported once it reads again', async (t) => {
  const dir = tempDir(t)
  const out = join(dir, 'read.log')
  // a reader that does not read stdin until SIGUSR2
  const reader = spawn(process.execPath, ['-e', `
    const fs = require('node:fs')
    process.on('SIGUSR2', () => { process.stdin.pipe(fs.createWriteStream(${JSON.stringify(out)})).on('finish', () => process.exit(0)) })
    process.stdout.write('ready\\n')
    setTimeout(() => {}, 60000)
  `], { stdio: ['pipe', 'pipe', 'inherit'] })
  t.after(() => { reader.kill('SIGKILL') })
  await new Promise<void>((resolve) => { reader.stdout.once('data', () => { resolve() }) })
  // the pipe's write end, non-blocking as libuv made it
  const fd = (reader.stdin as unknown as { _handle: { fd: number } })._handle.fd
  const dest = new LogDestination(fd, { minLength: 1, flushEveryMs: 0, maxBacklog: 100_000 })

  // 500 KB against a 64 KiB pipe and a 100,000-character backlog; each write returns at once
  const total = 1000
  let refused = 0
  for (let i = 0; i < total; i++) if (!dest.write(line(i, 500))) refused++
  // let the thread pool meet the full pipe a few times
  await new Promise((resolve) => setTimeout(resolve, 100))
  assert.ok(refused > 0 && dest.dropped === refused, `lines past the backlog are dropped and counted (${refused})`)
  const dropped = dest.dropped

  reader.kill('SIGUSR2')
  dest.write(line(total))
  const out1 = await Promise.race([
    new Promise<string>((resolve) => { dest.flush(() => { resolve('flushed') }) }),
    new Promise<string>((resolve) => setTimeout(() => { resolve('timed out') }, 20_000)),
  ])
  assert.equal(out1, 'flushed', 'once the reader reads, everything waiting goes out')
  assert.equal(dest.dropped, dropped, 'nothing more was dropped')
  reader.stdin.end()
  await new Promise((resolve) => reader.once('exit', resolve))

  const lines = readFileSync(out, 'utf8').split('\n').filter((l) => l !== '')
  const parsed = lines.map((l) => JSON.parse(l) as { i?: number, dropped?: number, msg?: string })
  const warnings = parsed.filter((p) => p.msg?.startsWith('log lines dropped') === true)
  assert.equal(warnings.length, 1)
  assert.equal(warnings[0]?.dropped, dropped)
  const ids = parsed.filter((p) => typeof p.i === 'number').map((p) => p.i as number)
  assert.equal(ids.length + dropped, total + 1, 'every line was either written whole or counted as dropped')
  assert.deepEqual(ids, [...ids].sort((a, b) => a - b), 'in order')
  assert.equal(ids.at(-1), total)
})

test('two processes on one pipe, like cluster workers: batches up to 4096 bytes never split each other\'s lines', async (t) => {
  const script = (who: string): string => `
    import { LogDestination } from ${JSON.stringify(MODULE)}
    const dest = new LogDestination(1, { minLength: 2048, maxWrite: 4096, flushEveryMs: 0 })
    for (let i = 0; i < 3000; i++) dest.write(JSON.stringify({ who: ${JSON.stringify(who)}, i, pad: 'y'.repeat((i * 379) % 1400) }) + '\\n')
    dest.flush(() => { dest.end() })
  `
  const both = spawn('sh', ['-c', `"${process.execPath}" --input-type=module -e "$A" & "${process.execPath}" --input-type=module -e "$B"; wait`], {
    env: { ...process.env, A: script('a'), B: script('b') },
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  t.after(() => { both.kill('SIGKILL') })
  // a slow reader, so that the pipe fills and the writers contend for it
  let text = ''
  both.stdout.setEncoding('utf8')
  both.stdout.on('data', (c: string) => {
    text += c
    both.stdout.pause()
    setTimeout(() => both.stdout.resume(), 2)
  })
  const code = await new Promise((resolve) => both.once('close', resolve))
  assert.equal(code, 0)
  const lines = text.split('\n').filter((l) => l !== '')
  const seen: Record<string, number[]> = { a: [], b: [] }
  for (const l of lines) {
    const p = JSON.parse(l) as { who: string, i: number }
    seen[p.who]?.push(p.i)
  }
  assert.equal(lines.length, 6000)
  assert.deepEqual(seen.a, Array.from({ length: 3000 }, (_, i) => i))
  assert.deepEqual(seen.b, Array.from({ length: 3000 }, (_, i) => i))
})
