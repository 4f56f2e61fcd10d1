// row `jwt`: a bearer JWT signed HS256 with the secret the harness gives the gateway
import { defineRoutes } from '../../src/declare.js'

export default defineRoutes({ upstream: 'bench', prefix: '/jwt', auth: { jwt: { algorithms: ['HS256'] } }, routes: [{ method: 'GET', url: '/items/:id' }] })
