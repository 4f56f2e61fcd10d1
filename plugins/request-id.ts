/**
 * gw-request-id: every answer carries X-Request-Id: the caller's (when it is a sane token) or one made here
 * (see genReqId in src/app.ts). The proxy passes it on to the upstream.
 */
import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyReply, FastifyRequest, HookHandlerDoneFunction } from 'fastify'

function echoRequestId (request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction): void {
  reply.header('x-request-id', request.id)
  done()
}

async function gwRequestId (app: FastifyInstance): Promise<void> {
  app.addHook('onRequest', echoRequestId)
}

export default fp(gwRequestId, { name: 'gw-request-id', fastify: '5.x' })
