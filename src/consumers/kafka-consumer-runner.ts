import type {
  Batch,
  Consumer,
  ConsumerConfig,
  EachBatchPayload,
  IHeaders,
  Kafka,
  KafkaMessage,
} from 'kafkajs'
import {
  type InboundMessage,
  inboundMessage,
  type MessageProcessor,
  type ProcessOutcome,
  unusableIdReason,
} from '../core/consumer.js'
import { ErrorCode, OutboxKitError } from '../core/errors.js'
import { Emitter } from '../core/events.js'
import { type ComponentHealth, HealthTracker } from '../core/health.js'
import { FailureLog, Log, type LoggerOption } from '../core/logger.js'
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
  /** Extra kafkajs consumer settings. Isolation is always read_committed. */
  consumerConfig?: Omit<ConsumerConfig, 'groupId' | 'readUncommitted'>
  /**
   * Where the runner writes what it does: start, stop and partition changes (info), dead letters
   * (warn), every failed batch (warn, or error when the consumer gives up) with the error's code.
   * `console` fits; for pino use `fieldsFirstLogger(pino())` from `outboxkit`. `false` writes
   * nothing. Default: failures only, to `console.warn` / `console.error`, the first of a run and
   * then at most one a minute. kafkajs keeps its own logger (the `Kafka` client's `logCreator`).
   */
  logger?: LoggerOption
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
   * e.g. a store failure or a dead-letter topic that refused the letter), or the kafkajs consumer
   * crashed. The batch's unresolved records are delivered again. `fatal` is true when kafkajs
   * does not restart the consumer (the error is not retriable, e.g. `STORE_FAILED` for a missing
   * table): the runner consumes nothing more until it is stopped and started again. A batch error
   * that kafkajs does not restart from is reported twice: as the batch's, then as fatal.
   */
  error: {
    readonly error: unknown
    readonly topic?: string
    readonly partition?: number
    readonly fatal: boolean
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

export class KafkaConsumerRunner {
  readonly #options: KafkaConsumerRunnerOptions
  readonly #messageId: (record: KafkaRecord) => string | undefined
  #consumer: Consumer | undefined
  #stopping: AbortController | undefined
  readonly #events = new Emitter<KafkaConsumerRunnerEvents>()
  readonly #log: Log
  readonly #failures: FailureLog
  readonly #health = new HealthTracker()
  /** Partitions by topic, as the group assigned them last. */
  #assignment = new Map<string, number[]>()
  /** The last batch failed and has not been processed since: polls are no success meanwhile. */
  #failingBatch: unknown

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
    this.#options = options
    this.#messageId = options.messageId ?? ((record) => record.headers[Headers.messageId])
    this.#log = new Log(options.logger, { groupId: options.groupId }, 'kafka')
    this.#failures = new FailureLog(this.#log)
  }

  /** Subscribes to an event. Returns a function that unsubscribes. */
  on<E extends keyof KafkaConsumerRunnerEvents>(
    event: E,
    listener: (event: KafkaConsumerRunnerEvents[E]) => void,
  ): () => void {
    return this.#events.on(event, listener)
  }

  /**
   * The runner's state for health checks: whether it consumes, when its last batch (or idle poll)
   * succeeded, the errors since, the last error (code and message), and its partitions. A plain
   * object, safe to serialise.
   */
  health(): KafkaConsumerRunnerHealth {
    return { ...this.#health.snapshot(), groupId: this.#options.groupId, partitions: this.#partitions() }
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
    const event = {
      assigned: diff(next, previous),
      revoked: diff(previous, next),
      partitions: this.#partitions(),
    }
    if (!joined && event.revoked.length === 0) return
    this.#log.write('info', 'consumer runner partitions assigned', event)
    this.#events.emit('rebalance', event)
  }

  #succeeded(): void {
    const ended = this.#health.succeeded()
    if (ended > 0) this.#failures.recovered('consumer runner recovered', ended)
  }

  /** Reports an error; `counted` is false when it was reported already (a batch error that ended in a crash). */
  #failed(
    error: unknown,
    fatal: boolean,
    message: string,
    where: { topic?: string; partition?: number } = {},
    counted = true,
  ): void {
    const consecutiveErrors = counted ? this.#health.failed(error) : this.#health.consecutiveErrors
    this.#failures.failed(message, error, consecutiveErrors, fatal, where)
    this.#events.emit('error', { error, ...where, fatal })
  }

  #settled(outcome: ProcessOutcome, message: InboundMessage, partition: number, offset: string): void {
    const event = { message, topic: message.topic, partition, offset }
    if (outcome === 'dead') {
      this.#log.write('warn', 'consumer runner record dead-lettered', {
        topic: message.topic,
        partition,
        offset,
        messageId: message.id,
      })
    }
    this.#events.emit(outcome, event)
  }

  /** Joins the group and starts consuming. Resolves once the consumer is running. */
  async start(): Promise<void> {
    if (this.#consumer)
      throw new OutboxKitError(ErrorCode.AlreadyStarted, 'This runner is already running; call stop() first.')
    const { kafka, groupId, topics } = this.#options
    const consumer = kafka.consumer({ ...this.#options.consumerConfig, groupId, readUncommitted: false })
    this.#consumer = consumer
    this.#stopping = new AbortController()
    const signal = this.#stopping.signal
    this.#health.started()
    this.#failingBatch = undefined
    consumer.on(consumer.events.GROUP_JOIN, ({ payload }) => {
      this.#assigned(new Map(Object.entries(payload.memberAssignment)), true)
    })
    consumer.on(consumer.events.FETCH, () => {
      if (this.#failingBatch === undefined) this.#succeeded()
    })
    consumer.on(consumer.events.CRASH, ({ payload }) => {
      // kafkajs disconnects on a crash: the partitions are gone until it joins again.
      this.#assigned(new Map())
      const reported = isWrapped(payload.error, this.#failingBatch)
      const error = reported ? this.#failingBatch : kafkajsCause(payload.error)
      if (payload.restart) {
        if (!reported) this.#failed(error, false, 'consumer runner crashed, kafkajs restarts it')
        return
      }
      this.#failed(
        error,
        true,
        'consumer runner stopped consuming: kafkajs does not restart it after this error; fix the cause, then stop() and start() the runner',
        {},
        !reported,
      )
      this.#health.stopped()
    })
    try {
      await consumer.connect()
      await consumer.subscribe({ topics, fromBeginning: this.#options.fromBeginning ?? false })
    } catch (error) {
      this.#failed(error, true, 'consumer runner could not join the group')
      this.#health.stopped()
      throw error
    }
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
        try {
          await this.#eachBatch(batch, signal, {
            resolveOffset,
            heartbeat,
            commitOffsetsIfNecessary,
            isRunning,
            isStale,
          })
        } catch (error) {
          // A rebalance cuts a batch short: kafkajs joins again, nothing failed.
          if (!isRebalancing(error)) {
            this.#failingBatch = error
            this.#failed(error, false, 'consumer runner batch failed, its records are delivered again', {
              topic: batch.topic,
              partition: batch.partition,
            })
          }
          throw error
        }
        this.#failingBatch = undefined
        this.#succeeded()
      },
    })
    this.#log.write('info', 'consumer runner started', {
      topics,
      mode: this.#options.mode ?? 'message',
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
    }: Pick<
      EachBatchPayload,
      'resolveOffset' | 'heartbeat' | 'commitOffsetsIfNecessary' | 'isRunning' | 'isStale'
    >,
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
    this.#stopping?.abort()
    const consumer = this.#consumer
    this.#consumer = undefined
    if (!consumer) return
    try {
      await consumer.disconnect()
    } finally {
      this.#assigned(new Map())
      this.#health.stopped()
      this.#log.write('info', 'consumer runner stopped')
    }
  }
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
