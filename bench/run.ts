/**
 * `npm run bench [-- options]`: see bench/README.md, or `npm run bench -- --help`.
 */
import { mkdirSync, writeFileSync, existsSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'
import { parseArgs } from 'node:util'
import { runBench, type BenchResult } from './bench.js'
import { renderAb, runAb } from './ab.js'
import { GROWTH_SECTIONS, runGrowth, type GrowthSection } from './growth.js'
import { installCleanup, killAll, ROOT } from './lib/procs.js'
import { renderProfile, summarizeProfile } from './profile.js'
import { loadResult, renderCompare, renderResult } from './report.js'
import { DEFAULT_ROW_NAMES, ROW_NAMES } from './rows.js'

const HELP = `npm run bench -- [options]

  --rows a,b,c        rows to run (default: all but floor): ${ROW_NAMES.join(', ')}
  --rounds N          repeat the list of rows N times (default 3); the table shows medians
  --duration S        measured seconds per row (default 5)
  --warmup S          warm-up before each measured run: at least S seconds (default 2; 0 = none) ...
  --warmup-requests N ... and until the process has answered N requests (default 20000; 0 = time only;
                      at most 20 s in all): a fresh gateway reaches its steady rate after some thousands
  --connections N     concurrent connections of the load generator (default 50)
  --out FILE          where the JSON results go (default bench/results/bench-<date>.json)
  --compare OLD.json  after the run, print the change of every row against OLD.json
  --with NEW.json     with --compare: compare two result files, run nothing
  --profile ROW       run ROW once with the gateway under node --cpu-prof; prints the top self-time functions
  --growth            the cost-growth measurements instead (bench/growth.ts); with --rows, a selection of
                      startup (10/1,000/10,000 routes), routes (1 vs 10,000), keys (10 vs 100,000 API keys)
  --same-process      one process per row for all rounds (RSS growth from round to round shows)
  --ab DIR            A/B: this build against the built checkout in DIR (bench/ab.ts), gateway rows
                      (default: passthrough, apiKey, full, cacheHitL1), alternating slices, both start orders;
                      a row x:y runs row x on this build and row y on DIR (--ab . --rows apiKey:passthrough);
                      one side may be a reference: baseline (--ab . --rows full:baseline) or floor, the thinnest
                      Fastify proxy (--ab . --rows passthrough:floor)
  --slices N          with --ab: alternating slices per start order (default 6; --duration is a slice)
  --no-pin            do not pin processes to cores with taskset
  --help`

function positiveInt (name: string, raw: string | undefined, dflt: number, min = 1, max = 1_000_000): number {
  if (raw === undefined) return dflt
  const n = Number(raw)
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`--${name}: expected an integer from ${min} to ${max}, got "${raw}"`)
  return n
}

function seconds (name: string, raw: string | undefined, dflt: number, min: number): number {
  if (raw === undefined) return dflt
  const n = Number(raw)
  if (!Number.isFinite(n) || n < min || n > 600) throw new Error(`--${name}: expected seconds from ${min} to 600, got "${raw}"`)
  return n
}

function stamp (): string {
  return new Date().toISOString().replace(/\..*$/, '').replace(/[-:]/g, '').replace('T', '-')
}

function writeJson (path: string, value: unknown): void {
  mkdirSync(dirname(path), { recursive: true })
  writeFileSync(path, JSON.stringify(value, null, 2) + '\n')
}

const show = (p: string): string => {
  const rel = relative(process.cwd(), p)
  return rel === '' ? '. (this build too)' : rel.startsWith('..') ? p : rel
}

async function main (): Promise<void> {
  const { values } = parseArgs({
    options: {
      rows: { type: 'string' },
      rounds: { type: 'string' },
      duration: { type: 'string' },
      warmup: { type: 'string' },
      'warmup-requests': { type: 'string' },
      connections: { type: 'string' },
      out: { type: 'string' },
      compare: { type: 'string' },
      with: { type: 'string' },
      profile: { type: 'string' },
      ab: { type: 'string' },
      slices: { type: 'string' },
      growth: { type: 'boolean', default: false },
      'same-process': { type: 'boolean', default: false },
      'no-pin': { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
    strict: true,
    allowPositionals: false,
  })
  if (values.help) { process.stdout.write(HELP + '\n'); return }

  const log = (line: string): void => { process.stderr.write(line + '\n') }
  const resultsDir = join(ROOT, 'bench', 'results')

  if (values.with !== undefined) {
    if (values.compare === undefined) throw new Error('--with needs --compare OLD.json')
    process.stdout.write(renderCompare(loadResult(values.compare), loadResult(values.with), values.compare, values.with) + '\n')
    return
  }
  // read the old file first: a typo should not cost a whole run
  const old = values.compare !== undefined ? loadResult(values.compare) : null

  const common = {
    rounds: positiveInt('rounds', values.rounds, 3, 1, 100),
    durationS: seconds('duration', values.duration, 5, 0.5),
    warmupS: seconds('warmup', values.warmup, 2, 0),
    warmupRequests: positiveInt('warmup-requests', values['warmup-requests'], 20_000, 0),
    connections: positiveInt('connections', values.connections, 50, 1, 1000),
    pin: !values['no-pin'],
    log,
  }

  if (values.growth) {
    const out = resolve(values.out ?? join(resultsDir, `growth-${stamp()}.json`))
    const sections = values.rows === undefined ? [...GROWTH_SECTIONS] : values.rows.split(',').map((x) => x.trim()).filter(Boolean)
    const bad = sections.filter((x) => !(GROWTH_SECTIONS as readonly string[]).includes(x))
    if (bad.length > 0) throw new Error(`--growth --rows: unknown ${bad.join(', ')}; sections: ${GROWTH_SECTIONS.join(', ')}`)
    const result = await runGrowth({ ...common, sections: new Set(sections as GrowthSection[]) })
    process.stdout.write(result.text + '\n')
    writeJson(out, result.json)
    process.stdout.write(`\nresults: ${show(out)}\n`)
    return
  }

  if (values.ab !== undefined) {
    const other = resolve(values.ab)
    if (!existsSync(join(other, 'dist', 'src', 'server.js'))) throw new Error(`--ab ${values.ab}: no built gateway there (dist/src/server.js); run npm ci && npm run build in it`)
    const opts = {
      ...common,
      other,
      rows: values.rows !== undefined ? values.rows.split(',').map((s) => s.trim()).filter(Boolean) : ['passthrough', 'apiKey', 'full', 'cacheHitL1'],
      slices: positiveInt('slices', values.slices, 6, 1, 100),
      durationS: seconds('duration', values.duration, 3, 0.5),
    }
    const rows = await runAb(opts, join(ROOT, 'dist'))
    process.stdout.write(renderAb(rows, show(other), opts) + '\n')
    const out = resolve(values.out ?? join(resultsDir, `ab-${stamp()}.json`))
    writeJson(out, { other, slices: opts.slices, durationS: opts.durationS, connections: opts.connections, rows })
    process.stdout.write(`\nresults: ${show(out)}\n`)
    return
  }

  const profileRow = values.profile
  const rows = profileRow !== undefined ? [profileRow] : values.rows !== undefined ? values.rows.split(',').map((s) => s.trim()).filter(Boolean) : [...DEFAULT_ROW_NAMES]
  const profileDir = profileRow !== undefined ? resultsDir : null
  if (profileDir !== null) mkdirSync(profileDir, { recursive: true })
  const result: BenchResult = await runBench({
    ...common,
    rows,
    rounds: profileRow !== undefined ? 1 : common.rounds,
    sameProcess: profileRow === undefined && values['same-process'],
    profileDir,
  })
  process.stdout.write(renderResult(result) + '\n')
  const out = resolve(values.out ?? join(resultsDir, `bench-${stamp()}${profileRow !== undefined ? '-profile' : ''}.json`))
  writeJson(out, result)
  process.stdout.write(`\nresults: ${show(out)}\n`)
  if (old !== null) process.stdout.write('\n' + renderCompare(old, result, values.compare as string, show(out)) + '\n')

  if (profileRow !== undefined) {
    const row = result.rows[0]
    const file = row?.profile ?? null
    if (row === undefined || row.status !== 'ok') throw new Error(`--profile ${profileRow}: the row did not run: ${row?.reason ?? '?'}`)
    if (file === null || !existsSync(file)) throw new Error(`--profile ${profileRow}: no profile was written (${file ?? 'no path'}): did the process exit cleanly on SIGTERM?`)
    process.stdout.write('\n' + renderProfile(summarizeProfile(file, 10, row.window)) + '\n')
  }
}

installCleanup()
main().then(() => { killAll() }, (err: unknown) => {
  process.stderr.write(`bench: ${(err as Error).message}\n`)
  killAll()
  process.exitCode = 1
})
