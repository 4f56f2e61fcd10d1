/** Medians, spreads and plain-text tables (monospace, right-aligned numbers). */

export function median (xs: readonly number[]): number | null {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b)
  if (v.length === 0) return null
  const mid = Math.floor(v.length / 2)
  return v.length % 2 === 1 ? v[mid] as number : ((v[mid - 1] as number) + (v[mid] as number)) / 2
}

export function spread (xs: readonly number[]): { min: number, max: number } | null {
  const v = xs.filter((x) => Number.isFinite(x))
  if (v.length === 0) return null
  return { min: Math.min(...v), max: Math.max(...v) }
}

export const DASH = '–'

export function num (x: number | null | undefined, digits = 0): string {
  if (x === null || x === undefined || !Number.isFinite(x)) return DASH
  return x.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })
}

/** "0.55 (0.51–0.60)" with the spread only when there is more than one value */
export function ratio (xs: readonly number[]): string {
  const m = median(xs)
  if (m === null) return DASH
  const s = spread(xs)
  const count = xs.filter((x) => Number.isFinite(x)).length
  return count > 1 && s !== null ? `${m.toFixed(2)} (${s.min.toFixed(2)}–${s.max.toFixed(2)})` : m.toFixed(2)
}

export function pct (from: number | null | undefined, to: number | null | undefined): string {
  if (from === null || from === undefined || to === null || to === undefined || !Number.isFinite(from) || !Number.isFinite(to) || from === 0) return DASH
  const d = (to / from - 1) * 100
  return `${d >= 0 ? '+' : ''}${d.toFixed(1)}%`
}

export interface Column { title: string, align?: 'left' | 'right' }

/** A table with a header line and a rule; cells longer than the column widen it. Spanning text rows are allowed. */
export function renderTable (columns: readonly Column[], rows: ReadonlyArray<readonly string[] | { span: string }>): string {
  const widths = columns.map((c) => c.title.length)
  for (const r of rows) {
    if (!Array.isArray(r)) continue
    r.forEach((cell, i) => { widths[i] = Math.max(widths[i] ?? 0, cell.length) })
  }
  const line = (cells: readonly string[]): string => cells.map((cell, i) => {
    const w = widths[i] ?? cell.length
    return (columns[i]?.align ?? 'right') === 'left' ? cell.padEnd(w) : cell.padStart(w)
  }).join('  ').trimEnd()
  const out = [line(columns.map((c) => c.title)), widths.map((w) => '-'.repeat(w)).join('  ')]
  for (const r of rows) out.push(Array.isArray(r) ? line(r as readonly string[]) : (r as { span: string }).span)
  return out.join('\n')
}
