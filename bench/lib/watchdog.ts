/**
 * Preloaded (`node --import`) into every Node child of the benchmark: when the harness that started it is gone
 * (killed with SIGKILL, so it could not clean up), the child notices it was re-parented and exits within a second.
 * BENCH_WATCHDOG_KILL lists further pids (the harness's redis-server) that this child then kills too.
 * One unref'd timer a second: no measurable cost.
 */
const parent = process.ppid
const alsoKill = (process.env.BENCH_WATCHDOG_KILL ?? '').split(',').map(Number).filter((n) => Number.isInteger(n) && n > 1)

const timer = setInterval(function benchWatchdog () {
  if (process.ppid === parent) return
  for (const pid of alsoKill) {
    try { process.kill(pid, 'SIGKILL') } catch { /* already gone */ }
  }
  process.exit(0)
}, 1000)
timer.unref()

export {}
