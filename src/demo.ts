/**
 * `npm start`: the gateway on the embedded store in front of the demo services (examples/), with a demo admin
 * token and JWT secret when none are set, then prints where to go and what to try.
 * For a real deployment run `npm run serve` (src/server.ts) with your own routes and environment.
 */
import { randomBytes } from 'node:crypto'
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
  const { url } = running
  const lines = [
    '',
    `API gateway listening on ${url}  (store: ${running.app.store.kind}; demo services on :4001-4003)`,
    '',
    'Try:',
    `  curl ${url}/catalog/items                      # public, cached, rate-limited by IP`,
    `  curl -i ${url}/users                           # needs an API key: 401`,
    `  curl -s -X POST ${url}/admin/keys -H "authorization: Bearer ${env.ADMIN_TOKEN}" \\`,
    '       -H "content-type: application/json" -d \'{"client":"acme","name":"demo","scopes":["users:read","orders"]}\'',
    `  curl ${url}/users -H "x-api-key: <the key printed above>"`,
    `  curl ${url}/health/ready`,
    '',
    `Admin token: ${env.ADMIN_TOKEN}${process.env.ADMIN_TOKEN === undefined ? '  (generated for this run; set ADMIN_TOKEN to choose one)' : ''}`,
    'Stop with Ctrl-C.',
    '',
  ]
  process.stdout.write(lines.join('\n'))
} catch (err) { reportStartupError(err) }
