/** The public API for route files and embedding. */
export { defineRoutes, defineUpstream, definePlans } from './declare.js'
export type { UpstreamDeclaration, RoutesDeclaration, RouteDeclaration, AuthDeclaration, RateLimitDeclaration, CacheDeclaration, PlanDeclaration } from './declare.js'
export { buildApp } from './app.js'
export { loadConfig } from './config.js'
export type { GatewayConfig } from './config.js'
