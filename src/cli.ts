#!/usr/bin/env node
/**
 * fastgate: the gateway's command line. `fastgate keys ...` manages API keys directly in the store the gateways
 * share (REDIS_URL), through src/keys.ts: the same records, hashes and change notices as the admin API, so a key
 * revoked here is refused by every replica at once.
 *
 * Exit codes: 0 done, 1 failed (store unreachable, unexpected error), 2 usage or configuration error,
 * 3 no such key, 4 the key cannot be changed in its state (rotating a revoked key).
 */
import { readFileSync, realpathSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'
import { VARS } from './config.js'
import { parseDuration } from './duration.js'
import { checkNewKey, DEFAULT_GRACE_MS, KEY_ID, keyIdOf, KeyRepository, viewOf, type KeyRecord, type KeyView } from './keys.js'
import { RedisStore } from './store/redis.js'
import { purgeCache, type PurgeSelector } from './cache-purge.js'

export const EXIT = { ok: 0, failed: 1, usage: 2, notFound: 3, conflict: 4 } as const

const USAGE = `Usage: fastgate <command> [options]

Commands:
  keys create   make an API key for a client (the key is printed once)
  keys list     list API keys (never their secrets)
  keys show     show one API key
  keys rotate   give a key a new secret; the old one stays valid for a grace period
  keys revoke   revoke a key on every gateway replica at once
  cache purge   drop cached responses by URL, path prefix or tag, on every gateway replica at once

Options:
  --redis-url <url>   the gateways' Redis (default: $REDIS_URL; REDIS_PREFIX is honoured)
  --json              machine-readable output (errors too, on stderr)
  -h, --help          help for a command: fastgate keys create --help
  -v, --version       the version

Exit codes: 0 done, 1 failed (e.g. Redis unreachable), 2 usage error, 3 no such key, 4 key state forbids it.
`

const HELP: Record<string, string> = {
  create: `Usage: fastgate keys create --client <id> --name <name> [options]

Makes an API key for a client and prints it ONCE: only its SHA-256 hash is stored.

  --client <id>        the client the key belongs to (sent upstream as X-Client-Id)
  --name <name>        what the key is for, e.g. "acme production"
  --scope <scope>      a scope the key grants (repeat the option for several)
  --scopes <a,b,...>   scopes, comma-separated
  --plan <name>        rate-limit plan (declared with definePlans in the routes)
  --expires <when>     a duration ("90d", "12h") or a date ("2030-01-31T00:00:00Z"); default: never
  --meta <key=value>   metadata to keep with the key (repeatable)
  --json               print {"key": ..., "id": ..., ...}
`,
  list: `Usage: fastgate keys list [--client <id>] [--status active|expired|revoked|all] [--json]

Lists the API keys, oldest first, without secrets.
`,
  show: `Usage: fastgate keys show <id> [--json]

Shows one API key. <id> is the key id (the part after gw_) or a whole key (its secret is not used).
`,
  rotate: `Usage: fastgate keys rotate <id> [--grace <duration>] [--json]

Gives the key a new secret, printed once. The previous secret keeps working for the grace period
(default 1h; --grace 0 ends it at once), so clients can switch without downtime.
`,
  purge: `Usage: fastgate cache purge (--key <url> | --prefix <path> | --tag <tag>) [--json]

Deletes cached responses from Redis; every gateway replica also drops its in-process copies.

  --key <url>       one URL, with its query if any ("/users/7?fields=name"): all clients' and variants' entries;
                    or a cache key as stored ("cache:e:...")
  --prefix <path>   every entry whose path starts with it ("/users/"; a string prefix: "/users" matches "/users-x")
  --tag <tag>       every entry tagged so (route cache.tags, or the route's cache.tagHeader response header)
`,
  revoke: `Usage: fastgate keys revoke <id> [--json]

Revokes the key: every gateway replica refuses it from now on. Revoking twice is not an error.
`,
}

class CliError extends Error {
  constructor (message: string, readonly exit: number, readonly code = 'GW_ERR_CLI') { super(message) }
}

export interface Io { out: (s: string) => void, err: (s: string) => void }
const processIo: Io = { out: (s) => process.stdout.write(s), err: (s) => process.stderr.write(s) }

function version (): string {
  const here = dirname(fileURLToPath(import.meta.url))
  // dist/src/cli.js or src/cli.ts
  for (const p of [join(here, '..', '..', 'package.json'), join(here, '..', 'package.json')]) {
    try { return (JSON.parse(readFileSync(p, 'utf8')) as { version: string }).version } catch { /* next */ }
  }
  return 'unknown'
}

/** REDIS_URL, REDIS_PREFIX, REDIS_COMMAND_TIMEOUT through their VARS rows, so the CLI reads them as the gateway does */
function storeSettings (env: Record<string, string | undefined>, urlOption: string | undefined): { url: string, prefix: string, timeoutMs: number } {
  const value = <T>(name: string, given?: string): T => {
    const row = VARS.find((v) => v.name === name) as (typeof VARS)[number]
    try { return row.parse(given ?? env[name] ?? row.default ?? '') as T } catch (err) {
      throw new CliError(`${given !== undefined ? '--redis-url' : name}: ${(err as Error).message}`, EXIT.usage, 'GW_ERR_CONFIG')
    }
  }
  const url = value<string | null>('REDIS_URL', urlOption)
  if (url === null) throw new CliError('no Redis to talk to: set REDIS_URL or give --redis-url (the CLI manages the keys the gateways share in Redis; a gateway without Redis keeps keys in its own memory: use its admin API)', EXIT.usage, 'GW_ERR_CONFIG')
  return { url, prefix: value('REDIS_PREFIX'), timeoutMs: Math.max(value<number>('REDIS_COMMAND_TIMEOUT'), 5000) }
}

const safeUrl = (raw: string): string => {
  try {
    const u = new URL(raw)
    if (u.password !== '') u.password = '***'
    return u.toString()
  } catch { return 'the Redis URL' }
}

/** the shared store, connected or a clear "cannot reach Redis" error; closed afterwards */
async function withRawStore<T> (settings: { url: string, prefix: string, timeoutMs: number }, fn: (store: RedisStore) => Promise<T>): Promise<T> {
  const store = new RedisStore({ url: settings.url, prefix: settings.prefix, commandTimeoutMs: settings.timeoutMs, connectTimeoutMs: 5000 })
  try {
    await store.init()
    if (store.state !== 'ready') {
      const h = await store.health()
      throw new CliError(`cannot reach Redis at ${safeUrl(settings.url)}: ${h.reason ?? 'not connected'}`, EXIT.failed, 'GW_ERR_STORE_UNAVAILABLE')
    }
    return await fn(store)
  } finally {
    await store.close().catch(() => {})
  }
}

async function withStore<T> (settings: { url: string, prefix: string, timeoutMs: number }, fn: (repo: KeyRepository) => Promise<T>): Promise<T> {
  return await withRawStore(settings, async (store) => await fn(new KeyRepository(store)))
}

function idArg (positionals: string[], command: string): string {
  if (positionals.length !== 1) throw new CliError(`keys ${command} takes one key id, got ${positionals.length}`, EXIT.usage)
  const raw = positionals[0] as string
  const id = keyIdOf(raw) ?? raw
  if (!KEY_ID.test(id)) throw new CliError(`"${raw.slice(0, 40)}" is not a key id (12 lower-case letters and digits) nor a key`, EXIT.usage)
  return id
}

function expiresFrom (raw: string | undefined, now = Date.now()): number {
  if (raw === undefined) return 0
  const ms = parseDuration(raw)
  if (ms !== null) {
    if (ms <= 0) throw new CliError('--expires: the duration must be more than 0', EXIT.usage)
    return now + ms
  }
  const t = Date.parse(raw)
  if (!/^\d{4}-\d{2}-\d{2}/.test(raw) || !Number.isFinite(t)) throw new CliError(`--expires: expected a duration like "90d" or a date like "2030-01-31T00:00:00Z", got "${raw}"`, EXIT.usage)
  return t
}

// ---- output -----------------------------------------------------------------------------------------------------

function lines (v: KeyView): string {
  const rows: Array<[string, string]> = [
    ['id', v.id],
    ['key', `${v.prefix}… (secret not shown)`],
    ['client', v.client],
    ['name', v.name],
    ['status', v.status],
    ['scopes', v.scopes.length > 0 ? v.scopes.join(' ') : '(none)'],
    ['plan', v.plan ?? '(none)'],
    ['created', v.createdAt],
    ['expires', v.expiresAt ?? 'never'],
    ...(v.rotatedAt !== null ? [['rotated', v.rotatedAt] as [string, string]] : []),
    ...(v.previousValidUntil !== null ? [['old secret until', v.previousValidUntil] as [string, string]] : []),
    ...(v.revokedAt !== null ? [['revoked', v.revokedAt] as [string, string]] : []),
    ['last used', v.lastUsedAt ?? 'never'],
    ...Object.entries(v.metadata).map(([k, val]) => [`meta.${k}`, typeof val === 'string' ? val : JSON.stringify(val)] as [string, string]),
  ]
  const w = Math.max(...rows.map(([k]) => k.length))
  return rows.map(([k, val]) => `  ${k.padEnd(w)}  ${val}`).join('\n') + '\n'
}

function table (records: KeyRecord[]): string {
  if (records.length === 0) return 'No API keys.\n'
  const head = ['ID', 'CLIENT', 'NAME', 'STATUS', 'PLAN', 'SCOPES', 'EXPIRES', 'LAST USED']
  const rows = records.map((r) => {
    const v = viewOf(r)
    return [v.id, v.client, v.name, v.status, v.plan ?? '-', v.scopes.join(' ') || '-', v.expiresAt ?? 'never', v.lastUsedAt ?? 'never']
  })
  const widths = head.map((h, i) => Math.min(40, Math.max(h.length, ...rows.map((r) => (r[i] as string).length))))
  const fmt = (r: string[]): string => r.map((c, i) => (c.length > 40 ? c.slice(0, 39) + '…' : c).padEnd(widths[i] as number)).join('  ').trimEnd()
  return [fmt(head), ...rows.map(fmt)].join('\n') + '\n'
}

// ---- commands ---------------------------------------------------------------------------------------------------

const COMMON = {
  'redis-url': { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const

type Run = (args: string[], env: Record<string, string | undefined>, io: Io) => Promise<void>

const COMMANDS: Record<string, Run> = {
  async create (args, env, io) {
    const { values } = parseArgs({
      args,
      options: {
        ...COMMON,
        client: { type: 'string' },
        name: { type: 'string' },
        scope: { type: 'string', multiple: true },
        scopes: { type: 'string' },
        plan: { type: 'string' },
        expires: { type: 'string' },
        meta: { type: 'string', multiple: true },
      },
      allowPositionals: false,
    })
    const missing = (['client', 'name'] as const).filter((k) => values[k] === undefined)
    if (missing.length > 0) throw new CliError(`keys create needs ${missing.map((m) => `--${m}`).join(' and ')}`, EXIT.usage)
    const metadata: Record<string, string> = {}
    for (const m of values.meta ?? []) {
      const eq = m.indexOf('=')
      if (eq <= 0) throw new CliError(`--meta: expected key=value, got "${m}"`, EXIT.usage)
      metadata[m.slice(0, eq)] = m.slice(eq + 1)
    }
    const input = {
      client: values.client as string,
      name: values.name as string,
      scopes: [...(values.scope ?? []), ...(values.scopes ?? '').split(',').map((s) => s.trim()).filter(Boolean)],
      plan: values.plan ?? null,
      expiresAt: expiresFrom(values.expires),
      metadata,
    }
    const problems = checkNewKey(input)
    if (problems.length > 0) throw new CliError(`invalid key: ${problems.join('; ')}`, EXIT.usage)
    const made = await withStore(storeSettings(env, values['redis-url']), async (repo) => await repo.create(input))
    const view = viewOf(made.record)
    if (values.json === true) { io.out(JSON.stringify({ key: made.key, ...view }, null, 2) + '\n'); return }
    io.out(`Created API key ${view.id} for client ${view.client}.\n\n  ${made.key}\n\n`)
    io.out(lines(view))
    io.err('\nStore the key now: it is not shown again (only its hash is kept).\n')
  },

  async list (args, env, io) {
    const { values } = parseArgs({ args, options: { ...COMMON, client: { type: 'string' }, status: { type: 'string' } }, allowPositionals: false })
    const status = values.status ?? 'all'
    if (!['active', 'expired', 'revoked', 'all'].includes(status)) throw new CliError(`--status: expected active, expired, revoked or all, got "${status}"`, EXIT.usage)
    const records = await withStore(storeSettings(env, values['redis-url']), async (repo) => await repo.list({ client: values.client, status: status as 'all' }))
    if (values.json === true) io.out(JSON.stringify({ keys: records.map((r) => viewOf(r)) }, null, 2) + '\n')
    else io.out(table(records))
  },

  async show (args, env, io) {
    const { values, positionals } = parseArgs({ args, options: COMMON, allowPositionals: true })
    const id = idArg(positionals, 'show')
    const r = await withStore(storeSettings(env, values['redis-url']), async (repo) => await repo.show(id))
    io.out(values.json === true ? JSON.stringify(viewOf(r), null, 2) + '\n' : lines(viewOf(r)))
  },

  async rotate (args, env, io) {
    const { values, positionals } = parseArgs({ args, options: { ...COMMON, grace: { type: 'string' } }, allowPositionals: true })
    const id = idArg(positionals, 'rotate')
    let graceMs = DEFAULT_GRACE_MS
    if (values.grace !== undefined) {
      const g = parseDuration(/^\d+$/.test(values.grace) ? Number(values.grace) : values.grace)
      if (g === null) throw new CliError(`--grace: expected a duration like "1h", "30m" or 0, got "${values.grace}"`, EXIT.usage)
      graceMs = g
    }
    const made = await withStore(storeSettings(env, values['redis-url']), async (repo) => await repo.rotate(id, graceMs))
    const view = viewOf(made.record)
    if (values.json === true) { io.out(JSON.stringify({ key: made.key, ...view }, null, 2) + '\n'); return }
    io.out(`Rotated API key ${view.id}.\n\n  ${made.key}\n\n`)
    io.out(lines(view))
    io.err(`\nStore the new key now: it is not shown again. ${view.previousValidUntil !== null ? `The old one works until ${view.previousValidUntil}.` : 'The old one no longer works.'}\n`)
  },

  async revoke (args, env, io) {
    const { values, positionals } = parseArgs({ args, options: COMMON, allowPositionals: true })
    const id = idArg(positionals, 'revoke')
    const r = await withStore(storeSettings(env, values['redis-url']), async (repo) => await repo.revoke(id))
    if (values.json === true) io.out(JSON.stringify(viewOf(r), null, 2) + '\n')
    else io.out(`Revoked API key ${r.id} (client ${r.client}); every gateway replica refuses it now.\n`)
  },
}

const CACHE_COMMANDS: Record<string, Run> = {
  async purge (args, env, io) {
    const { values } = parseArgs({ args, options: { ...COMMON, key: { type: 'string' }, prefix: { type: 'string' }, tag: { type: 'string' } }, allowPositionals: false })
    const given = (['key', 'prefix', 'tag'] as const).filter((k) => values[k] !== undefined)
    if (given.length !== 1) throw new CliError('cache purge takes exactly one of --key, --prefix or --tag', EXIT.usage)
    const field = given[0] as 'key' | 'prefix' | 'tag'
    const selector: PurgeSelector = { [field]: values[field] }
    const r = await withRawStore(storeSettings(env, values['redis-url']), async (store) => await purgeCache(store, selector))
    if (values.json === true) io.out(JSON.stringify({ purged: r.purged }) + '\n')
    else io.out(`Purged ${r.purged} cached entr${r.purged === 1 ? 'y' : 'ies'} (${field} ${JSON.stringify(values[field])}); every gateway replica drops its in-process copies.\n`)
  },
}

const GROUPS: Record<string, Record<string, Run>> = { keys: COMMANDS, cache: CACHE_COMMANDS }

/** Runs one command line; resolves to the exit code. Never throws. */
export async function main (argv: string[], env: Record<string, string | undefined> = process.env, io: Io = processIo): Promise<number> {
  const json = argv.includes('--json')
  const fail = (err: CliError): number => {
    if (json) io.err(JSON.stringify({ error: { code: err.code, message: err.message } }) + '\n')
    else io.err(`fastgate: ${err.message}\n${err.exit === EXIT.usage ? 'Run "fastgate --help" for usage.\n' : ''}`)
    return err.exit
  }
  const [group, command, ...rest] = argv
  if (group === undefined || group === '--help' || group === '-h' || group === 'help') { io.out(USAGE); return group === undefined ? EXIT.usage : EXIT.ok }
  if (group === '--version' || group === '-v') { io.out(version() + '\n'); return EXIT.ok }
  const commands = Object.hasOwn(GROUPS, group) ? GROUPS[group] as Record<string, Run> : undefined
  if (commands === undefined) return fail(new CliError(`unknown command "${group}"`, EXIT.usage))
  if (command === undefined || command === '--help' || command === '-h') { io.out(USAGE); return command === undefined ? EXIT.usage : EXIT.ok }
  const run = Object.hasOwn(commands, command) ? commands[command] : undefined
  if (run === undefined) return fail(new CliError(`unknown command "${group} ${command}"; expected ${Object.keys(commands).join(', ')}`, EXIT.usage))
  if (rest.includes('--help') || rest.includes('-h')) { io.out(HELP[command] as string); return EXIT.ok }
  try {
    await run(rest, env, io)
    return EXIT.ok
  } catch (err) {
    if (err instanceof CliError) return fail(err)
    const e = err as { code?: string, message?: string }
    // parseArgs reports unknown or malformed options with ERR_PARSE_ARGS_* codes
    if (typeof e.code === 'string' && e.code.startsWith('ERR_PARSE_ARGS')) return fail(new CliError(e.message ?? 'bad arguments', EXIT.usage))
    if (e.code === 'GW_ERR_KEY_NOT_FOUND') return fail(new CliError(e.message ?? 'no such key', EXIT.notFound, e.code))
    if (e.code === 'GW_ERR_KEY_CONFLICT') return fail(new CliError(e.message ?? 'conflict', EXIT.conflict, e.code))
    if (e.code === 'GW_ERR_BAD_REQUEST') return fail(new CliError(e.message ?? 'bad request', EXIT.usage, e.code))
    return fail(new CliError(`the store failed: ${e.message ?? String(err)}`, EXIT.failed, 'GW_ERR_STORE_UNAVAILABLE'))
  }
}

/** run as a program (also through the npm bin symlink), not when imported */
function isMain (): boolean {
  try { return import.meta.url === pathToFileURL(realpathSync(process.argv[1] ?? '')).href } catch { return false }
}

if (isMain()) {
  process.exitCode = await main(process.argv.slice(2))
}
