/** Exponential backoff with jitter, and an abortable sleep. Runtime-agnostic. */

export interface BackoffOptions {
  /** Delay before the first retry, in ms. Default 500. */
  initialMs?: number
  /** Upper bound of any delay, in ms. Default 60 000. */
  maxMs?: number
  /** Growth per attempt. Default 2. */
  multiplier?: number
}

export const DEFAULT_BACKOFF: Required<BackoffOptions> = { initialMs: 500, maxMs: 60_000, multiplier: 2 }

/**
 * The delay before retry number `attempt` (1 = first retry): exponential, capped, with "equal
 * jitter" (half fixed, half random) so many failing relays do not retry in lockstep.
 */
export function backoffDelay(
  attempt: number,
  options: BackoffOptions = {},
  random: () => number = Math.random,
): number {
  const { initialMs, maxMs, multiplier } = { ...DEFAULT_BACKOFF, ...options }
  const exponential = Math.min(maxMs, initialMs * multiplier ** Math.max(0, attempt - 1))
  return Math.round(exponential / 2 + random() * (exponential / 2))
}

/** Resolves after `ms`, or as soon as `signal` aborts. Never rejects. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve()
    const done = () => {
      clearTimeout(timer)
      signal?.removeEventListener('abort', done)
      resolve()
    }
    const timer = setTimeout(done, ms)
    signal?.addEventListener('abort', done, { once: true })
  })
}
