/**
 * Where the gateway's log lines go: a file descriptor (stdout), written in batches, synchronously.
 *
 * Lines are kept as they come (no copy, no byte count per line) and joined into one Buffer per batch: one write
 * per `minLength` characters, and at least every `flushEveryMs`. pino's own buffered destination (sonic-boom)
 * measures the byte length of its growing buffer on every line and, asynchronously, hands each batch to the
 * thread pool; on the bench's `full` row that cost 2-3 µs of CPU per line against 0.5 µs here (bench/README.md).
 *
 * Synchronous, like pino's default destination: when the reader of stdout stalls, the pipe fills and writes wait,
 * in 1 ms steps, up to `blockMs`; a batch that still cannot go is dropped and counted (a line cut in the middle
 * is ended there), and until a batch goes through again the next ones are tried once, without waiting. The first
 * batch that goes starts with a warning line that says how many lines were lost. The gateway never stalls for
 * longer than `blockMs` on its log, and never holds an unbounded backlog in memory.
 *
 * A batch never exceeds `maxWrite` bytes (cut at line ends): cluster workers share one stdout pipe, where a write
 * up to PIPE_BUF (4096 bytes on Linux) is atomic, so no worker's batch splits another's line.
 */
import { writeSync } from 'node:fs'
import { hostname } from 'node:os'

export interface LogDestinationOptions {
  /** write once this many characters are waiting (default 4096) */
  minLength?: number
  /** the largest single write in bytes, cut at line ends; 0 = no limit (default) */
  maxWrite?: number
  /** write what waits at least this often (default 1000 ms; 0 = only when minLength is reached or on flush) */
  flushEveryMs?: number
  /** how long one batch may wait for a full pipe before it is dropped (default 1000 ms) */
  blockMs?: number
}

const NL = 0x0a
const sleeper = new Int32Array(new SharedArrayBuffer(4))
function sleep (ms: number): void { Atomics.wait(sleeper, 0, 0, ms) }

export class LogDestination {
  /** lines lost because the reader stalled past blockMs or the descriptor failed */
  dropped = 0
  readonly #fd: number
  readonly #minLength: number
  readonly #maxWrite: number
  readonly #blockMs: number
  readonly #timer: NodeJS.Timeout | null
  #parts: string[] = []
  #chars = 0
  #reportedDropped = 0
  #midLine = false
  readonly #scratch = Buffer.allocUnsafeSlow(64 * 1024)
  /** the last batch was dropped: do not wait for the pipe again until one goes through */
  #stalled = false

  constructor (fd: number, opts: LogDestinationOptions = {}) {
    this.#fd = fd
    this.#minLength = opts.minLength ?? 4096
    this.#maxWrite = opts.maxWrite ?? 0
    this.#blockMs = opts.blockMs ?? 1000
    const every = opts.flushEveryMs ?? 1000
    this.#timer = every > 0 ? setInterval(() => { this.flushSync() }, every).unref() : null
  }

  write (line: string): boolean {
    this.#parts.push(line)
    this.#chars += line.length
    if (this.#chars >= this.#minLength) this.flushSync()
    return true
  }

  /** everything waiting, written now */
  flushSync (): void {
    const parts = this.#parts
    if (parts.length === 0) return
    this.#parts = []
    this.#chars = 0
    // what goes before the lines: the end of a line the last write cut, and the warning about lost lines
    const midLine = this.#midLine
    let prefix = midLine ? '\n' : ''
    if (this.dropped > this.#reportedDropped) {
      prefix += `{"level":40,"time":${Date.now()},"pid":${process.pid},"hostname":${JSON.stringify(hostname())},"dropped":${this.dropped - this.#reportedDropped},"msg":"log lines dropped: stdout was not read for ${this.#blockMs} ms"}\n`
    }
    if (prefix !== '') parts.unshift(prefix)
    const text = parts.length === 1 ? parts[0] as string : parts.join('')
    // into the one scratch buffer when it surely fits (3 bytes per UTF-16 unit at most): a new 4 KiB Buffer per
    // batch is an ArrayBuffer outside the heap each time, and that external memory drove extra major GCs
    const buf = text.length * 3 <= this.#scratch.length ? this.#scratch.subarray(0, this.#scratch.write(text, 0)) : Buffer.from(text)
    const stoppedAt = this.#writeAll(buf)
    if (stoppedAt < 0) { this.#reportedDropped = this.dropped; this.#stalled = false; this.#midLine = false; return }
    if (stoppedAt === 0) this.#midLine = midLine
    // the lines not (wholly) written are lost; a warning that did not go is made again next time
    const prefixBytes = prefix === '' ? 0 : Buffer.byteLength(prefix)
    if (stoppedAt >= prefixBytes) this.#reportedDropped = this.dropped
    let lost = 0
    for (let i = buf.indexOf(NL, Math.max(stoppedAt, prefixBytes)); i !== -1; i = buf.indexOf(NL, i + 1)) lost++
    this.dropped += lost
  }

  /** pino's and Fastify's asynchronous flush: the writes are synchronous, so it is done when it returns */
  flush (cb?: (err?: Error) => void): void {
    this.flushSync()
    cb?.()
  }

  end (): void {
    this.flushSync()
    if (this.#timer !== null) clearInterval(this.#timer)
  }

  /** -1 when all of it was written, else the offset where writing gave up */
  #writeAll (buf: Buffer): number {
    const max = this.#maxWrite
    let start = 0
    while (start < buf.length) {
      let end = buf.length
      if (max > 0 && end - start > max) {
        const cut = buf.lastIndexOf(NL, start + max - 1)
        // a single line longer than maxWrite goes whole
        if (cut >= start) end = cut + 1
        else { const next = buf.indexOf(NL, start + max); end = next === -1 ? buf.length : next + 1 }
      }
      const at = this.#writeSpan(buf, start, end)
      if (at >= 0) return at
      start = end
    }
    return -1
  }

  #writeSpan (buf: Buffer, start: number, end: number): number {
    let waited = 0
    let off = start
    while (off < end) {
      try {
        off += writeSync(this.#fd, buf, off, end - off)
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code
        // a full non-blocking pipe: its reader is behind
        if ((code === 'EAGAIN' || code === 'EWOULDBLOCK') && !this.#stalled && waited < this.#blockMs) { sleep(1); waited++; continue }
        this.#stalled = true
        this.#midLine = off > 0 && buf[off - 1] !== NL
        return off
      }
    }
    return -1
  }
}
