/**
 * gw-upstreams-admin: the state of every upstream pool, per target, for operators.
 *   GET /admin/upstreams         all upstreams
 *   GET /admin/upstreams/:name   one upstream (404 problem when no route file declares it)
 * Per target: state (healthy, unhealthy, ejected, half-open), active-check result, ejection end and count,
 * consecutive failures, requests in flight; per upstream: balancer, policies, and the retry budget's tokens.
 * Target URLs are shown without user info. State changes themselves are logged by src/upstream/pool.ts.
 */
import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import { GW_ERR_UNKNOWN_UPSTREAM } from '../src/errors.js'

async function gwUpstreamsAdmin (app: FastifyInstance): Promise<void> {
  const upstreams = app.gwProxy.upstreams
  app.adminRoute({
    method: 'GET',
    url: '/upstreams',
    handler: async function listUpstreams () {
      return { upstreams: [...upstreams.values()].map((u) => u.snapshot()) }
    },
  })
  app.adminRoute({
    method: 'GET',
    url: '/upstreams/:name',
    schema: { params: { type: 'object', properties: { name: { type: 'string' } }, required: ['name'] } },
    handler: async function showUpstream (request) {
      const { name } = request.params as { name: string }
      const u = upstreams.get(name)
      if (u === undefined) throw new GW_ERR_UNKNOWN_UPSTREAM(name)
      return u.snapshot()
    },
  })
}

export default fp(gwUpstreamsAdmin, { name: 'gw-upstreams-admin', fastify: '5.x', dependencies: ['gw-admin', 'gw-proxy'] })
