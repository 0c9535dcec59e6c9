import { BackgroundLoop } from './background-loop.js'
import { backoffDelay, DEFAULT_BACKOFF, sleep } from './backoff.js'
import { ErrorCode, OutboxKitError } from './errors.js'
import { Emitter } from './events.js'
import { type ComponentHealth, HealthTracker } from './health.js'
import { FailureLog, Log, type LoggerOption } from './logger.js'
import { nonNegativeInteger, nonNegativeNumber, positiveInteger } from './options.js'
import type { InboxStore, OutboxStore } from './store.js'

/** What retention needs of an outbox store. */
export type RetentionOutboxStore = Pick<OutboxStore<never>, 'name' | 'purge' | 'runExclusive'>
/** What retention needs of an inbox store. */
export type RetentionInboxStore = Pick<InboxStore<never>, 'name' | 'purge' | 'runExclusive'>

/** Which outbox rows to delete, by the age of the row (its `created_at`, the store's clock). */
export interface OutboxRetention {
  store: RetentionOutboxStore
  /** Delete published rows created more than this long ago, in ms. */
  publishedOlderThanMs: number
  /**
   * Also delete dead rows created more than this long ago, in ms; at least `publishedOlderThanMs`
   * (dead rows wait for a person at least as long as published ones are kept). Default: dead rows
   * are kept until someone requeues or purges them.
   */
  deadOlderThanMs?: number
  /**
   * Also delete pending rows created more than this long ago, in ms: only for an outbox read by a
   * log-tailing relay (`LogRelay`), which never marks rows published, so they would stay pending
   * for ever; the feed reads each event from the log, which keeps it after the row is deleted.
   * Keep it longer than the feed can fall behind: after a lost feed (`FEED_LOST`) the rows still
   * there are what the polling relay republishes. Never with the polling `Relay`: pending rows
   * deleted are events it never published. Default: pending rows are never deleted.
   */
  pendingOlderThanMs?: number
}

/** Which inbox rows to delete, by the time the message was processed (the store's clock). */
export interface InboxRetention {
  store: RetentionInboxStore
  /**
   * Delete records processed more than this long ago, in ms. Keep it well beyond the longest time
   * a message can be redelivered (the topic's retention): a message redelivered after its record
   * is deleted is processed again.
   */
  olderThanMs: number
  /** Only this consumer's records. Default: every consumer's. */
  consumer?: string
}

export interface RetentionOptions {
  /** Purge the outbox table. */
  outbox?: OutboxRetention
  /** Purge the inbox table. */
  inbox?: InboxRetention
  /** Time between the start of one pass and the next, in ms. Default 600 000 (10 minutes). */
  intervalMs?: number
  /**
   * Rows per batch: each batch is one short transaction of the store (a read through the index on
   * settled rows, then a delete by primary key). 1 to {@link MAX_RETENTION_BATCH_SIZE}. Default 500.
   */
  batchSize?: number
  /** Pause between two batches of a pass, in ms, so the database serves other work. Default 100. */
  pauseMs?: number
  /**
   * The name of the lock (the store's `runExclusive`) that keeps passes to one instance at a time
   * across processes: an instance that finds it taken skips its pass. The outbox store takes it
   * when given, else the inbox store. `false` takes no lock (run retention in one process only).
   * Default `'retention'`.
   */
  lock?: string | false
  /**
   * Where retention writes what it does: passes that deleted rows (info), passes skipped because
   * another instance holds the lock and passes that found nothing (debug), failures (warn). `false`
   * writes nothing. Default: failures only, to the console, throttled like the relay's.
   */
  logger?: LoggerOption
  /** Stops retention when aborted, as `stop()` does. */
  signal?: AbortSignal
}

/** The most rows per retention batch. */
export const MAX_RETENTION_BATCH_SIZE = 1_000

/** What one pass deleted. */
export interface RetentionReport {
  /** False when another instance held the lock: nothing was deleted. */
  readonly acquired: boolean
  /** Outbox rows deleted by the published horizon. */
  readonly published: number
  /**
   * Outbox rows deleted by the dead horizon: dead rows, and published rows that crossed it while
   * the pass ran. 0 without `deadOlderThanMs`.
   */
  readonly dead: number
  /** Outbox rows deleted by the pending horizon (any status). 0 without `pendingOlderThanMs`. */
  readonly pending: number
  /** Inbox records deleted. */
  readonly inbox: number
  /** Batches run. */
  readonly batches: number
  readonly durationMs: number
}

/** What retention reports. Subscribe with {@link Retention.on}. */
export interface RetentionEvents {
  /** A pass ended (also when it deleted nothing). */
  purged: RetentionReport
  /** A pass was skipped: another instance holds the lock. */
  skipped: { readonly lock: string }
  /** A pass failed; the next one starts in `retryInMs`. */
  error: { readonly error: unknown; readonly retryInMs: number }
}

/**
 * Deletes old settled outbox rows and old inbox records on a schedule, in bounded batches with a
 * pause between them, one instance at a time across processes. Opt-in, and apart from the relay:
 * relays run on many instances and an inbox lives with the consumers, while retention needs one
 * runner per database at its own pace.
 *
 * @example
 * ```ts
 * const retention = new Retention({
 *   outbox: { store, publishedOlderThanMs: 7 * 24 * 3_600_000 },
 *   inbox: { store: inboxStore, olderThanMs: 30 * 24 * 3_600_000 },
 * })
 * await retention.start()
 * // ...
 * await retention.stop()
 * ```
 */
export class Retention {
  readonly #outbox: OutboxRetention | undefined
  readonly #inbox: InboxRetention | undefined
  readonly #intervalMs: number
  readonly #batchSize: number
  readonly #pauseMs: number
  readonly #lock: string | false
  readonly #lockHolder: RetentionOutboxStore | RetentionInboxStore | undefined
  readonly #events = new Emitter<RetentionEvents>()
  readonly #health = new HealthTracker()
  readonly #log: Log
  readonly #failures: FailureLog
  readonly #background: BackgroundLoop
  #lastReport: RetentionReport | undefined

  constructor(options: RetentionOptions) {
    const invalid = (message: string, option: string) =>
      new OutboxKitError(ErrorCode.InvalidOptions, message, { details: { option } })
    if (!options?.outbox && !options?.inbox) {
      throw invalid('new Retention({ outbox, inbox }) needs `outbox`, `inbox` or both.', 'outbox')
    }
    const { outbox, inbox } = options
    this.#outbox = undefined
    this.#inbox = undefined
    if (outbox) {
      if (typeof outbox.store?.purge !== 'function')
        throw invalid('retention `outbox.store` must be an OutboxStore.', 'outbox.store')
      const published = nonNegativeNumber('outbox.publishedOlderThanMs', outbox.publishedOlderThanMs)
      const dead =
        outbox.deadOlderThanMs === undefined
          ? undefined
          : nonNegativeNumber('outbox.deadOlderThanMs', outbox.deadOlderThanMs)
      if (dead !== undefined && dead < published) {
        // The dead pass deletes published rows too (includeDead), so it may not reach younger ones.
        throw invalid(
          `outbox.deadOlderThanMs (${dead}) must be at least outbox.publishedOlderThanMs (${published}): dead rows are kept at least as long as published ones.`,
          'outbox.deadOlderThanMs',
        )
      }
      const pending =
        outbox.pendingOlderThanMs === undefined
          ? undefined
          : nonNegativeNumber('outbox.pendingOlderThanMs', outbox.pendingOlderThanMs)
      this.#outbox = {
        store: outbox.store,
        publishedOlderThanMs: published,
        ...(dead === undefined ? {} : { deadOlderThanMs: dead }),
        ...(pending === undefined ? {} : { pendingOlderThanMs: pending }),
      }
    }
    if (inbox) {
      if (typeof inbox.store?.purge !== 'function')
        throw invalid('retention `inbox.store` must be an InboxStore.', 'inbox.store')
      nonNegativeNumber('inbox.olderThanMs', inbox.olderThanMs)
      this.#inbox = { ...inbox }
    }
    this.#intervalMs = positiveInteger('intervalMs', options.intervalMs ?? 600_000)
    this.#batchSize = positiveInteger('batchSize', options.batchSize ?? 500, MAX_RETENTION_BATCH_SIZE)
    this.#pauseMs = nonNegativeInteger('pauseMs', options.pauseMs ?? 100)
    const lock = options.lock ?? 'retention'
    if (lock !== false && (typeof lock !== 'string' || lock.length === 0)) {
      throw invalid('retention `lock` must be a non-empty lock name, or false for no lock.', 'lock')
    }
    this.#lock = lock
    this.#lockHolder = outbox?.store ?? inbox?.store
    if (lock !== false && typeof this.#lockHolder?.runExclusive !== 'function') {
      throw invalid(
        `retention keeps its passes to one instance with the store's runExclusive lock; the ${this.#lockHolder?.name} store has none. Use a store that has it, or pass lock: false and run retention in one process only.`,
        'lock',
      )
    }
    this.#log = new Log(options.logger, { component: 'retention' })
    this.#failures = new FailureLog(this.#log)
    this.#background = new BackgroundLoop(
      {
        running: 'Retention is already running; call stop() first.',
        aborted: 'This retention was stopped (or its signal aborted).',
        stopped: 'This retention was stopped (or its signal aborted).',
      },
      options.signal,
    )
  }

  /** Subscribes to an event. Returns a function that unsubscribes. */
  on<E extends keyof RetentionEvents>(event: E, listener: (event: RetentionEvents[E]) => void): () => void {
    return this.#events.on(event, listener)
  }

  /** Whether the schedule runs. */
  get running(): boolean {
    return this.#background.running
  }

  /** Whether it runs, its last successful pass, errors since, and what the last pass deleted. */
  health(): ComponentHealth & { readonly lastPass: RetentionReport | undefined } {
    return { ...this.#health.snapshot(), lastPass: this.#lastReport }
  }

  /**
   * Starts the schedule in the background and returns at once: a pass now, then one every
   * `intervalMs`. Failures are reported (`error` event, logger, health) and retried.
   *
   * @throws {@link OutboxKitError} `ALREADY_STARTED` if it runs; `CLOSED` if it was stopped or its
   * signal already aborted.
   */
  async start(): Promise<void> {
    this.#background.start(
      (signal) => {
        this.#health.started()
        this.#log.write('info', 'retention started', { intervalMs: this.#intervalMs, lock: this.#lock })
        return this.#loop(signal)
      },
      () => {
        this.#health.stopped()
        this.#log.write('info', 'retention stopped')
      },
    )
  }

  /** Stops the schedule: a batch being deleted finishes, no other starts. Resolves when it ended. */
  async stop(): Promise<void> {
    await this.#background.stop()
  }

  /** One pass now, outside the schedule (scripts, cron jobs, tests). */
  runOnce(): Promise<RetentionReport> {
    return this.#pass(this.#background.signal ?? new AbortController().signal)
  }

  async #loop(signal: AbortSignal): Promise<void> {
    let consecutiveErrors = 0
    while (!signal.aborted) {
      const started = Date.now()
      let waitMs: number
      try {
        await this.#pass(signal)
        consecutiveErrors = 0
        const ended = this.#health.succeeded()
        if (ended > 0) this.#failures.recovered('retention recovered', ended)
        waitMs = this.#intervalMs - (Date.now() - started)
      } catch (error) {
        consecutiveErrors++
        waitMs = Math.min(this.#intervalMs, backoffDelay(consecutiveErrors, DEFAULT_BACKOFF))
        this.#events.emit('error', { error, retryInMs: waitMs })
        this.#failures.failed('retention pass failed', error, this.#health.failed(error), false, {
          retryInMs: waitMs,
        })
      }
      await sleep(Math.max(0, waitMs), signal)
    }
  }

  async #pass(signal: AbortSignal): Promise<RetentionReport> {
    const started = Date.now()
    const counts = { published: 0, dead: 0, pending: 0, inbox: 0, batches: 0 }
    const work = async () => {
      const outbox = this.#outbox
      if (outbox) {
        counts.published = await this.#drain(signal, counts, (limit) =>
          outbox.store.purge({ olderThanMs: outbox.publishedOlderThanMs, limit }),
        )
        const dead = outbox.deadOlderThanMs
        if (dead !== undefined) {
          counts.dead = await this.#drain(signal, counts, (limit) =>
            outbox.store.purge({ olderThanMs: dead, includeDead: true, limit }),
          )
        }
        const pending = outbox.pendingOlderThanMs
        if (pending !== undefined) {
          counts.pending = await this.#drain(signal, counts, (limit) =>
            outbox.store.purge({ olderThanMs: pending, includePending: true, limit }),
          )
        }
      }
      const inbox = this.#inbox
      if (inbox) {
        counts.inbox = await this.#drain(signal, counts, (limit) =>
          inbox.store.purge({
            olderThanMs: inbox.olderThanMs,
            limit,
            ...(inbox.consumer === undefined ? {} : { consumer: inbox.consumer }),
          }),
        )
      }
    }
    let acquired = true
    if (this.#lock === false) await work()
    else acquired = (await this.#lockHolder!.runExclusive!(this.#lock, work)).acquired
    const report: RetentionReport = { acquired, ...counts, durationMs: Date.now() - started }
    this.#lastReport = report
    if (!acquired) {
      this.#events.emit('skipped', { lock: this.#lock as string })
      this.#log.write('debug', 'retention pass skipped: another instance holds the lock', {
        lock: this.#lock,
      })
      return report
    }
    this.#events.emit('purged', report)
    const deleted = report.published + report.dead + report.pending + report.inbox
    this.#log.write(deleted > 0 ? 'info' : 'debug', 'retention pass', { ...report })
    return report
  }

  /** Batches of `step` until one deletes less than a batch (nothing old is left) or stopping. */
  async #drain(
    signal: AbortSignal,
    counts: { batches: number },
    step: (limit: number) => Promise<number>,
  ): Promise<number> {
    let total = 0
    while (!signal.aborted) {
      const deleted = await step(this.#batchSize)
      counts.batches++
      total += deleted
      if (deleted < this.#batchSize) break
      await sleep(this.#pauseMs, signal)
    }
    return total
  }
}
