import createError from '@fastify/error'

/**
 * Every error the gateway answers with. Codes are released API: never rename or reuse one.
 * Each code is documented in ERROR_DOCS below (a test checks that), and answered as application/problem+json
 * by plugins/problem.ts. Match on `err.code`, never on `instanceof`.
 */

// Start-up
export const GW_ERR_CONFIG = createError('GW_ERR_CONFIG', 'Invalid configuration:\n%s', 500)
export const GW_ERR_ROUTE_DECLARATION = createError('GW_ERR_ROUTE_DECLARATION', 'Invalid route declarations:\n%s', 500)
export const GW_ERR_OPENAPI_UPSTREAM = createError('GW_ERR_OPENAPI_UPSTREAM', 'Invalid upstream OpenAPI documents:\n%s', 500)

// Requests
export const GW_ERR_INTERNAL = createError('GW_ERR_INTERNAL', 'Internal gateway error', 500)
export const GW_ERR_NOT_FOUND = createError('GW_ERR_NOT_FOUND', 'No route matches %s %s', 404)
export const GW_ERR_BAD_REQUEST = createError('GW_ERR_BAD_REQUEST', '%s', 400)
export const GW_ERR_BODY_TOO_LARGE = createError('GW_ERR_BODY_TOO_LARGE', 'Request body is larger than %s bytes', 413)
export const GW_ERR_BAD_PATH = createError('GW_ERR_BAD_PATH', 'The request path is not allowed', 400)
export const GW_ERR_OVERLOADED = createError('GW_ERR_OVERLOADED', 'The gateway is overloaded; retry later', 503)

// Upstreams
export const GW_ERR_UPSTREAM_UNAVAILABLE = createError('GW_ERR_UPSTREAM_UNAVAILABLE', 'Upstream %s could not be reached', 502)
export const GW_ERR_UPSTREAM_RESET = createError('GW_ERR_UPSTREAM_RESET', 'Upstream %s closed the connection', 502)
export const GW_ERR_UPSTREAM_TIMEOUT = createError('GW_ERR_UPSTREAM_TIMEOUT', 'Upstream %s timed out', 504)
export const GW_ERR_UPSTREAM_BAD_RESPONSE = createError('GW_ERR_UPSTREAM_BAD_RESPONSE', 'Upstream %s sent an invalid response', 502)
export const GW_ERR_NO_HEALTHY_TARGET = createError('GW_ERR_NO_HEALTHY_TARGET', 'No healthy target for upstream %s', 503)
export const GW_ERR_UPGRADE_REQUIRED = createError('GW_ERR_UPGRADE_REQUIRED', 'This route only accepts WebSocket connections (Upgrade: websocket)', 426)
export const GW_ERR_UNKNOWN_UPSTREAM = createError('GW_ERR_UNKNOWN_UPSTREAM', 'No upstream named %s', 404)

// Admin
export const GW_ERR_ADMIN_UNAUTHORIZED = createError('GW_ERR_ADMIN_UNAUTHORIZED', 'The admin credential is missing or wrong', 401)

// Authentication (plugins/auth.ts). Messages never carry a key, a token or a secret; no stack trace: a refusal
// (also a brute-force attempt) is meant to be cheap.
export const GW_ERR_AUTH_REQUIRED = createError('GW_ERR_AUTH_REQUIRED', 'This route needs %s', 401, Error, false)
export const GW_ERR_AUTH_INVALID_KEY = createError('GW_ERR_AUTH_INVALID_KEY', 'The API key is not valid', 401, Error, false)
export const GW_ERR_AUTH_KEY_EXPIRED = createError('GW_ERR_AUTH_KEY_EXPIRED', 'The API key has expired', 401, Error, false)
export const GW_ERR_AUTH_KEY_REVOKED = createError('GW_ERR_AUTH_KEY_REVOKED', 'The API key has been revoked', 401, Error, false)
export const GW_ERR_AUTH_INVALID_TOKEN = createError('GW_ERR_AUTH_INVALID_TOKEN', 'The bearer token is not valid: %s', 401, Error, false)
export const GW_ERR_AUTH_INSUFFICIENT_SCOPE = createError('GW_ERR_AUTH_INSUFFICIENT_SCOPE', 'This route needs the scopes: %s', 403, Error, false)
export const GW_ERR_AUTH_THROTTLED = createError('GW_ERR_AUTH_THROTTLED', 'Too many failed authentication attempts from this address; retry in %s s', 429, Error, false)

// API key administration (admin API and CLI)
export const GW_ERR_KEY_NOT_FOUND = createError('GW_ERR_KEY_NOT_FOUND', 'No API key with id %s', 404)
export const GW_ERR_KEY_CONFLICT = createError('GW_ERR_KEY_CONFLICT', 'API key %s is %s', 409)

// Store
export const GW_ERR_STORE_UNAVAILABLE = createError('GW_ERR_STORE_UNAVAILABLE', 'The shared store is unavailable', 503)

// Cache (plugins/cache.ts)
export const GW_ERR_CACHE_ONLY_IF_CACHED = createError('GW_ERR_CACHE_ONLY_IF_CACHED', 'The response is not in the cache and the request asked for a cached one only (Cache-Control: only-if-cached)', 504, Error, false)

// Rate limits (plugins/rate-limit.ts, plugins/flood.ts). No stack trace: a refusal is meant to be cheap.
export const GW_ERR_RATE_LIMITED = createError('GW_ERR_RATE_LIMITED', 'Rate limit of %s requests per %s exceeded; retry in %s s', 429, Error, false)
export const GW_ERR_QUOTA_EXCEEDED = createError('GW_ERR_QUOTA_EXCEEDED', 'Quota of %s requests per %s used up; it renews in %s s', 429, Error, false)
export const GW_ERR_FLOOD_LIMITED = createError('GW_ERR_FLOOD_LIMITED', 'Too many requests from this address (more than %s a second)', 429, Error, false)

/** One line per code: what it means to a client or operator. Served under /problems/<code> and checked by a test. */
export const ERROR_DOCS: Record<string, string> = {
  GW_ERR_CONFIG: 'The environment configuration is invalid; the message lists every wrong variable.',
  GW_ERR_ROUTE_DECLARATION: 'A route or upstream declaration is invalid; the message names the file, the route and the field.',
  GW_ERR_OPENAPI_UPSTREAM: 'An upstream OpenAPI document under openapi/upstreams/ is missing or invalid; the message names the file and where in it.',
  GW_ERR_INTERNAL: 'The gateway failed on its own side; the details are in its log under the request id.',
  GW_ERR_NOT_FOUND: 'No declared route matches the method and path.',
  GW_ERR_BAD_REQUEST: 'The request is malformed (for example a body that does not parse or fails the route schema).',
  GW_ERR_BODY_TOO_LARGE: 'The request body is larger than the gateway accepts.',
  GW_ERR_BAD_PATH: 'The path contains traversal or encoded separators that the gateway refuses to forward.',
  GW_ERR_OVERLOADED: 'The gateway is shedding load (event-loop delay or memory above its limits); retry after the Retry-After delay.',
  GW_ERR_UPSTREAM_UNAVAILABLE: 'The upstream service refused the connection or could not be reached.',
  GW_ERR_UPSTREAM_RESET: 'The upstream service closed the connection before answering.',
  GW_ERR_UPSTREAM_TIMEOUT: 'The upstream service did not answer within the declared timeout.',
  GW_ERR_UPSTREAM_BAD_RESPONSE: 'The upstream service answered with something that is not valid HTTP.',
  GW_ERR_NO_HEALTHY_TARGET: 'Every target of the upstream service is unhealthy or ejected.',
  GW_ERR_UPGRADE_REQUIRED: 'The route is a WebSocket route: open it with a WebSocket handshake (HTTP/1.1 GET with Upgrade: websocket).',
  GW_ERR_UNKNOWN_UPSTREAM: 'The admin API was asked about an upstream service that no route file declares.',
  GW_ERR_ADMIN_UNAUTHORIZED: 'The admin API needs the admin credential (Authorization: Bearer <ADMIN_TOKEN>).',
  GW_ERR_AUTH_REQUIRED: 'The route needs credentials (an API key or a bearer token, as the WWW-Authenticate header says) and none were sent.',
  GW_ERR_AUTH_INVALID_KEY: 'The API key is malformed, unknown or its secret is wrong.',
  GW_ERR_AUTH_KEY_EXPIRED: 'The API key is past its expiry date; ask for a new key.',
  GW_ERR_AUTH_KEY_REVOKED: 'The API key has been revoked; ask for a new key.',
  GW_ERR_AUTH_INVALID_TOKEN: 'The bearer token (JWT) failed verification: signature, algorithm, expiry, not-before, issuer, audience or a required claim.',
  GW_ERR_AUTH_INSUFFICIENT_SCOPE: 'The credential is valid but lacks a scope the route requires.',
  GW_ERR_AUTH_THROTTLED: 'Too many failed authentication attempts came from this address; it is blocked for the time in Retry-After.',
  GW_ERR_KEY_NOT_FOUND: 'The admin API or CLI was given an API key id that does not exist.',
  GW_ERR_KEY_CONFLICT: 'The API key cannot be changed in its current state (for example rotating a revoked key).',
  GW_ERR_STORE_UNAVAILABLE: 'The shared store (Redis) is unavailable and the request cannot be served without it.',
  GW_ERR_CACHE_ONLY_IF_CACHED: 'The request said Cache-Control: only-if-cached and the gateway has no usable cached response for it (RFC 9111 §5.2.1.7).',
  GW_ERR_RATE_LIMITED: 'The client (or address) sent more requests to this route than its rate limit allows; retry after the Retry-After delay (RateLimit-* headers show the limit).',
  GW_ERR_QUOTA_EXCEEDED: 'The client has used up its quota for the current period (per day, per month...); it renews when the period ends (Retry-After).',
  GW_ERR_FLOOD_LIMITED: 'This address sent more requests a second than the gateway accepts from one address (FLOOD_LIMIT), before any authentication.',
}
