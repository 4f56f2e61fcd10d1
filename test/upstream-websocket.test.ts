/**
 * WebSocket routes (issue 3, item 6): the upgrade is proxied to a target of the route's upstream, messages go
 * both ways (text and binary), close codes pass through, the route's auth runs BEFORE the upgrade, and the
 * upstream's own refusal or absence reaches the client as an HTTP answer.
 */
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { createServer, type IncomingHttpHeaders, type IncomingMessage } from 'node:http'
import { WebSocket, WebSocketServer, type RawData } from 'ws'
import { defineRoutes, defineUpstream, type RoutesDeclaration } from '../src/declare.js'
import { build } from './helper.js'
import { startUpstream } from './helpers/upstream.js'
import { ADMIN, ADMIN_TOKEN, listen, rawRequest, until } from './helpers/upstream-tools.js'

interface WsUpstream {
  url: string
  handshakes: Array<{ url: string, headers: IncomingHttpHeaders }>
  closes: Array<{ code: number, reason: string }>
  close (): Promise<void>
}

/** An echo WebSocket service. `close <code>` makes it close with that code; /rooms/forbidden is refused (403). */
async function startWsUpstream (t: TestContext, name = 'ws'): Promise<WsUpstream> {
  const server = createServer((_req, res) => { res.writeHead(404); res.end() })
  const handshakes: WsUpstream['handshakes'] = []
  const closes: WsUpstream['closes'] = []
  const wss = new WebSocketServer({
    noServer: true,
    handleProtocols: (offered) => offered.has('chat.v2') ? 'chat.v2' : false,
  })
  server.on('upgrade', (req: IncomingMessage, socket, head) => {
    handshakes.push({ url: req.url ?? '', headers: req.headers })
    if (req.url === '/rooms/forbidden') {
      socket.end('HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\nx-upstream: yes\r\ncontent-length: 9\r\n\r\nnot yours')
      return
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      ws.send(`hello from ${name} at ${req.url}`)
      ws.on('message', (data: RawData, isBinary: boolean) => {
        const text = isBinary ? null : data.toString()
        if (text?.startsWith('close ') === true) { ws.close(Number(text.slice(6)), 'as you wish'); return }
        ws.send(data as Buffer, { binary: isBinary })
      })
      ws.on('close', (code: number, reason: Buffer) => closes.push({ code, reason: reason.toString() }))
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const url = `http://127.0.0.1:${(server.address() as { port: number }).port}`
  const close = async (): Promise<void> => {
    for (const c of wss.clients) c.terminate()
    server.closeAllConnections()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  }
  t.after(() => close().catch(() => {}))
  return { url, handshakes, closes, close }
}

function routes (targets: string[], extra: Partial<RoutesDeclaration> = {}) {
  return [
    defineUpstream({ name: 'chat', targets, passive: { failures: 1, ejectFor: '1m' } }),
    defineRoutes({
      upstream: 'chat',
      prefix: '/chat',
      routes: [
        { method: 'GET', url: '/rooms/:room', websocket: true, rewrite: '/rooms/:room' },
        { method: 'GET', url: '/secure/:room', websocket: true, rewrite: '/rooms/:room', auth: { apiKey: true } },
      ],
      ...extra,
    }),
  ]
}

/** Open a WebSocket; resolves with it once open, or with the HTTP answer that refused it. */
function connect (url: string, opts: { protocols?: string[], headers?: Record<string, string> } = {}): Promise<{ ws: WebSocket, first: string } | { status: number, headers: IncomingHttpHeaders, body: string }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, opts.protocols ?? [], { headers: opts.headers })
    ws.once('message', (data: RawData) => resolve({ ws, first: data.toString() }))
    ws.once('unexpected-response', (_req, res: IncomingMessage) => {
      let body = ''
      res.on('data', (c: Buffer) => { body += c.toString() })
      res.on('end', () => { resolve({ status: res.statusCode ?? 0, headers: res.headers, body }); ws.terminate() })
    })
    ws.on('error', (err) => { if (ws.readyState !== WebSocket.CLOSED) reject(err) })
  })
}

function next (ws: WebSocket): Promise<{ data: Buffer, binary: boolean }> {
  return new Promise((resolve) => ws.once('message', (data: RawData, binary: boolean) => resolve({ data: data as Buffer, binary })))
}
function closed (ws: WebSocket): Promise<{ code: number, reason: string }> {
  return new Promise((resolve) => ws.once('close', (code: number, reason: Buffer) => resolve({ code, reason: reason.toString() })))
}

test('echo through the gateway: text and binary, subprotocol, forwarded headers, close codes both ways', { timeout: 30_000 }, async (t) => {
  const up = await startWsUpstream(t)
  const app = await build(t, { declare: routes([up.url]) })
  const port = await listen(app)
  const opened = await connect(`ws://127.0.0.1:${port}/chat/rooms/lobby?x=1`, { protocols: ['chat.v1', 'chat.v2'], headers: { 'x-request-id': 'ws-req-1', 'x-custom': 'kept' } })
  assert.ok('ws' in opened, JSON.stringify(opened))
  const { ws, first } = opened
  assert.equal(first, 'hello from ws at /rooms/lobby?x=1')
  assert.equal(ws.protocol, 'chat.v2', 'the subprotocol the upstream chose')
  const h = up.handshakes[0]?.headers ?? {}
  assert.equal(h['x-forwarded-for'], '127.0.0.1')
  assert.equal(h['x-forwarded-proto'], 'http')
  assert.equal(h['x-forwarded-host'], `127.0.0.1:${port}`)
  assert.equal(h['x-request-id'], 'ws-req-1')
  assert.equal(h['x-custom'], 'kept')
  assert.equal(h['sec-websocket-protocol'], 'chat.v1,chat.v2', 'the client\'s subprotocols, offered upstream')

  ws.send('ping text')
  let m = await next(ws)
  assert.deepEqual([m.data.toString(), m.binary], ['ping text', false])
  const bytes = Buffer.from([0, 1, 2, 255, 254, 0])
  ws.send(bytes)
  m = await next(ws)
  assert.equal(m.binary, true)
  assert.ok(m.data.equals(bytes))
  const big = Buffer.alloc(2 * 1024 * 1024, 7)
  ws.send(big)
  m = await next(ws)
  assert.ok(m.data.equals(big), 'a 2 MiB message, both ways')

  // the client closes with its own code: the upstream gets it
  const done = closed(ws)
  ws.close(4000, 'client done')
  assert.deepEqual(await done, { code: 4000, reason: 'client done' })
  await until('the upstream saw the close', () => up.closes.length === 1)
  assert.deepEqual(up.closes[0], { code: 4000, reason: 'client done' })

  // the upstream closes with its own code: the client gets it
  const again = await connect(`ws://127.0.0.1:${port}/chat/rooms/two`)
  assert.ok('ws' in again)
  const byUpstream = closed(again.ws)
  again.ws.send('close 4001')
  assert.deepEqual(await byUpstream, { code: 4001, reason: 'as you wish' })
})

test('auth runs before the upgrade: no key = 401 and no upstream handshake; a valid key opens, with the client id', { timeout: 30_000 }, async (t) => {
  const up = await startWsUpstream(t)
  const app = await build(t, { declare: routes([up.url]), env: { ADMIN_TOKEN } })
  const port = await listen(app)
  for (const headers of [{}, { 'x-api-key': 'gw_000000000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA' }] as Array<Record<string, string>>) {
    const refused = await connect(`ws://127.0.0.1:${port}/chat/secure/vault`, { headers })
    assert.ok('status' in refused)
    assert.equal(refused.status, 401)
    assert.match(String(refused.headers['content-type']), /^application\/problem\+json/)
    assert.match(JSON.parse(refused.body).type, /^\/problems\/GW_ERR_AUTH_/)
  }
  assert.equal(up.handshakes.length, 0, 'the upstream never saw a refused handshake')

  const made = await app.inject({ method: 'POST', url: '/admin/keys', headers: ADMIN, payload: { client: 'acme', name: 'ws test' } })
  assert.equal(made.statusCode, 201, made.body)
  const opened = await connect(`ws://127.0.0.1:${port}/chat/secure/vault`, { headers: { 'x-api-key': made.json().key } })
  assert.ok('ws' in opened, JSON.stringify(opened))
  assert.equal(opened.first, 'hello from ws at /rooms/vault')
  const h = up.handshakes[0]?.headers ?? {}
  assert.equal(h['x-client-id'], 'acme')
  assert.equal(h['x-api-key'], undefined, 'the API key is not passed on')
  opened.ws.close(1000)
})

test('no upgrade = 426; the upstream refusing = its answer; a dead target = another one, and 503 when none is left', { timeout: 30_000 }, async (t) => {
  const up = await startWsUpstream(t, 'live')
  const dead = await startUpstream(t)
  await dead.close()
  const app = await build(t, { declare: routes([dead.url, up.url]), env: { ADMIN_TOKEN } })
  const port = await listen(app)

  const plain = await rawRequest(port, '/chat/rooms/lobby')
  assert.equal(plain.statusCode, 426)
  assert.equal(plain.headers.upgrade, 'websocket')
  assert.equal(JSON.parse(plain.body).type, '/problems/GW_ERR_UPGRADE_REQUIRED')

  const refused = await connect(`ws://127.0.0.1:${port}/chat/rooms/forbidden`)
  assert.ok('status' in refused)
  assert.deepEqual([refused.status, refused.body, refused.headers['x-upstream']], [403, 'not yours', 'yes'])

  // round-robin starts on the dead target: the handshake goes to the live one instead
  for (let i = 0; i < 2; i++) {
    const opened = await connect(`ws://127.0.0.1:${port}/chat/rooms/r${i}`)
    assert.ok('ws' in opened, JSON.stringify(opened))
    assert.equal(opened.first, `hello from live at /rooms/r${i}`)
    opened.ws.close()
  }
  const state = (await app.inject({ url: '/admin/upstreams/chat', headers: ADMIN })).json()
  assert.equal(state.targets[0].state, 'ejected')

  await up.close()
  const none = await connect(`ws://127.0.0.1:${port}/chat/rooms/r9`)
  assert.ok('status' in none)
  assert.equal(none.status, 502, 'the last target refuses the connection')
  const after = await connect(`ws://127.0.0.1:${port}/chat/rooms/r9`)
  assert.ok('status' in after)
  assert.equal(after.status, 503)
  assert.equal(JSON.parse(after.body).type, '/problems/GW_ERR_NO_HEALTHY_TARGET')
})

test('the gateway closing ends open sessions with 1001 on both sides', { timeout: 30_000 }, async (t) => {
  const up = await startWsUpstream(t)
  const app = await build(t, { declare: routes([up.url]) })
  const port = await listen(app)
  const opened = await connect(`ws://127.0.0.1:${port}/chat/rooms/lobby`)
  assert.ok('ws' in opened)
  const done = closed(opened.ws)
  await app.close()
  assert.equal((await done).code, 1001)
  await until('the upstream saw 1001', () => up.closes.length === 1)
  assert.equal(up.closes[0]?.code, 1001)
})
