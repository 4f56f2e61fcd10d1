/**
 * gw-http2: with TLS on (TLS_CERT_FILE/TLS_KEY_FILE) the gateway speaks HTTP/2, whose sessions outlive requests.
 * On Node < 24, `server.close()` leaves open HTTP/2 sessions alone, and Fastify only ends them with
 * `forceCloseConnections: true` (which would also cut HTTP/1.1 requests in flight), so a shutdown waited for every
 * idle client session to time out (http2SessionTimeout, 72 s). Here every session is closed gracefully when the
 * gateway closes: GOAWAY, streams in flight finish, no new ones start.
 */
import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import type { Http2Session } from 'node:http2'
import type { GatewayConfig } from '../src/config.js'

async function gwHttp2 (app: FastifyInstance, opts: { config: GatewayConfig }): Promise<void> {
  if (opts.config.tlsCertFile === null) return
  const sessions = new Set<Http2Session>()
  app.server.on('session', function trackSession (session: Http2Session) {
    sessions.add(session)
    session.once('close', () => sessions.delete(session))
  })
  app.addHook('preClose', function closeHttp2Sessions (done) {
    for (const session of sessions) if (!session.closed) session.close()
    done()
  })
}

export default fp(gwHttp2, { name: 'gw-http2', fastify: '5.x' })
