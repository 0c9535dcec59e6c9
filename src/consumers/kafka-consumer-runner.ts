import type { Consumer, ConsumerConfig, IHeaders, Kafka, KafkaMessage } from 'kafkajs'
import {
  type InboundMessage,
  inboundMessage,
  type MessageProcessor,
  unusableIdReason,
} from '../core/consumer.js'
import { ErrorCode, OutboxKitError } from '../core/errors.js'
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
    await consumer.connect()
    await consumer.subscribe({ topics, fromBeginning: this.#options.fromBeginning ?? false })
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
        if (this.#options.mode === 'batch') {
          const size = this.#options.batchSize ?? DEFAULT_CONSUMER_BATCH_SIZE
          for (let start = 0; start < batch.messages.length; start += size) {
            if (!isRunning() || isStale() || signal.aborted) break
            const chunk = batch.messages.slice(start, start + size)
            const inbound = chunk.map((message) => this.#inbound(batch.topic, batch.partition, message))
            const handled = await this.#whileBeating(signal, heartbeat, (inHand) =>
              this.#processBatch(inbound, inHand, (count) => resolveOffset(chunk[count - 1]!.offset)),
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
      },
    })
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
    messages: readonly InboundMessage[],
    signal: AbortSignal,
    onDurable: (count: number) => void,
  ): Promise<void> {
    // Checked in the constructor: batch mode has a consumer with processBatch.
    await this.#options.consumer.processBatch!(messages, { signal, onDurable })
  }

  async #handle(topic: string, partition: number, message: KafkaMessage, signal: AbortSignal): Promise<void> {
    const inbound = this.#inbound(topic, partition, message)
    const unusable = unusableIdReason(inbound)
    if (unusable !== undefined) {
      await this.#options.consumer.deadLetter(inbound, unusable, signal)
      return
    }
    await this.#options.consumer.process(inbound, signal)
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
    await consumer?.disconnect()
  }
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
