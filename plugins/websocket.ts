/**
 * gw-websocket: WebSocket routes (`websocket: true` in a declaration), proxied to a target of the route's upstream.
 *
 * The upgrade goes through Fastify's routing, so the route's onRequest/preHandler hooks (auth, rate limit) run and
 * can refuse it BEFORE anything is upgraded: the server's 'upgrade' event hands the request to `app.routing()` with
 * a ServerResponse bound to the socket (as @fastify/websocket does). A refusal is an ordinary problem+json answer
 * on that socket, which then closes. The route handler opens the upstream WebSocket first (with the route's
 * rewritten path, X-Forwarded-*, X-Request-Id and identity headers, the client's subprotocols; another target on a
 * connection failure, like a GET), and only when the upstream has accepted does it complete the client's handshake
 * with the subprotocol the upstream chose. An upstream that refuses the handshake has its answer (status, headers,
 * small body) passed to the client; one that cannot be reached is 502/504 like any proxied request.
 *
 * Built on `ws` rather than a raw socket pipe: the gateway is the edge, so it parses and validates every frame
 * (masking, UTF-8 in text messages, control frames, the size limit: BODY_LIMIT or the route's bodyLimit, 1009
 * above it) instead of passing whatever bytes a client sends to the service; it knows the close codes, which it
 * passes through both ways (1005 "no code" as a bare close; an abnormal drop, 1006, as 1001 "going away" towards the
 * upstream and 1014 "bad gateway" towards the client); and on shutdown it closes every session with 1001 instead
 * of cutting sockets. The cost is decoding and re-encoding each frame; permessage-deflate is off on both sides.
 * Backpressure: a side whose peer has more than 1 MiB unsent is paused until it drains below 256 KiB.
 */
import fp from 'fastify-plugin'
import { ServerResponse, type IncomingHttpHeaders, type IncomingMessage } from 'node:http'
import type { Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { WebSocket, WebSocketServer, type RawData } from 'ws'
import type { GatewayConfig } from '../src/config.js'
import type { RoutePolicy } from '../src/policy.js'
import { GW_ERR_BAD_PATH, GW_ERR_BAD_REQUEST, GW_ERR_UPGRADE_REQUIRED, GW_ERR_UPSTREAM_BAD_RESPONSE } from '../src/errors.js'
import type { UpstreamPool } from '../src/upstream/pool.js'
import type { Target } from '../src/upstream/target.js'
import { compilePath } from '../src/upstream/rewrite.js'
import { compileForwardHeaders, connectionListed, HOP_BY_HOP } from '../src/upstream/forward-headers.js'
import { codeOf, CONNECTION_FAILURES, noHealthyTarget, UPSTREAM_TIMEOUT, upstreamError } from '../src/upstream/failures.js'
import { upstreamCa } from '../src/upstream/target.js'

const kUpgrade = Symbol('gw.websocket.upgrade')
const kProtocol = Symbol('gw.websocket.protocol')
const kRequestId = Symbol('gw.websocket.requestId')

interface Pending { socket: Duplex, head: Buffer }
type UpgradeRequest = IncomingMessage & { [kUpgrade]?: Pending, [kProtocol]?: string, [kRequestId]?: string }

/** RFC 6455 §4.1: a base64-encoded 16-byte nonce */
const WS_KEY = /^[+/0-9A-Za-z]{21}[AQgw]==$/
/** RFC 6455 §4.1 / RFC 9110 §5.6.2: subprotocols are tokens */
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/
/** set by `ws` on the upstream handshake; the client's own values never go upstream */
const HANDSHAKE_HEADERS = ['sec-websocket-key', 'sec-websocket-version', 'sec-websocket-extensions', 'sec-websocket-protocol', 'sec-websocket-accept']
const RESPONSE_DROP = new Set<string>([...HOP_BY_HOP, 'date', 'content-length', 'sec-websocket-accept'])
/** an upstream that refuses a handshake answers with a short message; anything longer is a bad response */
const REFUSAL_BODY_LIMIT = 64 * 1024
const HIGH_WATER = 1024 * 1024
const LOW_WATER = 256 * 1024
const SHUTDOWN_GRACE_MS = 1_000
const BINARY = { binary: true }
const TEXT = { binary: false }
const GOING_AWAY = 1001
const BAD_GATEWAY = 1014

/** Close codes that may be sent in a Close frame (RFC 6455 §7.4; 1005, 1006 and 1015 are only ever reported). */
function sendable (code: number): boolean {
  return (code >= 1000 && code <= 1014 && code !== 1004 && code !== 1005 && code !== 1006) || (code >= 3000 && code <= 4999)
}

function handshakeProblem (headers: IncomingHttpHeaders): string | null {
  const key = headers['sec-websocket-key']
  if (typeof key !== 'string' || !WS_KEY.test(key)) return 'a missing or malformed Sec-WebSocket-Key'
  if (headers['sec-websocket-version'] !== '13') return 'Sec-WebSocket-Version must be 13'
  return null
}

function subprotocols (header: string | undefined): string[] | null {
  if (header === undefined) return []
  const list = header.split(',').map((s) => s.trim()).filter((s) => s !== '')
  return list.every((p) => TOKEN.test(p)) && new Set(list).size === list.length ? list : null
}

type Opened =
  | { kind: 'open', ws: WebSocket }
  | { kind: 'refused', status: number, headers: IncomingHttpHeaders, body: Buffer }
  | { kind: 'failed', error: unknown }

function readRefusal (res: IncomingMessage): Promise<Buffer | null> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = []
    let seen = 0
    res.on('data', (c: Buffer) => {
      seen += c.length
      if (seen > REFUSAL_BODY_LIMIT) { res.destroy(); resolve(null) } else chunks.push(c)
    })
    res.on('end', () => resolve(Buffer.concat(chunks)))
    res.on('error', () => resolve(null))
    res.on('close', () => resolve(null))
  })
}

/** One proxied connection: two WebSockets relaying to each other until both are closed. */
class Session {
  readonly #client: WebSocket
  readonly #upstream: WebSocket
  readonly #target: Target
  readonly #request: FastifyRequest
  readonly #sessions: Set<Session>
  readonly #upstreamName: string
  readonly #started = Date.now()
  #closed = 0
  #first: { by: 'client' | 'upstream', code: number } | null = null

  constructor (client: WebSocket, upstream: WebSocket, target: Target, request: FastifyRequest, upstreamName: string, sessions: Set<Session>) {
    this.#client = client
    this.#upstream = upstream
    this.#target = target
    this.#request = request
    this.#upstreamName = upstreamName
    this.#sessions = sessions
    relay(client, upstream)
    relay(upstream, client)
    upstream.resume()
    client.on('close', (code: number, reason: Buffer) => this.#ended('client', code, reason))
    upstream.on('close', (code: number, reason: Buffer) => this.#ended('upstream', code, reason))
    // a protocol error (bad frame, message too large) is answered by ws with its close code, then 'close' follows
    client.on('error', (err: Error) => request.log.info({ err: err.message, code: codeOf(err) }, 'websocket client error'))
    upstream.on('error', (err: Error) => request.log.info({ err: err.message, code: codeOf(err) }, 'websocket upstream error'))
  }

  /** Gateway shutdown: both sides are told 1001. */
  shutdown (): void {
    if (this.#client.readyState === WebSocket.OPEN) this.#client.close(GOING_AWAY, 'gateway shutting down')
    if (this.#upstream.readyState === WebSocket.OPEN) this.#upstream.close(GOING_AWAY, 'gateway shutting down')
  }

  terminate (): void {
    this.#client.terminate()
    this.#upstream.terminate()
  }

  #ended (by: 'client' | 'upstream', code: number, reason: Buffer): void {
    if (this.#first === null) this.#first = { by, code }
    const other = by === 'client' ? this.#upstream : this.#client
    if (other.readyState === WebSocket.OPEN) {
      if (sendable(code)) other.close(code, reason)
      else if (code === 1005) other.close()
      else other.close(by === 'client' ? GOING_AWAY : BAD_GATEWAY)
    } else if (other.readyState === WebSocket.CONNECTING) other.terminate()
    if (++this.#closed < 2) return
    this.#sessions.delete(this)
    this.#target.inflight--
    this.#request.log.info({
      upstream: this.#upstreamName, target: this.#target.url, closedBy: this.#first.by, code: this.#first.code,
      durationMs: Date.now() - this.#started,
    }, 'websocket session closed')
  }
}

function relay (from: WebSocket, to: WebSocket): void {
  let paused = false
  const sent = (): void => {
    if (paused && to.bufferedAmount < LOW_WATER) { paused = false; from.resume() }
  }
  from.on('message', (data: RawData, isBinary: boolean) => {
    if (to.readyState !== WebSocket.OPEN) return
    to.send(data as Buffer, isBinary ? BINARY : TEXT, sent)
    if (!paused && to.bufferedAmount >= HIGH_WATER) { paused = true; from.pause() }
  })
}

function onSocketError (this: Duplex): void {
  // the socket closes after an error; the session or the pending answer reacts to that
  this.destroy()
}

async function gwWebSocket (app: FastifyInstance, opts: { config: GatewayConfig }): Promise<void> {
  const { config } = opts
  const trust = config.trustProxy !== false
  const ca = upstreamCa(config)
  const sessions = new Set<Session>()

  function onUpgrade (req: UpgradeRequest, socket: Duplex, head: Buffer): void {
    socket.on('error', onSocketError)
    // Node no longer parses what follows the headers of an upgrade request: one with a body cannot be served
    const len = req.headers['content-length']
    if (req.headers['transfer-encoding'] !== undefined || (len !== undefined && len !== '0')) {
      socket.end('HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n')
      return
    }
    req[kUpgrade] = { socket, head }
    const res = new ServerResponse(req)
    // an answer instead of an upgrade (refused by a hook, 404, 426, 502...) is the last one on this connection:
    // the HTTP parser is no longer attached to the socket
    res.shouldKeepAlive = false
    res.once('finish', () => { socket.end() })
    try {
      res.assignSocket(socket as Socket)
      app.routing(req, res)
    } catch (err) {
      app.log.warn({ err }, 'websocket upgrade failed')
      socket.destroy()
    }
  }
  // listening only once a WebSocket route exists: without one, upgrade requests stay Node's ordinary requests
  let listening = false

  app.addHook('preClose', async function closeWebSockets () {
    app.server.removeListener('upgrade', onUpgrade)
    if (sessions.size === 0) return
    for (const s of sessions) s.shutdown()
    const deadline = Date.now() + SHUTDOWN_GRACE_MS
    while (sessions.size > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
    for (const s of sessions) s.terminate()
  })

  function route (scope: FastifyInstance, policy: RoutePolicy): void {
    if (!listening) { app.server.on('upgrade', onUpgrade); listening = true }
    const upstream = app.gwProxy.upstreams.get(policy.upstream) as UpstreamPool
    const pathFor = compilePath(policy.rewrite)
    const forwardHeaders = compileForwardHeaders(policy, trust, HANDSHAKE_HEADERS)
    const maxPayload = policy.bodyLimit ?? config.bodyLimit
    const { connectMs, firstByteMs } = upstream.policy.timeouts
    const handshakeMs = connectMs + firstByteMs
    const retry = upstream.policy.retry
    const tries = retry === null ? 1 : retry.tries
    const statuses = retry?.statuses ?? new Set<number>()
    const wss = new WebSocketServer({
      noServer: true,
      perMessageDeflate: false,
      clientTracking: false,
      maxPayload,
      // the client gets the subprotocol the upstream chose (one of those the client offered), or none
      handleProtocols: (_offered, req) => (req as UpgradeRequest)[kProtocol] ?? false,
    })
    wss.on('headers', (headers: string[], req: IncomingMessage) => {
      const id = (req as UpgradeRequest)[kRequestId]
      if (id !== undefined) headers.push(`X-Request-Id: ${id}`)
    })

    function open (target: Target, path: string, headers: IncomingHttpHeaders, protocols: string[]): Promise<Opened> {
      return new Promise((resolve) => {
        let ws: WebSocket
        try {
          ws = new WebSocket(target.wsOrigin + target.basePath + path, protocols, {
            headers: headers as Record<string, string>,
            perMessageDeflate: false,
            followRedirects: false,
            maxPayload,
            ...(ca !== undefined ? { ca } : {}),
          })
        } catch (err) {
          resolve({ kind: 'failed', error: err })
          return
        }
        let timedOut = false
        const timer = setTimeout(() => { timedOut = true; ws.terminate() }, handshakeMs)
        // errors after the handshake are handled by the session; this keeps an early one from being unhandled
        ws.on('error', () => {})
        ws.once('open', () => {
          clearTimeout(timer)
          // hold what the upstream sends until the client's side is there to receive it
          ws.pause()
          resolve({ kind: 'open', ws })
        })
        ws.once('error', (err: Error) => { clearTimeout(timer); resolve({ kind: 'failed', error: timedOut ? UPSTREAM_TIMEOUT : err }) })
        ws.once('unexpected-response', (_req, res: IncomingMessage) => {
          readRefusal(res).then((body) => {
            clearTimeout(timer)
            ws.terminate()
            resolve(body === null
              ? { kind: 'failed', error: timedOut ? UPSTREAM_TIMEOUT : new GW_ERR_UPSTREAM_BAD_RESPONSE(upstream.name) }
              : { kind: 'refused', status: res.statusCode ?? 502, headers: res.headers, body })
          }, () => {})
        })
      })
    }

    scope.route({
      method: 'GET',
      url: policy.url,
      config: { gw: policy },
      exposeHeadRoute: false,
      handler: async function websocketProxy (request: FastifyRequest, reply: FastifyReply) {
        const raw = request.raw as UpgradeRequest
        const pending = raw[kUpgrade]
        const upgrade = request.headers.upgrade
        if (pending === undefined || typeof upgrade !== 'string' || !upgrade.toLowerCase().split(',').some((p) => p.trim() === 'websocket')) {
          // RFC 9110 §15.5.22: a 426 names the protocol; HTTP/2 has no Upgrade (RFC 9113 §8.2.2)
          const h1 = request.raw.httpVersionMajor === 1
          throw Object.assign(new GW_ERR_UPGRADE_REQUIRED(), h1 ? { headers: { upgrade: 'websocket', connection: 'upgrade' } } : {})
        }
        const problem = handshakeProblem(request.headers)
        if (problem !== null) throw Object.assign(new GW_ERR_BAD_REQUEST(`Invalid WebSocket handshake: ${problem}`), { headers: { 'sec-websocket-version': '13' } })
        const protocols = subprotocols(request.headers['sec-websocket-protocol'])
        if (protocols === null) throw new GW_ERR_BAD_REQUEST('Invalid WebSocket handshake: Sec-WebSocket-Protocol must list distinct tokens')
        const path = pathFor(request)
        if (path === null) throw new GW_ERR_BAD_PATH()
        const headers = forwardHeaders(request)

        let target = upstream.pick(request, 0)
        if (target === null) throw noHealthyTarget(upstream)
        upstream.budget?.deposit()
        let tried = 0
        let opened: Opened
        for (let attempt = 1; ; attempt++) {
          tried |= target.bit
          target.inflight++
          opened = await open(target, path, headers, protocols)
          if (opened.kind === 'open') { upstream.report(target, null); break }
          target.inflight--
          const failure = opened.kind === 'refused' ? (opened.status >= 500 ? `status ${opened.status}` : null) : codeOf(opened.error)
          upstream.report(target, failure)
          const again = opened.kind === 'refused' ? statuses.has(opened.status) : CONNECTION_FAILURES.has(failure as string)
          if (again && attempt < tries) {
            const next = upstream.retryTarget(request, tried)
            if (next !== null) { target = next; continue }
          }
          if (opened.kind === 'failed') throw upstreamError(opened.error, upstream.name)
          break
        }
        request.gwTarget = target.url

        if (opened.kind === 'refused') {
          reply.code(opened.status)
          const listed = connectionListed(opened.headers.connection)
          for (const name in opened.headers) {
            if (RESPONSE_DROP.has(name) || (listed !== null && listed.has(name))) continue
            const v = opened.headers[name]
            if (v !== undefined) reply.header(name, v)
          }
          return reply.send(opened.body)
        }

        // the upstream accepted: complete the client's handshake, unless the client went away meanwhile
        const upstreamWs = opened.ws
        const t = target
        reply.hijack()
        const socket = pending.socket
        const lost = (): void => { upstreamWs.terminate(); t.inflight-- }
        if (socket.destroyed || !socket.writable) { lost(); return reply }
        socket.once('close', lost)
        raw[kProtocol] = upstreamWs.protocol === '' ? undefined : upstreamWs.protocol
        raw[kRequestId] = request.id
        wss.handleUpgrade(raw, socket, pending.head, (client) => {
          socket.removeListener('close', lost)
          socket.removeListener('error', onSocketError)
          sessions.add(new Session(client, upstreamWs, t, request, upstream.name, sessions))
        })
        return reply
      },
    })
  }

  app.decorate('gwWebSocket', { route })
}

export default fp(gwWebSocket, { name: 'gw-websocket', fastify: '5.x', dependencies: ['gw-problem', 'gw-proxy'] })
