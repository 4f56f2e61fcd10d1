/** The upstream's answer: the same 1024 bytes of JSON for every request. */
export const BODY_BYTES = 1024

export function upstreamBody (): Buffer {
  const frame = '{"ok":true,"data":""}'
  const buf = Buffer.from(`{"ok":true,"data":"${'x'.repeat(BODY_BYTES - frame.length)}"}`)
  if (buf.length !== BODY_BYTES) throw new Error(`upstream body is ${buf.length} bytes, expected ${BODY_BYTES}`)
  return buf
}
