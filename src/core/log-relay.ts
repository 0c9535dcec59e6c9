import { BackgroundLoop } from './background-loop.js'
import { type BackoffOptions, backoffDelay, DEFAULT_BACKOFF, sleep } from './backoff.js'
import type { ChangeFeed, DeadFeedRecord, FeedLag, FeedPosition } from './change-feed.js'
import { publishDeadLetters } from './dead-letters.js'
import { describeError, ErrorCode, isOutboxKitError, OutboxKitError } from './errors.js'
import { Emitter } from './events.js'
import { type ComponentHealth, HealthTracker, loopErrorListener } from './health.js'
import { DEFAULT_LOG_FAILURE_INTERVAL_MS, FailureLog, Log, type LoggerOption } from './logger.js'
import type { ClaimedRecord } from './message.js'
import {
  backoffOptions,
  MAX_CLAIM_LIMIT,
  nonEmptyString,
  nonNegativeInteger,
  positiveInteger,
} from './options.js'
import type { DeadLetterOptions, RelayInstrumentation } from './relay.js'
import type { PublishOutcome, Transport } from './transport.js'

/** What a log-tailing relay reports while it runs. Subscribe with {@link LogRelay.on}. */
export interface LogRelayEvents {
  /** The feed was opened: this relay reads it now. */
  opened: { readonly feed: string }
  /** Another relay reads the feed (`FEED_BUSY`): this one waits as a standby and tries again. */
  standby: { readonly retryInMs: number }
  /** Records were published. `durationMs` covers the publish. */
  published: { readonly count: number; readonly durationMs: number }
  /** Records failed and will be retried; their key waits (later records of it are held back). */
  failed: { readonly ids: readonly string[]; readonly error: string; readonly retryInMs: number }
  /** Records were given up on: marked dead through the feed, and dead-lettered when configured. */
  deadLettered: { readonly ids: readonly string[]; readonly error: string }
  /** The dead-letter topic did not take these dead records' letters; they are marked dead all the same. */
  deadLetterFailed: { readonly ids: readonly string[]; readonly error: string }
  /** The feed's position was confirmed: every record before it is settled. */
  confirmed: { readonly position: FeedPosition; readonly records: number }
  /**
   * How far the feed is behind the end of the log ({@link ChangeFeed.lag}), sampled every
   * `lagIntervalMs` while the relay reads the feed and someone listens (or `maxLagBytes` is set).
   */
  lag: FeedLag
  /**
   * A lag sample found more than `maxLagBytes` of log behind the confirmed position: the database
   * keeps that log (a replication slot holds its WAL) until the relay confirms past it. Emitted
   * with every such sample; the relay also logs a warning.
   */
  lagExceeded: { readonly bytes: number; readonly maxLagBytes: number; readonly ageMs: number | undefined }
  /**
   * The loop hit an error and backs off `retryInMs` before trying again; -1 when the relay stops
   * because of it (the feed is lost, or the transport was fenced), 0 when nothing is retried.
   */
  error: { readonly error: unknown; readonly retryInMs: number }
}

export type LogRelayListener<E extends keyof LogRelayEvents> = (event: LogRelayEvents[E]) => void

export interface LogRelayOptions {
  /** The database log to read: `outboxkit/postgres-log`, `outboxkit/mysql-binlog`, or your own. */
  feed: ChangeFeed
  transport: Transport
  /** Most records per read and publish. Default 500. */
  batchSize?: number
  /** Longest a read waits for records before the loop looks at its retries again, in ms. Default 250. */
  pollIntervalMs?: number
  /** Attempts before a record that keeps failing is dead. Default 10. */
  maxAttempts?: number
  /** Backoff between attempts of a failing record, and of the loop after an error. */
  backoff?: BackoffOptions
  /**
   * Most records held back behind failing keys before the relay stops reading more (they are kept
   * in memory, since nothing is written to the table). Default 10 000.
   */
  maxHeldRecords?: number
  /** How often a standby relay tries to open a feed another relay reads, in ms. Default 1 000. */
  standbyRetryMs?: number
  /** Also publish dead records to a dead-letter topic (see `RelayOptions.deadLetter`). */
  deadLetter?: DeadLetterOptions
  /** Spans and metrics around publishing, e.g. `otelRelayInstrumentation()` from `outboxkit/otel`. */
  instrumentation?: RelayInstrumentation
  /**
   * How often to sample the feed's lag (the `lag` event, `health().lag`, the instrumentation's
   * feed lag gauges), in ms, while the relay reads the feed. Sampled only when something uses it:
   * a `lag` or `lagExceeded` listener, an instrumentation with `recordFeedLag`, or `maxLagBytes`.
   * Default 5 000; 0 turns it off.
   */
  lagIntervalMs?: number
  /**
   * Bytes of log behind the confirmed position above which the relay reports the feed as falling
   * behind: a `lagExceeded` event with every such sample, a warning in its log (repeated at most
   * once a minute while it lasts, and an info line when it is back below), and
   * `health().lagExceeded`. Unset by default: nothing is compared.
   */
  maxLagBytes?: number
  /** Stops the relay when aborted, as `stop()` does. */
  signal?: AbortSignal
  /**
   * Where the relay writes what it does (see `RelayOptions.logger`). Left out, failures go to
   * the console, throttled; `false` writes nothing.
   */
  logger?: LoggerOption
}

/** What {@link LogRelay.health} reports. */
export interface LogRelayHealth extends ComponentHealth {
  /** Whether this relay reads the feed now (false while it waits as a standby). */
  readonly reading: boolean
  /** The last position confirmed since it started. */
  readonly confirmedPosition: FeedPosition | undefined
  /** Records held back behind failing keys. */
  readonly heldRecords: number
  /** The last lag sample (see `lagIntervalMs`); undefined before the first. */
  readonly lag: FeedLag | undefined
  /** Whether the last lag sample was above `maxLagBytes`. */
  readonly lagExceeded: boolean
}

/** A record read from the feed, with the batch it came in and the attempts made so far. */
interface Entry {
  readonly record: ClaimedRecord
  readonly batch: BatchState
  attempts: number
}

/** A batch read from the feed: its position is confirmed once none of its records is pending. */
interface BatchState {
  pending: number
  readonly size: number
  readonly position: FeedPosition | undefined
}

/** A key whose head failed: its records wait, in order, until `retryAt`. */
interface HeldKey {
  readonly entries: Entry[]
  retryAt: number
}

/**
 * Publishes outbox records read from the database's log (a {@link ChangeFeed}) instead of
 * claimed from the table: no polling, no lease or mark per row, records in commit order.
 *
 * Every record goes through the same transport, dead-letter and instrumentation path as the
 * polling {@link Relay}. The feed's position is confirmed only once every record before it was
 * acknowledged by the broker or given up on (dead), so a relay that dies publishes again at most
 * what it read since its last confirmation, with the same message ids (G4). A record that fails
 * holds back its key's later records (G3) while other keys go on; it is retried with backoff and,
 * after `maxAttempts` (or at once when the broker refuses it), marked dead through the feed.
 *
 * One relay reads a feed at a time; a second one waits as a standby (`standby` event) and takes
 * over when the first stops or dies.
 *
 * @example
 * ```ts
 * const relay = new LogRelay({ feed, transport })
 * await relay.start()
 * // ...
 * await relay.stop()
 * ```
 */
export class LogRelay {
  readonly #feed: ChangeFeed
  readonly #transport: Transport
  readonly #batchSize: number
  readonly #pollIntervalMs: number
  readonly #maxAttempts: number
  readonly #backoff: BackoffOptions
  readonly #maxHeldRecords: number
  readonly #standbyRetryMs: number
  readonly #deadLetter: Required<DeadLetterOptions> | undefined
  readonly #instrumentation: RelayInstrumentation | undefined
  readonly #events = new Emitter<LogRelayEvents>()
  readonly #fatalListeners = new Set<(error: unknown) => void>()
  readonly #background: BackgroundLoop
  readonly #log: Log
  readonly #failures: FailureLog
  readonly #health = new HealthTracker()
  readonly #lagIntervalMs: number
  readonly #maxLagBytes: number | undefined
  #lag: FeedLag | undefined
  #lagExceeded = false
  #lagWarnedAt = Number.NEGATIVE_INFINITY
  #reading = false
  #confirmedPosition: FeedPosition | undefined

  /** Batches read and not yet confirmed, in read order. */
  #batches: BatchState[] = []
  /** Keys whose head failed, with their waiting records in order. */
  #held = new Map<string, HeldKey>()
  #heldCount = 0
  /** The confirmation being written, the latest one waiting behind it, and a failure of one. */
  #confirmWriting: Promise<void> | undefined
  #confirmNext: { position: FeedPosition; records: number } | undefined
  #confirmError: unknown
  /** Dead records whose mark through the feed failed: marked again before anything is confirmed. */
  #unrecordedDead: { entry: Entry; error: string }[] = []

  constructor(options: LogRelayOptions) {
    if (!options?.feed || typeof options.feed.read !== 'function') {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        'new LogRelay({ feed, transport }) needs a ChangeFeed as `feed`.',
      )
    }
    if (!options.transport || typeof options.transport.publish !== 'function') {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        'new LogRelay({ feed, transport }) needs a Transport as `transport`.',
      )
    }
    this.#feed = options.feed
    this.#transport = options.transport
    this.#batchSize = positiveInteger('batchSize', options.batchSize ?? 500, MAX_CLAIM_LIMIT)
    this.#pollIntervalMs = positiveInteger('pollIntervalMs', options.pollIntervalMs ?? 250)
    this.#maxAttempts = positiveInteger('maxAttempts', options.maxAttempts ?? 10)
    this.#backoff = backoffOptions('backoff', options.backoff, DEFAULT_BACKOFF)
    this.#maxHeldRecords = positiveInteger('maxHeldRecords', options.maxHeldRecords ?? 10_000)
    this.#standbyRetryMs = positiveInteger('standbyRetryMs', options.standbyRetryMs ?? 1_000)
    this.#instrumentation = options.instrumentation
    this.#lagIntervalMs = nonNegativeInteger('lagIntervalMs', options.lagIntervalMs ?? 5_000)
    this.#maxLagBytes =
      options.maxLagBytes === undefined ? undefined : positiveInteger('maxLagBytes', options.maxLagBytes)
    this.#deadLetter = options.deadLetter && {
      topic: nonEmptyString('deadLetter.topic', options.deadLetter.topic),
      transport: options.deadLetter.transport ?? options.transport,
    }
    this.#log = new Log(options.logger, { feed: options.feed.name })
    this.#failures = new FailureLog(this.#log)
    this.#observeOwnEvents()
    this.#background = new BackgroundLoop(
      {
        running: 'This relay is already running; call stop() first.',
        aborted:
          'This relay was not started: its signal was already aborted. Create the relay with a signal that is not aborted yet.',
        stopped: 'This relay was stopped; create a new LogRelay to run again.',
      },
      options.signal,
    )
  }

  /** Health and log lines follow the relay's own events. */
  #observeOwnEvents(): void {
    const log = this.#log
    this.#events.on('error', loopErrorListener(this.#health, this.#failures, 'log relay'))
    this.#events.on('opened', (e) => log.write('info', 'log relay reads the feed', e))
    this.#events.on('standby', (e) => log.write('debug', 'log relay waits as a standby', e))
    this.#events.on('published', (e) => log.write('debug', 'log relay published a batch', e))
    this.#events.on('confirmed', (e) => {
      this.#confirmedPosition = e.position
      log.write('debug', 'log relay confirmed the feed position', e)
    })
    this.#events.on('failed', (e) =>
      log.write('warn', 'log relay record failed, will retry', {
        ids: e.ids,
        error: e.error,
        retryInMs: e.retryInMs,
      }),
    )
    this.#events.on('deadLettered', (e) =>
      log.write('warn', 'log relay record dead', { ids: e.ids, error: e.error }),
    )
  }

  /** The loop's state for health checks; a plain object, safe to serialise. */
  health(): LogRelayHealth {
    return {
      ...this.#health.snapshot(),
      reading: this.#reading,
      confirmedPosition: this.#confirmedPosition,
      heldRecords: this.#heldCount,
      lag: this.#lag,
      lagExceeded: this.#lagExceeded,
    }
  }

  /** Subscribes to an event. Returns a function that unsubscribes. */
  on<E extends keyof LogRelayEvents>(event: E, listener: LogRelayListener<E>): () => void {
    return this.#events.on(event, listener)
  }

  /**
   * Calls `listener` when the relay stops by itself for good: its feed is lost (`FEED_LOST`: the
   * slot was dropped or the log it needs removed) or its transport was fenced (`FENCED`). A
   * `Lifecycle` running it then stops the service (see `LifecycleComponent.onFatal`), so that
   * `runUntilSignal` exits non-zero and an orchestrator notices. Returns a function that
   * unsubscribes.
   */
  onFatal(listener: (error: unknown) => void): () => void {
    this.#fatalListeners.add(listener)
    return () => this.#fatalListeners.delete(listener)
  }

  /** Whether the loop is running. */
  get running(): boolean {
    return this.#background.running
  }

  /**
   * Starts the loop in the background and returns at once. Errors are reported through the
   * `error` event and retried with backoff; the loop ends with `stop()`, the `signal` option, a
   * lost feed (`FEED_LOST`) or a fenced transport.
   *
   * @throws {@link OutboxKitError} `ALREADY_STARTED` if it is running; `CLOSED` if it was stopped
   * or its signal was already aborted.
   */
  async start(): Promise<void> {
    this.#background.start(
      (signal) => {
        this.#health.started()
        this.#log.write('info', 'log relay started', { batchSize: this.#batchSize })
        return this.#loop(signal)
      },
      () => {
        this.#health.stopped()
        this.#log.write('info', 'log relay stopped')
      },
    )
  }

  /**
   * Stops the loop: the publish in progress is finished, what is settled is confirmed, and the
   * feed is closed. Records read but not settled are read again by the next relay. The transport
   * stays open.
   */
  async stop(): Promise<void> {
    await this.#background.stop()
  }

  async #loop(signal: AbortSignal): Promise<void> {
    let consecutiveErrors = 0
    while (!signal.aborted) {
      let sampler: (() => Promise<void>) | undefined
      try {
        if (!(await this.#open(signal))) break
        consecutiveErrors = 0
        sampler = this.#sampleLagWhileReading()
        await this.#tail(signal)
      } catch (error) {
        if (this.#stopsTheRelay(error)) {
          this.#events.emit('error', { error, retryInMs: -1 })
          this.#log.write('error', 'log relay stopped by itself', { error: describeError(error) })
          for (const listener of this.#fatalListeners) {
            try {
              listener(error)
            } catch {
              // Observers must not change what happens to the relay.
            }
          }
          break
        }
        const retryInMs = backoffDelay(++consecutiveErrors, this.#backoff)
        this.#events.emit('error', { error, retryInMs })
        await sleep(retryInMs, signal)
      } finally {
        // Whatever was read and not confirmed is read again after the next open.
        await this.#confirmed().catch(() => {})
        await sampler?.()
        this.#reset()
        this.#reading = false
        await this.#feed.close().catch(() => {})
      }
    }
  }

  /** Opens the feed, waiting as a standby while another relay reads it. False when stopped first. */
  async #open(signal: AbortSignal): Promise<boolean> {
    while (!signal.aborted) {
      try {
        await this.#feed.open()
        this.#reading = true
        this.#events.emit('opened', { feed: this.#feed.name })
        return true
      } catch (error) {
        if (!isOutboxKitError(error) || error.code !== ErrorCode.FeedBusy) throw error
        this.#events.emit('standby', { retryInMs: this.#standbyRetryMs })
        await sleep(this.#standbyRetryMs, signal)
      }
    }
    return false
  }

  /** Reads, publishes and confirms until stopped; throws on a feed or store error. */
  async #tail(signal: AbortSignal): Promise<void> {
    let transportErrors = 0
    while (!signal.aborted) {
      this.#throwConfirmError()
      await this.#recordDead()
      const due = this.#takeDue(Date.now())
      const fresh: Entry[] = []
      const room = this.#batchSize - due.length
      if (room > 0 && this.#heldCount < this.#maxHeldRecords) {
        const batch = await this.#feed.read({
          limit: room,
          maxWaitMs: due.length > 0 ? 0 : this.#nextWaitMs(),
          signal,
        })
        const state: BatchState = {
          pending: batch.records.length,
          size: batch.records.length,
          position: batch.position,
        }
        if (batch.records.length > 0 || batch.position !== undefined) this.#batches.push(state)
        for (const record of batch.records) {
          const entry: Entry = { record, batch: state, attempts: 1 }
          const held = this.#held.get(record.key)
          if (held) {
            held.entries.push(entry)
            this.#heldCount++
          } else {
            fresh.push(entry)
          }
        }
      } else if (due.length === 0) {
        await sleep(this.#nextWaitMs(), signal)
      }
      const sending = [...due, ...fresh]
      let failure: unknown
      if (sending.length > 0) {
        failure = await this.#publish(sending)
        if (failure === undefined) {
          transportErrors = 0
        } else {
          // The broker is unreachable or the call's outcome unknown: everything waits out the backoff.
          const retryInMs = backoffDelay(++transportErrors, this.#backoff)
          const retryAt = Date.now() + retryInMs
          for (const held of this.#held.values()) held.retryAt = Math.max(held.retryAt, retryAt)
          this.#events.emit('error', { error: failure, retryInMs })
        }
      }
      this.#confirm()
      if (failure === undefined) {
        const ended = this.#health.succeeded()
        if (ended > 0) this.#failures.recovered('log relay recovered', ended)
      }
    }
    // Stopping: confirm what is settled, so the next relay starts after it.
    await this.#recordDead().catch(() => {})
    this.#confirm()
    await this.#confirmed().catch(() => {})
  }

  /**
   * Publishes entries (due retries first, then fresh records, so a key's records go in order) and
   * settles them by outcome. Returns the error when the whole call failed: every entry then waits
   * again, without an attempt counted.
   */
  async #publish(entries: readonly Entry[]): Promise<unknown> {
    const records = entries.map((e) => e.record)
    const started = Date.now()
    let outcomes: readonly PublishOutcome[]
    try {
      const send = () => this.#transport.publish(records)
      outcomes = this.#instrumentation
        ? await this.#instrumentation.tracePublish(records, send)
        : await send()
      if (outcomes.length !== records.length) {
        throw new OutboxKitError(
          ErrorCode.TransportFailed,
          `Transport ${this.#transport.name} returned ${outcomes.length} outcomes for ${records.length} records.`,
          { retriable: true },
        )
      }
    } catch (error) {
      if (isOutboxKitError(error) && error.code === ErrorCode.Fenced) throw error
      this.#holdAll(entries)
      return error ?? new Error('publish failed')
    }
    const durationMs = Date.now() - started
    const now = Date.now()
    let published = 0
    const dead: { entry: Entry; error: string }[] = []
    // Keys that did not go out: their first failure counts (retried, or dead), the key's later
    // entries of this call wait behind it without an attempt.
    const stopped = new Map<string, { head: Entry | undefined; retryAt: number; behind: Entry[] }>()
    entries.forEach((entry, i) => {
      const outcome = outcomes[i]!
      const key = entry.record.key
      const failedKey = stopped.get(key)
      if (failedKey) {
        failedKey.behind.push(entry)
      } else if (outcome.status === 'published') {
        this.#settle(entry)
        published++
      } else if (!outcome.retriable || entry.attempts >= this.#maxAttempts) {
        dead.push({ entry, error: outcome.error })
        stopped.set(key, { head: undefined, retryAt: now, behind: [] })
      } else {
        const retryInMs = backoffDelay(entry.attempts, this.#backoff)
        entry.attempts++
        stopped.set(key, { head: entry, retryAt: now + retryInMs, behind: [] })
        this.#events.emit('failed', { ids: [entry.record.id], error: outcome.error, retryInMs })
      }
    })
    if (published > 0) this.#events.emit('published', { count: published, durationMs })
    // A retried head keeps its key waiting; behind a dead one the key goes on at once.
    for (const [key, { head, retryAt, behind }] of stopped) {
      const waiting = head ? [head, ...behind] : behind
      if (waiting.length > 0) this.#hold(key, waiting, retryAt)
    }
    if (dead.length > 0) await this.#giveUp(dead)
    return undefined
  }

  /** Dead-letters (when configured) and marks dead through the feed, then settles. */
  async #giveUp(dead: readonly { entry: Entry; error: string }[]): Promise<void> {
    if (this.#deadLetter) {
      const undelivered = await publishDeadLetters(
        this.#deadLetter.transport,
        this.#deadLetter.topic,
        dead.map((d) => d.entry.record),
        dead.map((d) => ({ id: d.entry.record.id, error: d.error })),
      )
      for (const failure of undelivered) {
        this.#events.emit('deadLetterFailed', failure)
        this.#events.emit('error', {
          error: new OutboxKitError(
            ErrorCode.TransportFailed,
            `Could not publish ${failure.ids.length} dead record(s) to the dead-letter topic ${this.#deadLetter.topic}: ${failure.error}. They are marked dead through the feed and can be requeued from there.`,
          ),
          retryInMs: 0,
        })
      }
    }
    this.#unrecordedDead.push(...dead)
    await this.#recordDead()
    for (const d of dead) this.#events.emit('deadLettered', { ids: [d.entry.record.id], error: d.error })
  }

  /** Marks the dead records through the feed; they count as settled only once it took them. */
  async #recordDead(): Promise<void> {
    if (this.#unrecordedDead.length === 0) return
    const dead = this.#unrecordedDead
    const records: DeadFeedRecord[] = dead.map((d) => ({
      id: d.entry.record.id,
      error: d.error,
      record: d.entry.record,
    }))
    await this.#feed.markDead(records)
    this.#unrecordedDead = []
    for (const d of dead) this.#settle(d.entry)
  }

  /**
   * Samples the lag every `lagIntervalMs` while the feed is open, on a timer of its own: the
   * moments a feed falls behind are those when the loop is stuck (a broker that hangs, a key that
   * keeps failing), so the samples must not wait for the loop, nor a slow lag query hold the loop.
   * Returns the function that stops it.
   */
  #sampleLagWhileReading(): () => Promise<void> {
    if (this.#lagIntervalMs <= 0 || this.#feed.lag === undefined) return async () => {}
    const stop = new AbortController()
    const running = (async () => {
      while (!stop.signal.aborted) {
        if (this.#lagWanted()) await this.#sampleLag()
        await sleep(this.#lagIntervalMs, stop.signal)
      }
    })()
    return async () => {
      stop.abort()
      await running
    }
  }

  /** Whether something uses lag samples. */
  #lagWanted(): boolean {
    return (
      this.#maxLagBytes !== undefined ||
      this.#events.has('lag') ||
      this.#events.has('lagExceeded') ||
      this.#instrumentation?.recordFeedLag !== undefined
    )
  }

  /**
   * Takes one lag sample. A failed sample is reported (`error` with `retryInMs` 0) and does not
   * stop the relay: the next one is due after `lagIntervalMs`.
   */
  async #sampleLag(): Promise<void> {
    let lag: FeedLag
    try {
      lag = await this.#feed.lag!()
    } catch (error) {
      this.#events.emit('error', { error, retryInMs: 0 })
      return
    }
    this.#lag = lag
    this.#instrumentation?.recordFeedLag?.(lag)
    this.#events.emit('lag', lag)
    const limit = this.#maxLagBytes
    if (limit === undefined) return
    const exceeded = lag.bytes !== undefined && lag.bytes > limit
    const fields = { bytes: lag.bytes, maxLagBytes: limit, ageMs: lag.ageMs }
    if (exceeded) {
      const now = Date.now()
      if (!this.#lagExceeded || now - this.#lagWarnedAt >= DEFAULT_LOG_FAILURE_INTERVAL_MS) {
        this.#lagWarnedAt = now
        this.#log.write(
          'warn',
          'log relay feed is behind by more than maxLagBytes: the database keeps that log until the relay confirms past it',
          fields,
        )
      }
      this.#lagExceeded = true
      this.#events.emit('lagExceeded', { bytes: lag.bytes!, maxLagBytes: limit, ageMs: lag.ageMs })
    } else if (this.#lagExceeded) {
      this.#lagExceeded = false
      this.#log.write('info', 'log relay feed is back within maxLagBytes', fields)
    }
  }

  /**
   * Queues the confirmation of the last batch that carries a position and before which every
   * record is settled (batches without a position, inside a transaction, wait for the one that
   * ends it). Confirmations are written behind the publishing, one at a time; while one is being
   * written, only the latest position waits for it.
   */
  #confirm(): void {
    let through = 0
    for (let i = 0; i < this.#batches.length; i++) {
      const batch = this.#batches[i]!
      if (batch.pending > 0) break
      if (batch.position !== undefined) through = i + 1
    }
    if (through === 0) return
    const confirmed = this.#batches.slice(0, through)
    this.#batches = this.#batches.slice(through)
    this.#confirmNext = {
      position: confirmed[through - 1]!.position!,
      records: confirmed.reduce((n, b) => n + b.size, 0) + (this.#confirmNext?.records ?? 0),
    }
    this.#confirmWriting ??= this.#writeConfirms()
  }

  async #writeConfirms(): Promise<void> {
    try {
      while (this.#confirmNext && this.#confirmError === undefined) {
        const next = this.#confirmNext
        this.#confirmNext = undefined
        try {
          await this.#feed.confirm(next.position)
        } catch (error) {
          // Reported by the loop; the position is confirmed again after the feed is reopened.
          this.#confirmError = error ?? new Error('confirm failed')
          break
        }
        this.#events.emit('confirmed', next)
      }
    } finally {
      this.#confirmWriting = undefined
    }
  }

  /** Waits until every queued confirmation is written; throws the error of one that failed. */
  async #confirmed(): Promise<void> {
    while (this.#confirmWriting) await this.#confirmWriting
    this.#throwConfirmError()
  }

  #throwConfirmError(): void {
    const error = this.#confirmError
    if (error === undefined) return
    this.#confirmError = undefined
    throw error
  }

  #settle(entry: Entry): void {
    entry.batch.pending--
  }

  #hold(key: string, entries: readonly Entry[], retryAt: number): void {
    const held = this.#held.get(key)
    if (held) {
      // Entries that came in while these were out go after them.
      held.entries.unshift(...entries)
      held.retryAt = retryAt
    } else {
      this.#held.set(key, { entries: [...entries], retryAt })
    }
    this.#heldCount += entries.length
  }

  /** Every entry of a failed call waits again, its key's entries in order. */
  #holdAll(entries: readonly Entry[]): void {
    const now = Date.now()
    const byKey = new Map<string, Entry[]>()
    for (const entry of entries) {
      const list = byKey.get(entry.record.key) ?? []
      byKey.set(entry.record.key, list)
      list.push(entry)
    }
    for (const [key, list] of byKey) this.#hold(key, list, now)
  }

  /** Takes the waiting entries of every key whose retry is due, at most one batch of them. */
  #takeDue(now: number): Entry[] {
    const due: Entry[] = []
    for (const [key, held] of this.#held) {
      if (held.retryAt > now) continue
      if (due.length > 0 && due.length + held.entries.length > this.#batchSize) continue
      due.push(...held.entries)
      this.#heldCount -= held.entries.length
      this.#held.delete(key)
    }
    return due
  }

  /** How long a read may wait: until the next retry is due, at most `pollIntervalMs`. */
  #nextWaitMs(): number {
    let wait = this.#pollIntervalMs
    const now = Date.now()
    for (const held of this.#held.values()) wait = Math.min(wait, Math.max(0, held.retryAt - now))
    return wait
  }

  #reset(): void {
    this.#confirmNext = undefined
    this.#confirmError = undefined
    this.#batches = []
    this.#held.clear()
    this.#heldCount = 0
    this.#unrecordedDead = []
  }

  #stopsTheRelay(error: unknown): boolean {
    return isOutboxKitError(error) && (error.code === ErrorCode.FeedLost || error.code === ErrorCode.Fenced)
  }
}
