// The benchmark's upstream. The harness sets its real address with UPSTREAM_BENCH=http://127.0.0.1:<port>.
import { defineUpstream } from '../../src/declare.js'

export default defineUpstream({ name: 'bench', targets: ['http://127.0.0.1:9'], description: 'bench/upstream.ts: 1 KiB of JSON' })
