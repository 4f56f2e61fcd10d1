// row `apiKey`: an API key in X-API-Key (created by the harness through POST /admin/keys)
import { defineRoutes } from '../../src/declare.js'

export default defineRoutes({ upstream: 'bench', prefix: '/apikey', auth: { apiKey: true }, routes: [{ method: 'GET', url: '/items/:id' }] })
