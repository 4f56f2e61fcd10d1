/** Poll until fn() is true, every 20 ms, for at most `ms`; resolves to the last answer (the caller asserts). */
export async function until (fn: () => Promise<boolean>, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms
  for (let i = 0; i < 10_000 && Date.now() < deadline; i++) {
    if (await fn()) return true
    await new Promise((r) => setTimeout(r, 20))
  }
  return await fn()
}
