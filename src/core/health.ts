import { type ErrorSummary, type FailureLog, summarizeError } from './logger.js'

/** What every component's `health()` reports, whatever it does. */
export interface ComponentHealth {
  /** Whether its loop (a relay) or its consumer (a runner) runs now. */
  readonly running: boolean
  /** When it was last started; undefined before the first `start()`. */
  readonly startedAt: Date | undefined
  /** When its last cycle succeeded since it was started; undefined until one has. */
  readonly lastSuccessAt: Date | undefined
  /** Errors reported since the last successful cycle (0 when the last cycle succeeded). */
  readonly consecutiveErrors: number
  /** The last error reported since it was started, even if cycles succeeded since. */
  readonly lastError: ErrorSummary | undefined
}

/** Keeps the numbers of a {@link ComponentHealth}. */
export class HealthTracker {
  #running = false
  #startedAt: Date | undefined
  #lastSuccessAt: Date | undefined
  #consecutiveErrors = 0
  #lastError: ErrorSummary | undefined

  started(): void {
    this.#running = true
    this.#startedAt = new Date()
    this.#lastSuccessAt = undefined
    this.#consecutiveErrors = 0
    this.#lastError = undefined
  }

  stopped(): void {
    this.#running = false
  }

  /** Running again after it stopped by itself (a restart), keeping its errors and start time. */
  resumed(): void {
    this.#running = true
  }

  /** A cycle succeeded. Returns how many errors it ended (0 when none). */
  succeeded(): number {
    const ended = this.#consecutiveErrors
    this.#consecutiveErrors = 0
    this.#lastSuccessAt = new Date()
    return ended
  }

  /** An error was reported. Returns the count of errors in a row, this one included. */
  failed(error: unknown): number {
    this.#lastError = summarizeError(error)
    return ++this.#consecutiveErrors
  }

  get consecutiveErrors(): number {
    return this.#consecutiveErrors
  }

  snapshot(): ComponentHealth {
    return {
      running: this.#running,
      startedAt: this.#startedAt,
      lastSuccessAt: this.#lastSuccessAt,
      consecutiveErrors: this.#consecutiveErrors,
      lastError: this.#lastError,
    }
  }
}

/**
 * The `error` listener of a relay's loop: counts the error in its health and writes it to its
 * failure log (`retryInMs` -1: the loop stopped because of it).
 */
export function loopErrorListener(
  health: HealthTracker,
  failures: FailureLog,
  component: string,
): (event: { readonly error: unknown; readonly retryInMs: number }) => void {
  return ({ error, retryInMs }) => {
    const stopped = retryInMs < 0
    failures.failed(
      stopped ? `${component} stopped by an error` : `${component} cycle failed`,
      error,
      health.failed(error),
      stopped,
      { retryInMs },
    )
  }
}
