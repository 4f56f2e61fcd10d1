/**
 * There is no Docker engine on these machines, so docker-compose.yml and the Dockerfile are checked for the shape
 * the design asks for: Redis with persistence, two replicas sharing it, built from a multi-stage non-root image.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { GATEWAY_NODE_FLAGS } from '../src/node-flags.js'
import { readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parse } from 'yaml'
import { loadConfig } from '../src/config.js'

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..')

test('docker-compose.yml: Redis with persistence and two gateway replicas that share it', () => {
  const doc = parse(readFileSync(join(root, 'docker-compose.yml'), 'utf8'), { merge: true }) as {
    services: Record<string, { build?: unknown, image?: string, command?: string[], environment?: Record<string, string>, depends_on?: Record<string, unknown>, ports?: string[], volumes?: string[], healthcheck?: unknown }>
    volumes?: Record<string, unknown>
  }
  const { services } = doc
  assert.ok(services.redis?.image?.startsWith('redis:'))
  assert.ok(services.redis?.command?.includes('--appendonly') && services.redis.command.includes('yes'), 'Redis persists')
  assert.ok(services.redis?.volumes?.some((v) => v.endsWith(':/data')))
  assert.ok(services.redis?.healthcheck !== undefined)
  const gateways = Object.entries(services).filter(([name]) => name.startsWith('gateway'))
  assert.equal(gateways.length, 2)
  const ports = new Set<string>()
  for (const [name, svc] of gateways) {
    assert.equal(svc.build, '.', `${name} is built from the Dockerfile`)
    assert.equal(svc.environment?.REDIS_URL, 'redis://redis:6379/0', `${name} uses the shared Redis`)
    assert.ok(svc.depends_on?.redis !== undefined && svc.depends_on.demo !== undefined)
    for (const p of svc.ports ?? []) ports.add(p.split(':')[0] as string)
    // the environment it sets is one the gateway accepts (compose's ${VAR:-default} given as the default)
    const env = Object.fromEntries(Object.entries(svc.environment ?? {}).map(([k, v]) => [k, String(v).replace(/^\$\{[A-Z_]+:-(.*)\}$/, '$1')]))
    const config = loadConfig(env)
    assert.deepEqual(Object.keys(config.upstreamTargets).sort(), ['catalog', 'orders', 'users'])
  }
  assert.equal(ports.size, 2, 'each replica publishes its own port')
  for (const dep of Object.values(services).flatMap((s) => Object.keys(s.depends_on ?? {}))) assert.ok(dep in services, `depends on unknown service ${dep}`)
  assert.ok(doc.volumes !== undefined && 'redis-data' in doc.volumes)
})

test('Dockerfile: multi-stage, compiled JavaScript, non-root', () => {
  const text = readFileSync(join(root, 'Dockerfile'), 'utf8')
  const stages = text.match(/^FROM .+$/gm) ?? []
  assert.ok(stages.length >= 2, 'multi-stage')
  assert.match(text, /npm ci/)
  assert.match(text, /npm prune --omit=dev/)
  assert.match(text, /^USER node$/m)
  assert.match(text, /CMD \["node", "dist\/src\/server\.js"\]/)
  assert.match(text, /HEALTHCHECK .*\/health\/live/)
})

test('the gateway process runs with GATEWAY_NODE_FLAGS in the image and under npm start', () => {
  const docker = readFileSync(join(root, 'Dockerfile'), 'utf8')
  const options = /NODE_OPTIONS="([^"]*)"/.exec(docker)
  assert.ok(options !== null, 'the runtime stage sets NODE_OPTIONS')
  assert.deepEqual((options[1] as string).split(' '), [...GATEWAY_NODE_FLAGS])
  const scripts = (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts
  assert.equal(scripts.start, `node ${GATEWAY_NODE_FLAGS.join(' ')} dist/src/demo.js`)
  assert.equal(scripts['start:cluster'], `node ${GATEWAY_NODE_FLAGS.join(' ')} dist/src/cluster.js`)
})
