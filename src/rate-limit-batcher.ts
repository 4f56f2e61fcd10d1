/**
 * Batches the rate-limit checks queued in one event-loop turn into one multi-key script call (flushed from
 * setImmediate): one EVALSHA per request costs about a third of the throughput, one per turn about 6%
 * (../shared/PERFORMANCE.md). Each decision is still made atomically in Redis: the script decides the checks one
 * after another. On Redis Cluster one call may only touch one slot, so checks are grouped by hash-tag slot.
 *
 * No caller waits longer than `timeoutMs` for a batch: a guard timer rejects whatever is still pending, whatever
 * the client library does (a NOSCRIPT retry after a Redis restart is two round trips).
 */
import assert from 'node:assert/strict'
import { answeredWithin } from './answered-within.js'

interface Pending<C, R> { check: C, resolve: (r: R) => void, reject: (err: Error) => void }

export interface BatcherOptions<C, R> {
  /** decide the checks in one call; resolves with one result per check, in order */
  send: (checks: C[]) => Promise<R[]>
  /** the Redis Cluster slot of a check, or null when every check may go into one call (standalone Redis) */
  slotOf: ((check: C) => number) | null
  timeoutMs: number
  /** most checks per call (keeps each script run short: Redis does nothing else meanwhile) */
  maxPerCall?: number
}

export class CheckBatcher<C, R> {
  #queue: Array<Pending<C, R>> = []
  #scheduled = false
  readonly #opts: Required<BatcherOptions<C, R>>

  constructor (opts: BatcherOptions<C, R>) {
    assert.ok(opts.timeoutMs > 0, 'timeoutMs must be positive')
    this.#opts = { maxPerCall: 200, ...opts }
  }

  check (check: C): Promise<R> {
    return new Promise<R>((resolve, reject) => {
      this.#queue.push({ check, resolve, reject })
      if (!this.#scheduled) {
        this.#scheduled = true
        setImmediate(this.#flush)
      }
    })
  }

  readonly #flush = (): void => {
    const queue = this.#queue
    this.#queue = []
    this.#scheduled = false
    const { slotOf, maxPerCall } = this.#opts
    if (slotOf === null) {
      for (let i = 0; i < queue.length; i += maxPerCall) this.#send(queue.length <= maxPerCall ? queue : queue.slice(i, i + maxPerCall))
      return
    }
    for (const group of groupBySlot(queue, (p) => slotOf(p.check))) {
      for (let i = 0; i < group.length; i += maxPerCall) this.#send(group.length <= maxPerCall ? group : group.slice(i, i + maxPerCall))
    }
  }

  #send (batch: Array<Pending<C, R>>): void {
    const fail = (err: unknown): void => {
      const e = err instanceof Error ? err : new Error(String(err))
      for (const p of batch) p.reject(e)
    }
    let sent: Promise<R[]>
    try { sent = this.#opts.send(batch.map((p) => p.check)) } catch (err) { fail(err); return }
    // a busy loop does not make an answer that is already there late (src/answered-within.ts)
    answeredWithin(sent, this.#opts.timeoutMs, `rate-limit check timed out after ${this.#opts.timeoutMs}ms`).then((results) => {
      if (results.length !== batch.length) { fail(new Error(`rate-limit script answered ${results.length} results for ${batch.length} checks`)); return }
      for (let i = 0; i < batch.length; i++) (batch[i] as Pending<C, R>).resolve(results[i] as R)
    }, fail)
  }
}

/** `items` in groups of one Redis Cluster slot each, in their order within a group */
export function groupBySlot<T> (items: readonly T[], slotOf: (item: T) => number): Iterable<T[]> {
  const bySlot = new Map<number, T[]>()
  for (const item of items) {
    const slot = slotOf(item)
    const group = bySlot.get(slot)
    if (group === undefined) bySlot.set(slot, [item])
    else group.push(item)
  }
  return bySlot.values()
}

// ---- Redis Cluster key slots (CRC16-XMODEM of the hash tag, mod 16384: the Redis Cluster specification) ---------

const CRC16 = new Uint16Array(256)
for (let i = 0; i < 256; i++) {
  let c = i << 8
  for (let j = 0; j < 8; j++) c = (c & 0x8000) !== 0 ? ((c << 1) ^ 0x1021) & 0xffff : (c << 1) & 0xffff
  CRC16[i] = c
}

/** The slot Redis Cluster assigns to `key`: only the part inside the first non-empty `{...}` counts. */
export function clusterSlot (key: string): number {
  let s = key
  const open = key.indexOf('{')
  if (open !== -1) {
    const close = key.indexOf('}', open + 1)
    if (close > open + 1) s = key.slice(open + 1, close)
  }
  const bytes = Buffer.from(s)
  let crc = 0
  for (const b of bytes) crc = ((crc << 8) & 0xffff) ^ (CRC16[((crc >> 8) ^ b) & 0xff] as number)
  return crc & 16383
}
