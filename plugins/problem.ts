/**
 * gw-problem: the one error handler. Every error a client sees is application/problem+json (RFC 9457). A 5xx
 * never shows its message, stack or cause to the client (they go to the log); a 4xx explains itself.
 */
import fp from 'fastify-plugin'
import { STATUS_CODES } from 'node:http'
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest, FastifySchema } from 'fastify'
import { ERROR_DOCS, GW_ERR_NOT_FOUND } from '../src/errors.js'

/** Codes from Fastify itself that clients cause: mapped to our own types, keeping their status. */
const FASTIFY_CLIENT_ERRORS: Record<string, string> = {
  FST_ERR_CTP_BODY_TOO_LARGE: 'GW_ERR_BODY_TOO_LARGE',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'GW_ERR_BAD_REQUEST',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'GW_ERR_BAD_REQUEST',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'GW_ERR_BAD_REQUEST',
  FST_ERR_CTP_INVALID_JSON_BODY: 'GW_ERR_BAD_REQUEST',
  FST_ERR_VALIDATION: 'GW_ERR_BAD_REQUEST',
}

export function problemType (code: string | undefined): string {
  return code === undefined ? 'about:blank' : `/problems/${code}`
}

/** The RFC 9457 body every gateway error is answered with. */
export function problemBody (request: FastifyRequest, status: number, code: string | undefined, detail: string): Record<string, unknown> {
  return {
    type: problemType(code),
    title: STATUS_CODES[status] ?? 'Error',
    status,
    detail,
    instance: request.url.split('?', 1)[0],
    requestId: request.id,
  }
}

export function sendProblem (request: FastifyRequest, reply: FastifyReply, status: number, code: string | undefined, detail: string): FastifyReply {
  return reply.code(status).type('application/problem+json').send(problemBody(request, status, code, detail))
}

async function gwProblem (app: FastifyInstance): Promise<void> {
  app.setErrorHandler(function problem (err: FastifyError, request, reply) {
    let status = typeof err.statusCode === 'number' && err.statusCode >= 400 && err.statusCode < 600 ? err.statusCode : 500
    let code: string | undefined = err.code
    if (code !== undefined && code in FASTIFY_CLIENT_ERRORS) code = FASTIFY_CLIENT_ERRORS[code]
    else if (code === undefined || !code.startsWith('GW_ERR_')) {
      // anything that is not ours and not a known client error is the gateway's own failure
      if (err.validation === undefined && status < 500) status = 500
      if (err.validation !== undefined) { status = 400; code = 'GW_ERR_BAD_REQUEST' }
    }
    if (status >= 500) request.log.error({ err, code }, 'request failed')
    else request.log.info({ code, reason: err.message }, 'request refused')
    if (reply.sent || reply.raw.headersSent) return
    const headers = (err as { headers?: Record<string, string> }).headers
    if (headers !== undefined) reply.headers(headers)
    const detail = status >= 500 ? (status === 500 ? 'The gateway could not complete the request' : err.message) : err.message
    return sendProblem(request, reply, status, status === 500 ? 'GW_ERR_INTERNAL' : code, detail)
  })
  // the problem `type` URIs resolve to their documentation
  app.get('/problems/:code', { schema: { hide: true } as FastifySchema }, async (request, reply) => {
    const code = (request.params as { code: string }).code
    const description = Object.hasOwn(ERROR_DOCS, code) ? ERROR_DOCS[code] : undefined
    if (description === undefined) return sendProblem(request, reply, 404, 'GW_ERR_NOT_FOUND', `No problem type ${code}`)
    return { type: problemType(code), code, description }
  })
  app.setNotFoundHandler(function notFound (request, reply) {
    const err = new GW_ERR_NOT_FOUND(request.method, request.url.split('?', 1)[0])
    return sendProblem(request, reply, 404, err.code, err.message)
  })
}

export default fp(gwProblem, { name: 'gw-problem', fastify: '5.x' })
