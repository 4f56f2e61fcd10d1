/**
 * How a plugin gives one route a hook of its own (in `onRoute`, only to routes whose policy asks for it).
 * Always a new array: route options can be shared between routes. A hook already there is not added twice.
 */
import type { RouteOptions } from 'fastify'

export type RouteHookName = 'onRequest' | 'preHandler' | 'onSend'

export function addRouteHook (route: RouteOptions, name: RouteHookName, hook: unknown, at: 'first' | 'last'): void {
  const current = route[name] as unknown
  const list: unknown[] = current === undefined ? [] : Array.isArray(current) ? current : [current]
  if (list.includes(hook)) return
  ;(route as unknown as Record<RouteHookName, unknown[]>)[name] = at === 'first' ? [hook, ...list] : [...list, hook]
}
