/**
 * `npm run bench -- --ab OTHER_CHECKOUT [--rows …] [--slices N] [--duration S]`: this build (A) against another
 * build of the gateway (B: a built checkout, e.g. `git worktree add /tmp/old HEAD~1 && (cd /tmp/old && npm ci &&
 * npm run build)`), row by row, on the same core under the same load. A row written `x:y` runs row x on A and
 * row y on B: with `--ab .` (this build twice) that measures what one policy costs, e.g. `apiKey:passthrough`.
 * One side may be `baseline` (the reference process), e.g. `full:baseline`: the ratios without the drift.
 *
 * The sequential table compares rows measured seconds apart, and on these shared 2-core machines the speed of a
 * core drifts by tens of percent within a minute. Here both gateways run side by side, idle but warm, and the load
 * alternates between them in short slices (A B, then B A, …): each pair of slices sees the same machine, and
 * the median of the pair ratios is the answer. The process started second measured about 5% slower than the first
 * on identical builds, so every row is run twice, once with each build started first, and the two medians are
 * combined (geometric mean): that start-order bias cancels out.
 */
import { join } from 'node:path'
import { measure, rowsByName, startInfra, startServer, warmUp, type Infra, type Server } from './bench.js'
import { memoryMb } from './lib/procs.js'
import { median, renderTable } from './lib/table.js'
import type { RowDef } from './rows.js'

export interface AbOptions {
  other: string
  rows: string[]
  slices: number
  durationS: number
  warmupS: number
  warmupRequests: number
  connections: number
  pin: boolean
  log: (line: string) => void
}

export interface AbRow {
  row: string
  status: 'ok' | 'n/a'
  reason?: string
  /** B ÷ A, geometric mean of the two start orders' medians */
  rps?: number
  cpu?: number
  /** each start order's median of the per-pair ratios, and the spread of those ratios */
  orders?: Array<{ firstStarted: 'A' | 'B', rps: number, cpu: number, rpsMin: number, rpsMax: number }>
  /** median CPU µs per request of each build, and the peak RSS seen */
  cpuUs?: { a: number, b: number }
  rssPeakMb?: { a: number | null, b: number | null }
}

const geo = (x: number, y: number): number => Math.sqrt(x * y)

async function startPair (infra: Infra, rows: { a: RowDef, b: RowDef }, thisDist: string, otherDist: string, aFirst: boolean): Promise<{ a: Server, b: Server }> {
  const start = async (which: 'a' | 'b'): Promise<Server> => {
    const row = rows[which]
    return await startServer(row, infra, null, which === 'a' ? thisDist : otherDist, `${row.name}-${which}`)
  }
  if (aFirst) { const a = await start('a'); return { a, b: await start('b') } }
  const b = await start('b')
  return { a: await start('a'), b }
}

export async function runAb (opts: AbOptions, thisDist: string): Promise<AbRow[]> {
  const otherDist = join(opts.other, 'dist')
  const infra = await startInfra(opts.pin, opts.log)
  const out: AbRow[] = []
  try {
    for (const spec of opts.rows) {
      // "x" compares row x of both builds; "x:y" row x (A) against row y (B), both of this build when DIR is "."
      const [nameA, nameB] = spec.includes(':') ? spec.split(':') as [string, string] : [spec, spec]
      const rowA = rowsByName([nameA])[0] as RowDef
      const rowB = rowsByName([nameB])[0] as RowDef
      // a reference (baseline, floor: a process of its own, not a build of the gateway) may stand on either side,
      // e.g. full:baseline; the same reference on both sides would be one program against itself
      if (rowA.kind === 'upstream' || rowB.kind === 'upstream' || (rowA.kind === 'reference' && rowA === rowB)) {
        out.push({ row: spec, status: 'n/a', reason: 'gateway rows, or a row against a reference (baseline, floor)' })
        continue
      }
      const orders: NonNullable<AbRow['orders']> = []
      const cpuA: number[] = []
      const cpuB: number[] = []
      let rss: { a: number | null, b: number | null } = { a: null, b: null }
      try {
        for (const aFirst of [true, false]) {
          await infra.redis.flush()
          const { a, b } = await startPair(infra, { a: rowA, b: rowB }, thisDist, otherDist, aFirst)
          try {
            const ctx = (s: Server) => ({ base: s.base, adminToken: infra.adminToken, jwtSecret: infra.jwtSecret, logFile: s.logFile, features: infra.features })
            const specA = await rowA.prepare(ctx(a))
            const specB = await rowB.prepare(ctx(b))
            const load = { connections: opts.connections, durationS: opts.durationS, warmupS: 0, warmupRequests: 0 }
            // warm both: JIT, pools, caches
            await warmUp(specA, opts)
            await warmUp(specB, opts)
            const pairs: Array<{ rps: number, cpu: number }> = []
            for (let i = 0; i < opts.slices; i++) {
              const first = i % 2 === 0 ? 'a' : 'b'
              const got: Record<'a' | 'b', { rps: number, us: number }> = { a: { rps: 0, us: 0 }, b: { rps: 0, us: 0 } }
              for (const which of first === 'a' ? ['a', 'b'] as const : ['b', 'a'] as const) {
                const s = which === 'a' ? a : b
                const m = await measure(s.child.pid, which === 'a' ? specA : specB, infra, load)
                got[which] = { rps: m.load.rps, us: m.cpuUs === null ? NaN : m.cpuUs / Math.max(1, m.load.completed) }
                if (m.load.non2xx + m.load.errors > 0) throw new Error(`${which === 'a' ? 'this build' : 'the other build'} answered ${m.load.non2xx} non-2xx and ${m.load.errors} errors`)
              }
              cpuA.push(got.a.us)
              cpuB.push(got.b.us)
              pairs.push({ rps: got.b.rps / got.a.rps, cpu: got.b.us / got.a.us })
              opts.log(`${spec} (${aFirst ? 'A' : 'B'} started first) slice ${i + 1}/${opts.slices}: A ${got.a.rps.toFixed(0)} req/s ${got.a.us.toFixed(1)} µs | B ${got.b.rps.toFixed(0)} req/s ${got.b.us.toFixed(1)} µs`)
            }
            const rpsRatios = pairs.map((p) => p.rps)
            orders.push({ firstStarted: aFirst ? 'A' : 'B', rps: median(rpsRatios) ?? NaN, cpu: median(pairs.map((p) => p.cpu)) ?? NaN, rpsMin: Math.min(...rpsRatios), rpsMax: Math.max(...rpsRatios) })
            rss = { a: Math.max(rss.a ?? 0, memoryMb(a.child.pid)?.peak ?? 0) || null, b: Math.max(rss.b ?? 0, memoryMb(b.child.pid)?.peak ?? 0) || null }
          } finally {
            await a.child.stop(10_000)
            await b.child.stop(10_000)
          }
        }
        const [o1, o2] = orders as [NonNullable<AbRow['orders']>[number], NonNullable<AbRow['orders']>[number]]
        out.push({ row: spec, status: 'ok', rps: geo(o1.rps, o2.rps), cpu: geo(o1.cpu, o2.cpu), orders, cpuUs: { a: median(cpuA) ?? NaN, b: median(cpuB) ?? NaN }, rssPeakMb: rss })
      } catch (err) {
        out.push({ row: spec, status: 'n/a', reason: (err as Error).message })
      }
    }
  } finally {
    await infra.stop()
  }
  return out
}

export function renderAb (rows: AbRow[], other: string, opts: AbOptions): string {
  const f = (x: number | undefined, d = 3): string => x === undefined || !Number.isFinite(x) ? '–' : x.toFixed(d)
  const head = `A/B: A = this build, B = ${other}; ${opts.slices} alternating slices of ${opts.durationS} s per start order, ${opts.connections} connections\n` +
    'B ÷ A: below 1 in req/s (or above 1 in CPU) means B is slower than this build; the two start orders are combined\n'
  return head + '\n' + renderTable(
    [{ title: 'row', align: 'left' }, { title: 'B÷A req/s' }, { title: 'B÷A CPU' }, { title: 'A first (req/s, min–max)' }, { title: 'B first (req/s, min–max)' }, { title: 'CPU µs A' }, { title: 'CPU µs B' }],
    rows.map((r) => r.status !== 'ok'
      ? [r.row, `n/a: ${r.reason ?? ''}`, '', '', '', '', '']
      : [r.row, f(r.rps), f(r.cpu), ...(r.orders ?? []).map((o) => `${f(o.rps)} (${f(o.rpsMin, 2)}–${f(o.rpsMax, 2)})`), f(r.cpuUs?.a, 1), f(r.cpuUs?.b, 1)]),
  )
}
