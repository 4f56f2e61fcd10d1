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
