/**
 * Issue 10, trace context: a W3C traceparent arrives at the upstream, a new trace when none came, the caller's
 * trace id (and flags, and tracestate) kept with the gateway's own parent id when one did.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { defineRoutes, defineUpstream } from '../src/declare.js'
import { parseTraceparent } from '../plugins/trace.js'
import { build } from './helper.js'
import { startUpstream } from './helpers/upstream.js'
import { captureLogs } from './fixtures/ops/helpers.js'

const VALID = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/

async function setup (t: import('node:test').TestContext) {
  const up = await startUpstream(t)
  const logs = captureLogs()
  const app = await build(t, {
    declare: [
      defineUpstream({ name: 'svc', targets: [up.url] }),
      defineRoutes({ upstream: 'svc', prefix: '/api', routes: [{ method: 'GET', url: '/*' }] }),
    ],
    env: { LOG_LEVEL: 'info' },
    logStream: logs,
  })
  return { up, app, logs }
}

test('without a traceparent a new trace starts at the gateway; each request its own', async (t) => {
  const { up, app, logs } = await setup(t)
  await app.inject({ url: '/api/a', headers: { tracestate: 'vendor=orphan' } })
  await app.inject('/api/b')
  const [a, b] = up.received.map((r) => VALID.exec(String(r.headers.traceparent)))
  assert.ok(a != null && b != null, 'a valid version-00 traceparent reached the upstream')
  assert.notEqual(a[1], b[1], 'distinct trace ids')
  assert.notEqual(a[1], '0'.repeat(32))
  assert.equal(a[3], '01', 'offered as sampled to the upstream tracer')
  assert.equal(up.received[0]?.headers.tracestate, undefined, 'a tracestate without its traceparent is dropped')
  const traceIds = logs.lines.filter((l) => l.msg === 'request').map((l) => l.traceId)
  assert.deepEqual(traceIds, [a[1], b[1]], 'the access log carries the trace ids')
})

test('a valid traceparent keeps its trace id and flags; the gateway hop gets a new parent id; tracestate passes', async (t) => {
  const { up, app, logs } = await setup(t)
  const given = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00'
  await app.inject({ url: '/api/x', headers: { traceparent: given, tracestate: 'congo=t61rcWkgMzE,rojo=00f067aa0ba902b7' } })
  const sent = VALID.exec(String(up.received[0]?.headers.traceparent))
  assert.ok(sent !== null)
  assert.equal(sent[1], '4bf92f3577b34da6a3ce929d0e0e4736')
  assert.notEqual(sent[2], '00f067aa0ba902b7', 'the parent id is the gateway span, not the caller')
  assert.equal(sent[3], '00', 'the sampled flag is the caller\'s decision')
  assert.equal(up.received[0]?.headers.tracestate, 'congo=t61rcWkgMzE,rojo=00f067aa0ba902b7')
  assert.equal(logs.lines.find((l) => l.msg === 'request')?.traceId, '4bf92f3577b34da6a3ce929d0e0e4736')

  // a later version's traceparent with extra fields: its trace id is kept, version 00 is sent
  await app.inject({ url: '/api/y', headers: { traceparent: '01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next' } })
  const v1 = VALID.exec(String(up.received[1]?.headers.traceparent))
  assert.equal(v1?.[1], '4bf92f3577b34da6a3ce929d0e0e4736')
  assert.equal(v1?.[3], '01')
})

test('an invalid traceparent is replaced by a new trace, and its tracestate dropped', async (t) => {
  const { up, app } = await setup(t)
  const invalid = [
    'ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01', // version ff is forbidden
    '00-00000000000000000000000000000000-00f067aa0ba902b7-01', // all-zero trace id
    '00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01', // all-zero parent id
    '00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01', // upper case
    '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra', // version 00 has exactly four fields
    'garbage',
  ]
  for (const traceparent of invalid) await app.inject({ url: '/api/z', headers: { traceparent, tracestate: 'k=v' } })
  for (const r of up.received) {
    const sent = VALID.exec(String(r.headers.traceparent))
    assert.ok(sent !== null)
    assert.notEqual(sent[1], '4bf92f3577b34da6a3ce929d0e0e4736')
    assert.equal(r.headers.tracestate, undefined)
  }
})

test('parseTraceparent', () => {
  assert.deepEqual(parseTraceparent('00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'), { traceId: '4bf92f3577b34da6a3ce929d0e0e4736', flags: '01' })
  assert.equal(parseTraceparent('00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01'), null)
  assert.equal(parseTraceparent('00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1'), null)
  assert.equal(parseTraceparent(''), null)
})

test('requests that are not proxied log the caller\'s trace id, if any', async (t) => {
  const { app, logs } = await setup(t)
  await app.inject({ url: '/nope', headers: { traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' } })
  await app.inject({ url: '/nope' })
  assert.deepEqual(logs.lines.filter((l) => l.msg === 'request').map((l) => l.traceId), ['4bf92f3577b34da6a3ce929d0e0e4736', null])
})
