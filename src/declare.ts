/**
 * The route-declaration API. A file in routes/ default-exports one of these (or an array of them):
 *   defineUpstream({...})  an upstream service, declared once by name
 *   defineRoutes({...})    routes proxied to an upstream, with their policies
 *   definePlans({...})     rate-limit plans that API keys and JWT claims refer to
 * Each shape is a TypeBox schema: the same schema types the declaration, checks it at start-up (src/routes-loader.ts)
 * and feeds the docs. Field-level normalisation (durations to ms, defaults) happens once in src/policy.ts.
 */
import { Type, type Static, type TSchema } from '@sinclair/typebox'

export const DECLARATION = Symbol.for('fastgate.declaration')

const Duration = Type.Union([Type.String(), Type.Number({ minimum: 0 })], { description: 'a duration: "500ms", "30s", "1m", "2h", "1d" or milliseconds' })
const Method = Type.Union(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'].map((m) => Type.Literal(m)))
const Strict = { additionalProperties: false } as const

// ---- upstreams -------------------------------------------------------------------------------------------------

export const TargetSchema = Type.Union([
  Type.String(),
  Type.Object({ url: Type.String(), weight: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })) }, Strict),
])

export const HealthCheckSchema = Type.Object({
  path: Type.String(),
  interval: Type.Optional(Duration),
  timeout: Type.Optional(Duration),
  healthy: Type.Optional(Type.Integer({ minimum: 1 })),
  unhealthy: Type.Optional(Type.Integer({ minimum: 1 })),
  expect: Type.Optional(Type.Union([Type.Integer(), Type.Array(Type.Integer())])),
}, Strict)

export const UpstreamSchema = Type.Object({
  name: Type.String({ pattern: '^[a-z][a-z0-9-]*$' }),
  targets: Type.Array(TargetSchema, { minItems: 1 }),
  balance: Type.Optional(Type.Union([
    Type.Literal('round-robin'), Type.Literal('least-connections'), Type.Literal('random'),
    Type.Object({ hash: Type.String({ description: '"header:<name>", "cookie:<name>" or "client"' }) }, Strict),
  ])),
  timeouts: Type.Optional(Type.Object({
    connect: Type.Optional(Duration), firstByte: Type.Optional(Duration), response: Type.Optional(Duration),
  }, Strict)),
  retry: Type.Optional(Type.Union([Type.Literal(false), Type.Object({
    tries: Type.Optional(Type.Integer({ minimum: 1, maximum: 10 })),
    statuses: Type.Optional(Type.Array(Type.Integer({ minimum: 500, maximum: 599 }))),
    budget: Type.Optional(Type.Number({ minimum: 0, maximum: 1, description: 'retries allowed as a share of requests' })),
  }, Strict)])),
  healthCheck: Type.Optional(HealthCheckSchema),
  passive: Type.Optional(Type.Union([Type.Literal(false), Type.Object({
    failures: Type.Optional(Type.Integer({ minimum: 1 })),
    ejectFor: Type.Optional(Duration),
    maxEjectFor: Type.Optional(Duration),
  }, Strict)])),
  maxConnections: Type.Optional(Type.Integer({ minimum: 1 })),
  openapi: Type.Optional(Type.String({ description: 'a file under openapi/upstreams/ or an http(s) URL' })),
  description: Type.Optional(Type.String()),
}, Strict)
export type UpstreamDeclaration = Static<typeof UpstreamSchema>

// ---- policies ---------------------------------------------------------------------------------------------------

export const AuthSchema = Type.Union([
  Type.Literal('none'),
  Type.Object({
    apiKey: Type.Optional(Type.Union([Type.Boolean(), Type.Object({
      header: Type.Optional(Type.String()),
      bearer: Type.Optional(Type.Boolean({ description: 'also accept the key as Authorization: Bearer' })),
    }, Strict)])),
    jwt: Type.Optional(Type.Union([Type.Boolean(), Type.Object({
      issuer: Type.Optional(Type.Union([Type.String(), Type.Array(Type.String())])),
      audience: Type.Optional(Type.Union([Type.String(), Type.Array(Type.String())])),
      algorithms: Type.Optional(Type.Array(Type.String())),
    }, Strict)])),
    scopes: Type.Optional(Type.Array(Type.String())),
  }, Strict),
])
export type AuthDeclaration = Static<typeof AuthSchema>

const QuotaSchema = Type.Object({ max: Type.Integer({ minimum: 1 }), per: Duration }, Strict)

export const RateLimitSchema = Type.Union([Type.Literal(false), Type.Object({
  max: Type.Integer({ minimum: 1 }),
  per: Duration,
  burst: Type.Optional(Type.Integer({ minimum: 1 })),
  cost: Type.Optional(Type.Integer({ minimum: 1 })),
  by: Type.Optional(Type.String({ description: '"client" (default: client id, else IP), "ip" or "header:<name>"' })),
  quota: Type.Optional(QuotaSchema),
}, Strict)])
export type RateLimitDeclaration = Static<typeof RateLimitSchema>

export const CacheSchema = Type.Union([Type.Literal(false), Type.Object({
  ttl: Duration,
  vary: Type.Optional(Type.Array(Type.String())),
  perClient: Type.Optional(Type.Boolean({ description: 'key entries by client (default: true when the route has auth)' })),
  shared: Type.Optional(Type.Boolean({ description: 'share entries across clients even for authenticated requests' })),
  tags: Type.Optional(Type.Array(Type.String())),
  tagHeader: Type.Optional(Type.String({ description: 'response header whose comma-separated values tag the entry' })),
  staleWhileRevalidate: Type.Optional(Duration),
  staleIfError: Type.Optional(Duration),
  ignoreUpstreamMaxAge: Type.Optional(Type.Boolean()),
  maxEntrySize: Type.Optional(Type.Integer({ minimum: 1 })),
}, Strict)])
export type CacheDeclaration = Static<typeof CacheSchema>

const Policies = {
  auth: Type.Optional(AuthSchema),
  rateLimit: Type.Optional(RateLimitSchema),
  cache: Type.Optional(CacheSchema),
}

export const RouteSchema = Type.Object({
  method: Type.Union([Method, Type.Array(Method, { minItems: 1 })]),
  url: Type.String(),
  rewrite: Type.Optional(Type.String({ description: 'upstream path template; :params of url are filled in' })),
  websocket: Type.Optional(Type.Boolean()),
  schema: Type.Optional(Type.Object({}, { additionalProperties: true })),
  summary: Type.Optional(Type.String()),
  description: Type.Optional(Type.String()),
  operationId: Type.Optional(Type.String()),
  tags: Type.Optional(Type.Array(Type.String())),
  bodyLimit: Type.Optional(Type.Integer({ minimum: 0 })),
  ...Policies,
}, Strict)
export type RouteDeclaration = Static<typeof RouteSchema>

export const RoutesSchema = Type.Object({
  upstream: Type.String(),
  prefix: Type.Optional(Type.String()),
  rewrite: Type.Optional(Type.String()),
  tags: Type.Optional(Type.Array(Type.String())),
  ...Policies,
  routes: Type.Array(RouteSchema, { minItems: 1 }),
}, Strict)
export type RoutesDeclaration = Static<typeof RoutesSchema>

export const PlanSchema = Type.Object({
  rateLimit: Type.Optional(Type.Object({
    max: Type.Integer({ minimum: 1 }), per: Duration, burst: Type.Optional(Type.Integer({ minimum: 1 })),
  }, Strict)),
  quota: Type.Optional(QuotaSchema),
}, Strict)
export const PlansSchema = Type.Record(Type.String({ pattern: '^[a-zA-Z0-9_-]+$' }), PlanSchema)
export type PlanDeclaration = Static<typeof PlanSchema>

// ---- the define* functions --------------------------------------------------------------------------------------

export type Declaration =
  | { kind: 'upstream', value: UpstreamDeclaration }
  | { kind: 'routes', value: RoutesDeclaration }
  | { kind: 'plans', value: Record<string, PlanDeclaration> }

export const SCHEMAS: Record<Declaration['kind'], TSchema> = { upstream: UpstreamSchema, routes: RoutesSchema, plans: PlansSchema }

/** A route file's default export is a Fastify plugin that carries its declaration; src/routes-loader.ts reads it. */
export interface DeclaredPlugin {
  (app: unknown, opts: { mount?: (app: unknown) => void }): Promise<void>
  [DECLARATION]: Declaration
}

function declared (decl: Declaration): DeclaredPlugin {
  // The loader validates every file first, then registers each file as this plugin with the routes it compiled.
  const plugin = async function declaredRoutes (app: unknown, opts: { mount?: (app: unknown) => void }): Promise<void> {
    if (typeof opts?.mount !== 'function') throw new TypeError('route files are registered by buildApp(), which validates them first')
    opts.mount(app)
  } as unknown as DeclaredPlugin
  plugin[DECLARATION] = decl
  return plugin
}

export function defineUpstream (value: UpstreamDeclaration): DeclaredPlugin { return declared({ kind: 'upstream', value }) }
export function defineRoutes (value: RoutesDeclaration): DeclaredPlugin { return declared({ kind: 'routes', value }) }
export function definePlans (value: Record<string, PlanDeclaration>): DeclaredPlugin { return declared({ kind: 'plans', value }) }

export function declarationOf (value: unknown): Declaration | null {
  if ((typeof value === 'function' || (typeof value === 'object' && value !== null)) && DECLARATION in value) {
    return (value as DeclaredPlugin)[DECLARATION]
  }
  return null
}
