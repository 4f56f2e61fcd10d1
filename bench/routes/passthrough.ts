// row `passthrough`: no policy at all, so no hook of any policy plugin runs on it
import { defineRoutes } from '../../src/declare.js'

export default defineRoutes({ upstream: 'bench', prefix: '/pass', routes: [{ method: 'GET', url: '/items/:id' }] })
