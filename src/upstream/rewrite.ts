/**
 * The path sent upstream for a public path: prefix strip/replace, or a template filled with the route's
 * parameters; the query string is kept as it came. A rewritten path never leaves the declared upstream prefix:
 *
 * - the raw path (as sent, before any decoding) is refused when it holds a dot segment, literal or percent-encoded
 *   (`..`, `.`, `%2e%2e`, `.%2E`), also when ended by `;` or `%3b` (path parameters, Tomcat's `..;/`), a doubled slash,
 *   an encoded slash or backslash (`%2f`, `%5c`), a backslash, NUL (`%00`), or a double-encoded dot or separator
 *   (`%252e`, `%252f`, `%255c`), because some upstream may decode or normalize any of these into a traversal.
 *   An encoded dot elsewhere (`a%2Eb`) is harmless and passes.
 * - a prefix rewrite only applies when the raw path starts with the prefix byte for byte and continues with `/`,
 *   `?` or nothing: the router decodes `%61pi` into `api` to match the route, but slicing the raw path by the
 *   prefix length would then cut in the wrong place.
 * - a template parameter is percent-encoded (a decoded `/` cannot add a segment) and a parameter that is
 *   exactly `.` or `..` is refused.
 */
import type { Rewrite } from '../policy.js'

export const BAD_PATH = /(?:^|\/)(?:\.|%2e){1,2}(?:[/;]|%3b|$)|\/\/|%2f|%5c|\\|%00|%25(?:2e|2f|5c)/i

/** What compiled path functions read from a request (a FastifyRequest has both). */
export interface PathSource {
  raw: { url?: string }
  params: unknown
}

export type PathFor = (request: PathSource) => string | null

/** The path and query to send upstream, or null when the public path is refused. */
export function compilePath (rewrite: Rewrite): PathFor {
  if (rewrite.kind === 'prefix') {
    const { from, to } = rewrite
    const fromLength = from.length
    const root = to === '' ? '/' : to
    return function prefixPath (request) {
      const raw = request.raw.url as string
      if (!raw.startsWith(from)) return null
      const next = raw.charCodeAt(fromLength)
      // NaN: the path is the prefix itself
      if (next === next && next !== 47 /* / */ && next !== 63 /* ? */) return null
      const q = raw.indexOf('?')
      if (BAD_PATH.test(q === -1 ? raw : raw.slice(0, q))) return null
      const rest = raw.slice(fromLength)
      return next === 47 ? to + rest : root + rest
    }
  }
  const parts = rewrite.parts
  return function templatePath (request) {
    const raw = request.raw.url as string
    const q = raw.indexOf('?')
    if (BAD_PATH.test(q === -1 ? raw : raw.slice(0, q))) return null
    const params = request.params as Record<string, string | undefined>
    let out = ''
    for (let i = 0; i < parts.length; i++) {
      const part = parts[i] as string | { param: string }
      if (typeof part === 'string') { out += part; continue }
      const v = params[part.param] ?? ''
      if (v === '.' || v === '..') return null
      out += encodeURIComponent(v)
    }
    return q === -1 ? out : out + raw.slice(q)
  }
}
