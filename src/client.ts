/** The authenticated caller, set by plugins/auth.ts and read by rate limits, the cache and the proxy. */
export interface Client {
  /** the client's id (an API key's client, or a JWT's subject) */
  id: string
  /** the API key's id, or null for a JWT */
  keyId: string | null
  scopes: readonly string[]
  /** rate-limit plan name, or null for the route's own limit */
  plan: string | null
  via: 'apiKey' | 'jwt'
}

declare module 'fastify' {
  interface FastifyRequest {
    /** null until auth has run on a route that asks for it */
    client: Client | null
  }
}

/** Headers that carry the client's identity to upstreams. Incoming copies are always removed (spoofing). */
export const IDENTITY_HEADERS = ['x-client-id', 'x-client-key-id', 'x-client-scopes', 'x-client-plan', 'x-client-auth'] as const
