import type {
  Admin,
  Batch,
  Consumer,
  ConsumerConfig,
  EachBatchPayload,
  IHeaders,
  Kafka,
  KafkaMessage,
} from 'kafkajs'
import { type BackoffOptions, backoffDelay, sleep } from '../core/backoff.js'
import {
  type InboundMessage,
  inboundMessage,
  type MessageProcessor,
  type ProcessOutcome,
  unusableIdReason,
} from '../core/consumer.js'
import {
  type ConsumerLag,
  ConsumerRunnerReport,
  type ObservableConsumerRunner,
} from '../core/consumer-runner.js'
import { ErrorCode, OutboxKitError } from '../core/errors.js'
import type { ComponentHealth } from '../core/health.js'
import type { LoggerOption } from '../core/logger.js'
import { Headers } from '../core/message.js'
import { positiveInteger } from '../core/options.js'

/** A Kafka record as the id extractor sees it. */
export interface KafkaRecord {
  readonly topic: string
  readonly partition: number
  readonly offset: string
  readonly key: string | null
  readonly headers: Readonly<Record<string, string>>
  readonly value: Uint8Array
}

export interface KafkaConsumerRunnerOptions {
  /** Your kafkajs client. */
  kafka: Kafka
  /** The consumer group. */
  groupId: string
  /** Topics to consume. */
  topics: string[]
  /** The consumer that applies each message exactly once in effect. */
  consumer: MessageProcessor
  /**
   * The message id of a record. Default: the `outboxkit-id` header. For records from other
   * producers, e.g. Debezium's outbox router: `(r) => r.headers['id']`. Return undefined when the
   * record has none: it then goes to the dead letter with `MISSING_MESSAGE_ID`, never processed
   * without dedupe. An id no inbox can store (over 255 characters, a NUL, an unpaired surrogate)
   * goes to the dead letter with `INVALID_MESSAGE_ID`. Either way its offset is committed and the
   * partition goes on.
   */
  messageId?: (record: KafkaRecord) => string | undefined
  /** Read each topic from the beginning when the group has no committed offset. Default false. */
  fromBeginning?: boolean
  /** Partitions processed at the same time (messages within a partition go in order). Default 4. */
  partitionsConcurrently?: number
  /**
   * `'message'` (default): one database transaction per message. `'batch'`: the records of a
   * partition's fetch go to `consumer.processBatch` in chunks of up to `batchSize`, one
   * transaction per chunk, offsets resolved as each chunk (or, after a failure, each part of it)
   * commits. Batch mode needs a consumer with `processBatch` (an `IdempotentConsumer` has it).
   */
  mode?: 'message' | 'batch'
  /** Batch mode: most records per transaction. Default {@link DEFAULT_CONSUMER_BATCH_SIZE}. */
  batchSize?: number
  /**
   * Extra kafkajs consumer settings. Isolation is always read_committed, and
   * `retry.restartOnFailure` is the runner's: it restarts the consumer itself (see `restart`).
   */
  consumerConfig?: Omit<ConsumerConfig, 'groupId' | 'readUncommitted'>
  /**
   * What the runner does when kafkajs gives up on its consumer (the broker unreachable past
   * kafkajs' retries, an error that is not retriable such as `STORE_FAILED` for a missing inbox
   * table): it starts a new consumer after a backoff (jittered, growing from `initialMs` to
   * `maxMs`), again until one consumes, or until `maxAttempts` restarts in a row failed; then it
   * stops for good (an `error` event with `fatal: true`; a `Lifecycle` running it then stops the
   * service, see docs/consumer.md). `false`: it stops at the first crash. Default
   * `{ initialMs: 1000, maxMs: 30000, multiplier: 2 }` with no limit on attempts.
   */
  restart?: false | RestartOptions
  /**
   * Where the runner writes what it does: start, stop and partition changes (info), dead letters
   * (warn), every failed batch (warn, or error when the consumer gives up) with the error's code.
   * `console` fits; for pino use `fieldsFirstLogger(pino())` from `outboxkit`. `false` writes
   * nothing. Default: failures only, to `console.warn` / `console.error`, the first of a run and
   * then at most one a minute. kafkajs keeps its own logger (the `Kafka` client's `logCreator`).
   */
  logger?: LoggerOption
}

/** How a runner restarts its consumer after a crash (see {@link KafkaConsumerRunnerOptions.restart}). */
export interface RestartOptions extends BackoffOptions {
  /** Restarts in a row (nothing consumed in between) before the runner stops for good. Default: no limit. */
  maxAttempts?: number
}

const DEFAULT_RESTART: Required<RestartOptions> = {
  initialMs: 1_000,
  maxMs: 30_000,
  multiplier: 2,
  maxAttempts: Number.POSITIVE_INFINITY,
}

/** How far the group is behind in one partition assigned to the runner. */
export interface PartitionLag extends ConsumerLag {
  readonly partition: number
  /** The offset of the next record the group processes in the partition. */
  readonly offset: string
  /** The partition's end: the offset its next record gets (for read_committed, the last stable offset). */
  readonly highWatermark: string
  /** `highWatermark − offset`, never below 0. */
  readonly lag: number
}

/** Partitions of one topic. */
export interface TopicPartitions {
  readonly topic: string
  /** Ascending. */
  readonly partitions: readonly number[]
}

/** A record whose outcome is durable in the database (its offset is resolved next, then committed). */
export interface RunnerRecordEvent {
  readonly message: InboundMessage
  readonly topic: string
  readonly partition: number
  readonly offset: string
}

/** What a runner reports while it runs. Subscribe with {@link KafkaConsumerRunner.on}. */
export interface KafkaConsumerRunnerEvents {
  /** The handler ran and its transaction committed. */
  processed: RunnerRecordEvent
  /** The consumer had already processed this message id: the handler did not run. */
  duplicate: RunnerRecordEvent
  /**
   * The record went to the dead letter (its handler kept failing or refused it with
   * `INVALID_MESSAGE`, or it has no usable id). The
   * consumer's own `deadLettered` event carries the reason.
   */
  dead: RunnerRecordEvent
  /**
   * Processing a batch failed (`topic` and `partition` say which: the error is the consumer's,
   * e.g. a store failure or a dead-letter topic that refused the letter), the kafkajs consumer
   * crashed, or a restart after a crash failed. The batch's unresolved records are delivered
   * again. After a crash the runner restarts its consumer (`restartInMs` says when); `fatal` is
   * true when it does not (`restart: false`, or `maxAttempts` restarts in a row failed): it
   * consumes nothing more until it is stopped and started again. A batch error that crashes the
   * consumer is reported twice: as the batch's, then as the crash's.
   */
  error: {
    readonly error: unknown
    readonly topic?: string
    readonly partition?: number
    readonly fatal: boolean
    /** After a crash: the restart is due in this many ms. */
    readonly restartInMs?: number
  }
  /**
   * The group gave this runner its partitions: at start, and at every rebalance. `assigned` and
   * `revoked` are the changes since the previous assignment, `partitions` the whole new one. Stopping
   * (or a crash) revokes everything.
   */
  rebalance: {
    readonly assigned: readonly TopicPartitions[]
    readonly revoked: readonly TopicPartitions[]
    readonly partitions: readonly TopicPartitions[]
  }
}

/**
 * What {@link KafkaConsumerRunner.health} returns. A successful cycle is a batch processed (every
 * record's outcome durable), or a poll of the broker while no batch is failing.
 */
export interface KafkaConsumerRunnerHealth extends ComponentHealth {
  readonly groupId: string
  /** The partitions the group assigned to this runner now. */
  readonly partitions: readonly TopicPartitions[]
  /**
   * The lag of each assigned partition, as last seen: updated by every batch (from its high
   * watermark, at no cost) and by every {@link KafkaConsumerRunner.lag} sample. Partitions
   * neither fetched nor sampled yet are left out.
   */
  readonly lag: readonly PartitionLag[]
  /** Times the runner restarted its consumer after a crash since `start()`. */
  readonly restarts: number
  /** While the runner waits to restart its consumer after a crash: when it will. */
  readonly restartAt: Date | undefined
}

/** How often a runner heartbeats while one message is in hand (kafkajs throttles it further). */
const HEARTBEAT_WHILE_BUSY_MS = 1_000
/**
 * Batch mode: most records per transaction. Large enough that the transaction's fixed cost
 * (begin, the inbox statement, commit) is spread thin; small enough that a transaction holds
 * its locks briefly and a chunk redone after a failure is cheap.
 */
export const DEFAULT_CONSUMER_BATCH_SIZE = 500

/**
 * Feeds an `IdempotentConsumer` from Kafka. Offsets are resolved only after a message's
 * transaction committed (or it was dead-lettered), and committed after that, so a crash at any
 * point redelivers at most the messages whose offsets were not committed, and the inbox turns
 * those into duplicates that are skipped.
 *
 * Reads with `read_committed` isolation: records of aborted Kafka transactions are never seen.
 */
export function createKafkaConsumerRunner(options: KafkaConsumerRunnerOptions): KafkaConsumerRunner {
  return new KafkaConsumerRunner(options)
}

/** Where the runner stands in one partition, for its lag. */
interface PartitionPosition {
  readonly topic: string
  readonly partition: number
  /** The offset of the next record to process, once known. */
  next?: bigint
  /** The partition's end, once known. */
  high?: bigint
}

export class KafkaConsumerRunner implements ObservableConsumerRunner {
  readonly #options: KafkaConsumerRunnerOptions
  readonly #messageId: (record: KafkaRecord) => string | undefined
  readonly #restart: Required<RestartOptions> | undefined
  #consumer: Consumer | undefined
  #stopping: AbortController | undefined
  readonly #report: ConsumerRunnerReport<KafkaConsumerRunnerEvents>
  /** Partitions by topic, as the group assigned them last. */
  #assignment = new Map<string, number[]>()
  /** The last batch failed and has not been processed since: polls are no success meanwhile. */
  #failingBatch: unknown
  /** Crashes since the consumer last consumed (a batch, or a poll). */
  #crashes = 0
  #restarts = 0
  #restartAt: Date | undefined
  /** A restart under way (its wait, then the new consumer joining), for `stop()` to wait on. */
  #restarting: Promise<void> | undefined
  readonly #fatalListeners = new Set<(error: unknown) => void>()
  /** By `topic\0partition`, for the partitions assigned now. */
  readonly #positions = new Map<string, PartitionPosition>()
  #admin: Promise<Admin> | undefined
  #sampling: Promise<readonly PartitionLag[]> | undefined

  constructor(options: KafkaConsumerRunnerOptions) {
    if (!options?.kafka || typeof options.kafka.consumer !== 'function') {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        'createKafkaConsumerRunner needs `kafka` (a kafkajs client).',
        {
          source: 'kafka',
        },
      )
    }
    if (!options.groupId || !Array.isArray(options.topics) || options.topics.length === 0) {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        'createKafkaConsumerRunner needs `groupId` and at least one topic.',
        {
          source: 'kafka',
        },
      )
    }
    if (!options.consumer || typeof options.consumer.process !== 'function') {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        'createKafkaConsumerRunner needs an IdempotentConsumer as `consumer`.',
        {
          source: 'kafka',
        },
      )
    }
    positiveInteger('partitionsConcurrently', options.partitionsConcurrently ?? 4, undefined, 'kafka')
    positiveInteger('batchSize', options.batchSize ?? DEFAULT_CONSUMER_BATCH_SIZE, undefined, 'kafka')
    if (options.mode !== undefined && options.mode !== 'message' && options.mode !== 'batch') {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        `createKafkaConsumerRunner: \`mode\` must be 'message' or 'batch', not ${String(options.mode)}.`,
        { source: 'kafka', details: { option: 'mode' } },
      )
    }
    if (options.mode === 'batch' && typeof options.consumer.processBatch !== 'function') {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        "createKafkaConsumerRunner: mode 'batch' needs a consumer with processBatch (an IdempotentConsumer); use mode 'message' for this one.",
        { source: 'kafka', details: { option: 'mode' } },
      )
    }
    if (options.restart === false) {
      this.#restart = undefined
    } else {
      const restart = { ...DEFAULT_RESTART, ...options.restart }
      positiveInteger('restart.initialMs', restart.initialMs, undefined, 'kafka')
      positiveInteger('restart.maxMs', restart.maxMs, undefined, 'kafka')
      if (restart.maxAttempts !== Number.POSITIVE_INFINITY)
        positiveInteger('restart.maxAttempts', restart.maxAttempts, undefined, 'kafka')
      this.#restart = restart
    }
    this.#options = options
    this.#messageId = options.messageId ?? ((record) => record.headers[Headers.messageId])
    this.#report = new ConsumerRunnerReport(options.logger, { groupId: options.groupId }, 'kafka')
  }

  /** The consumer group. */
  get groupName(): string {
    return this.#options.groupId
  }

  /** Subscribes to an event. Returns a function that unsubscribes. */
  on<E extends keyof KafkaConsumerRunnerEvents>(
    event: E,
    listener: (event: KafkaConsumerRunnerEvents[E]) => void,
  ): () => void {
    return this.#report.on(event, listener)
  }

  /**
   * Calls `listener` when the runner stops consuming for good on its own (see `restart`), as a
   * `Lifecycle` does to stop the service. Returns a function that unsubscribes.
   */
  onFatal(listener: (error: unknown) => void): () => void {
    this.#fatalListeners.add(listener)
    return () => this.#fatalListeners.delete(listener)
  }

  /**
   * The runner's state for health checks: whether it consumes, when its last batch (or idle poll)
   * succeeded, the errors since, the last error (code and message), its partitions, their lag as
   * last seen, and its restarts. A plain object, safe to serialise.
   */
  health(): KafkaConsumerRunnerHealth {
    return {
      ...this.#report.snapshot(),
      groupId: this.#options.groupId,
      partitions: this.#partitions(),
      lag: this.#lagNow(),
      restarts: this.#restarts,
      restartAt: this.#restartAt,
    }
  }

  /**
   * Samples the lag of every partition assigned to this runner: the partitions' ends from the
   * broker (one ListOffsets request per topic) and the group's committed offsets (one OffsetFetch
   * request), taken with what the runner processed since. Meant for a metrics reader's collection
   * (see `otelConsumerRunnerMetrics`), not for every message; concurrent calls share one sample.
   * Empty while nothing is assigned.
   */
  lag(): Promise<readonly PartitionLag[]> {
    if (!this.#consumer || this.#partitions().length === 0) return Promise.resolve(this.#lagNow())
    this.#sampling ??= this.#sampleLag().finally(() => {
      this.#sampling = undefined
    })
    return this.#sampling
  }

  async #sampleLag(): Promise<readonly PartitionLag[]> {
    const topics = this.#partitions().map(({ topic }) => topic)
    const admin = await this.#adminClient()
    const [ends, committed] = await Promise.all([
      Promise.all(topics.map(async (topic) => ({ topic, offsets: await admin.fetchTopicOffsets(topic) }))),
      admin.fetchOffsets({ groupId: this.#options.groupId, topics }),
    ])
    const committedOffsets = new Map<string, bigint>()
    for (const { topic, partitions } of committed)
      for (const { partition, offset } of partitions)
        committedOffsets.set(positionKey(topic, partition), BigInt(offset))
    for (const { topic, offsets } of ends) {
      for (const { partition, high, low } of offsets) {
        const position = this.#positions.get(positionKey(topic, partition))
        if (!position) continue // not assigned to this runner
        position.high = BigInt(high)
        const done = committedOffsets.get(positionKey(topic, partition)) ?? -1n
        if (done >= 0n && (position.next === undefined || done > position.next)) position.next = done
        // Nothing committed nor fetched yet: the group starts where `fromBeginning` says.
        position.next ??= this.#options.fromBeginning ? BigInt(low) : BigInt(high)
      }
    }
    return this.#lagNow()
  }

  #adminClient(): Promise<Admin> {
    this.#admin ??= (async () => {
      const admin = this.#options.kafka.admin()
      await admin.connect()
      return admin
    })().catch((error: unknown) => {
      this.#admin = undefined
      throw error
    })
    return this.#admin
  }

  #lagNow(): PartitionLag[] {
    const lag: PartitionLag[] = []
    for (const { topic, partition, next, high } of this.#positions.values()) {
      if (next === undefined || high === undefined) continue
      const behind = high - next
      lag.push({
        topic,
        partition,
        offset: next.toString(),
        highWatermark: high.toString(),
        lag: behind > 0n ? Number(behind) : 0,
      })
    }
    return lag.sort((a, b) => (a.topic < b.topic ? -1 : a.topic > b.topic ? 1 : a.partition - b.partition))
  }

  /** What a fetch or a resolved offset says about a partition's position. */
  #position(topic: string, partition: number, seen: { next?: bigint; high?: bigint }): void {
    const position = this.#positions.get(positionKey(topic, partition))
    if (!position) return
    if (seen.high !== undefined && (position.high === undefined || seen.high > position.high))
      position.high = seen.high
    if (seen.next !== undefined) position.next = seen.next
  }

  #partitions(): TopicPartitions[] {
    return [...this.#assignment]
      .filter(([, partitions]) => partitions.length > 0)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([topic, partitions]) => ({ topic, partitions }))
  }

  /**
   * The group assigned `next` (topic → partitions), at a join; or nothing is assigned any more
   * (a stop, a crash). Every join is reported, even one that changed nothing; a loss only if
   * something was assigned.
   */
  #assigned(next: Map<string, number[]>, joined = false): void {
    const diff = (from: Map<string, number[]>, to: Map<string, number[]>): TopicPartitions[] =>
      [...from]
        .map(([topic, partitions]) => ({
          topic,
          partitions: partitions.filter((p) => !(to.get(topic) ?? []).includes(p)),
        }))
        .filter((change) => change.partitions.length > 0)
        .sort((a, b) => (a.topic < b.topic ? -1 : a.topic > b.topic ? 1 : 0))
    const previous = this.#assignment
    for (const [topic, partitions] of next)
      next.set(
        topic,
        [...partitions].sort((a, b) => a - b),
      )
    this.#assignment = next
    // Lag is reported for the partitions this runner owns; a partition it gets back starts afresh.
    const owned = new Set<string>()
    for (const [topic, partitions] of next)
      for (const partition of partitions) {
        const key = positionKey(topic, partition)
        owned.add(key)
        if (!this.#positions.has(key)) this.#positions.set(key, { topic, partition })
      }
    for (const key of [...this.#positions.keys()]) if (!owned.has(key)) this.#positions.delete(key)
    const event = {
      assigned: diff(next, previous),
      revoked: diff(previous, next),
      partitions: this.#partitions(),
    }
    if (!joined && event.revoked.length === 0) return
    this.#report.info('consumer runner partitions assigned', event)
    this.#report.events.emit('rebalance', event)
  }

  #succeeded(): void {
    this.#crashes = 0
    this.#report.succeeded()
  }

  #settled(outcome: ProcessOutcome, message: InboundMessage, partition: number, offset: string): void {
    const event = { message, topic: message.topic, partition, offset }
    this.#report.settled(outcome, event, { topic: message.topic, partition, offset })
  }

  /** Joins the group and starts consuming. Resolves once the consumer is running. */
  async start(): Promise<void> {
    if (this.#stopping)
      throw new OutboxKitError(ErrorCode.AlreadyStarted, 'This runner is already running; call stop() first.')
    const stopping = new AbortController()
    this.#stopping = stopping
    this.#report.health.started()
    this.#failingBatch = undefined
    this.#crashes = 0
    this.#restarts = 0
    this.#restartAt = undefined
    try {
      await this.#connect(stopping.signal)
    } catch (error) {
      this.#report.failed('consumer runner could not join the group', { error, fatal: true })
      this.#report.health.stopped()
      this.#stopping = undefined
      throw error
    }
    this.#report.info('consumer runner started', {
      topics: this.#options.topics,
      mode: this.#options.mode ?? 'message',
      partitions: this.#partitions(),
    })
  }

  /** Creates a kafkajs consumer, joins the group and runs it. On failure the consumer is disconnected. */
  async #connect(signal: AbortSignal): Promise<void> {
    const { kafka, groupId, topics, consumerConfig } = this.#options
    const consumer = kafka.consumer({
      ...consumerConfig,
      groupId,
      readUncommitted: false,
      // The runner restarts the consumer itself, with its own backoff, seen in health().
      retry: { ...consumerConfig?.retry, restartOnFailure: async () => false },
    })
    this.#consumer = consumer
    const current = () => this.#consumer === consumer
    consumer.on(consumer.events.GROUP_JOIN, ({ payload }) => {
      if (current()) this.#assigned(new Map(Object.entries(payload.memberAssignment)), true)
    })
    consumer.on(consumer.events.FETCH, () => {
      if (current() && this.#failingBatch === undefined) this.#succeeded()
    })
    // Batches of control records only (transaction markers) never reach eachBatch; kafkajs
    // resolves them itself, and the position moves past them.
    consumer.on(consumer.events.END_BATCH_PROCESS, ({ payload }) => {
      if (!current() || payload.batchSize > 0) return
      this.#position(payload.topic, payload.partition, {
        next: BigInt(payload.lastOffset) + 1n,
        high: BigInt(payload.highWatermark),
      })
    })
    consumer.on(consumer.events.CRASH, ({ payload }) => {
      if (!current()) return
      // kafkajs disconnects on a crash: the partitions are gone until it joins again.
      this.#consumer = undefined
      this.#assigned(new Map())
      this.#report.health.stopped()
      const reported = isWrapped(payload.error, this.#failingBatch)
      const error = reported ? this.#failingBatch : kafkajsCause(payload.error)
      this.#crashed(error, reported)
    })
    // stop() during a restart's join disconnects this consumer; a step still under way must not
    // bring it back.
    const stoppedMeanwhile = () => {
      if (!signal.aborted) return false
      if (current()) this.#consumer = undefined
      return true
    }
    try {
      await consumer.connect()
      if (stoppedMeanwhile()) return await consumer.disconnect()
      await consumer.subscribe({ topics, fromBeginning: this.#options.fromBeginning ?? false })
      if (stoppedMeanwhile()) return await consumer.disconnect()
      await consumer.run({
        partitionsConsumedConcurrently: this.#options.partitionsConcurrently ?? 4,
        // Offsets move only when we resolve them, after each message's outcome is durable; resolved
        // offsets are committed at the end of each batch and, within long batches, every second.
        eachBatchAutoResolve: false,
        autoCommit: true,
        autoCommitInterval: 1_000,
        eachBatch: async ({
          batch,
          resolveOffset,
          heartbeat,
          commitOffsetsIfNecessary,
          isRunning,
          isStale,
        }) => {
          const first = batch.messages[0]
          this.#position(batch.topic, batch.partition, {
            high: BigInt(batch.highWatermark),
            ...(first ? { next: BigInt(first.offset) } : {}),
          })
          const resolve = (offset: string) => {
            resolveOffset(offset)
            this.#position(batch.topic, batch.partition, { next: BigInt(offset) + 1n })
          }
          try {
            await this.#eachBatch(batch, signal, {
              resolveOffset: resolve,
              heartbeat,
              commitOffsetsIfNecessary,
              isRunning,
              isStale,
            })
          } catch (error) {
            // A rebalance cuts a batch short: kafkajs joins again, nothing failed.
            if (!isRebalancing(error)) {
              this.#failingBatch = error
              this.#report.failed(
                'consumer runner batch failed, its records are delivered again',
                { error, topic: batch.topic, partition: batch.partition, fatal: false },
                { topic: batch.topic, partition: batch.partition },
              )
            }
            throw error
          }
          this.#failingBatch = undefined
          this.#succeeded()
        },
      })
      if (stoppedMeanwhile()) await consumer.disconnect()
    } catch (error) {
      if (current()) this.#consumer = undefined
      await consumer.disconnect().catch(() => {})
      throw error
    }
  }

  /**
   * The consumer crashed (or a restart failed): restart it after a backoff, or stop for good.
   * `reported` is true when the error was reported already (the failed batch that crashed it).
   */
  #crashed(error: unknown, reported: boolean): void {
    const signal = this.#stopping?.signal
    if (!signal || signal.aborted) return
    this.#crashes += 1
    const restart = this.#restart
    if (!restart || this.#crashes > restart.maxAttempts) {
      this.#report.failed(
        restart
          ? `consumer runner stopped consuming: ${restart.maxAttempts} restarts in a row failed; fix the cause, then stop() and start() the runner (or restart the process)`
          : 'consumer runner stopped consuming after a crash (restart: false); fix the cause, then stop() and start() the runner (or restart the process)',
        { error, fatal: true },
        {},
        !reported,
      )
      for (const listener of this.#fatalListeners) {
        try {
          listener(error)
        } catch {
          // Observers must not change what happens to the runner.
        }
      }
      return
    }
    const restartInMs = backoffDelay(this.#crashes, restart)
    this.#restartAt = new Date(Date.now() + restartInMs)
    this.#report.failed(
      'consumer runner crashed, it restarts its consumer',
      { error, fatal: false, restartInMs },
      { restartInMs, attempt: this.#crashes },
      !reported,
    )
    const restarting = this.#restartAfter(restartInMs, signal)
    this.#restarting = restarting
    void restarting.finally(() => {
      if (this.#restarting === restarting) this.#restarting = undefined
    })
  }

  async #restartAfter(delayMs: number, signal: AbortSignal): Promise<void> {
    await sleep(delayMs, signal)
    this.#restartAt = undefined
    if (signal.aborted) return
    this.#restarts += 1
    // A failing batch stays failing: the new consumer's polls are no success until it passes.
    try {
      await this.#connect(signal)
    } catch (error) {
      if (!signal.aborted) this.#crashed(kafkajsCause(error), false)
      return
    }
    if (signal.aborted) return
    this.#report.health.resumed()
    this.#report.info('consumer runner restarted', {
      restarts: this.#restarts,
      partitions: this.#partitions(),
    })
  }

  async #eachBatch(
    batch: Batch,
    signal: AbortSignal,
    {
      resolveOffset,
      heartbeat,
      commitOffsetsIfNecessary,
      isRunning,
      isStale,
    }: Pick<EachBatchPayload, 'heartbeat' | 'commitOffsetsIfNecessary' | 'isRunning' | 'isStale'> & {
      resolveOffset: (offset: string) => void
    },
  ): Promise<void> {
    if (this.#options.mode === 'batch') {
      const size = this.#options.batchSize ?? DEFAULT_CONSUMER_BATCH_SIZE
      for (let start = 0; start < batch.messages.length; start += size) {
        if (!isRunning() || isStale() || signal.aborted) break
        const chunk = batch.messages.slice(start, start + size)
        const inbound = chunk.map((message) => this.#inbound(batch.topic, batch.partition, message))
        const handled = await this.#whileBeating(signal, heartbeat, (inHand) =>
          this.#processBatch(batch.partition, chunk, inbound, inHand, (count) =>
            resolveOffset(chunk[count - 1]!.offset),
          ),
        )
        if (!handled) break
        await commitOffsetsIfNecessary()
        await heartbeat()
      }
      return
    }
    for (const message of batch.messages) {
      // After a rebalance or stop, leave the rest to the partition's next owner.
      if (!isRunning() || isStale() || signal.aborted) break
      const handled = await this.#whileBeating(signal, heartbeat, (inHand) =>
        this.#handle(batch.topic, batch.partition, message, inHand),
      )
      if (!handled) break
      resolveOffset(message.offset)
      await commitOffsetsIfNecessary()
      // Keeps the group membership alive through long batches (kafkajs throttles it).
      await heartbeat()
    }
  }

  /**
   * Runs `work` (one record, or a batch) and keeps heartbeating meanwhile, so a message that
   * waits (handler retries, a database outage) keeps its partition instead of being dropped from
   * the group. A heartbeat that fails (a rebalance) cuts the wait short and is rethrown for
   * kafkajs to handle. Resolves false, with the offset left unresolved, when the runner stops
   * mid-message.
   */
  async #whileBeating(
    stopping: AbortSignal,
    heartbeat: () => Promise<void>,
    work: (signal: AbortSignal) => Promise<void>,
  ): Promise<boolean> {
    const inHand = new AbortController()
    const stop = () => inHand.abort()
    stopping.addEventListener('abort', stop, { once: true })
    let beatFailure: { error: unknown } | undefined
    const beating = setInterval(() => {
      heartbeat().catch((error: unknown) => {
        beatFailure ??= { error }
        inHand.abort()
      })
    }, HEARTBEAT_WHILE_BUSY_MS)
    try {
      await work(inHand.signal)
    } catch (error) {
      if (beatFailure) throw beatFailure.error
      if (stopping.aborted) return false
      throw error
    } finally {
      clearInterval(beating)
      stopping.removeEventListener('abort', stop)
    }
    // Done and durable: resolve it; the next heartbeat reports the rebalance again if there is one.
    return true
  }

  async #processBatch(
    partition: number,
    records: readonly KafkaMessage[],
    messages: readonly InboundMessage[],
    signal: AbortSignal,
    onDurable: (count: number) => void,
  ): Promise<void> {
    // Checked in the constructor: batch mode has a consumer with processBatch.
    const outcomes = await this.#options.consumer.processBatch!(messages, { signal, onDurable })
    outcomes.forEach((outcome, i) => {
      this.#settled(outcome, messages[i]!, partition, records[i]!.offset)
    })
  }

  async #handle(topic: string, partition: number, message: KafkaMessage, signal: AbortSignal): Promise<void> {
    const inbound = this.#inbound(topic, partition, message)
    const unusable = unusableIdReason(inbound)
    if (unusable !== undefined) {
      await this.#options.consumer.deadLetter(inbound, unusable, signal)
      this.#settled('dead', inbound, partition, message.offset)
      return
    }
    this.#settled(await this.#options.consumer.process(inbound, signal), inbound, partition, message.offset)
  }

  #inbound(topic: string, partition: number, message: KafkaMessage): InboundMessage {
    const record: KafkaRecord = {
      topic,
      partition,
      offset: message.offset,
      key: message.key === null ? null : message.key.toString('utf8'),
      headers: decodeHeaders(message.headers),
      value: message.value === null ? new Uint8Array(0) : new Uint8Array(message.value),
    }
    const id = this.#messageId(record)
    return inboundMessage({
      id: typeof id === 'string' ? id : '',
      topic,
      key: record.key,
      payload: record.value,
      headers: record.headers,
      position: { partition, offset: message.offset },
    })
  }

  /**
   * Leaves the group: the message in hand is finished (its retries are cut short and it is
   * redelivered later), resolved offsets are committed, and the connection closes.
   */
  async stop(): Promise<void> {
    const stopping = this.#stopping
    if (!stopping) return
    stopping.abort()
    // A restart under way gives up its wait; a consumer it is joining is disconnected below.
    const consumer = this.#consumer
    this.#consumer = undefined
    const admin = this.#admin
    this.#admin = undefined
    try {
      await consumer?.disconnect()
      await this.#restarting
      // A restart that created its consumer meanwhile (TypeScript cannot see it change).
      await (this.#consumer as Consumer | undefined)?.disconnect()
    } finally {
      this.#consumer = undefined
      this.#stopping = undefined
      this.#restartAt = undefined
      await admin?.then((a) => a.disconnect()).catch(() => {})
      this.#assigned(new Map())
      this.#report.health.stopped()
      this.#report.info('consumer runner stopped')
    }
  }
}

function positionKey(topic: string, partition: number): string {
  return `${topic}\u0000${partition}`
}

/**
 * Whether kafkajs' crash error is `original` (a batch's error), or wraps it: its retrier wraps it in
 * KafkaJSNonRetriableError with `original.cause` as cause, so only the copied message tells.
 */
function isWrapped(crash: unknown, original: unknown): boolean {
  if (original === undefined) return false
  if (crash === original) return true
  return crash instanceof Error && original instanceof Error && crash.message === original.message
}

/** The error kafkajs wrapped (KafkaJSNonRetriableError, KafkaJSNumberOfRetriesExceeded, ...). */
function kafkajsCause(error: unknown): unknown {
  let current = error
  while (current instanceof Error && current.name.startsWith('KafkaJS') && current.cause !== undefined) {
    current = current.cause
  }
  return current
}

/** kafkajs' own test for errors that mean "the group is rebalancing, join again". */
function isRebalancing(error: unknown): boolean {
  const type = (error as { type?: unknown } | null)?.type
  return (
    type === 'REBALANCE_IN_PROGRESS' || type === 'NOT_COORDINATOR_FOR_GROUP' || type === 'ILLEGAL_GENERATION'
  )
}

/**
 * kafkajs headers as strings: Buffers decoded as UTF-8, the first value of repeated headers. A
 * header without a value is left out: kafkajs hands it over as null (despite its types), e.g.
 * from Debezium's outbox router for a NULL column placed in a header.
 */
export function decodeHeaders(headers: IHeaders | undefined): Record<string, string> {
  const result: Record<string, string> = {}
  for (const [name, raw] of Object.entries(headers ?? {})) {
    const value: Buffer | string | null | undefined = Array.isArray(raw) ? raw[0] : raw
    if (value === undefined || value === null) continue
    result[name] = typeof value === 'string' ? value : value.toString('utf8')
  }
  return result
}
