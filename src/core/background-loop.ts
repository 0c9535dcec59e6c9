import { ErrorCode, OutboxKitError } from './errors.js'

/** What a component's `start()` says when it cannot start. */
export interface BackgroundLoopMessages {
  /** It runs already. */
  readonly running: string
  /** Its `signal` option was aborted before the first start. */
  readonly aborted: string
  /** It was stopped: a stopped component does not start again. */
  readonly stopped: string
}

/**
 * The start/stop bookkeeping of a component that runs one loop in the background (the relays,
 * retention): `start()` runs the loop once, `stop()` (or the component's `signal`) ends it for
 * good and waits for it.
 */
export class BackgroundLoop {
  readonly #messages: BackgroundLoopMessages
  readonly #signal: AbortSignal | undefined
  #running: Promise<void> | undefined
  #stopping: AbortController | undefined

  constructor(messages: BackgroundLoopMessages, signal: AbortSignal | undefined) {
    this.#messages = messages
    this.#signal = signal
    signal?.addEventListener('abort', () => void this.stop(), { once: true })
  }

  /** Whether the loop runs. */
  get running(): boolean {
    return this.#running !== undefined
  }

  /** The running loop's signal (aborted once it is asked to stop); undefined while it does not run. */
  get signal(): AbortSignal | undefined {
    return this.#running ? this.#stopping?.signal : undefined
  }

  /**
   * Runs `loop` in the background; `ended` is called when it returns.
   *
   * @throws {@link OutboxKitError} `ALREADY_STARTED` while it runs; `CLOSED` once stopped, or when
   * the signal was aborted already.
   */
  start(loop: (signal: AbortSignal) => Promise<void>, ended: () => void): void {
    if (this.#running) throw new OutboxKitError(ErrorCode.AlreadyStarted, this.#messages.running)
    if (this.#signal?.aborted) throw new OutboxKitError(ErrorCode.Closed, this.#messages.aborted)
    if (this.#stopping?.signal.aborted) throw new OutboxKitError(ErrorCode.Closed, this.#messages.stopped)
    this.#stopping = new AbortController()
    this.#running = loop(this.#stopping.signal).finally(() => {
      this.#running = undefined
      ended()
    })
  }

  /** Asks the loop to end, for good, without waiting (the loop itself decided to stop). */
  abort(): void {
    this.#stopping ??= new AbortController()
    this.#stopping.abort()
  }

  /** Ends the loop for good; resolves when it has returned. */
  async stop(): Promise<void> {
    this.abort()
    await this.#running
  }
}
