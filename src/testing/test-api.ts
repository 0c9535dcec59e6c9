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

/** A runner's `test`, with the `test.skip` that bun:test, vitest, Jest and node:test all have. */
export interface TestFunction {
  (name: string, fn: () => Promise<void>, timeoutMs?: number): void
  skip?: (name: string, fn: () => Promise<void>) => void
}

export interface TestApi {
  describe(name: string, fn: () => void): void
  test: TestFunction
  expect(actual: unknown): Matchers
}

/**
 * Registers a test the backend cannot run so that it shows as skipped, with the reason in its
 * name. Uses the runner's `test.skip`; a runner without one gets a test that says why it did nothing.
 */
export function skipTest(api: TestApi, name: string, reason: string): void {
  const title = `${name} (skipped: ${reason})`
  if (typeof api.test.skip === 'function') api.test.skip(title, async () => {})
  else api.test(title, async () => {})
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
