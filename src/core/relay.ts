import { BackgroundLoop } from './background-loop.js'
import { type BackoffOptions, backoffDelay, DEFAULT_BACKOFF, sleep } from './backoff.js'
import type { FeedLag } from './change-feed.js'
import { publishDeadLetters } from './dead-letters.js'
import { ErrorCode, isOutboxKitError, OutboxKitError } from './errors.js'
import { Emitter } from './events.js'
import { ExactlyOnceCoordinator, type ReconciledEvent } from './exactly-once.js'
import { type ComponentHealth, HealthTracker, loopErrorListener } from './health.js'
import { FailureLog, Log, type LoggerOption } from './logger.js'
import type { ClaimedRecord } from './message.js'
import {
  backoffOptions,
  checkRelayId,
  MAX_CLAIM_LIMIT,
  nonEmptyString,
  nonNegativeInteger,
  positiveInteger,
} from './options.js'
import { ShardOwnership } from './shard-ownership.js'
import type { Claim, DeadRecord, FailedRecord, OutboxStore } from './store.js'
import type { PublishOutcome, Transport } from './transport.js'

/** What a relay reports while it runs. Subscribe with {@link Relay.on}. */
export interface RelayEvents {
  /** A batch was claimed. */
  claimed: { readonly count: number; readonly keys: number }
  /** Records were published and marked. `durationMs` covers the publish. */
  published: { readonly count: number; readonly durationMs: number }
  /** Records failed and will be retried. */
  failed: { readonly ids: readonly string[]; readonly error: string; readonly retryInMs: number }
  /** Records were given up on (dead). */
  deadLettered: { readonly ids: readonly string[]; readonly error: string }
  /**
   * The dead-letter topic did not take these dead records' letters (refused, or the publish threw).
   * The rows are marked dead all the same and stay in the table with `last_error`, so they can be
   * requeued; the letters are not tried again. An `error` event reports it too.
   */
  deadLetterFailed: { readonly ids: readonly string[]; readonly error: string }
  /**
   * Records this relay published but could not mark: its lease (rows) or its shard (shards) had
   * expired and another relay took them over.
   */
  leaseLost: { readonly ids: readonly string[] }
  /**
   * Ownership `'shards'`: the shards this relay owns changed. `draining` are owned shards it is
   * giving up to a relay that joined (it claims nothing new from them).
   */
  shardsChanged: {
    readonly owned: readonly number[]
    readonly draining: readonly number[]
    readonly liveRelays: number
    readonly fairShare: number
  }
  /**
   * `exactlyOnce`: shards were reconciled before their records were claimed (at start, after a
   * failed publish, and when shards were taken over): the rows the broker already held are marked.
   */
  reconciled: ReconciledEvent
  /** The age of the oldest pending record, sampled every `lagIntervalMs`. */
  lag: { readonly pending: number; readonly dead: number; readonly oldestPendingAgeMs: number }
  /**
   * The loop hit an error (store or transport unreachable) and backs off `retryInMs` before trying
   * again; `retryInMs` is -1 when the relay stops because of it (its transport was fenced), and 0
   * when nothing is retried (a dead letter was not accepted, see `deadLetterFailed`).
   */
  error: { readonly error: unknown; readonly retryInMs: number }
}

export type RelayListener<E extends keyof RelayEvents> = (event: RelayEvents[E]) => void

/** How a relay divides the work, as {@link Relay.health} reports it. */
export type RelayOwnershipHealth =
  | { readonly mode: 'rows' }
  | {
      readonly mode: 'shards'
      readonly relayId: string
      /** Shards this relay owns now (0 while it is stopped). */
      readonly ownedShards: number
      /** Owned shards it is giving up to a relay that joined. */
      readonly drainingShards: number
    }

/**
 * What {@link Relay.health} returns. A successful cycle is a claim, publish and mark that went
 * through (the transport may still have failed single records), or a claim that found nothing to do.
 */
export interface RelayHealth extends ComponentHealth {
  readonly ownership: RelayOwnershipHealth
}

/**
 * Telemetry around a relay's work. `outboxkit/otel` provides one backed by OpenTelemetry; the
 * relay calls none of it when absent.
 */
export interface RelayInstrumentation {
  /** Runs `publish` (one batch) inside the instrumentation's span, and reports its outcome. */
  tracePublish<T>(records: readonly ClaimedRecord[], publish: () => Promise<T>): Promise<T>
  /** Receives each lag sample. */
  recordLag?(sample: RelayEvents['lag']): void
  /** Receives each lag sample of a `LogRelay`'s change feed (see `LogRelayOptions.lagIntervalMs`). */
  recordFeedLag?(sample: FeedLag): void
}

export interface RelayOptions<Tx> {
  store: OutboxStore<Tx>
  transport: Transport
  /** Most records per claim and publish. Default 500. */
  batchSize?: number
  /** How often to look for new records when idle, in ms. Default 250. With notifications it is the safety net. */
  pollIntervalMs?: number
  /**
   * How long a claim holds its records (ownership `'rows'`), or a relay its shards (`'shards'`), by
   * the database clock: a relay that stops renewing for this long (crashed, paused, cut off) has its
   * work taken over. Default 30 000 ms; renewed every `leaseMs / 3` (shards: at least every second).
   */
  leaseMs?: number
  /**
   * How relays sharing one table divide the work.
   * - `'rows'` (default): each claim leases the rows it takes and holds the head of each key it
   *   takes, so any number of relays can claim from one table at once.
   * - `'shards'`: the table's keys are hashed into shards and each live relay owns a fair share of
   *   them (fenced by an epoch); it reads only its own shards, writes nothing when it claims, and
   *   claims its next batch while the previous one is published and marked. Faster, and relays
   *   never contend for rows. Needs a store with `capabilities.shards`; every relay of a table must
   *   use the same mode.
   */
  ownership?: RelayOwnership
  /**
   * Ownership `'shards'`: this relay's name in the store's registry of relays, 1 to 64 characters,
   * unique among the relays running at once. Default `relay-<random uuid>`.
   */
  relayId?: string
  /**
   * Exactly-once into the broker: every record appears once in the topic for `read_committed`
   * readers, even when a relay dies between the broker's commit and the database mark. Needs
   * ownership `'shards'`, a store with `reconcilePublished` and a transport with `exactlyOnce`
   * (the Kafka transport with its `exactlyOnce` option). See docs/guarantees.md. Default false.
   */
  exactlyOnce?: boolean
  /** Attempts before a record that keeps failing is dead-lettered. Default 10. */
  maxAttempts?: number
  /** Backoff between attempts of a failing record, and of the loop after an error. */
  backoff?: BackoffOptions
  /** How often to sample lag (the `lag` event), in ms. Default 5 000. 0 turns it off. */
  lagIntervalMs?: number
  /** Stops the relay when aborted, as `stop()` does. */
  signal?: AbortSignal
  /**
   * Also publish dead records to a dead-letter topic, with the reason in the
   * `outboxkit-dead-reason` header and the original topic in `outboxkit-original-topic`.
   * Without it, dead records stay in the table only (status dead, with `last_error`).
   */
  deadLetter?: DeadLetterOptions
  /** Spans and metrics around publishing, e.g. `otelRelayInstrumentation()` from `outboxkit/otel`. */
  instrumentation?: RelayInstrumentation
  /**
   * Where the relay writes what it does: start and stop, shard changes (info), batches (debug),
   * every failed cycle (warn, or error when it stops the relay) with the error's code. `console`
   * fits; for pino use `fieldsFirstLogger(pino())`. `false` writes nothing. Default: failures only,
   * to `console.warn` / `console.error`, the first of a run and then at most one a minute, so a
   * loop that keeps failing is seen even without an `error` listener.
   */
  logger?: LoggerOption
}

/** See {@link RelayOptions.ownership}. */
export type RelayOwnership = 'rows' | 'shards'

export interface DeadLetterOptions {
  /** The dead-letter topic. */
  topic: string
  /** Where to publish; defaults to the relay's transport. */
  transport?: Transport
}

export { DEAD_REASON_HEADER, DEAD_REASON_MAX_LENGTH, ORIGINAL_TOPIC_HEADER } from './dead-letters.js'

/**
 * Moves records from the outbox table to the transport: claim → publish → mark.
 *
 * A record is marked published only after the transport reported it acknowledged, so a relay
 * that dies between the two leaves it to be published again (a duplicate with the same message
 * id), never lost. Any number of relays can share one table; the store's claim rules keep each
 * key's records in order.
 *
 * @example
 * ```ts
 * const relay = new Relay({ store, transport })
 * await relay.start()
 * // ...
 * await relay.stop()
 * ```
 */
export class Relay<Tx> {
  readonly #store: OutboxStore<Tx>
  readonly #transport: Transport
  readonly #batchSize: number
  readonly #pollIntervalMs: number
  readonly #leaseMs: number
  readonly #maxAttempts: number
  readonly #backoff: BackoffOptions
  readonly #lagIntervalMs: number
  readonly #deadLetter: Required<DeadLetterOptions> | undefined
  readonly #instrumentation: RelayInstrumentation | undefined
  readonly #events = new Emitter<RelayEvents>()
  readonly #fatalListeners = new Set<(error: unknown) => void>()
  readonly #ownership: RelayOwnership
  readonly #relayId: string
  readonly #exactlyOnce: boolean
  /** Ownership `'shards'`: the relay's shards, while the loop runs. */
  #shards: ShardOwnership<Tx> | undefined
  readonly #log: Log
  readonly #failures: FailureLog
  readonly #health = new HealthTracker()

  readonly #background: BackgroundLoop
  #lastLagSample = 0

  constructor(options: RelayOptions<Tx>) {
    if (!options?.store || typeof options.store.claim !== 'function') {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        'new Relay({ store, transport }) needs an OutboxStore as `store`.',
      )
    }
    if (!options.transport || typeof options.transport.publish !== 'function') {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        'new Relay({ store, transport }) needs a Transport as `transport`.',
      )
    }
    this.#store = options.store
    this.#transport = options.transport
    this.#batchSize = positiveInteger('batchSize', options.batchSize ?? 500, MAX_CLAIM_LIMIT)
    this.#pollIntervalMs = positiveInteger('pollIntervalMs', options.pollIntervalMs ?? 250)
    this.#leaseMs = positiveInteger('leaseMs', options.leaseMs ?? 30_000)
    this.#maxAttempts = positiveInteger('maxAttempts', options.maxAttempts ?? 10)
    this.#backoff = backoffOptions('backoff', options.backoff, DEFAULT_BACKOFF)
    this.#lagIntervalMs = nonNegativeInteger('lagIntervalMs', options.lagIntervalMs ?? 5_000)
    this.#instrumentation = options.instrumentation
    this.#deadLetter = options.deadLetter && {
      topic: nonEmptyString('deadLetter.topic', options.deadLetter.topic),
      transport: options.deadLetter.transport ?? options.transport,
    }
    this.#ownership = options.ownership ?? 'rows'
    if (this.#ownership !== 'rows' && this.#ownership !== 'shards') {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        `ownership must be 'rows' or 'shards', got ${JSON.stringify(options.ownership)}.`,
        { details: { option: 'ownership', value: options.ownership } },
      )
    }
    const store = options.store
    if (
      this.#ownership === 'shards' &&
      (!store.capabilities.shards || !store.syncShards || !store.claimOwned || !store.leaveShards)
    ) {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        `ownership: 'shards' needs a store with shard ownership; the ${store.name} store does not have it. Use ownership: 'rows' (the default).`,
        { details: { option: 'ownership', value: 'shards' } },
      )
    }
    this.#relayId = checkRelayId(options.relayId ?? `relay-${crypto.randomUUID()}`)
    this.#exactlyOnce = options.exactlyOnce === true
    if (options.exactlyOnce !== undefined && typeof options.exactlyOnce !== 'boolean') {
      throw new OutboxKitError(ErrorCode.InvalidOptions, 'exactlyOnce must be true or false.', {
        details: { option: 'exactlyOnce', value: options.exactlyOnce },
      })
    }
    if (this.#exactlyOnce) {
      const needs = (what: string) =>
        new OutboxKitError(ErrorCode.InvalidOptions, `exactlyOnce needs ${what}.`, {
          details: { option: 'exactlyOnce', value: true },
        })
      if (this.#ownership !== 'shards') throw needs("ownership: 'shards' (each relay owns its shards)")
      if (!options.transport.exactlyOnce) {
        throw needs(
          `a transport that can publish exactly once; the ${options.transport.name} transport cannot. Use createKafkaTransport({ ..., exactlyOnce: { progressTopic } }) from outboxkit/kafka`,
        )
      }
      if (!store.reconcilePublished)
        throw needs(`a store with reconcilePublished; the ${store.name} store has none`)
    }
    this.#log = new Log(options.logger, { relayId: this.#relayId })
    this.#failures = new FailureLog(this.#log)
    this.#observeOwnEvents()
    this.#background = new BackgroundLoop(
      {
        running: 'This relay is already running; call stop() first.',
        aborted:
          'This relay was not started: its signal was already aborted. Create the relay with a signal that is not aborted yet.',
        stopped: 'This relay was stopped.',
      },
      options.signal,
    )
  }

  /** Health and log lines follow the relay's own events, so every report reaches them the same way. */
  #observeOwnEvents(): void {
    const log = this.#log
    this.#events.on('error', loopErrorListener(this.#health, this.#failures, 'relay'))
    this.#events.on('claimed', (e) => log.write('debug', 'relay claimed a batch', e))
    this.#events.on('published', (e) => log.write('debug', 'relay published a batch', e))
    this.#events.on('failed', (e) =>
      log.write('warn', 'relay record failed, will retry', {
        ids: e.ids,
        error: e.error,
        retryInMs: e.retryInMs,
      }),
    )
    this.#events.on('deadLettered', (e) =>
      log.write('warn', 'relay record dead', { ids: e.ids, error: e.error }),
    )
    this.#events.on('leaseLost', (e) =>
      log.write('warn', 'relay lost the lease of published records (another relay took them over)', {
        ids: e.ids,
      }),
    )
    this.#events.on('shardsChanged', (e) => log.write('info', 'relay shards changed', e))
    this.#events.on('reconciled', (e) => log.write('info', 'relay reconciled shards', { ...e }))
  }

  /** A cycle of the loop went through: health, and the end of a run of failures. */
  #succeeded(): void {
    const ended = this.#health.succeeded()
    if (ended > 0) this.#failures.recovered('relay recovered', ended)
  }

  /**
   * The loop's state for health checks: whether it runs, when its last cycle succeeded, the errors
   * since, the last error (code and message), and the shards it owns. A plain object, safe to
   * serialise.
   */
  health(): RelayHealth {
    const shards = this.#shards
    return {
      ...this.#health.snapshot(),
      ownership:
        this.#ownership === 'rows'
          ? { mode: 'rows' }
          : {
              mode: 'shards',
              relayId: this.#relayId,
              ownedShards: shards?.owned.length ?? 0,
              drainingShards: shards?.draining.length ?? 0,
            },
    }
  }

  /** This relay's id in the store's registry (ownership `'shards'`). */
  get relayId(): string {
    return this.#relayId
  }

  /** Ownership `'shards'`: the shards this relay owns now, ascending (none while it is stopped). */
  get ownedShards(): readonly number[] {
    return this.#shards?.owned ?? []
  }

  /** Subscribes to an event. Returns a function that unsubscribes. */
  on<E extends keyof RelayEvents>(event: E, listener: RelayListener<E>): () => void {
    return this.#events.on(event, listener)
  }

  /**
   * Calls `listener` when the relay stops by itself for good: fenced by another producer
   * (`FENCED`), or exactly-once that cannot be proven (`PROGRESS_UNAVAILABLE`). A `Lifecycle`
   * running it then stops the service (see `LifecycleComponent.onFatal`). Returns a
   * function that unsubscribes.
   */
  onFatal(listener: (error: unknown) => void): () => void {
    this.#fatalListeners.add(listener)
    return () => this.#fatalListeners.delete(listener)
  }

  #stoppedByItself(error: unknown): void {
    this.#events.emit('error', { error, retryInMs: -1 })
    this.#background.abort()
    for (const listener of this.#fatalListeners) {
      try {
        listener(error)
      } catch {
        // Observers must not change what happens to the relay.
      }
    }
  }

  /** Whether the loop is running. */
  get running(): boolean {
    return this.#background.running
  }

  /**
   * Starts the loop in the background and returns at once. Errors inside the loop are reported
   * through the `error` event and the `logger`, counted in {@link health}, and retried with
   * backoff; the loop ends only with `stop()` (or the `signal` option).
   *
   * @throws {@link OutboxKitError} `ALREADY_STARTED` if it is running; `CLOSED` if it was stopped,
   * or if its `signal` was already aborted (the loop does not start).
   */
  async start(): Promise<void> {
    this.#background.start(
      (signal) => {
        this.#health.started()
        this.#log.write('info', 'relay started', {
          ownership: this.#ownership,
          exactlyOnce: this.#exactlyOnce,
          store: this.#store.name,
          transport: this.#transport.name,
        })
        return this.#loop(signal)
      },
      () => {
        this.#health.stopped()
        this.#log.write('info', 'relay stopped')
      },
    )
  }

  /**
   * Stops the loop: a batch being published is finished and marked, nothing new is claimed, and
   * the returned promise resolves when the loop has ended. The store and transport stay open.
   */
  async stop(): Promise<void> {
    await this.#background.stop()
  }

  /**
   * One cycle: claim a batch, publish it, mark the outcome. Returns how many records were
   * claimed (0 when nothing was ready). For tests, scripts and serverless functions that drain
   * the outbox without a long-running loop.
   */
  async runOnce(): Promise<number> {
    // A scheduled function has no loop: it samples the backlog here (every lagIntervalMs at most).
    if (this.#lagDue()) await this.#sampleLag()
    if (this.#ownership === 'shards') return this.#runOnceOwned()
    const claim = await this.#store.claim({ limit: this.#batchSize, leaseMs: this.#leaseMs })
    if (claim.records.length === 0) return 0
    this.#emitClaimed(claim)
    const lease = new LeaseKeeper(this.#store, claim.token, this.#leaseMs)
    try {
      await this.#publishClaim(lease, claim.records)
    } finally {
      await lease.stop()
    }
    return claim.records.length
  }

  /**
   * Ownership `'shards'` without the loop (a script or a serverless function): renews this relay's
   * registration and takes its share, then claims, publishes and marks one batch of its shards.
   * The shards stay owned until their lease runs out, so the next call goes on where this one
   * stopped.
   */
  async #runOnceOwned(): Promise<number> {
    if (this.#exactlyOnce) {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        'runOnce() is not available with exactlyOnce: each run would open a broker session and reconcile its shards. Use start() and stop().',
      )
    }
    if (this.#background.running) {
      throw new OutboxKitError(
        ErrorCode.AlreadyStarted,
        "runOnce() cannot run while this relay's loop runs with ownership 'shards': the loop already claims its shards.",
      )
    }
    await this.#store.syncShards!(this.#relayId, { leaseMs: this.#leaseMs })
    const claim = await this.#store.claimOwned!(this.#relayId, { limit: this.#batchSize })
    if (claim.records.length === 0) return 0
    this.#emitClaimed(claim)
    const settler = directSettler(this.#store, claim.token)
    const published = await this.#publish(settler, claim.records)
    await this.#settleOutcomes(settler, claim.records, published)
    return claim.records.length
  }

  #emitClaimed(claim: Claim): void {
    this.#events.emit('claimed', {
      count: claim.records.length,
      keys: new Set(claim.records.map((r) => r.key)).size,
    })
  }

  async #loop(signal: AbortSignal): Promise<void> {
    if (this.#ownership === 'shards') return this.#ownedLoop(signal)
    let consecutiveErrors = 0
    while (!signal.aborted) {
      try {
        await this.#sampleLag()
        const claimed = await this.runOnce()
        consecutiveErrors = 0
        this.#succeeded()
        if (claimed === 0) await this.#idle(signal)
      } catch (error) {
        if (this.#stopIfFenced(error)) break
        await this.#backOff(error, ++consecutiveErrors, signal)
      }
    }
  }

  /** Another relay took over this relay's transactional id: report it and keep out of its way. */
  #stopIfFenced(error: unknown): boolean {
    if (!isOutboxKitError(error, ErrorCode.Fenced)) return false
    this.#stoppedByItself(error)
    return true
  }

  /** Exactly-once cannot be proven (the progress topic is gone or foreign): report it and stop. */
  #stopIfUnprovable(error: unknown): boolean {
    if (!isOutboxKitError(error, ErrorCode.ProgressUnavailable) || error.retriable) return false
    this.#stoppedByItself(error)
    return true
  }

  /** Reports a loop error and waits before the loop tries again. */
  async #backOff(error: unknown, consecutiveErrors: number, signal: AbortSignal): Promise<void> {
    const retryInMs = backoffDelay(consecutiveErrors, this.#backoff)
    this.#events.emit('error', { error, retryInMs })
    await sleep(retryInMs, signal)
  }

  /**
   * Ownership `'shards'`: a pipeline over the relay's own shards. While one batch is published,
   * the next is claimed behind it (the records in flight left out, their keys going on after
   * them), and a batch's marks overlap the next batch's publish. Publishes run one at a time, in
   * claim order, so a key's records reach the transport in order; a batch holds back the records
   * of any key an earlier batch did not publish (see {@link KeyHolds}). Stopping finishes the
   * batches in flight, then gives the shards up.
   */
  async #ownedLoop(signal: AbortSignal): Promise<void> {
    const eos = this.#exactlyOnce
      ? new ExactlyOnceCoordinator(this.#store, this.#transport.exactlyOnce!, this.#relayId)
      : undefined
    const shards = new ShardOwnership({
      store: this.#store,
      relayId: this.#relayId,
      leaseMs: this.#leaseMs,
      onError: (error, retryInMs) => this.#events.emit('error', { error, retryInMs }),
      onChange: (change) => this.#events.emit('shardsChanged', change),
      ...(eos ? { onLeases: (leases) => eos.leases(leases), mayRelease: () => eos.decided } : {}),
    })
    this.#shards = shards
    const inFlight = new Map<Promise<void>, number>()
    const idsInFlight = new Set<string>()
    const holds = new KeyHolds()
    let claimsStarted = 0
    let publishing: Promise<unknown> = Promise.resolve()
    let batchError: { error: unknown } | undefined
    let started = false
    let consecutiveErrors = 0
    try {
      while (!signal.aborted) {
        try {
          if (!started) {
            await shards.start()
            started = true
          }
          if (batchError) {
            const { error } = batchError
            batchError = undefined
            throw error
          }
          await this.#sampleLag()
          // One batch publishing and one claimed behind it is enough to keep the transport busy.
          if (inFlight.size >= 2) {
            await Promise.race(inFlight.keys())
            continue
          }
          if (eos) {
            // A failed session's batches end before the next session opens.
            if (!eos.session && inFlight.size > 0) {
              await Promise.allSettled(inFlight.keys())
              continue
            }
            const reconciled = await eos.prepare(shards.leases)
            if (reconciled) this.#events.emit('reconciled', reconciled)
          }
          const claimNumber = ++claimsStarted
          // Only the batches in flight and this claim can still be held back.
          holds.prune(Math.min(claimNumber, ...inFlight.values()))
          const claim = await this.#store.claimOwned!(this.#relayId, {
            limit: this.#batchSize,
            inFlight: [...idsInFlight],
            excludeShards: shards.draining,
          })
          consecutiveErrors = 0
          // Exactly-once: the session the records go out on is the one current when they were
          // claimed, and only records of shards it reconciled at the claim's epochs.
          const session = eos?.session
          const records = eos ? eos.publishable(claim) : claim.records
          if (records.length === 0) {
            if (claim.records.length > 0) {
              // Shards changed hands since the last sync: learn it, then reconcile them.
              await shards.sync()
              continue
            }
            // Records in flight may be followed by more once they are settled.
            if (inFlight.size > 0) await Promise.race(inFlight.keys())
            else {
              // Nothing in flight and nothing to claim: the store answers, the work is done.
              if (!batchError) this.#succeeded()
              await this.#idle(signal)
            }
            continue
          }
          this.#emitClaimed({ ...claim, records })
          for (const record of records) idsInFlight.add(record.id)
          shards.claimed(records)
          const settler = directSettler(this.#store, claim.token)
          // The keys of this batch that did not go out: later batches hold them back.
          let heldKeys: ReadonlySet<string> = new Set()
          const published = publishing.then(async () => {
            const sendable: ClaimedRecord[] = []
            const held = new Set<string>()
            for (const record of records) {
              if (holds.holds(record.key, claimNumber)) held.add(record.key)
              else sendable.push(record)
            }
            try {
              const send = session ? (batch: readonly ClaimedRecord[]) => session.publish(batch) : undefined
              const result =
                sendable.length === 0
                  ? { outcomes: [], durationMs: 0 }
                  : await this.#publish(settler, sendable, send)
              result.outcomes.forEach((outcome, i) => {
                if (outcome.status !== 'published') held.add(sendable[i]!.key)
              })
              return { sendable, result }
            } catch (error) {
              for (const record of sendable) held.add(record.key)
              throw error
            } finally {
              heldKeys = held
              holds.hold(held)
            }
          })
          publishing = published.catch(() => {})
          const batch = published
            .then(({ sendable, result }) =>
              this.#settleOutcomes(
                settler,
                sendable,
                result,
                session && ((ids) => session.settled(ids)),
              ).catch((error: unknown) => {
                // Exactly-once: the broker holds what the session committed; a claim must not
                // publish those rows again before their shards are reconciled.
                eos?.marksFailed(sendable)
                throw error
              }),
            )
            .then(() => this.#succeeded())
            .catch((error: unknown) => {
              batchError ??= { error }
            })
            .finally(() => {
              for (const record of records) idsInFlight.delete(record.id)
              // Claims started from now on read the store after this batch's marks.
              holds.release(heldKeys, claimsStarted)
              shards.settled(records)
              inFlight.delete(batch)
            })
          inFlight.set(batch, claimNumber)
        } catch (error) {
          // Exactly-once: a fenced session is a takeover (the relay opens a new one), but progress
          // that cannot be kept or read stops the relay.
          if (eos ? this.#stopIfUnprovable(error) : this.#stopIfFenced(error)) break
          // Let the batches in flight end before claiming again.
          await Promise.allSettled(inFlight.keys())
          await this.#backOff(error, ++consecutiveErrors, signal)
        }
      }
    } finally {
      await Promise.allSettled(inFlight.keys())
      // A batch that failed while stopping is not retried by this relay.
      if (batchError) this.#events.emit('error', { error: batchError.error, retryInMs: -1 })
      this.#shards = undefined
      // A failed session's last transaction may be undecided: fence it, so the shards can be given up.
      if (eos) await eos.settleUndecided()
      await shards.stop().catch((error: unknown) => this.#events.emit('error', { error, retryInMs: -1 }))
      await eos?.close().catch((error: unknown) => this.#events.emit('error', { error, retryInMs: -1 }))
    }
  }

  async #idle(signal: AbortSignal): Promise<void> {
    if (this.#store.capabilities.notify && this.#store.waitForChange) {
      const wake = new AbortController()
      const onStop = () => wake.abort()
      signal.addEventListener('abort', onStop, { once: true })
      try {
        await Promise.race([this.#store.waitForChange(wake.signal), sleep(this.#pollIntervalMs, wake.signal)])
      } finally {
        wake.abort()
        signal.removeEventListener('abort', onStop)
      }
    } else {
      await sleep(this.#pollIntervalMs, signal)
    }
  }

  /** Whether a lag sample is wanted (someone listens) and due. */
  #lagDue(): boolean {
    if (this.#lagIntervalMs <= 0 || Date.now() - this.#lastLagSample < this.#lagIntervalMs) return false
    return this.#events.has('lag') || this.#instrumentation?.recordLag !== undefined
  }

  async #sampleLag(): Promise<void> {
    if (!this.#lagDue()) return
    this.#lastLagSample = Date.now()
    const stats = await this.#store.stats()
    const sample = { pending: stats.pending, dead: stats.dead, oldestPendingAgeMs: stats.oldestPendingAgeMs }
    this.#instrumentation?.recordLag?.(sample)
    this.#events.emit('lag', sample)
  }

  async #publishClaim(lease: ClaimSettler<Tx>, records: readonly ClaimedRecord[]): Promise<void> {
    await this.#settleOutcomes(lease, records, await this.#publish(lease, records))
  }

  /**
   * Publishes one claim's records. When the call throws or answers wrongly, the claim is given
   * back (nothing marked, no attempt counted) and the error is thrown for the loop to back off.
   */
  async #publish(
    lease: ClaimSettler<Tx>,
    records: readonly ClaimedRecord[],
    send: (records: readonly ClaimedRecord[]) => Promise<readonly PublishOutcome[]> = (batch) =>
      this.#transport.publish(batch),
  ): Promise<PublishedBatch> {
    const started = Date.now()
    let outcomes: readonly PublishOutcome[]
    try {
      outcomes = this.#instrumentation
        ? await this.#instrumentation.tracePublish(records, () => send(records))
        : await send(records)
    } catch (error) {
      // The outcome of the whole call is unknown or the broker is unreachable: nothing is marked,
      // no attempt is counted, and the loop backs off.
      await lease.settle((store, token) => store.release(token)).catch(() => {})
      throw error
    }
    if (outcomes.length !== records.length) {
      await lease.settle((store, token) => store.release(token)).catch(() => {})
      throw new OutboxKitError(
        ErrorCode.TransportFailed,
        `Transport ${this.#transport.name} returned ${outcomes.length} outcomes for ${records.length} records.`,
      )
    }
    return { outcomes, durationMs: Date.now() - started }
  }

  /**
   * Marks each record by its outcome, keeping every key's order (see the follower rule below).
   * `onMarked` hears the ids this claim marked published (not those it no longer held).
   */
  async #settleOutcomes(
    lease: ClaimSettler<Tx>,
    records: readonly ClaimedRecord[],
    { outcomes, durationMs }: PublishedBatch,
    onMarked?: (ids: readonly string[]) => void,
  ): Promise<void> {
    const published: string[] = []
    const failed: FailedRecord[] = []
    const dead: DeadRecord[] = []
    const released: string[] = []
    // Only the first failure of a key counts: the key's later records are released without an
    // attempt, so one poison record cannot use up its followers' attempts.
    const failedKeys = new Set<string>()
    records.forEach((record, i) => {
      const outcome = outcomes[i]!
      if (outcome.status === 'published') {
        published.push(record.id)
      } else if (failedKeys.has(record.key)) {
        released.push(record.id)
      } else {
        failedKeys.add(record.key)
        if (!outcome.retriable || record.attempts >= this.#maxAttempts) {
          dead.push({ id: record.id, error: outcome.error })
        } else {
          failed.push({
            id: record.id,
            error: outcome.error,
            retryInMs: backoffDelay(record.attempts, this.#backoff),
          })
        }
      }
    })

    const lost: string[] = []
    if (published.length > 0) {
      const result = await lease.settle((store, token) => store.markPublished(token, published))
      lost.push(...result.lost)
      if (onMarked) {
        const notHeld = new Set(result.lost)
        onMarked(published.filter((id) => !notHeld.has(id)))
      }
      this.#events.emit('published', { count: result.settled, durationMs })
    }
    if (released.length > 0) await lease.settle((store, token) => store.release(token, released))
    if (failed.length > 0) {
      const result = await lease.settle((store, token) => store.markFailed(token, failed))
      lost.push(...result.lost)
      for (const f of failed)
        this.#events.emit('failed', { ids: [f.id], error: f.error, retryInMs: f.retryInMs })
    }
    if (dead.length > 0) {
      // Letters first, then the mark: whatever the dead-letter topic does, each dead row is settled
      // once, so a refused letter cannot keep its row (and its key) pending, nor re-send the others.
      const undelivered = this.#deadLetter ? await this.#publishDeadLetters(records, dead) : []
      const result = await lease.settle((store, token) => store.markDead(token, dead))
      lost.push(...result.lost)
      for (const d of dead) this.#events.emit('deadLettered', { ids: [d.id], error: d.error })
      for (const failure of undelivered) {
        this.#events.emit('deadLetterFailed', failure)
        this.#events.emit('error', {
          error: new OutboxKitError(
            ErrorCode.TransportFailed,
            `Could not publish ${failure.ids.length} dead record(s) to the dead-letter topic ${this.#deadLetter!.topic}: ${failure.error}. The rows are marked dead in the outbox table (with last_error) and can be requeued from there.`,
            { retriable: false },
          ),
          retryInMs: 0,
        })
      }
    }
    if (lost.length > 0) this.#events.emit('leaseLost', { ids: lost })
  }

  /**
   * Publishes dead records to the dead-letter topic, once. Returns the letters it did not take,
   * grouped by error; never throws, so the caller marks the rows dead whatever happened.
   */
  async #publishDeadLetters(
    records: readonly ClaimedRecord[],
    dead: readonly DeadRecord[],
  ): Promise<RelayEvents['deadLetterFailed'][]> {
    const { topic, transport } = this.#deadLetter!
    return publishDeadLetters(transport, topic, records, dead)
  }
}

/** What one publish call answered, and how long it took. */
interface PublishedBatch {
  readonly outcomes: readonly PublishOutcome[]
  readonly durationMs: number
}

/** Runs the settle calls of one claim with its token. */
interface ClaimSettler<Tx> {
  settle<T>(op: (store: OutboxStore<Tx>, token: string) => Promise<T>): Promise<T>
}

/** Ownership `'shards'`: the shard leases are renewed by the relay's heartbeat, not per claim. */
function directSettler<Tx>(store: OutboxStore<Tx>, token: string): ClaimSettler<Tx> {
  return { settle: (op) => op(store, token) }
}

/**
 * Keeps a claim's lease alive from the claim to the last settle, renewing every `leaseMs / 3`, so a
 * slow publish, dead-letter publish or mark does not hand the rows to another relay. Renewals and
 * settles of one claim run one at a time: two concurrent updates of the same rows could deadlock.
 */
class LeaseKeeper<Tx> implements ClaimSettler<Tx> {
  readonly #store: OutboxStore<Tx>
  readonly #token: string
  readonly #timer: ReturnType<typeof setInterval>
  #busy: Promise<unknown> = Promise.resolve()
  #renewing = false

  constructor(store: OutboxStore<Tx>, token: string, leaseMs: number) {
    this.#store = store
    this.#token = token
    this.#timer = setInterval(() => this.#renew(leaseMs), Math.max(1, Math.floor(leaseMs / 3)))
  }

  /** Runs a store call on this claim, after any renewal in flight. */
  settle<T>(op: (store: OutboxStore<Tx>, token: string) => Promise<T>): Promise<T> {
    const result = this.#busy.then(() => op(this.#store, this.#token))
    this.#busy = result.catch(() => {})
    return result
  }

  /** Ends the renewals; resolves when none is left in flight. */
  async stop(): Promise<void> {
    clearInterval(this.#timer)
    await this.#busy
  }

  #renew(leaseMs: number): void {
    // A renewal still waiting for the database is enough; do not queue another behind it.
    if (this.#renewing) return
    this.#renewing = true
    this.settle((store, token) => store.extendLease(token, leaseMs))
      .catch(() => {})
      .finally(() => {
        this.#renewing = false
      })
  }
}

/**
 * Keys the pipelined loop must hold back. A claim may return a key's records behind records of
 * the same key still in flight; they may go out only if every record before them did. When a
 * batch does not publish some record of a key (the transport failed it, or the batch held it
 * back itself), the key is held for every batch claimed before that batch's marks are written:
 * those claims could not see the failure (the failed record was in flight), so their records of
 * the key would overtake it. Claims started after the marks read the store, which keeps the key
 * back by itself (a retry time) or hands out its records in order again.
 */
class KeyHolds {
  readonly #keys = new Map<string, { unsettled: number; throughClaim: number }>()

  /** Whether the batch of claim number `claim` must hold back its records of `key`. */
  holds(key: string, claim: number): boolean {
    const hold = this.#keys.get(key)
    return hold !== undefined && (hold.unsettled > 0 || claim <= hold.throughClaim)
  }

  /** A batch did not publish these keys; its marks are not written yet. */
  hold(keys: ReadonlySet<string>): void {
    for (const key of keys) {
      const hold = this.#keys.get(key)
      if (hold) hold.unsettled++
      else this.#keys.set(key, { unsettled: 1, throughClaim: 0 })
    }
  }

  /** That batch's marks are written; claims up to number `lastClaim` started before they were. */
  release(keys: ReadonlySet<string>, lastClaim: number): void {
    for (const key of keys) {
      const hold = this.#keys.get(key)
      if (!hold) continue
      hold.unsettled--
      hold.throughClaim = Math.max(hold.throughClaim, lastClaim)
    }
  }

  /** Forgets holds that can no longer apply: no batch from claim `oldestClaim` on is affected. */
  prune(oldestClaim: number): void {
    for (const [key, hold] of this.#keys) {
      if (hold.unsettled === 0 && hold.throughClaim < oldestClaim) this.#keys.delete(key)
    }
  }
}
