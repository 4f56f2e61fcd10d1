/**
 * `npm run bench -- --growth`: how the gateway's costs grow with what it is given.
 *   1. start time and RSS with 10, 1,000 and 10,000 declared routes (route files generated into a temp folder);
 *   2. per-request cost on a plain route with 1 vs 10,000 routes declared (should be flat: a radix-tree router);
 *   3. API-key look-up with 10 vs 100,000 issued keys (seeded straight into Redis through src/keys.ts): the same
 *      10 keys used (should be flat: in-process cache), and every request a different key out of 100,000
 *      (in-process cache misses: one Redis read each).
 * Same layout as the main bench: one redis-server and one upstream, each gateway its own pinned process.
 */
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { describeWarmUp, gatewayEnv, measure, startGateway, startInfra, type Infra, type Measured } from './bench.js'
import { httpRequest } from './lib/http.js'
import type { LoadSpec } from './lib/load.js'
import { DIST, freePort, memoryMb, sleep } from './lib/procs.js'
import { median, num, renderTable } from './lib/table.js'
import { NotAvailable } from './rows.js'

export const GROWTH_SECTIONS = ['startup', 'routes', 'keys'] as const
export type GrowthSection = typeof GROWTH_SECTIONS[number]

export interface GrowthOptions {
  rounds: number
  durationS: number
  warmupS: number
  warmupRequests: number
  connections: number
  pin: boolean
  /** which measurements: startup (10/1,000/10,000 routes), routes (1 vs 10,000), keys (10 vs 100,000) */
  sections: ReadonlySet<GrowthSection>
  log: (line: string) => void
}

const ROUTES_PER_FILE = 100
const DECLARE = pathToFileURL(join(DIST, 'src', 'declare.js')).href

/** route i: a mix like a real API (3 in 4 with a policy), each file a prefix of 100 routes */
function routePath (i: number): string { return `/g${Math.floor(i / ROUTES_PER_FILE)}/r${i}/items/1` }

export function generateRoutes (dir: string, count: number, mixed = true): { dir: string, files: number } {
  mkdirSync(dir, { recursive: true })
  writeFileSync(join(dir, 'upstream.mjs'), `import { defineUpstream } from '${DECLARE}'\nexport default defineUpstream({ name: 'bench', targets: ['http://127.0.0.1:9'] })\n`)
  let files = 0
  for (let start = 0; start < count; start += ROUTES_PER_FILE) {
    const routes: string[] = []
    for (let i = start; i < Math.min(count, start + ROUTES_PER_FILE); i++) {
      const policy = !mixed ? '' : [
        '',
        ', auth: { apiKey: true }',
        ', rateLimit: { max: 1000, per: \'1m\' }',
        ', cache: { ttl: \'30s\' }',
      ][i % 4] as string
      routes.push(`    { method: 'GET', url: '/r${i}/items/:id'${policy} },`)
    }
    const file = `routes-${String(files).padStart(4, '0')}.mjs`
    writeFileSync(join(dir, file), `import { defineRoutes } from '${DECLARE}'\nexport default defineRoutes({\n  upstream: 'bench',\n  prefix: '/g${files}',\n  routes: [\n${routes.join('\n')}\n  ],\n})\n`)
    files++
  }
  return { dir, files }
}

interface StartRow { routes: number, files: number, readyMs: number[], firstOkMs: number[], rssMb: number[], peakMb: number[], notes: string[], failure: string | null }
interface LoadRow { label: string, rounds: Array<{ rps: number, p50: number, p99: number, cpuUsPerReq: number | null, cmdsPerReq: number, readsPerReq: number, errors: number, statusCodes: Record<string, number> }>, failure: string | null }

interface Started { ms: number, rss: number | null, peak: number | null, stop: () => Promise<void>, pid: number, base: string }

async function startOnce (infra: Infra, name: string, routesDir: string, readyMs = 180_000): Promise<Started> {
  const port = await freePort()
  const t0 = performance.now()
  const server = await startGateway(infra, name, gatewayEnv(infra, port, {}, routesDir), port, null, readyMs)
  const ms = performance.now() - t0
  const mem = memoryMb(server.child.pid)
  return { ms, rss: mem?.current ?? null, peak: mem?.peak ?? null, pid: server.child.pid, base: server.base, stop: async () => { await server.child.stop(15_000) } }
}

/**
 * Poll until the route answers 200 (bounded): right after start a gateway may still shed load (503) or warm up.
 * Returns the wait and what was answered before the first 200.
 */
async function firstOk (base: string, path: string, headers: Record<string, string> = {}, limitMs = 30_000): Promise<{ ms: number, before: string }> {
  const t0 = performance.now()
  const seen = new Map<string, number>()
  let last = ''
  for (let i = 0; i < 3000 && performance.now() - t0 < limitMs; i++) {
    const a = await httpRequest(base + path, { headers })
    if (a.status === 200) {
      return { ms: performance.now() - t0, before: [...seen].map(([k, v]) => `${v}× ${k}`).join(', ') }
    }
    let code = String(a.status)
    try { code += ` ${(JSON.parse(a.body) as { type?: string }).type?.split('/').pop() ?? ''}` } catch { /* not a problem body */ }
    seen.set(code.trim(), (seen.get(code.trim()) ?? 0) + 1)
    last = `${a.status} ${a.body.slice(0, 160)}`
    await sleep(50)
  }
  throw new NotAvailable(`GET ${path} never answered 200 within ${limitMs / 1000} s; last: ${last}`)
}

function loadRound (m: Measured): LoadRow['rounds'][number] {
  const n = Math.max(1, m.load.completed)
  return {
    rps: m.load.rps,
    p50: m.load.p50,
    p99: m.load.p99,
    cpuUsPerReq: m.cpuUs === null ? null : m.cpuUs / n,
    cmdsPerReq: m.redis.commands / n,
    readsPerReq: m.redis.reads / n,
    errors: m.load.non2xx + m.load.errors,
    statusCodes: m.load.statusCodes,
  }
}

async function loadRow (infra: Infra, opts: GrowthOptions, label: string, routesDir: string, spec: (base: string) => Promise<LoadSpec>): Promise<LoadRow> {
  const row: LoadRow = { label, rounds: [], failure: null }
  for (let round = 1; round <= opts.rounds; round++) {
    let g: Started | null = null
    try {
      g = await startOnce(infra, `growth-${label.replace(/\W+/g, '-')}`, routesDir)
      const s = await spec(g.base)
      const r = loadRound(await measure(g.pid, s, infra, opts))
      row.rounds.push(r)
      const codes = Object.entries(r.statusCodes).map(([c, k]) => `${c} × ${k}`).join(', ')
      opts.log(`growth  ${label.padEnd(40)} round ${round}: ${Math.round(r.rps).toLocaleString('en-US')} req/s, p99 ${r.p99} ms, errors ${r.errors} (${codes})`)
    } catch (err) {
      row.failure = (err as Error).message
      opts.log(`growth  ${label.padEnd(40)} n/a: ${row.failure}`)
      if (err instanceof NotAvailable) break
    } finally {
      await g?.stop()
    }
  }
  return row
}

/** fn(0) … fn(count - 1), at most `width` at a time */
async function eachConcurrently (count: number, width: number, fn: (i: number) => Promise<void>): Promise<void> {
  let next = 0
  const worker = async (): Promise<void> => { for (let i = next++; i < count; i = next++) await fn(i) }
  await Promise.all(Array.from({ length: Math.min(width, count) }, worker))
}

/** Issue `count` keys straight into the store, as `keys create` would, with bounded concurrency. */
async function seedKeys (infra: Infra, count: number, log: (l: string) => void): Promise<string[]> {
  const { KeyRepository } = await import('../src/keys.js')
  const { RedisStore } = await import('../src/store/redis.js')
  const store = new RedisStore({ url: infra.redis.url, prefix: 'gw:', commandTimeoutMs: 10_000 })
  await store.init()
  const repo = new KeyRepository(store)
  const keys: string[] = new Array<string>(count)
  const t0 = performance.now()
  try {
    await eachConcurrently(count, 256, async (i) => { keys[i] = (await repo.create({ client: `bench-${i}`, name: `bench ${i}` })).key })
  } finally {
    await store.close()
  }
  log(`growth  issued ${count.toLocaleString('en-US')} API keys in ${((performance.now() - t0) / 1000).toFixed(1)} s`)
  return keys
}

/** One request with each key, 32 at a time: each must be accepted. */
async function warmKeys (base: string, path: string, keys: readonly string[]): Promise<void> {
  await eachConcurrently(keys.length, 32, async (i) => {
    const res = await httpRequest(base + path, { headers: { 'x-api-key': keys[i] as string } })
    if (res.status !== 200) throw new Error(`warming the key cache: key ${i} answered ${res.status}`)
  })
}

async function expectKeyAuth (base: string, path: string, key: string): Promise<void> {
  const anon = await httpRequest(base + path)
  if (anon.status === 200) throw new NotAvailable(`API keys are not enforced: an anonymous GET ${path} answered 200 (no auth plugin in plugins/)`)
  if (anon.status !== 401) throw new NotAvailable(`an anonymous GET ${path} answered ${anon.status}, expected 401: ${anon.body.slice(0, 160)}`)
  await firstOk(base, path, { 'x-api-key': key }, 10_000)
}

export async function runGrowth (opts: GrowthOptions): Promise<{ text: string, json: unknown }> {
  const infra = await startInfra(opts.pin, opts.log)
  const out: string[] = []
  const json: Record<string, unknown> = { meta: { date: new Date().toISOString(), node: process.version, pinning: infra.pinning.describe, redis: infra.redis.version, ...opts, sections: [...opts.sections], log: undefined } }
  try {
    out.push(
      `fastgate growth  ${String((json.meta as { date: string }).date)}  node ${process.version}  ${infra.pinning.describe}`,
      `load: autocannon, ${opts.connections} connections, ${opts.durationS} s after ${describeWarmUp(opts.warmupS, opts.warmupRequests)}; medians of ${opts.rounds} round(s), a fresh gateway each`,
    )
    // ---- 1. start time and RSS --------------------------------------------------------------------------------
    const sizes = opts.sections.has('startup') ? [10, 1_000, 10_000] : []
    const starts: StartRow[] = []
    for (const size of sizes) {
      const { dir, files } = generateRoutes(join(infra.tmp, `routes-${size}`), size)
      const row: StartRow = { routes: size, files: files + 1, readyMs: [], firstOkMs: [], rssMb: [], peakMb: [], notes: [], failure: null }
      for (let round = 1; round <= opts.rounds; round++) {
        await infra.redis.flush()
        let g: Started | null = null
        try {
          g = await startOnce(infra, `start-${size}`, dir)
          const ok = await firstOk(g.base, routePath(0))
          const mem = memoryMb(g.pid)
          row.readyMs.push(g.ms)
          row.firstOkMs.push(g.ms + ok.ms)
          if (ok.before !== '') row.notes.push(`round ${round}: before the first 200: ${ok.before}`)
          if (mem !== null) { row.rssMb.push(mem.current); row.peakMb.push(mem.peak) }
          opts.log(`growth  start with ${size.toLocaleString('en-US')} routes, round ${round}: ready in ${Math.round(g.ms)} ms, first 200 at ${Math.round(g.ms + ok.ms)} ms` +
            `${ok.before === '' ? '' : ` (before it: ${ok.before})`}, RSS ${num(mem?.current)} MB`)
        } catch (err) {
          row.failure = (err as Error).message
          opts.log(`growth  start with ${size} routes: ${row.failure}`)
          break
        } finally {
          await g?.stop()
        }
      }
      starts.push(row)
    }
    json.startup = starts
    if (starts.length > 0) out.push(
      '',
      'start-up: from spawn (Node start and module loading included) to /health/ready 200, and to the first 200 of a',
      'proxied route; RSS after that first answer. Routes mixed: 1 in 4 each plain, apiKey, rateLimit, cache',
      renderTable(
        [{ title: 'routes' }, { title: 'route files' }, { title: 'ready ms' }, { title: 'first 200 ms' }, { title: 'RSS after start MB' }, { title: 'peak RSS MB' }],
        starts.map((s) => s.readyMs.length === 0
          ? { span: `${num(s.routes).padStart(6)}  n/a: ${s.failure ?? '?'}` }
          : [num(s.routes), num(s.files), num(median(s.readyMs)), num(median(s.firstOkMs)), num(median(s.rssMb)), num(median(s.peakMb))]),
      ),
      ...starts.flatMap((s) => s.notes.map((n) => `  ${num(s.routes)} routes, ${n}`)),
    )

    // ---- 2. per-request cost, 1 vs 10,000 routes ----------------------------------------------------------------
    if (opts.sections.has('routes')) {
      const one = generateRoutes(join(infra.tmp, 'routes-1'), 1, false)
      const many = generateRoutes(join(infra.tmp, 'routes-10000'), 10_000).dir
      const plain = (i: number) => async (base: string): Promise<LoadSpec> => {
        const ok = await firstOk(base, routePath(i))
        if (ok.before !== '') opts.log(`growth  before the first 200 on ${routePath(i)} (${Math.round(ok.ms)} ms after ready): ${ok.before}`)
        return { base, path: routePath(i) }
      }
      const lat = [
        await loadRow(infra, opts, '1 route', one.dir, plain(0)),
        await loadRow(infra, opts, '10,000 routes (a plain one in the middle)', many, plain(5000)),
      ]
      json.latency = lat
      out.push('', 'per-request cost on a plain route', loadTable(lat, 'routes declared'))
    }

    // ---- 3. API-key look-up ----------------------------------------------------------------------------------
    if (opts.sections.has('keys')) {
      const keysDir = join(infra.tmp, 'routes-keys')
      mkdirSync(keysDir, { recursive: true })
      writeFileSync(join(keysDir, 'upstream.mjs'), `import { defineUpstream } from '${DECLARE}'\nexport default defineUpstream({ name: 'bench', targets: ['http://127.0.0.1:9'] })\n`)
      writeFileSync(join(keysDir, 'keys.mjs'), `import { defineRoutes } from '${DECLARE}'\nexport default defineRoutes({ upstream: 'bench', prefix: '/k', auth: { apiKey: true }, routes: [{ method: 'GET', url: '/items/:id' }] })\n`)
      const keyRows: LoadRow[] = []
      const path = '/k/items/1'
      const cycleOver = (keys: string[]) => async (base: string): Promise<LoadSpec> => {
        await expectKeyAuth(base, path, keys[0] as string)
        return { base, path, cycle: keys.map((k) => ({ path, headers: { 'x-api-key': k } })) }
      }
      try {
        await infra.redis.flush()
        const ten = await seedKeys(infra, 10, opts.log)
        const first = await loadRow(infra, opts, '10 issued, requests over all 10', keysDir, cycleOver(ten))
        keyRows.push(first)
        if (first.rounds.length === 0) throw new NotAvailable(first.failure ?? 'no round completed')
        await infra.redis.flush()
        const all = await seedKeys(infra, 100_000, opts.log)
        keyRows.push(await loadRow(infra, opts, '100,000 issued, requests over 10 of them', keysDir, cycleOver(all.slice(0, 10))))
        keyRows.push(await loadRow(infra, opts, '100,000 issued, 10,000 cached, requests on 1', keysDir, async (base) => {
          await expectKeyAuth(base, path, all[0] as string)
          // the in-process cache filled with 10,000 keys (API_KEY_CACHE_SIZE), then one of them used again and
          // again: the case where a cache that reorders its Map on every hit slowed down (plugins/auth.ts)
          await warmKeys(base, path, all.slice(0, 10_000))
          return { base, path, headers: { 'x-api-key': all[0] as string } }
        }))
        keyRows.push(await loadRow(infra, opts, '100,000 issued, each request another key', keysDir, async (base) => {
          await expectKeyAuth(base, path, all[0] as string)
          // more keys than the in-process cache holds (API_KEY_CACHE_SIZE), taken in turn: every look-up misses
          let n = 0
          return { base, path, headersPerRequest: () => ({ 'x-api-key': all[n++ % all.length] as string }) }
        }))
      } catch (err) {
        if (keyRows.length === 0 || keyRows[0]?.rounds.length !== 0) keyRows.push({ label: 'API-key look-up', rounds: [], failure: (err as Error).message })
      }
      json.keys = keyRows
      out.push('', 'API-key look-up (route with auth: { apiKey: true }; keys issued straight into Redis through src/keys.ts)', loadTable(keyRows, 'keys'))
    }
  } finally {
    await infra.stop()
  }
  return { text: out.join('\n'), json }
}

function loadTable (rows: LoadRow[], first: string): string {
  const base = median(rows[0]?.rounds.map((r) => r.rps) ?? [])
  return renderTable(
    [{ title: first, align: 'left' }, { title: 'req/s' }, { title: 'p50 ms' }, { title: 'p99 ms' }, { title: 'CPU µs/req' }, { title: `× first row` }, { title: 'redis cmd/req' }, { title: 'redis rt/req' }, { title: 'errors' }],
    rows.map((r) => {
      if (r.rounds.length === 0) return { span: `${r.label}  n/a: ${r.failure ?? '?'}` }
      const rps = median(r.rounds.map((x) => x.rps))
      return [
        r.label,
        num(rps),
        num(median(r.rounds.map((x) => x.p50)), 1),
        num(median(r.rounds.map((x) => x.p99)), 1),
        num(median(r.rounds.map((x) => x.cpuUsPerReq).filter((x): x is number => x !== null)), 1),
        base !== null && rps !== null ? (rps / base).toFixed(2) : '–',
        num(median(r.rounds.map((x) => x.cmdsPerReq)), 2),
        num(median(r.rounds.map((x) => x.readsPerReq)), 2),
        String(r.rounds.reduce((s, x) => s + x.errors, 0)),
      ]
    }),
  )
}
