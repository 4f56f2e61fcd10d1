/** The printed table of a run, and the comparison of two result files. */
import { readFileSync } from 'node:fs'
import { describeWarmUp, type BenchResult, type RowResult } from './bench.js'
import { DASH, num, pct, ratio, renderTable, type Column } from './lib/table.js'

const COLUMNS: Column[] = [
  { title: 'row', align: 'left' },
  { title: 'req/s' },
  { title: 'p50 ms' },
  { title: 'p99 ms' },
  { title: '× direct (min–max)' },
  { title: '× baseline (min–max)' },
  { title: 'CPU µs/req' },
  { title: 'CPU × base' },
  { title: 'peak RSS MB' },
  { title: 'redis cmd/req' },
  { title: 'redis rt/req' },
  { title: 'redis CPU µs/req' },
  { title: 'errors' },
]

export function header (r: BenchResult): string {
  const m = r.meta
  return [
    `fastgate bench  ${m.date}  node ${m.node}  ${m.cpus}  commit ${m.commit}`,
    `load: autocannon, ${m.connections} connections, ${m.durationS} s per row after ${describeWarmUp(m.warmupS, m.warmupRequests)}, ${m.rounds} round${m.rounds === 1 ? '' : 's'}; ` +
      'medians of the rounds, ratios taken within each round (min–max = their spread)',
    `pinning: ${m.pinning}` + (m.loadAverage === undefined ? '' : `; load average ${m.loadAverage.before.toFixed(2)} before, ${m.loadAverage.after.toFixed(2)} after (${m.cpus.split(' ')[0] ?? '?'} cores)`),
    `upstream: node:http keep-alive, 1024-byte JSON; redis-server ${m.redis} on loopback. ` +
      'CPU and RSS are the measured process\'s own (the upstream\'s on the direct row); redis rt = socket reads (round trips); ' +
      'redis CPU = redis-server\'s own CPU time, on the load generator\'s core',
  ].join('\n')
}

export function rowCells (row: RowResult): string[] | { span: string } {
  const s = row.summary
  if (row.status !== 'ok' || s === null) return { span: `${row.name.padEnd(14)}n/a: ${row.reason ?? 'no round completed'}` }
  const failed = row.failures.length > 0 ? ` (${row.failures.length} failed)` : ''
  return [
    row.name + failed,
    num(s.rps),
    num(s.p50, s.p50 !== null && s.p50 < 10 ? 1 : 0),
    num(s.p99, s.p99 !== null && s.p99 < 10 ? 1 : 0),
    ratio(s.ratioDirect),
    ratio(s.ratioBaseline),
    num(s.cpuUsPerReq, 1),
    s.cpuRatioBaseline === null ? DASH : s.cpuRatioBaseline.toFixed(2),
    num(s.rssPeakMb, 0),
    num(s.redisCmdsPerReq, 2),
    num(s.redisReadsPerReq, 2),
    num(s.redisCpuUsPerReq ?? null, 1),
    String(s.errors),
  ]
}

export function renderResult (r: BenchResult): string {
  const lines = [header(r), '', renderTable(COLUMNS, r.rows.map(rowCells))]
  const failures = r.rows.flatMap((row) => row.status === 'ok' ? row.failures.map((f) => `  ${row.name} round ${f.round}: ${f.reason}`) : [])
  if (failures.length > 0) lines.push('', 'failed rounds (left out of the medians):', ...failures)
  const rssByRound = r.rows.filter((row) => row.rounds.length > 1 && row.kind !== 'upstream')
    .map((row) => `  ${row.name.padEnd(14)}${row.rounds.map((x) => `${num(x.rssPeakMb, 0)}/${num(x.rssMb, 0)}`).join(' → ')}`)
  if (rssByRound.length > 0) {
    lines.push('', `RSS MB by round, peak/after the run (${r.rows.some((row) => row.rounds.length > 1) && r.meta.sameProcess === true
      ? 'one process per row for all rounds: growth here is growth under load'
      : 'a fresh process each round; --same-process keeps one, to see growth'}):`, ...rssByRound)
  }
  return lines.join('\n')
}

export function loadResult (path: string): BenchResult {
  let parsed: unknown
  try { parsed = JSON.parse(readFileSync(path, 'utf8')) } catch (err) { throw new Error(`cannot read ${path}: ${(err as Error).message}`) }
  const r = parsed as BenchResult
  if (typeof r !== 'object' || r === null || !Array.isArray(r.rows) || typeof r.meta !== 'object') throw new Error(`${path} is not a bench result file`)
  return r
}

/** old → new per row: the numbers that matter, with relative changes */
export function renderCompare (old: BenchResult, now: BenchResult, oldName: string, newName: string): string {
  const cols: Column[] = [
    { title: 'row', align: 'left' },
    { title: 'req/s old → new' }, { title: 'Δ' },
    { title: '× baseline old → new' },
    { title: 'CPU µs/req old → new' }, { title: 'Δ ' },
    { title: 'p99 ms old → new' },
    { title: 'RSS MB old → new' },
    { title: 'redis cmd/req old → new' },
    { title: 'redis CPU µs/req old → new' },
  ]
  const names = [...new Set([...now.rows.map((r) => r.name), ...old.rows.map((r) => r.name)])]
  const med = (xs: number[] | undefined): number | null => {
    if (xs === undefined || xs.length === 0) return null
    const v = [...xs].sort((a, b) => a - b)
    const mid = Math.floor(v.length / 2)
    return v.length % 2 === 1 ? v[mid] as number : ((v[mid - 1] as number) + (v[mid] as number)) / 2
  }
  const rows = names.map((name): string[] | { span: string } => {
    const a = old.rows.find((r) => r.name === name)?.summary ?? null
    const b = now.rows.find((r) => r.name === name)?.summary ?? null
    if (a === null && b === null) return { span: `${name.padEnd(14)}n/a in both` }
    const pair = (x: number | null | undefined, y: number | null | undefined, d = 0): string => `${num(x ?? null, d)} → ${num(y ?? null, d)}`
    const rb = (s: typeof a): number | null => med(s?.ratioBaseline)
    return [
      name,
      pair(a?.rps, b?.rps), pct(a?.rps, b?.rps),
      pair(rb(a), rb(b), 2),
      pair(a?.cpuUsPerReq, b?.cpuUsPerReq, 1), pct(a?.cpuUsPerReq, b?.cpuUsPerReq),
      pair(a?.p99, b?.p99, 1),
      pair(a?.rssPeakMb, b?.rssPeakMb),
      pair(a?.redisCmdsPerReq, b?.redisCmdsPerReq, 2),
      pair(a?.redisCpuUsPerReq, b?.redisCpuUsPerReq, 1),
    ]
  })
  return [
    `compare: old = ${oldName} (${old.meta.date}, commit ${old.meta.commit})`,
    `         new = ${newName} (${now.meta.date}, commit ${now.meta.commit})`,
    old.meta.pinning !== now.meta.pinning || old.meta.connections !== now.meta.connections || old.meta.durationS !== now.meta.durationS
      ? 'note: the two runs used different settings (pinning, connections or duration): compare ratios rather than req/s'
      : 'same settings in both runs; the machine is noisy: trust only changes well above the spread of the ratios',
    '',
    renderTable(cols, rows),
  ].join('\n')
}
