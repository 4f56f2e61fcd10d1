import { definePlans } from '../src/index.js'

// Rate-limit plans that API keys (and a JWT claim) name; a plan replaces the route's own limit for that client.
export default definePlans({
  free: { rateLimit: { max: 60, per: '1m' }, quota: { max: 1000, per: '1d' } },
  pro: { rateLimit: { max: 600, per: '1m' }, quota: { max: 100000, per: '1d' } },
})
