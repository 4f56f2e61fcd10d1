/**
 * A process that starts and stops the gateway again and again (an embedding app, a test suite) is left with
 * nothing running: each stopped server's stdout log destination stops its flush timer, and one exit listener
 * serves them all. Its own file: it counts the process's 1-second intervals by wrapping setInterval.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const src = join(dirname(fileURLToPath(import.meta.url)), '..', 'src', 'index.js')

test('start() then stop(), five times: no log flush timer keeps running, one exit listener', async () => {
  const live = new Set<unknown>()
  const g = globalThis as unknown as { setInterval: (...a: unknown[]) => unknown, clearInterval: (t: unknown) => void }
  const realSet = g.setInterval
  const realClear = g.clearInterval
  // the log destination flushes every 1000 ms (src/log-destination.ts)
  g.setInterval = (...a: unknown[]) => { const t = realSet(...a); if (a[1] === 1000) live.add(t); return t }
  g.clearInterval = (t: unknown) => { live.delete(t); realClear(t) }
  try {
    const { start } = await import('../src/server.js')
    const dir = mkdtempSync(join(tmpdir(), 'gw-routes-'))
    writeFileSync(join(dir, 'svc.mjs'), `import { defineUpstream, defineRoutes } from ${JSON.stringify(src)}
export default [defineUpstream({ name: 'svc', targets: ['http://127.0.0.1:9'] }), defineRoutes({ upstream: 'svc', routes: [{ method: 'GET', url: '/x' }] })]
`)
    const exitListeners = process.listenerCount('exit')
    for (let i = 0; i < 5; i++) {
      const running = await start({ PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'silent', DOCS: 'off', ROUTES_DIR: dir })
      assert.equal(live.size, 1, `server ${i + 1} flushes its log while it runs`)
      await running.stop()
      assert.equal(live.size, 0, `server ${i + 1}'s flush timer stopped with it`)
    }
    assert.ok(process.listenerCount('exit') - exitListeners <= 1, 'one exit listener for every server started')
  } finally {
    g.setInterval = realSet
    g.clearInterval = realClear
  }
})
