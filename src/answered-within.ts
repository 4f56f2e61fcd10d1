/**
 * A time limit on an answer that arrives on a socket, which a busy event loop does not cut short.
 *
 * When the event loop was held (a burst of work, a long GC, a VM not scheduled for a while), Node runs due timers
 * before it reads sockets: an answer sent in time may be waiting in the socket when the timer fires. So the timer
 * only schedules the rejection, with setImmediate, which runs after the next poll phase has read what is there.
 * ioredis's own commandTimeout rejects at once, and such answers came out as timeouts: an API key looked up by a
 * busy gateway got a 503 (test/store-busy-loop.test.ts).
 */
export function answeredWithin<T> (p: Promise<T>, ms: number, message: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let settled = false
    const late = (): void => {
      if (settled) return
      settled = true
      reject(new Error(message))
    }
    const timer = setTimeout(() => { setImmediate(late) }, ms)
    p.then((v) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      resolve(v)
    }, (err: unknown) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      reject(err)
    })
  })
}
