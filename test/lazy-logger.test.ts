/**
 * The per-request logger (src/lazy-logger.ts) is made only when a request logs something, and a line it writes
 * carries the request's id as Fastify's own child logger would.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { pino } from 'pino'
import type { FastifyBaseLogger } from 'fastify'
import { buildApp } from '../src/app.js'
import { defineRoutes, defineUpstream } from '../src/declare.js'
import { testConfig } from './helper.js'
import { startUpstream } from './helpers/upstream.js'
import { freePort } from './helpers/redis.js'

test('requests that log nothing make no child logger; a failed one logs with its reqId', async (t) => {
  const up = await startUpstream(t)
  const closed = `http://127.0.0.1:${await freePort()}`
  const lines: Array<Record<string, unknown>> = []
  const logger = pino({ level: 'info' }, { write: (line: string) => { lines.push(JSON.parse(line) as Record<string, unknown>) } })
  let children = 0
  const child = logger.child.bind(logger) as (...args: unknown[]) => unknown
  ;(logger as unknown as { child: (...args: unknown[]) => unknown }).child = (...args: unknown[]) => { children++; return child(...args) }
  const app = await buildApp(testConfig({ LOG_LEVEL: 'info', ACCESS_LOG: 'false' }), {
    loggerInstance: logger as unknown as FastifyBaseLogger,
    declarations: [{
      file: 'routes/test-0.ts',
      exported: [
        defineUpstream({ name: 'svc', targets: [up.url] }),
        defineUpstream({ name: 'gone', targets: [closed], retry: { tries: 1 } }),
        defineRoutes({ upstream: 'svc', prefix: '/api', routes: [{ method: 'GET', url: '/*' }] }),
        defineRoutes({ upstream: 'gone', prefix: '/gone', routes: [{ method: 'GET', url: '/*' }] }),
      ],
    }],
  })
  t.after(() => app.close())
  await app.ready()
  const before = children
  for (let i = 0; i < 5; i++) assert.equal((await app.inject(`/api/x${i}`)).statusCode, 200)
  assert.equal(children, before, 'five answered requests, no child logger')

  const failed = await app.inject({ url: '/gone/x', headers: { 'x-request-id': 'lazy-log-1' } })
  assert.equal(failed.statusCode, 502)
  assert.equal(children, before + 1, 'the failed request made its child when it logged')
  const line = lines.find((l) => l.msg === 'request failed')
  assert.ok(line !== undefined, 'the failure is logged')
  assert.equal(line.reqId, 'lazy-log-1')
  assert.equal(line.level, 50)
})
