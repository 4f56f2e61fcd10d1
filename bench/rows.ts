/**
 * The rows of the benchmark table: what each one starts, what it checks before it measures (so a missing feature
 * gives "n/a: <reason>" instead of a number for something else) and the load it sends. The gateway rows use the
 * route files in bench/routes/.
 */
import { randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { header, httpRequest, signHs256, type Answer } from './lib/http.js'
import type { Features } from './lib/features.js'
import type { LoadSpec } from './lib/load.js'
import { sleep } from './lib/procs.js'
import { BODY_BYTES } from './lib/body.js'

/** upstream: the upstream itself; reference: a process of its own (dist/bench/<name>.js), not a build of the gateway */
export type RowKind = 'upstream' | 'reference' | 'gateway'

export interface RowContext {
  /** http://127.0.0.1:<port> of the process under test */
  base: string
  adminToken: string
  jwtSecret: string
  /** the gateway's stdout (its log), when it is a gateway row */
  logFile: string | null
  features: Features
}

/** a row is not available: the reason, shown as "n/a: <reason>" */
export class NotAvailable extends Error {}
const na = (reason: string): never => { throw new NotAvailable(reason) }

export interface RowDef {
  name: string
  kind: RowKind
  describe: string
  /** left out of the default list: run when named (--rows floor) */
  optional?: boolean
  /** extra gateway environment; throw NotAvailable when the build cannot run this row */
  env?: (f: Features) => Record<string, string>
  /** probe the running server and return the load to send */
  prepare: (ctx: RowContext) => Promise<LoadSpec>
}

const ITEM = '/items/1'

function expectBody (a: Answer, what: string): void {
  if (a.status !== 200) na(`${what} answered ${a.status}: ${a.body.slice(0, 160).replace(/\s+/g, ' ')}`)
  if (Buffer.byteLength(a.body) !== BODY_BYTES) na(`${what} answered ${Buffer.byteLength(a.body)} bytes instead of the upstream's ${BODY_BYTES}`)
}

async function get (ctx: RowContext, path: string, headers: Record<string, string> = {}): Promise<Answer> {
  return await httpRequest(ctx.base + path, { headers })
}

/** An anonymous request must be refused, else the auth plugin is not there (the route would be measured open). */
async function expectRefusedWithout (ctx: RowContext, path: string, what: string): Promise<void> {
  const anon = await get(ctx, path)
  if (anon.status === 200) na(`${what} is not enforced: an anonymous GET ${path} answered 200 (no auth plugin in plugins/)`)
  if (anon.status !== 401 && anon.status !== 403) na(`an anonymous GET ${path} answered ${anon.status}, expected 401: ${anon.body.slice(0, 160)}`)
}

/** Look for the secret in the admin API's answer: `key`, `apiKey`, `secret` or `token`, at the top or one level down. */
export function findKeySecret (json: unknown): string | null {
  const names = ['key', 'apiKey', 'api_key', 'secret', 'token']
  const look = (o: unknown): string | null => {
    if (typeof o !== 'object' || o === null) return null
    for (const n of names) {
      const v = (o as Record<string, unknown>)[n]
      if (typeof v === 'string' && v.length >= 16) return v
    }
    return null
  }
  const top = look(json)
  if (top !== null) return top
  if (typeof json === 'object' && json !== null) {
    for (const v of Object.values(json)) {
      const inner = look(v)
      if (inner !== null) return inner
    }
  }
  return null
}

/** An API key for the client "bench", issued through the admin API as a user would. */
export async function createApiKey (ctx: RowContext, client = 'bench'): Promise<string> {
  const a = await httpRequest(`${ctx.base}/admin/keys`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ctx.adminToken}` },
    body: JSON.stringify({ client, name: `bench ${client}`, scopes: [] }),
  })
  if (a.status === 404) na('POST /admin/keys answered 404: no API-key admin API yet (plugins/auth)')
  if (a.status >= 300) na(`POST /admin/keys answered ${a.status}: ${a.body.slice(0, 200)}`)
  let json: unknown
  try { json = JSON.parse(a.body) } catch { na(`POST /admin/keys answered non-JSON: ${a.body.slice(0, 120)}`) }
  const secret = findKeySecret(json)
  if (secret === null) na(`POST /admin/keys answered no key secret in ${a.body.slice(0, 200)}`)
  return secret as string
}

async function apiKeyHeaders (ctx: RowContext, prefix: string): Promise<Record<string, string>> {
  await expectRefusedWithout(ctx, prefix + ITEM, 'API-key auth')
  const key = await createApiKey(ctx)
  const headers = { 'x-api-key': key }
  expectBody(await get(ctx, prefix + ITEM, headers), `GET ${prefix}${ITEM} with the new API key`)
  return headers
}

function expectRateLimitHeaders (a: Answer, path: string): void {
  const seen = ['ratelimit-limit', 'x-ratelimit-limit', 'ratelimit', 'ratelimit-policy'].some((h) => header(a, h) !== undefined)
  if (!seen) na(`GET ${path} carried no RateLimit-* / X-RateLimit-* header: no rate-limit plugin in plugins/`)
}

async function expectCacheStatus (ctx: RowContext, path: string, want: 'HIT' | 'MISS', headers: Record<string, string> = {}): Promise<void> {
  const a = await get(ctx, path, headers)
  expectBody(a, `GET ${path}`)
  const x = header(a, 'x-cache')
  if (x === undefined) na(`GET ${path} carried no X-Cache header: no cache plugin in plugins/`)
  if (!(x as string).toUpperCase().startsWith(want)) na(`GET ${path} answered X-Cache: ${x}, expected ${want}`)
}

/** The access log must carry each request's id; probes are sent with our own ids and looked up in the log file. */
async function expectAccessLog (ctx: RowContext, path: string, headers: Record<string, string>): Promise<void> {
  if (ctx.logFile === null) na('no gateway log file')
  const id = `bench-probe-${randomBytes(6).toString('hex')}`
  // enough lines to pass a buffered destination's flush threshold (a few KiB)
  for (let i = 0; i < 40; i++) await get(ctx, path, { ...headers, 'x-request-id': `${id}-${i}` })
  for (let i = 0; i < 40; i++) {
    if (readFileSync(ctx.logFile as string, 'utf8').includes(id)) return
    await sleep(50)
  }
  na('no access-log line carried the request id within 2 s (ACCESS_LOG=true; plugins/access-log?)')
}

async function expectMetrics (ctx: RowContext): Promise<void> {
  const path = ctx.features.metricsPath
  for (const headers of [{}, { authorization: `Bearer ${ctx.adminToken}` }] as Array<Record<string, string>>) {
    const a = await get(ctx, path, headers)
    if (a.status === 200 && a.body.includes('# HELP')) return
  }
  na(`GET ${path} gave no Prometheus text (with and without the admin token): no metrics plugin yet`)
}

export const ROWS: readonly RowDef[] = [
  {
    name: 'direct',
    kind: 'upstream',
    describe: 'the upstream alone: the limit of this layout',
    async prepare (ctx) {
      expectBody(await get(ctx, ITEM), `GET ${ITEM} on the upstream`)
      return { base: ctx.base, path: ITEM }
    },
  },
  {
    name: 'baseline',
    kind: 'reference',
    describe: 'Fastify 5 + @fastify/reply-from, plugin defaults (bench/baseline.ts)',
    async prepare (ctx) {
      expectBody(await get(ctx, ITEM), `GET ${ITEM} through the baseline`)
      return { base: ctx.base, path: ITEM }
    },
  },
  {
    name: 'floor',
    kind: 'reference',
    optional: true,
    describe: 'the thinnest Fastify 5 proxy: undici dispatch, hijack, raw write, nothing a gateway owes (bench/floor.ts)',
    async prepare (ctx) {
      expectBody(await get(ctx, ITEM), `GET ${ITEM} through the floor proxy`)
      return { base: ctx.base, path: ITEM }
    },
  },
  {
    name: 'passthrough',
    kind: 'gateway',
    describe: 'gateway, a route without any policy',
    async prepare (ctx) {
      expectBody(await get(ctx, '/pass' + ITEM), `GET /pass${ITEM}`)
      return { base: ctx.base, path: '/pass' + ITEM }
    },
  },
  {
    name: 'apiKey',
    kind: 'gateway',
    describe: 'gateway, API key in X-API-Key (one key, cached in process)',
    async prepare (ctx) {
      const headers = await apiKeyHeaders(ctx, '/apikey')
      return { base: ctx.base, path: '/apikey' + ITEM, headers }
    },
  },
  {
    name: 'jwt',
    kind: 'gateway',
    describe: 'gateway, HS256 JWT in Authorization: Bearer',
    env (f) {
      if (f.jwtSecretVar === null) na('no JWT secret variable in src/config.ts VARS yet (looked for JWT_SECRET and similar)')
      return {}
    },
    async prepare (ctx) {
      await expectRefusedWithout(ctx, '/jwt' + ITEM, 'JWT auth')
      const now = Math.floor(Date.now() / 1000)
      const token = await signHs256({ sub: 'bench', scope: 'bench', iat: now, exp: now + 3600 }, ctx.jwtSecret)
      const headers = { authorization: `Bearer ${token}` }
      expectBody(await get(ctx, '/jwt' + ITEM, headers), `GET /jwt${ITEM} with an HS256 token`)
      return { base: ctx.base, path: '/jwt' + ITEM, headers }
    },
  },
  {
    name: 'rateLimit',
    kind: 'gateway',
    describe: 'gateway, Redis rate limit per client (never trips)',
    async prepare (ctx) {
      const a = await get(ctx, '/rl' + ITEM)
      expectBody(a, `GET /rl${ITEM}`)
      expectRateLimitHeaders(a, '/rl' + ITEM)
      return { base: ctx.base, path: '/rl' + ITEM }
    },
  },
  {
    name: 'full',
    kind: 'gateway',
    describe: 'gateway, API key + Redis rate limit + access log + metrics',
    env (f) {
      if (f.metricsOn === null) na('no metrics plugin yet (plugins/metrics)')
      return { ACCESS_LOG: 'true', ...f.metricsOn }
    },
    async prepare (ctx) {
      const headers = await apiKeyHeaders(ctx, '/full')
      expectRateLimitHeaders(await get(ctx, '/full' + ITEM, headers), '/full' + ITEM)
      await expectAccessLog(ctx, '/full' + ITEM, headers)
      await expectMetrics(ctx)
      return { base: ctx.base, path: '/full' + ITEM, headers }
    },
  },
  {
    name: 'cacheHitL1',
    kind: 'gateway',
    describe: 'gateway, cache hit from the in-process L1',
    async prepare (ctx) {
      await get(ctx, '/cache' + ITEM)
      await expectCacheStatus(ctx, '/cache' + ITEM, 'HIT')
      return { base: ctx.base, path: '/cache' + ITEM }
    },
  },
  {
    name: 'cacheHitRedis',
    kind: 'gateway',
    describe: 'gateway, cache hit from Redis (L1 off)',
    env (f) {
      if (f.cacheL1Off === null) na('no variable to turn the L1 cache off in src/config.ts VARS yet (plugins/cache)')
      return f.cacheL1Off as Record<string, string>
    },
    async prepare (ctx) {
      await get(ctx, '/cache' + ITEM)
      await expectCacheStatus(ctx, '/cache' + ITEM, 'HIT')
      return { base: ctx.base, path: '/cache' + ITEM }
    },
  },
  {
    name: 'cacheMiss',
    kind: 'gateway',
    describe: 'gateway, cache miss (a new query string each request) and store',
    async prepare (ctx) {
      const run = randomBytes(4).toString('hex')
      await expectCacheStatus(ctx, `/cachemiss${ITEM}?probe=${run}`, 'MISS')
      let n = 0
      const prefix = `/cachemiss${ITEM}?r=${run}&n=`
      return { base: ctx.base, path: prefix + '0', pathPerRequest: () => prefix + String(++n) }
    },
  },
]

/** every row; the default list leaves out the optional ones */
export const ROW_NAMES = ROWS.map((r) => r.name)
export const DEFAULT_ROW_NAMES = ROWS.filter((r) => r.optional !== true).map((r) => r.name)
