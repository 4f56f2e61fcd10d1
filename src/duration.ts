/** Durations in declarations and configuration: a number of milliseconds or a string like "500ms", "30s", "1m", "2h", "1d". */
export type Duration = number | string

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }
const DURATION = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)$/

/** Milliseconds for a duration, or null when it is not one. Called at start-up only, never per request. */
export function parseDuration (value: unknown): number | null {
  if (typeof value === 'number') return Number.isFinite(value) && value >= 0 ? value : null
  if (typeof value !== 'string') return null
  const m = DURATION.exec(value.trim())
  if (m === null) return null
  return Math.round(Number(m[1]) * (UNIT_MS[m[2] as string] as number))
}

export const DURATION_HINT = 'expected a duration like "500ms", "30s", "1m", "2h", "1d" or a number of milliseconds'
