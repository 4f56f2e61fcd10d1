/**
 * Reads a V8 .cpuprofile (written by `node --cpu-prof`) and tells where the time went: the top functions by self
 * time and the same time grouped by where the code lives (our code, each package, Node internals, GC).
 */
import { readFileSync } from 'node:fs'
import { relative } from 'node:path'
import { fileURLToPath } from 'node:url'
import { ROOT } from './lib/procs.js'
import { renderTable } from './lib/table.js'

interface CallFrame { functionName: string, url: string, lineNumber: number, columnNumber: number }
interface ProfileNode { id: number, callFrame: CallFrame, hitCount?: number }
interface CpuProfile { nodes: ProfileNode[], samples?: number[], timeDeltas?: number[], startTime: number, endTime: number }

export interface SelfTime { name: string, where: string, group: string, ms: number, share: number }
export interface ProfileSummary {
  file: string
  /** true when only the samples of the measured run were counted */
  windowed: boolean
  totalMs: number
  busyMs: number
  idleMs: number
  top: SelfTime[]
  groups: Array<{ group: string, ms: number, share: number }>
}

function where (url: string, line: number): string {
  if (url === '') return ''
  let path = url
  if (url.startsWith('file://')) {
    try { path = relative(ROOT, fileURLToPath(url)) } catch { path = url }
  }
  return `${path}:${line + 1}`
}

function groupOf (frame: CallFrame): string {
  const { url, functionName } = frame
  if (url === '') {
    if (functionName === '(garbage collector)') return 'GC'
    if (functionName === '(program)') return '(program: native, not attributed)'
    return functionName.startsWith('(') ? functionName : 'native / builtins'
  }
  if (url.startsWith('node:')) return 'Node internals'
  if (url.startsWith('wasm://')) return 'wasm (undici\'s llhttp parser)'
  const nm = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url)
  if (nm !== null) return nm[1] as string
  const own = /\/dist\/(src|plugins|bench|routes)\//.exec(url)
  if (own !== null) return `fastgate ${own[1] as string}/`
  return 'other'
}

/**
 * `window`: count only samples inside it (µs on the monotonic clock: V8 stamps samples with the same
 * CLOCK_MONOTONIC as process.hrtime in the harness, so start-up, probes and warm-up are left out).
 */
export function summarizeProfile (file: string, topN = 10, window?: { startUs: number, endUs: number }): ProfileSummary {
  const p = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile
  const byId = new Map<number, ProfileNode>()
  for (const n of p.nodes) byId.set(n.id, n)
  const selfUs = new Map<number, number>()
  const samples = p.samples ?? []
  const deltas = p.timeDeltas ?? []
  let windowed = false
  if (samples.length > 0 && deltas.length === samples.length) {
    // sample times: startTime + the running sum of the deltas
    let t = p.startTime
    const at: number[] = new Array<number>(samples.length)
    for (let i = 0; i < samples.length; i++) { t += deltas[i] as number; at[i] = t }
    const inWindow = window !== undefined && at.some((x) => x >= window.startUs && x <= window.endUs)
    windowed = inWindow
    // the time until the next sample belongs to this sample (as DevTools counts it)
    for (let i = 0; i < samples.length; i++) {
      if (inWindow && ((at[i] as number) < (window as { startUs: number }).startUs || (at[i] as number) > (window as { endUs: number }).endUs)) continue
      const next = deltas[i + 1] ?? 0
      selfUs.set(samples[i] as number, (selfUs.get(samples[i] as number) ?? 0) + Math.max(0, next))
    }
  } else {
    const interval = samples.length > 0 ? (p.endTime - p.startTime) / samples.length : 1000
    for (const n of p.nodes) selfUs.set(n.id, (n.hitCount ?? 0) * interval)
  }
  let idleUs = 0
  let totalUs = 0
  const fnTotals = new Map<string, SelfTime>()
  const groupTotals = new Map<string, number>()
  for (const [id, us] of selfUs) {
    const node = byId.get(id)
    if (node === undefined) continue
    totalUs += us
    const f = node.callFrame
    if (f.functionName === '(idle)') { idleUs += us; continue }
    const name = f.functionName === '' ? '(anonymous)' : f.functionName
    const w = where(f.url, f.lineNumber)
    const key = `${name}@${w}`
    const group = groupOf(f)
    const cur = fnTotals.get(key) ?? { name, where: w, group, ms: 0, share: 0 }
    cur.ms += us / 1000
    fnTotals.set(key, cur)
    groupTotals.set(group, (groupTotals.get(group) ?? 0) + us / 1000)
  }
  const busyMs = (totalUs - idleUs) / 1000
  const share = (ms: number): number => busyMs > 0 ? ms / busyMs : 0
  const top = [...fnTotals.values()].sort((a, b) => b.ms - a.ms).slice(0, topN).map((t) => ({ ...t, share: share(t.ms) }))
  const groups = [...groupTotals.entries()].map(([group, ms]) => ({ group, ms, share: share(ms) })).sort((a, b) => b.ms - a.ms)
  return { file, windowed, totalMs: totalUs / 1000, busyMs, idleMs: idleUs / 1000, top, groups }
}

export function renderProfile (s: ProfileSummary): string {
  const fmt = (ms: number): string => ms.toFixed(1)
  const top = renderTable(
    [{ title: '#' }, { title: 'self ms' }, { title: '% busy' }, { title: 'function', align: 'left' }, { title: 'where', align: 'left' }],
    s.top.map((t, i) => [String(i + 1), fmt(t.ms), (t.share * 100).toFixed(1), t.name, t.where || t.group]),
  )
  const groups = renderTable(
    [{ title: 'self ms' }, { title: '% busy' }, { title: 'code', align: 'left' }],
    s.groups.slice(0, 15).map((g) => [fmt(g.ms), (g.share * 100).toFixed(1), g.group]),
  )
  return [
    `profile: ${s.file}`,
    `sampled ${fmt(s.totalMs)} ms ${s.windowed ? 'of the measured run only' : '(the whole process life: start-up, probes and warm-up included)'}: busy ${fmt(s.busyMs)} ms, idle ${fmt(s.idleMs)} ms`,
    'the call tree: open the file in Chrome DevTools (Performance, Load profile) or speedscope',
    '',
    'top functions by self time:',
    top,
    '',
    'self time by where the code lives:',
    groups,
  ].join('\n')
}
