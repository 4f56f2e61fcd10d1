/** The authenticated caller, set by plugins/auth.ts and read by rate limits, the cache and the proxy. */
export interface Client {
  /** the client's id (an API key's client, or a JWT's subject) */
  readonly id: string
  /** the API key's id, or null for a JWT */
  readonly keyId: string | null
  readonly scopes: readonly string[]
  /** rate-limit plan name, or null for the route's own limit */
  readonly plan: string | null
  readonly via: 'apiKey' | 'jwt'
  /**
   * The identity headers (X-Client-*) as HTTP/1.1 header lines, `name: value\r\n` each: built and checked once when
   * the client is made (makeClient), and written to upstreams as they are.
   */
  readonly head: string
}

declare module 'fastify' {
  interface FastifyRequest {
    /** null until auth has run on a route that asks for it */
    client: Client | null
  }
}

/** Headers that carry the client's identity to upstreams. Incoming copies are always removed (spoofing). */
export const IDENTITY_HEADERS = ['x-client-id', 'x-client-key-id', 'x-client-scopes', 'x-client-plan', 'x-client-auth'] as const

/** a header value written as it is: printable ASCII and spaces only (no CR, LF, NUL: nothing smuggled in) */
const HEADER_SAFE = /^[\x20-\x7e]*$/

/** The identity headers as an object, for a client that speaks it (the WebSocket handshake). */
export function identityHeaders (client: Client): Record<string, string> {
  const out: Record<string, string> = { 'x-client-id': client.id, 'x-client-scopes': client.scopes.join(' '), 'x-client-auth': client.via }
  if (client.keyId !== null) out['x-client-key-id'] = client.keyId
  if (client.plan !== null) out['x-client-plan'] = client.plan
  return out
}

/**
 * A frozen Client, shared by every request made with the same key or token. Its values come checked (client ids,
 * scopes and plans are printable ASCII: src/keys.ts, src/jwt.ts); they are checked again here because `head` is
 * written to upstreams without further checks. Throws on a value that could not go into a header.
 */
export function makeClient (c: Omit<Client, 'head'>): Client {
  const scopes = Object.freeze([...c.scopes])
  const fields = identityHeaders({ ...c, scopes, head: '' })
  let head = ''
  for (const name in fields) {
    const value = fields[name] as string
    if (!HEADER_SAFE.test(value)) throw new Error(`the client's ${name} holds a character that cannot go into a header`)
    head += name + ': ' + value + '\r\n'
  }
  return Object.freeze({ id: c.id, keyId: c.keyId, scopes, plan: c.plan, via: c.via, head })
}
