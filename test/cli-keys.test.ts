/**
 * The `fastgate keys` CLI as a user runs it: `node dist/src/cli.js` in a child process, against a real
 * redis-server shared with a gateway, checked through that gateway.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { FastifyInstance } from 'fastify'
import { main } from '../src/cli.js'
import { defineRoutes, defineUpstream } from '../src/declare.js'
import { build } from './helper.js'
import { freePort, redisCommand, startRedis } from './helpers/redis.js'
import { startUpstream } from './helpers/upstream.js'
import { until } from './helpers/wait.js'

const CLI = join(dirname(fileURLToPath(import.meta.url)), '..', 'src', 'cli.js')
const KEY = /gw_[0-9a-z]{12}_[0-9A-Za-z]{43}/

interface Run { code: number | null, stdout: string, stderr: string }

async function cli (args: string[], env: Record<string, string> = {}): Promise<Run> {
  return await new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { PATH: process.env.PATH ?? '', ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => { stdout += d.toString() })
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`fastgate ${args.join(' ')} did not exit: ${stdout} ${stderr}`)) }, 20_000)
    child.once('error', reject)
    child.once('close', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }) })
  })
}

/** the same entry point without a process: main(argv, env, io) */
async function inProcess (args: string[], env: Record<string, string> = {}): Promise<Run> {
  let stdout = ''
  let stderr = ''
  const code = await main(args, env, { out: (x) => { stdout += x }, err: (x) => { stderr += x } })
  return { code, stdout, stderr }
}


test('help, version, usage errors and exit codes', async () => {
  const help = await cli(['--help'])
  assert.equal(help.code, 0)
  assert.match(help.stdout, /Usage: fastgate <command>/)
  assert.match(help.stdout, /keys rotate/)
  const bare = await inProcess([])
  assert.equal(bare.code, 2)
  assert.match(bare.stdout, /Usage/)
  const create = await inProcess(['keys', 'create', '--help'])
  assert.equal(create.code, 0)
  assert.match(create.stdout, /--client <id>/)
  assert.match((await inProcess(['--version'])).stdout, /^\d+\.\d+\.\d+/)

  const cases: Array<[string[], Record<string, string>, number, RegExp]> = [
    [['frobnicate'], {}, 2, /unknown command "frobnicate"/],
    [['keys', 'explode'], {}, 2, /unknown command "keys explode"/],
    [['keys', 'create', '--name', 'n'], { REDIS_URL: 'redis://127.0.0.1:1' }, 2, /keys create needs --client/],
    [['keys', 'create', '--client', 'c', '--name', 'n', '--frobnicate'], { REDIS_URL: 'redis://127.0.0.1:1' }, 2, /Unknown option '--frobnicate'/],
    [['keys', 'create', '--client', 'c', '--name', 'n', '--expires', 'someday'], { REDIS_URL: 'redis://127.0.0.1:1' }, 2, /--expires: expected a duration/],
    [['keys', 'create', '--client', 'has space', '--name', 'n'], { REDIS_URL: 'redis://127.0.0.1:1' }, 2, /client: 1-128 printable ASCII/],
    [['keys', 'show'], { REDIS_URL: 'redis://127.0.0.1:1' }, 2, /takes one key id/],
    [['keys', 'show', 'NOT-AN-ID'], { REDIS_URL: 'redis://127.0.0.1:1' }, 2, /is not a key id/],
    [['keys', 'list'], {}, 2, /set REDIS_URL or give --redis-url/],
    [['keys', 'list'], { REDIS_URL: 'http://nope' }, 2, /REDIS_URL: expected a redis:\/\//],
  ]
  // spawned once; the other cases in process through the same main() (a process per case is slow on small machines)
  const spawned = await cli(['keys', 'create', '--name', 'n'], { REDIS_URL: 'redis://127.0.0.1:1' })
  assert.equal(spawned.code, 2)
  assert.match(spawned.stderr, /keys create needs --client/)
  for (const [args, env, code, message] of cases) {
    const r = await inProcess(args, env)
    assert.equal(r.code, code, `${args.join(' ')}: ${r.stderr}`)
    assert.match(r.stderr, message)
    assert.equal(r.stdout, '')
  }

  // a Redis that is not there: exit 1, said plainly (JSON on stderr with --json)
  const port = await freePort()
  const down = await cli(['keys', 'list', '--json'], { REDIS_URL: `redis://:hunter2@127.0.0.1:${port}` })
  assert.equal(down.code, 1)
  const err = JSON.parse(down.stderr) as { error: { code: string, message: string } }
  assert.equal(err.error.code, 'GW_ERR_STORE_UNAVAILABLE')
  assert.match(err.error.message, /cannot reach Redis at redis:\/\/:\*\*\*@127\.0\.0\.1/)
  assert.ok(!down.stderr.includes('hunter2'), 'no password in the message')
})

test('create, list, show, rotate and revoke against the gateways\' Redis', async (t) => {
  const redis = await startRedis(t)
  const up = await startUpstream(t)
  const env = { REDIS_URL: redis.url }
  const app: FastifyInstance = await build(t, {
    declare: [
      defineUpstream({ name: 'svc', targets: [up.url] }),
      defineRoutes({ upstream: 'svc', prefix: '/api', auth: { apiKey: true, scopes: ['orders:read'] }, routes: [{ method: 'GET', url: '/*' }] }),
    ],
    env,
  })
  const call = async (key: string): Promise<number> => (await app.inject({ url: '/api/x', headers: { 'x-api-key': key } })).statusCode

  const made = await cli(['keys', 'create', '--client', 'acme', '--name', 'acme production', '--scope', 'orders:read', '--scopes', 'a,b', '--plan', 'gold', '--expires', '90d', '--meta', 'team=payments', '--meta', 'ticket=OPS-1', '--json'], env)
  assert.equal(made.code, 0, made.stderr)
  const created = JSON.parse(made.stdout) as { key: string, id: string, client: string, scopes: string[], plan: string, expiresAt: string, metadata: Record<string, string>, status: string }
  assert.match(created.key, KEY)
  assert.deepEqual(created.scopes, ['orders:read', 'a', 'b'])
  assert.equal(created.plan, 'gold')
  assert.deepEqual(created.metadata, { team: 'payments', ticket: 'OPS-1' })
  assert.ok(Date.parse(created.expiresAt) > Date.now() + 89 * 86_400_000)
  assert.equal(await call(created.key), 200, 'a key made by the CLI works on the gateway')
  const seen = (await app.inject({ url: '/api/x', headers: { 'x-api-key': created.key } })).json().headers
  assert.equal(seen['x-client-id'], 'acme')
  assert.equal(seen['x-client-plan'], 'gold')

  // human output: the key once on stdout, the warning on stderr
  const human = await cli(['keys', 'create', '--client', 'globex', '--name', 'globex ci'], env)
  assert.equal(human.code, 0)
  assert.equal(human.stdout.match(new RegExp(KEY, 'g'))?.length, 1)
  assert.match(human.stderr, /not shown again/)

  const list = await cli(['keys', 'list', '--json'], env)
  assert.equal(list.code, 0)
  const keys = (JSON.parse(list.stdout) as { keys: Array<{ id: string, client: string }> }).keys
  assert.deepEqual(keys.map((k) => k.client).sort(), ['acme', 'globex'])
  assert.ok(!KEY.test(list.stdout), 'list shows no key')
  const table = await cli(['keys', 'list', '--client', 'acme'], env)
  assert.match(table.stdout, /^ID +CLIENT +NAME +STATUS/)
  assert.match(table.stdout, new RegExp(`${created.id} +acme +acme production +active`))
  assert.ok(!table.stdout.includes('globex'))

  for (const ref of [created.id, created.key]) {
    const show = await cli(['keys', 'show', ref, '--json'], env)
    assert.equal(show.code, 0)
    assert.equal(JSON.parse(show.stdout).id, created.id)
    assert.ok(!KEY.test(show.stdout), 'show never prints the key')
  }
  assert.match((await cli(['keys', 'show', created.id], env)).stdout, /status +active/)
  const missing = await cli(['keys', 'show', 'zzzzzzzzzzzz'], env)
  assert.equal(missing.code, 3)
  assert.match(missing.stderr, /No API key with id zzzzzzzzzzzz/)

  // rotate: the new key works at once; with --grace 0 the old one is refused on the gateway within a second
  const rotated = await cli(['keys', 'rotate', created.id, '--grace', '0', '--json'], env)
  assert.equal(rotated.code, 0, rotated.stderr)
  const next = JSON.parse(rotated.stdout) as { key: string, previousValidUntil: string | null }
  assert.match(next.key, KEY)
  assert.equal(next.previousValidUntil, null)
  assert.equal(await call(next.key), 200)
  assert.ok(await until(async () => await call(created.key) === 401, 1000), 'the old secret is refused')
  const graced = await cli(['keys', 'rotate', created.id, '--grace', '1h'], env)
  assert.equal(graced.code, 0)
  assert.match(graced.stderr, /The old one works until/)
  assert.equal(await call(next.key), 200, 'within the grace period')

  const revoked = await cli(['keys', 'revoke', created.id], env)
  assert.equal(revoked.code, 0)
  assert.match(revoked.stdout, /Revoked API key/)
  assert.ok(await until(async () => await call(next.key) === 401, 1000), 'revoked through the CLI: refused by the gateway within a second')
  assert.equal((await cli(['keys', 'revoke', created.id], env)).code, 0, 'revoking twice is fine')
  const conflict = await cli(['keys', 'rotate', created.id, '--json'], env)
  assert.equal(conflict.code, 4)
  assert.equal(JSON.parse(conflict.stderr).error.code, 'GW_ERR_KEY_CONFLICT')
  assert.equal(JSON.parse((await cli(['keys', 'show', created.id, '--json'], env)).stdout).status, 'revoked')
  assert.equal(JSON.parse((await cli(['keys', 'list', '--status', 'active', '--json'], env)).stdout).keys.length, 1)

  // and nothing the CLI stored holds a secret
  let dump = ''
  for (const k of await redisCommand(redis, 'KEYS', '*') as string[]) {
    const type = await redisCommand(redis, 'TYPE', k)
    dump += JSON.stringify(type === 'hash' ? await redisCommand(redis, 'HGETALL', k) : type === 'set' ? await redisCommand(redis, 'SMEMBERS', k) : await redisCommand(redis, 'GET', k))
  }
  const humanKey = KEY.exec(human.stdout)?.[0] as string
  for (const k of [created.key, next.key, humanKey]) assert.ok(!dump.includes(k.slice(16)), 'no secret in Redis')
})

test('REDIS_PREFIX is honoured like the gateway does', async (t) => {
  const redis = await startRedis(t)
  const made = await cli(['keys', 'create', '--client', 'c', '--name', 'n', '--json'], { REDIS_URL: redis.url, REDIS_PREFIX: 'edge:' })
  assert.equal(made.code, 0, made.stderr)
  const id = (JSON.parse(made.stdout) as { id: string }).id
  assert.equal(await redisCommand(redis, 'EXISTS', `edge:apikey:${id}`), 1)
  assert.equal((await cli(['keys', 'show', id], { REDIS_URL: redis.url })).code, 3, 'another prefix is another set of keys')
})
