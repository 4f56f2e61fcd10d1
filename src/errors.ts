import createError from '@fastify/error'

/**
 * Every error the gateway answers with. Codes are released API: never rename or reuse one.
 * Each code is documented in ERROR_DOCS below (a test checks that), and answered as application/problem+json
 * by plugins/problem.ts. Match on `err.code`, never on `instanceof`.
 */

// Start-up
export const GW_ERR_CONFIG = createError('GW_ERR_CONFIG', 'Invalid configuration:\n%s', 500)
export const GW_ERR_ROUTE_DECLARATION = createError('GW_ERR_ROUTE_DECLARATION', 'Invalid route declarations:\n%s', 500)

// Requests
export const GW_ERR_INTERNAL = createError('GW_ERR_INTERNAL', 'Internal gateway error', 500)
export const GW_ERR_NOT_FOUND = createError('GW_ERR_NOT_FOUND', 'No route matches %s %s', 404)
export const GW_ERR_BAD_REQUEST = createError('GW_ERR_BAD_REQUEST', '%s', 400)
export const GW_ERR_BODY_TOO_LARGE = createError('GW_ERR_BODY_TOO_LARGE', 'Request body is larger than %s bytes', 413)
export const GW_ERR_BAD_PATH = createError('GW_ERR_BAD_PATH', 'The request path is not allowed', 400)

// Upstreams
export const GW_ERR_UPSTREAM_UNAVAILABLE = createError('GW_ERR_UPSTREAM_UNAVAILABLE', 'Upstream %s could not be reached', 502)
export const GW_ERR_UPSTREAM_RESET = createError('GW_ERR_UPSTREAM_RESET', 'Upstream %s closed the connection', 502)
export const GW_ERR_UPSTREAM_TIMEOUT = createError('GW_ERR_UPSTREAM_TIMEOUT', 'Upstream %s timed out', 504)
export const GW_ERR_UPSTREAM_BAD_RESPONSE = createError('GW_ERR_UPSTREAM_BAD_RESPONSE', 'Upstream %s sent an invalid response', 502)
export const GW_ERR_NO_HEALTHY_TARGET = createError('GW_ERR_NO_HEALTHY_TARGET', 'No healthy target for upstream %s', 503)

// Admin
export const GW_ERR_ADMIN_UNAUTHORIZED = createError('GW_ERR_ADMIN_UNAUTHORIZED', 'The admin credential is missing or wrong', 401)

// Store
export const GW_ERR_STORE_UNAVAILABLE = createError('GW_ERR_STORE_UNAVAILABLE', 'The shared store is unavailable', 503)

/** One line per code: what it means to a client or operator. Served under /problems/<code> and checked by a test. */
export const ERROR_DOCS: Record<string, string> = {
  GW_ERR_CONFIG: 'The environment configuration is invalid; the message lists every wrong variable.',
  GW_ERR_ROUTE_DECLARATION: 'A route or upstream declaration is invalid; the message names the file, the route and the field.',
  GW_ERR_INTERNAL: 'The gateway failed on its own side; the details are in its log under the request id.',
  GW_ERR_NOT_FOUND: 'No declared route matches the method and path.',
  GW_ERR_BAD_REQUEST: 'The request is malformed (for example a body that does not parse or fails the route schema).',
  GW_ERR_BODY_TOO_LARGE: 'The request body is larger than the gateway accepts.',
  GW_ERR_BAD_PATH: 'The path contains traversal or encoded separators that the gateway refuses to forward.',
  GW_ERR_UPSTREAM_UNAVAILABLE: 'The upstream service refused the connection or could not be reached.',
  GW_ERR_UPSTREAM_RESET: 'The upstream service closed the connection before answering.',
  GW_ERR_UPSTREAM_TIMEOUT: 'The upstream service did not answer within the declared timeout.',
  GW_ERR_UPSTREAM_BAD_RESPONSE: 'The upstream service answered with something that is not valid HTTP.',
  GW_ERR_NO_HEALTHY_TARGET: 'Every target of the upstream service is unhealthy or ejected.',
  GW_ERR_ADMIN_UNAUTHORIZED: 'The admin API needs the admin credential (Authorization: Bearer <ADMIN_TOKEN>).',
  GW_ERR_STORE_UNAVAILABLE: 'The shared store (Redis) is unavailable and the request cannot be served without it.',
}
