/**
 * The reference every gateway row is compared to: a minimal Fastify 5 + @fastify/reply-from passthrough with the
 * plugin's defaults (`reply.from(request.url)`), no logger (Fastify's default). Run as its own process:
 * `PORT=… UPSTREAM_URL=http://127.0.0.1:… node dist/bench/baseline.js`.
 * Exits with code 3 and a "missing:" line when @fastify/reply-from is not installed.
 */
import Fastify, { type FastifyPluginAsync, type FastifyReply } from 'fastify'

export const MISSING_EXIT = 3

let replyFrom: FastifyPluginAsync<{ base: string }>
try {
  // dynamic and untyped on purpose: the harness compiles (and reports this row n/a) without the package installed
  replyFrom = ((await import('@fastify/reply-from' as string)) as { default: FastifyPluginAsync<{ base: string }> }).default
} catch (err) {
  const notInstalled = (err as { code?: string }).code === 'ERR_MODULE_NOT_FOUND'
  process.stderr.write(notInstalled
    ? 'missing: @fastify/reply-from is not installed (npm i -D @fastify/reply-from@^12)\n'
    : `missing: @fastify/reply-from does not load: ${(err as Error).message}\n`)
  process.exit(MISSING_EXIT)
}

const app = Fastify()
await app.register(replyFrom, { base: process.env.UPSTREAM_URL ?? 'http://127.0.0.1:9' })
app.get('/*', (request, reply) => {
  (reply as FastifyReply & { from (source: string): FastifyReply }).from(request.url)
})
await app.listen({ port: Number(process.env.PORT ?? '0'), host: '127.0.0.1' })
process.stdout.write(`listening ${(app.server.address() as { port: number }).port}\n`)

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.once(signal, () => { app.close().then(() => process.exit(0), () => process.exit(1)) })
}
