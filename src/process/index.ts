/**
 * outboxkit/process: runs a {@link Lifecycle} until the process gets a signal. For runtimes with
 * process signals (Node, Bun, Deno); on others (Workers) use `Lifecycle` and call `stop()` yourself.
 */
import { ErrorCode, OutboxKitError } from '../core/errors.js'
import {
  Lifecycle,
  type LifecycleFailure,
  type LifecycleOptions,
  type LifecycleStopResult,
} from '../core/lifecycle.js'

/** The part of `process` this module uses, so it needs no Node types at runtime. */
interface SignalProcess {
  once(signal: string, listener: () => void): unknown
  off(signal: string, listener: () => void): unknown
  exit(code?: number): never
}

export interface RunUntilSignalOptions extends LifecycleOptions {
  /** The signals that start the shutdown. Default `['SIGTERM', 'SIGINT']`. */
  signals?: readonly string[]
  /**
   * Exit the process once stopped: code 0 when a signal stopped it cleanly, 1 otherwise (a stop
   * that was not clean, or a component that stopped by itself); and at once, with code 1, on a
   * second signal during the shutdown. Default false: the promise resolves with the
   * result, and your code closes what is yours (the database) and exits.
   */
  exit?: boolean
  /** Called once every component has started (e.g. to report readiness). */
  onStarted?: () => void
  /** Called with the signal received, before the components are stopped. */
  onSignal?: (signal: string) => void
}

/** What {@link runUntilSignal} resolves with. */
export interface RunUntilSignalResult extends LifecycleStopResult {
  /** The signal that started the shutdown; undefined when a component's failure did. */
  readonly signal: string | undefined
  /**
   * The component that stopped by itself for good (a consumer runner that gave up restarting),
   * which made the others stop: then `clean` is false.
   */
  readonly failure?: LifecycleFailure
}

function signalProcess(): SignalProcess {
  const candidate = (globalThis as { process?: Partial<SignalProcess> }).process
  if (typeof candidate?.once !== 'function' || typeof candidate.off !== 'function') {
    throw new OutboxKitError(
      ErrorCode.InvalidOptions,
      'runUntilSignal needs process signals (Node, Bun, Deno). On this runtime create a Lifecycle from outboxkit and call its stop() yourself.',
    )
  }
  return candidate as SignalProcess
}

/**
 * Starts the components, waits for the first of `signals`, then stops them within `timeoutMs`
 * (see {@link Lifecycle.stop}). A component that stops by itself for good (see
 * {@link Lifecycle.failed}) stops the others too, as a signal would, and the result is not clean,
 * so an orchestrator restarts the process. Never closes your database.
 *
 * @example
 * ```ts
 * const { clean } = await runUntilSignal({ relays: [relay], runners: [runner], close: [transport], timeoutMs: 20_000 })
 * await db.destroy()
 * process.exit(clean ? 0 : 1)
 * ```
 */
export async function runUntilSignal(options: RunUntilSignalOptions): Promise<RunUntilSignalResult> {
  const proc = signalProcess()
  const signals = options.signals ?? ['SIGTERM', 'SIGINT']
  if (!Array.isArray(signals) || signals.length === 0 || signals.some((s) => typeof s !== 'string')) {
    throw new OutboxKitError(ErrorCode.InvalidOptions, 'signals must be a non-empty list of signal names.', {
      details: { option: 'signals' },
    })
  }
  const lifecycle = new Lifecycle(options)
  let received!: (signal: string) => void
  const signalled = new Promise<string>((resolve) => {
    received = resolve
  })
  let stopping = false
  const listeners = signals.map((signal) => {
    const listener = () => {
      if (stopping) {
        // A second signal: the operator does not want to wait.
        if (options.exit) proc.exit(1)
        return
      }
      stopping = true
      // Listen again, so a second signal is not the runtime's default (an abrupt exit).
      proc.once(signal, listener)
      received(signal)
    }
    proc.once(signal, listener)
    return { signal, listener }
  })
  try {
    await lifecycle.start()
    options.onStarted?.()
    const ended = await Promise.race([
      signalled.then((signal) => ({ signal, failure: undefined })),
      lifecycle.failed.then((failure) => ({ signal: undefined, failure })),
    ])
    stopping = true
    if (ended.signal !== undefined) options.onSignal?.(ended.signal)
    const stopped = await lifecycle.stop()
    const result: RunUntilSignalResult = ended.failure
      ? { ...stopped, clean: false, signal: undefined, failure: ended.failure }
      : { ...stopped, signal: ended.signal }
    if (options.exit) proc.exit(result.clean ? 0 : 1)
    return result
  } finally {
    for (const { signal, listener } of listeners) proc.off(signal, listener)
  }
}

export { type HealthServer, type HealthServerOptions, serveHealth } from './health-server.js'
export { Lifecycle, type LifecycleFailure, type LifecycleOptions, type LifecycleStopResult }
