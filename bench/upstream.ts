/**
 * The benchmark's upstream: node:http, keep-alive, the same 1024-byte JSON body for every request. Run as its own
 * process (pinned with the load generator): `PORT=… node dist/bench/upstream.js`. It prints "listening <port>".
 */
import { createServer } from 'node:http'
import { upstreamBody } from './lib/body.js'

const BODY = upstreamBody()
const HEADERS = { 'content-type': 'application/json', 'content-length': String(BODY.length) }

const server = createServer(function answer (req, res) {
  // GETs only in the benchmark; anything sent with a body is read and dropped
  req.resume()
  res.writeHead(200, HEADERS)
  res.end(BODY)
})
// the load generator and the proxies keep their connections for the whole run
server.keepAliveTimeout = 120_000
server.headersTimeout = 121_000
server.requestTimeout = 0

const port = Number(process.env.PORT ?? '0')
server.listen(port, '127.0.0.1', () => {
  const addr = server.address()
  process.stdout.write(`listening ${typeof addr === 'object' && addr !== null ? addr.port : port}\n`)
})
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.once(signal, () => {
    server.closeAllConnections()
    server.close(() => process.exit(0))
  })
}
