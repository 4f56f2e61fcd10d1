/**
 * Three small demo microservices the example routes point at: users, orders and catalog. Plain node:http with
 * in-memory data, each with GET /health. `npm start` runs them next to the gateway; they also run alone:
 * `node dist/examples/services.js`.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { pathToFileURL } from 'node:url'
import { WebSocketServer, WebSocket } from 'ws'

type Handler = (req: IncomingMessage, body: unknown, url: URL) => { status: number, body: unknown, headers?: Record<string, string> }

function json (res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers })
  res.end(text)
}

function service (name: string, routes: Array<[string, RegExp, Handler]>): Server {
  return createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const url = new URL(req.url ?? '/', 'http://localhost')
      if (url.pathname === '/health') { json(res, 200, { status: 'ok', service: name }); return }
      let body: unknown = null
      if (chunks.length > 0) {
        try { body = JSON.parse(Buffer.concat(chunks).toString()) } catch { json(res, 400, { error: 'body must be JSON' }); return }
      }
      for (const [method, path, handler] of routes) {
        const m = path.exec(url.pathname)
        if (m === null || method !== req.method) continue
        const out = handler(req, body, url)
        json(res, out.status, out.body, out.headers)
        return
      }
      json(res, 404, { error: `no ${req.method} ${url.pathname} on ${name}` })
    })
  })
}

const users = new Map<string, { id: string, name: string, email: string }>([
  ['1', { id: '1', name: 'Ada Lovelace', email: 'ada@example.com' }],
  ['2', { id: '2', name: 'Alan Turing', email: 'alan@example.com' }],
])
const orders = new Map<string, { id: string, item: string, quantity: number, client: string }>()
const items = [
  { id: 'kb-1', name: 'Mechanical keyboard', price: 89 },
  { id: 'ms-2', name: 'Wireless mouse', price: 25 },
  { id: 'mn-3', name: '27" monitor', price: 249 },
]

export function usersService (): Server {
  return service('users', [
    ['GET', /^\/v1\/users$/, () => ({ status: 200, body: [...users.values()] })],
    ['GET', /^\/v1\/users\/([^/]+)$/, (req, _b, url) => {
      const u = users.get(decodeURIComponent(url.pathname.split('/')[3] ?? ''))
      return u === undefined ? { status: 404, body: { error: 'no such user' } } : { status: 200, body: u }
    }],
    ['POST', /^\/v1\/users$/, (_req, body) => {
      const b = body as { name?: string, email?: string }
      const id = String(users.size + 1)
      const u = { id, name: String(b.name), email: String(b.email) }
      users.set(id, u)
      return { status: 201, body: u, headers: { location: `/users/${id}` } }
    }],
  ])
}

/** clients of GET /orders/live (WebSocket): each gets every order placed from now on, as JSON */
const live = new WebSocketServer({ noServer: true })

export function ordersService (): Server {
  const server = ordersHttp()
  server.on('upgrade', (req, socket, head) => {
    if (new URL(req.url ?? '/', 'http://localhost').pathname !== '/orders/live') { socket.destroy(); return }
    live.handleUpgrade(req, socket, head, (ws) => {
      ws.send(JSON.stringify({ hello: req.headers['x-client-id'] ?? 'anonymous' }))
      // anything a client sends comes back, so the connection can be tried by hand
      ws.on('message', (data, binary) => ws.send(data, { binary }))
    })
  })
  return server
}

function ordersHttp (): Server {
  return service('orders', [
    ['GET', /^\/orders$/, (req) => ({ status: 200, body: [...orders.values()].filter((o) => o.client === req.headers['x-client-id']) })],
    ['POST', /^\/orders$/, (req, body) => {
      const b = body as { item?: string, quantity?: number }
      const id = String(orders.size + 1)
      const o = { id, item: String(b.item), quantity: Number(b.quantity ?? 1), client: String(req.headers['x-client-id'] ?? 'anonymous') }
      orders.set(id, o)
      for (const ws of live.clients) if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ placed: o }))
      return { status: 201, body: o }
    }],
  ])
}

export function catalogService (): Server {
  return service('catalog', [
    ['GET', /^\/items$/, () => ({ status: 200, body: items, headers: { 'cache-control': 'public, max-age=60' } })],
    ['GET', /^\/items\/([^/]+)$/, (_req, _b, url) => {
      const item = items.find((i) => i.id === decodeURIComponent(url.pathname.split('/')[2] ?? ''))
      return item === undefined ? { status: 404, body: { error: 'no such item' } } : { status: 200, body: item, headers: { 'cache-control': 'public, max-age=60' } }
    }],
  ])
}

export const DEMO_PORTS = { users: 4001, orders: 4002, catalog: 4003 } as const

/** Start the three services (on 127.0.0.1 unless told); returns a function that stops them. */
export async function startDemoServices (ports: { users: number, orders: number, catalog: number } = DEMO_PORTS, host = '127.0.0.1'): Promise<() => Promise<void>> {
  const servers: Server[] = []
  for (const [make, port] of [[usersService, ports.users], [ordersService, ports.orders], [catalogService, ports.catalog]] as const) {
    const s = make()
    await new Promise<void>((resolve, reject) => { s.once('error', reject); s.listen(port, host, resolve) })
    servers.push(s)
  }
  return async () => {
    for (const ws of live.clients) ws.terminate()
    await Promise.all(servers.map((s) => new Promise((resolve) => { s.closeAllConnections(); s.close(resolve) })))
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  await startDemoServices()
  process.stdout.write(`demo services: users :${DEMO_PORTS.users}, orders :${DEMO_PORTS.orders}, catalog :${DEMO_PORTS.catalog}\n`)
}
