/**
 * The small part of a Jest-style test runner the conformance suites use. bun:test, vitest,
 * Jest and Deno's `@std/expect` all fit; pass yours in, so the suites depend on no runner.
 */
export interface Matchers {
  toBe(expected: unknown): void
  toEqual(expected: unknown): void
  toBeGreaterThan(expected: number): void
  toBeGreaterThanOrEqual(expected: number): void
  toBeLessThan(expected: number): void
  toBeLessThanOrEqual(expected: number): void
  toHaveLength(expected: number): void
  toBeTruthy(): void
  toContain(expected: unknown): void
  not: Omit<Matchers, 'not'>
}

export interface TestApi {
  describe(name: string, fn: () => void): void
  test(name: string, fn: () => Promise<void>, timeoutMs?: number): void
  expect(actual: unknown): Matchers
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/** Runs `fn`, expecting it to throw; returns what it threw. */
export async function captureError(fn: () => Promise<unknown>): Promise<unknown> {
  try {
    await fn()
  } catch (error) {
    return error
  }
  throw new Error('Expected the call to throw, but it resolved.')
}
