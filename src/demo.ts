/**
 * `npm start`: the gateway on the embedded store in front of the demo services (examples/), with a demo admin
 * token and JWT secret when none are set, one demo API key and one demo JWT, then prints what to try.
 * For a real deployment run `npm run serve` (src/server.ts) with your own routes and environment.
 */
import { randomBytes } from 'node:crypto'
import { createSigner } from 'fast-jwt'
import { startDemoServices } from '../examples/services.js'
import { handleSignals, reportStartupError, start } from './server.js'

const env: Record<string, string | undefined> = { ...process.env }
env.ADMIN_TOKEN ??= 'demo-admin-' + randomBytes(12).toString('hex')
env.JWT_SECRET ??= 'demo-jwt-secret-' + randomBytes(16).toString('hex')
env.LOG_LEVEL ??= 'warn'

try {
  // the demo services live in this process and end with it
  await startDemoServices()
  const running = await start(env)
  handleSignals(running)
  const { url, app } = running
  const created = await app.inject({
    method: 'POST',
    url: '/admin/keys',
    headers: { authorization: `Bearer ${env.ADMIN_TOKEN}` },
    payload: { client: 'acme', name: 'demo key', scopes: ['users:read', 'orders'], plan: 'free' },
  })
  const key = created.statusCode === 201 ? (created.json() as { key: string }).key : `(could not create a demo key: ${created.statusCode})`
  const jwt = createSigner({ key: env.JWT_SECRET, algorithm: 'HS256', expiresIn: 3_600_000 })({ sub: 'demo-user', scope: 'orders' })
  const ws = url.replace(/^http/, 'ws')
  const lines = [
    '',
    `API gateway listening on ${url}  (store: ${app.store.kind}; demo services on :4001-4003)`,
    '',
    'Try:',
    `  curl ${url}/catalog/items                          # public, cached (X-Cache), rate-limited by IP`,
    `  curl -i ${url}/users                               # needs an API key: 401 problem+json`,
    `  curl ${url}/users -H 'x-api-key: ${key}'`,
    `  curl ${url}/orders -H 'authorization: Bearer ${jwt}'`,
    `  curl -X POST ${url}/orders -H 'x-api-key: ${key}' -H 'content-type: application/json' -d '{"item":"kb-1"}'`,
    `  npx wscat -c ${ws}/orders/live -H 'x-api-key: ${key}'   # WebSocket: orders as they are placed`,
    `  open ${url}/docs                                   # the API documentation (Authorize with the key)`,
    `  curl ${url}/admin/overview -H 'authorization: Bearer ${env.ADMIN_TOKEN}'`,
    '',
    `Demo API key (client acme, plan free): ${key}`,
    `Admin token: ${env.ADMIN_TOKEN}${process.env.ADMIN_TOKEN === undefined ? '  (generated for this run; set ADMIN_TOKEN to choose one)' : ''}`,
    'More keys: POST /admin/keys (see README). Stop with Ctrl-C.',
    '',
  ]
  process.stdout.write(lines.join('\n'))
} catch (err) { reportStartupError(err) }
