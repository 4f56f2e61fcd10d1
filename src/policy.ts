/**
 * Compiled declarations: what the plugins read. Everything here is worked out once at start-up (durations in ms,
 * defaults applied, route-level fields over file-level ones) and frozen. Each proxied route carries its RoutePolicy
 * in `routeOptions.config.gw`; plugins attach their hooks in `onRoute` only to routes whose policy asks for them.
 */
import type { FastifySchema } from 'fastify'
import type { TargetConfig } from './config.js'

export interface UpstreamPolicy {
  name: string
  targets: readonly TargetConfig[]
  balance: 'round-robin' | 'least-connections' | 'random' | { hash: 'header' | 'cookie' | 'client', name: string }
  timeouts: { connectMs: number, firstByteMs: number, responseMs: number }
  /** null = no retries */
  retry: { tries: number, statuses: ReadonlySet<number>, budget: number } | null
  healthCheck: { path: string, intervalMs: number, timeoutMs: number, healthy: number, unhealthy: number, expect: ReadonlySet<number> } | null
  /** null = passive health off */
  passive: { failures: number, ejectForMs: number, maxEjectForMs: number } | null
  maxConnections: number
  openapi: string | null
  description: string | null
}

export interface AuthPolicy {
  apiKey: { header: string, bearer: boolean } | null
  jwt: { issuer: string[] | null, audience: string[] | null, algorithms: string[] | null } | null
  scopes: readonly string[]
}

export interface RateLimitPolicy {
  max: number
  perMs: number
  burst: number
  cost: number
  /** 'client' = client id when authenticated, else IP */
  by: { kind: 'client' | 'ip' } | { kind: 'header', name: string }
  quota: { max: number, perMs: number } | null
}

export interface CachePolicy {
  ttlMs: number
  vary: readonly string[]
  perClient: boolean
  shared: boolean
  tags: readonly string[]
  tagHeader: string | null
  staleWhileRevalidateMs: number
  staleIfErrorMs: number
  ignoreUpstreamMaxAge: boolean
  maxEntrySize: number
}

export interface PlanPolicy {
  name: string
  rateLimit: { max: number, perMs: number, burst: number } | null
  quota: { max: number, perMs: number } | null
}

export type Rewrite =
  /** replace the public prefix by `to` and keep the rest of the path and the query as they came */
  | { kind: 'prefix', from: string, to: string }
  /** fill :params of the route url into a template, keep the query */
  | { kind: 'template', parts: ReadonlyArray<string | { param: string }> }

export interface RoutePolicy {
  /** 'GET /users/:id' (methods joined with ',' when several) */
  id: string
  file: string
  upstream: string
  methods: readonly string[]
  /** public url, prefix included, as Fastify registers it */
  url: string
  rewrite: Rewrite
  websocket: boolean
  auth: AuthPolicy | null
  rateLimit: RateLimitPolicy | null
  /** true when declared `rateLimit: false`: no limit, not even a plan's (null rateLimit alone = plan limits only) */
  rateLimitOff?: boolean
  cache: CachePolicy | null
  schema: FastifySchema | null
  bodyLimit: number | null
  tags: readonly string[]
  summary: string | null
  description: string | null
  operationId: string | null
}

export interface Declarations {
  upstreams: ReadonlyMap<string, UpstreamPolicy>
  routes: readonly RoutePolicy[]
  plans: ReadonlyMap<string, PlanPolicy>
  /** route files in load order, each with the policies of its routes */
  files: ReadonlyArray<{ file: string, plugin: (app: unknown, opts: { mount?: (app: unknown) => void }) => Promise<void>, routes: readonly RoutePolicy[] }>
}

declare module 'fastify' {
  interface FastifyContextConfig { gw?: RoutePolicy }
}
