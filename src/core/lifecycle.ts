import { sleep } from './backoff.js'
import { ErrorCode, OutboxKitError } from './errors.js'
import type { ComponentHealth } from './health.js'
import { Log, type LoggerOption } from './logger.js'
import { positiveInteger } from './options.js'

/** Something with a background loop: a `Relay`, a `LogRelay`, a consumer runner, `Retention`. */
export interface LifecycleComponent {
  start(): Promise<void>
  /** Ends the loop gracefully: in-flight work finished or given back. */
  stop(): Promise<void>
  health?(): ComponentHealth
  /**
   * Subscribes to the component stopping by itself for good (a consumer runner that gave up
   * restarting its consumer). The lifecycle then reports it in {@link Lifecycle.failed}. Returns a
   * function that unsubscribes.
   */
  onFatal?(listener: (error: unknown) => void): () => void
}

/** A component that stopped by itself for good while the lifecycle ran. */
export interface LifecycleFailure {
  /** `runner[0]`, ... */
  readonly name: string
  readonly error: unknown
}

/** Something to close once every component has stopped: a transport (its producer). */
export interface LifecycleClosable {
  close(): Promise<void>
}

export interface LifecycleOptions {
  /** Relays: on stop they claim nothing new, finish and mark (or release) their batches in flight. */
  relays?: readonly LifecycleComponent[]
  /**
   * Consumer runners: on stop they finish the message in hand, commit the offsets of what is
   * processed and leave the group (closing their consumer).
   */
  runners?: readonly LifecycleComponent[]
  /** Retention: on stop the batch being deleted finishes. */
  retention?: LifecycleComponent | readonly LifecycleComponent[]
  /**
   * Closed after every component stopped (or the timeout passed): the relays' transports, which
   * close their producers. Your database is never closed here: it is yours, close it after.
   */
  close?: readonly LifecycleClosable[]
  /**
   * How long `stop()` waits for the components to stop and the closables to close, in ms. Past it,
   * `stop()` resolves with `clean: false` and the names of what had not finished. Default 30 000.
   */
  timeoutMs?: number
  /** Where start and stop are written (info), and what did not stop in time (error). Default: failures only, to the console. */
  logger?: LoggerOption
}

/** What {@link Lifecycle.stop} found. */
export interface LifecycleStopResult {
  /** Every component stopped and every closable closed, without error, within the timeout. */
  readonly clean: boolean
  /** Components and closables that had not finished when the timeout passed, e.g. `relay[0]`. */
  readonly timedOut: readonly string[]
  /** Those whose stop or close threw, with the error. */
  readonly failed: readonly { readonly name: string; readonly error: unknown }[]
}

/** The health of every component, by name (`relay[0]`, `runner[1]`, `retention[0]`). */
export type LifecycleHealth = Readonly<Record<string, ComponentHealth | undefined>>

interface Named<T> {
  readonly name: string
  readonly item: T
}

/**
 * Starts a service's relays, consumer runners and retention together, and stops them together
 * within a timeout: relays stop claiming and settle their batches, runners commit their offsets
 * and leave their groups, then the transports close. Runtime-agnostic; `runUntilSignal` from
 * `outboxkit/process` calls `stop()` on SIGTERM/SIGINT.
 *
 * @example
 * ```ts
 * const lifecycle = new Lifecycle({ relays: [relay], runners: [runner], close: [transport] })
 * await lifecycle.start()
 * // ... on shutdown:
 * const { clean } = await lifecycle.stop()
 * await db.destroy()
 * ```
 */
export class Lifecycle {
  readonly #components: Named<LifecycleComponent>[]
  readonly #closables: Named<LifecycleClosable>[]
  readonly #timeoutMs: number
  readonly #log: Log
  #started: Named<LifecycleComponent>[] = []
  #stopping: Promise<LifecycleStopResult> | undefined
  readonly #unsubscribe: (() => void)[] = []
  #fail: (failure: LifecycleFailure) => void = () => {}
  readonly #failed = new Promise<LifecycleFailure>((resolve) => {
    this.#fail = resolve
  })

  constructor(options: LifecycleOptions) {
    const named = <T>(kind: string, list: readonly T[] | undefined, check: (item: T) => boolean) =>
      (list ?? []).map((item, i) => {
        if (!check(item)) {
          throw new OutboxKitError(
            ErrorCode.InvalidOptions,
            `Lifecycle ${kind}[${i}] must have ${kind === 'close' ? 'close()' : 'start() and stop()'}.`,
            { details: { option: `${kind}[${i}]` } },
          )
        }
        return { name: `${kind === 'close' ? 'close' : kind.replace(/s$/, '')}[${i}]`, item }
      })
    const component = (c: LifecycleComponent) =>
      typeof c?.start === 'function' && typeof c.stop === 'function'
    const retention = options?.retention
    this.#components = [
      ...named('runners', options?.runners, component),
      ...named('relays', options?.relays, component),
      ...named(
        'retention',
        retention === undefined ? [] : Array.isArray(retention) ? retention : [retention],
        component,
      ),
    ]
    this.#closables = named('close', options?.close, (c: LifecycleClosable) => typeof c?.close === 'function')
    this.#timeoutMs = positiveInteger('timeoutMs', options?.timeoutMs ?? 30_000)
    this.#log = new Log(options?.logger, { component: 'lifecycle' })
  }

  /**
   * Starts every component: runners, then relays, then retention. If one fails to start, those
   * already started are stopped and the error is thrown.
   */
  async start(): Promise<void> {
    if (this.#started.length > 0 || this.#stopping) {
      throw new OutboxKitError(
        ErrorCode.AlreadyStarted,
        'This lifecycle was already started (or stopped); create a new one.',
      )
    }
    for (const component of this.#components) {
      try {
        await component.item.start()
      } catch (error) {
        await this.stop()
        throw error
      }
      this.#started.push(component)
      const unsubscribe = component.item.onFatal?.((error) => {
        if (this.#stopping) return
        this.#log.write('error', 'lifecycle component stopped by itself', {
          name: component.name,
          error: String(error),
        })
        this.#fail({ name: component.name, error })
      })
      if (unsubscribe) this.#unsubscribe.push(unsubscribe)
    }
    this.#log.write('info', 'lifecycle started', { components: this.#components.map((c) => c.name) })
  }

  /**
   * Stops every started component at once, then closes the closables, waiting at most `timeoutMs`
   * in all. Never throws: what failed or did not finish in time is in the result. Calling it again
   * returns the same result.
   */
  stop(): Promise<LifecycleStopResult> {
    this.#stopping ??= this.#stop()
    return this.#stopping
  }

  /**
   * Resolves when a started component stops by itself for good (see
   * {@link LifecycleComponent.onFatal}): the service no longer does all its work, and should stop
   * (`runUntilSignal` then stops the others and exits non-zero). Never rejects; pending while
   * every component runs.
   */
  get failed(): Promise<LifecycleFailure> {
    return this.#failed
  }

  /** Each component's `health()`, for a readiness or liveness endpoint. */
  health(): LifecycleHealth {
    return Object.fromEntries(this.#components.map((c) => [c.name, c.item.health?.()]))
  }

  async #stop(): Promise<LifecycleStopResult> {
    for (const unsubscribe of this.#unsubscribe.splice(0)) unsubscribe()
    const deadline = Date.now() + this.#timeoutMs
    const pending = new Set<string>()
    const failed: { name: string; error: unknown }[] = []
    const track = (name: string, work: () => Promise<void>) => {
      pending.add(name)
      return Promise.resolve()
        .then(work)
        .catch((error: unknown) => {
          failed.push({ name, error })
        })
        .finally(() => pending.delete(name))
    }
    const timer = new AbortController()
    // Past the deadline, work still gets one turn of the event loop (a close that needs no I/O).
    const within = (work: Promise<unknown>) =>
      Promise.race([work, sleep(Math.max(0, deadline - Date.now()), timer.signal)])
    this.#log.write('info', 'lifecycle stopping', { timeoutMs: this.#timeoutMs })
    await within(Promise.all(this.#started.map((c) => track(c.name, () => c.item.stop()))))
    // Producers close after the relays that publish through them, also when a relay overran.
    await within(Promise.all(this.#closables.map((c) => track(c.name, () => c.item.close()))))
    timer.abort()
    const timedOut = [...pending]
    const clean = timedOut.length === 0 && failed.length === 0
    if (timedOut.length > 0) {
      this.#log.write('error', 'lifecycle stop timed out', { timedOut, timeoutMs: this.#timeoutMs })
    }
    for (const { name, error } of failed) {
      this.#log.write('error', 'lifecycle component failed to stop', { name, error: String(error) })
    }
    this.#log.write('info', 'lifecycle stopped', { clean })
    return { clean, timedOut, failed }
  }
}
