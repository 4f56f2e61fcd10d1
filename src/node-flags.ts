import { setFlagsFromString } from 'node:v8'

/**
 * V8 flags the gateway process runs with: the Dockerfile (NODE_OPTIONS), `npm start` and `npm run start:cluster`
 * (cluster workers inherit the primary's), and the benchmark's gateway rows. test/compose.test.ts keeps the
 * Dockerfile and the npm scripts in step with this list.
 *
 * --max-semi-space-size=8: V8's young generation may otherwise grow to 3 x 16 MiB under load. A proxy makes much
 * short-lived garbage but keeps little of it, so a smaller nursery costs no measurable throughput here (A/B
 * on the `passthrough` row, both orders: within ±2%) and lowers the peak RSS under load by about 12 MB
 * (157 -> 145 MB): the issue's budget is 150 MB.
 */
export const GATEWAY_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=8']

/**
 * V8 flags the gateway sets on itself when it starts (src/server.ts start()), because Node refuses them in
 * NODE_OPTIONS.
 *
 * --heap-growing-percent=100: after each full collection the old generation may grow to twice what survived, where
 * V8's own factor goes up to 4 for a small heap that it collects fast. On the rows that read cache entries from
 * Redis the old generation (and the socket-read Buffers that promoted replies keep alive until a full collection)
 * grew until the peak RSS reached 175-195 MB; with the factor at 2 it stays near 135 MB (at 3: 160 MB). The price
 * is more full collections: cacheHitRedis 0.93x req/s, full unchanged (bench --ab, 8 slices per start order;
 * bench/README.md). The issue's budget is 150 MB.
 */
export const RUNTIME_V8_FLAGS: readonly string[] = ['--heap-growing-percent=100']

let applied = false
/** RUNTIME_V8_FLAGS, once per process. */
export function applyRuntimeV8Flags (): void {
  if (applied) return
  applied = true
  for (const flag of RUNTIME_V8_FLAGS) setFlagsFromString(flag)
}
