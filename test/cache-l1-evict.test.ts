/**
 * L1's eviction: entries that are read stay, the oldest unread ones go, within the entry and byte bounds, and the
 * entry just stored is not the one that makes room for itself. A hit does not reorder the Map (see src/cache-l1.ts).
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { makeEntry } from '../src/cache-entry.js'
import { L1Cache } from '../src/cache-l1.js'

const NOW = 1_000_000
const entry = (key: string, bytes = 10) => makeEntry(key, {
  status: 200,
  headers: [['content-type', 'application/json']],
  body: Buffer.alloc(bytes, 1),
  storedAt: NOW,
  freshUntil: NOW + 3_600_000,
  staleWhileRevalidateUntil: NOW + 3_600_000,
  staleIfErrorUntil: NOW + 3_600_000,
  initialAge: 0,
  path: `/${key}`,
  tags: [],
  varyNames: [],
})
const held = (l1: L1Cache, keys: string[]): string[] => keys.filter((k) => l1.get(k, NOW) !== undefined)

test('L1 keeps what is read: a full cache drops the oldest entries not read since, not the hot ones', () => {
  const l1 = new L1Cache(100, 10_000_000, 60_000)
  const keys = Array.from({ length: 100 }, (_, i) => `k${i}`)
  for (const k of keys) l1.set(entry(k), NOW)
  assert.equal(l1.entries, 100)

  // k0 and k1 are hot: read between every new entry; 50 new entries push out 50 old ones
  for (let i = 0; i < 50; i++) {
    assert.ok(l1.get('k0', NOW) !== undefined)
    assert.ok(l1.get('k1', NOW) !== undefined)
    l1.set(entry(`new${i}`), NOW)
    assert.ok(l1.entries <= 100, `at most 100 entries, got ${l1.entries}`)
  }
  // the oldest unread went first (k2..k51), the hot ones stayed, and so did the newer old ones and the new ones
  const olds = held(l1, keys)
  assert.deepEqual(olds.slice(0, 2), ['k0', 'k1'])
  assert.deepEqual(olds.slice(2), keys.slice(52))
  assert.equal(held(l1, Array.from({ length: 50 }, (_, i) => `new${i}`)).length, 50)
})

test('L1 gives a read entry a second chance, and never evicts the entry it is storing to make room for it', () => {
  const l1 = new L1Cache(3, 10_000_000, 60_000)
  for (const k of ['a', 'b', 'c']) l1.set(entry(k), NOW)
  // a (the oldest) and c are read, b is not: b goes, where first-in first-out would drop a
  for (const k of ['a', 'c']) assert.ok(l1.get(k, NOW) !== undefined)
  l1.set(entry('d'), NOW)
  assert.equal(l1.entries, 3)
  assert.deepEqual(held(l1, ['a', 'b', 'c', 'd']), ['a', 'c', 'd'])
  // that look reads a, c and d; e comes in and one of them has to go, never e
  l1.set(entry('e'), NOW)
  assert.equal(l1.entries, 3)
  assert.ok(l1.get('e', NOW) !== undefined, 'the entry just stored stays')

  // one entry only: storing another replaces it
  const one = new L1Cache(1, 10_000_000, 60_000)
  one.set(entry('x'), NOW)
  assert.ok(one.get('x', NOW) !== undefined)
  one.set(entry('y'), NOW)
  assert.deepEqual(held(one, ['x', 'y']), ['y'])
})

test('L1 stays within its byte bound, dropping unread entries first', () => {
  // each entry is about 256 + 2 * key + 10 body + 40 header bytes; 10 of them fit in 3,500 bytes
  const l1 = new L1Cache(1000, 3500, 60_000)
  for (let i = 0; i < 10; i++) l1.set(entry(`k${i}`), NOW)
  assert.equal(l1.entries, 10)
  const before = l1.bytes
  assert.ok(l1.get('k0', NOW) !== undefined)
  l1.set(entry('big', 400), NOW)
  assert.ok(l1.bytes <= 3500, `bytes ${l1.bytes}`)
  assert.ok(l1.bytes > before - 2 * 320, 'only what was needed went')
  assert.ok(l1.get('k0', NOW) !== undefined, 'the entry read since stays')
  assert.ok(l1.get('big', NOW) !== undefined)
  assert.equal(l1.get('k1', NOW), undefined, 'the oldest unread entry went')
})
