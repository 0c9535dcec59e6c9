import {
  type Admin,
  type CompressionTypes,
  Kafka,
  type Message,
  Partitioners,
  type PartitionMetadata,
  type Producer,
  type ProducerConfig,
  type RecordMetadata,
} from 'kafkajs'
import { describeError, ErrorCode, OutboxKitError } from '../../core/errors.js'
import { type ClaimedRecord, Headers, publishedHeaders } from '../../core/message.js'
import { positiveInteger } from '../../core/options.js'
import type {
  ExactlyOnceTransport,
  PublishOutcome,
  Transport,
  TransportCapabilities,
} from '../../core/transport.js'
import { KafkaExactlyOnce } from './exactly-once.js'

/**
 * kafkajs' `ConfigResourceTypes.BROKER`. Not imported by name: kafkajs is CommonJS, and Node's ESM
 * loader does not detect that export, so `import { ConfigResourceTypes } from 'kafkajs'` fails there.
 */
const BROKER_CONFIG_RESOURCE = 4

export interface KafkaTransportOptions {
  /** Your kafkajs client (brokers, TLS, SASL, logging). Or pass `brokers` instead. */
  kafka?: Kafka
  /** Bootstrap brokers, when no `kafka` client is given. */
  brokers?: string[]
  /** Client id, when no `kafka` client is given. Default `outboxkit-relay`. */
  clientId?: string
  /**
   * Publish each batch in a Kafka transaction under this id: a batch becomes visible to
   * `read_committed` consumers all at once or not at all, and a second producer with the same id
   * fences this one. Use one stable id per relay instance (e.g. `orders-relay-<host>`).
   */
  transactionalId?: string
  /**
   * Exactly-once publishing for relays with `exactlyOnce: true` (see `transport.exactlyOnce`):
   * each relay publishes in Kafka transactions under the transactional id
   * `<transactionalIdPrefix><relayId>`, and each transaction also writes the relay's progress to
   * `progressTopic`. Plain `publish` calls (dead letters) are not part of it.
   */
  exactlyOnce?: KafkaExactlyOnceOptions
  /** Compression codec (kafkajs `CompressionTypes`). Default none. */
  compression?: CompressionTypes
  /**
   * Largest record (key + value + headers) sent, in bytes. Larger records fail at once as not
   * retriable, so the relay dead-letters them without a broker round trip. Keep it at or below the
   * topic's `max.message.bytes`. Default 1 000 000.
   */
  maxRecordBytes?: number
  /** Bytes per produce request; larger batches are split. Default 4 MiB. */
  maxRequestBytes?: number
  /**
   * Broker request timeout, ms. Also the longest a send, and in transactional mode a commit or an
   * abort, is waited for: past it the outcome counts as unknown, the records are sent again and a
   * transactional producer is replaced. Default 30 000.
   */
  requestTimeoutMs?: number
  /**
   * Extra kafkajs producer settings. The settings exactly-once needs (idempotence, acks) cannot be
   * overridden. With `transactionalId` or `exactlyOnce`, `retry` defaults to 9 retries from 20 ms
   * (kafkajs: 5 from 300 ms), so a transaction begun right after a commit does not wait 300 ms on
   * CONCURRENT_TRANSACTIONS; the total retry time stays about the same.
   */
  producer?: Omit<ProducerConfig, 'idempotent' | 'maxInFlightRequests' | 'transactionalId'>
}

/** See {@link KafkaTransportOptions.exactlyOnce}. */
export interface KafkaExactlyOnceOptions {
  /**
   * The compacted topic holding each shard's progress. Created when missing (one partition,
   * `cleanup.policy=compact`); checked when present.
   */
  progressTopic: string
  /** Prefix of each relay's transactional id. Default `outboxkit-`. */
  transactionalIdPrefix?: string
  /** Replication factor when the progress topic is created. Default: the broker's default. */
  replicationFactor?: number
  /** How long reading the progress topic to its end may take, ms. Default 60 000. */
  readTimeoutMs?: number
}

export const RECORD_OVERHEAD_BYTES = 128

interface SendItem {
  readonly index: number
  readonly record: ClaimedRecord
  readonly message: Message
  readonly size: number
}

/**
 * What an exactly-once session adds to its transport (see `exactly-once.ts`): progress messages
 * committed with each transaction's records, and which records to send one per transaction.
 * @internal
 */
export interface SessionHooks {
  /** The messages committed in the same transaction as `records`, and where they go. */
  progress(records: readonly ClaimedRecord[]): { topic: string; messages: Message[] }
  /** The transaction carrying `records` committed. */
  committed(records: readonly ClaimedRecord[]): void
  /** The broker refused a record of a transaction holding these ids; the next sends isolate them. */
  refused(ids: readonly string[]): void
  /** Whether a record must be sent in a transaction of its own. */
  isolated(id: string): boolean
}

/**
 * Broker errors that are about the record itself: trying again cannot help, so the relay
 * dead-letters the record at once.
 */
const RECORD_FAULTS = new Set([
  'MESSAGE_TOO_LARGE',
  'RECORD_LIST_TOO_LARGE',
  'INVALID_RECORD',
  'INVALID_TOPIC_EXCEPTION',
  'TOPIC_AUTHORIZATION_FAILED',
  'POLICY_VIOLATION',
])

/** Metadata errors that are about one topic: its records fail, others still go out. */
const TOPIC_FAULTS = new Set([
  'UNKNOWN_TOPIC_OR_PARTITION',
  'LEADER_NOT_AVAILABLE',
  'INVALID_TOPIC_EXCEPTION',
  'TOPIC_AUTHORIZATION_FAILED',
])

/**
 * Topic faults that no retry can mend (the name is illegal, or this client may not write to it):
 * the relay dead-letters the records at once. A missing topic or a leaderless partition may
 * recover, so those stay retriable.
 */
const PERMANENT_TOPIC_FAULTS = new Set(['INVALID_TOPIC_EXCEPTION', 'TOPIC_AUTHORIZATION_FAILED'])

const METADATA_TTL_MS = 60_000

/**
 * How long a publish waits for the metadata of a topic whose partition count it already knows.
 * kafkajs spends its whole retry budget (seconds) on the metadata of a topic with a leaderless
 * partition; meanwhile the lookup goes on in the background and the known count routes records.
 */
const LOOKUP_WAIT_MS = 300

/**
 * How long a publish that also carries records of known topics waits for the first lookup of a
 * topic not seen before (and its creation by the broker): past it, that topic's records fail
 * retriably and are published by a later attempt, while the other records go out at once.
 */
const NEW_TOPIC_WAIT_MS = 50

/** The first lookup of a topic, still under way after NEW_TOPIC_WAIT_MS. */
const DISCOVERING = 'DISCOVERING'

/** A lookup still under way after LOOKUP_WAIT_MS. */
const PENDING = 'PENDING'
/** A lookup that could not reach the cluster. */
const UNREACHABLE = 'UNREACHABLE'
/** Lookup outcomes under which a topic's known partition count keeps routing its records. */
const PASSING_FAULTS = new Set(['LEADER_NOT_AVAILABLE', PENDING, UNREACHABLE])

/** Which producer a group of records goes out on. */
type Lane = 'main' | 'fresh'

/** How long a topic created on first use may take to show up in the admin client's metadata. */
const AUTO_CREATE_WAIT_MS = 10_000

/** Why a topic's records cannot be routed, and whether a later attempt may succeed. */
interface TopicFault {
  /** The broker error type, e.g. `UNKNOWN_TOPIC_OR_PARTITION`. */
  readonly type: string
  readonly error: string
  readonly retriable: boolean
}

/**
 * Errors that mean our producer epoch is no longer current. Either another producer with our
 * transactional id initialised after us (fencing), or the coordinator aborted our transaction
 * because it outlived `transactionTimeout` and bumped the epoch itself (expiry).
 */
const FENCING = new Set([
  'INVALID_PRODUCER_EPOCH',
  'PRODUCER_FENCED',
  'TRANSACTIONAL_ID_AUTHORIZATION_FAILED',
])

/** The errors a timed-out transaction produces, depending on the broker version and request. */
const EPOCH_ERRORS = new Set(['INVALID_PRODUCER_EPOCH', 'PRODUCER_FENCED', 'INVALID_TXN_STATE'])

/** kafkajs' default `transactionTimeout`. */
const DEFAULT_TRANSACTION_TIMEOUT_MS = 60_000

/**
 * The first retry delay of a transactional producer's sends, ms (kafkajs' default is 300).
 * A transaction begun right after the previous commit often has its first AddPartitionsToTxn
 * answered CONCURRENT_TRANSACTIONS while the coordinator still writes the previous commit's
 * markers, which takes a few milliseconds; kafkajs retries the whole send after its retry delay,
 * so back-to-back transactions would wait about 300 ms each. The Java producer retries that
 * request after 20 ms for the same reason (KAFKA-5477). Later retries still double; with
 * {@link TRANSACTIONAL_RETRIES} a failing send is retried for about as long in total (10 s) as
 * with kafkajs' defaults (5 retries from 300 ms). `producer.retry` overrides both.
 */
const TRANSACTIONAL_INITIAL_RETRY_MS = 20
const TRANSACTIONAL_RETRIES = 9

/**
 * A {@link Transport} on kafkajs with the idempotent producer (acks = all, one request in flight)
 * and, with `transactionalId`, one Kafka transaction per batch.
 *
 * After a send whose outcome is unknown (timeout, connection closed mid-request) its records are
 * reported as not published, so their rows are published again: a possible duplicate with the
 * same message id, never a loss. In idempotent mode the producer is kept for the other partitions,
 * and the partitions of that send are never sent on it again (kafkajs rewinds their sequence
 * numbers, so the broker could take a later batch for a copy of the lost one and drop it): they go
 * out on a fresh producer, which replaces the old one once it has published. In transactional mode
 * the producer is replaced after any failure (its successor's new epoch aborts what was open).
 *
 * @example
 * ```ts
 * const transport = createKafkaTransport({ brokers: ['127.0.0.1:9092'] })
 * const relay = new Relay({ store, transport })
 * ```
 */
export function createKafkaTransport(options: KafkaTransportOptions): KafkaTransport {
  return new KafkaTransport(options)
}

export class KafkaTransport implements Transport {
  readonly name = 'kafka'
  readonly capabilities: TransportCapabilities
  readonly #kafka: Kafka
  readonly #options: KafkaTransportOptions
  readonly #maxRecordBytes: number
  readonly #maxRequestBytes: number
  #producer: Promise<Producer> | undefined
  /**
   * Partitions (topic + partition) whose last send on the main producer has an unknown outcome.
   * They are never sent on that producer again (idempotent mode only).
   */
  readonly #inDoubt = new Set<string>()
  /** A fresh idempotent producer for the in-doubt partitions; it becomes the main one once it has published. */
  #fresh: Promise<Producer> | undefined
  /** First lookups of topics not seen before, per topic (see #discover). */
  readonly #discoveries = new Map<string, Promise<number | TopicFault>>()
  /** Metadata lookups under way, per topic: a publish waits for one at most LOOKUP_WAIT_MS. */
  readonly #lookUps = new Map<string, Promise<number | TopicFault>>()
  #admin: Promise<Admin> | undefined
  readonly #metadata = new Map<string, { partitions: number; at: number }>()
  /** Leader broker of each partition, per topic, as last seen (only to group sends). */
  readonly #leaders = new Map<string, readonly number[]>()
  /** Producers discarded during the current publish: disconnected once its sends have settled. */
  #retired: Promise<Producer>[] = []
  /** The broker's `auto.create.topics.enable`, once read (undefined when it cannot be read). */
  #autoCreates: Promise<boolean | undefined> | undefined
  /** Publishes run one at a time: one producer, and Kafka transactions cannot overlap. */
  #queue: Promise<unknown> = Promise.resolve()
  #closed = false
  #fenced = false
  /** Exactly-once session mode: the hooks, and the error that ended the session. */
  readonly #session: SessionHooks | undefined
  #ended: OutboxKitError | undefined
  /** With the `exactlyOnce` option: the sessions relays open (see `RelayOptions.exactlyOnce`). */
  readonly exactlyOnce: ExactlyOnceTransport | undefined
  /**
   * How many producers were discarded (observability and tests): after an error in transactional
   * mode, and in idempotent mode a main producer replaced by the fresh one or a fresh one whose own
   * send was in doubt.
   */
  producerRebuilds = 0

  /** `session` is for the exactly-once sessions' own transports only. */
  constructor(options: KafkaTransportOptions, session?: SessionHooks) {
    if (!options?.kafka && !options?.brokers?.length) {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        'createKafkaTransport needs `kafka` (a kafkajs client) or `brokers`.',
        {
          source: 'kafka',
        },
      )
    }
    if (
      options.transactionalId !== undefined &&
      (typeof options.transactionalId !== 'string' || !options.transactionalId)
    ) {
      throw new OutboxKitError(ErrorCode.InvalidOptions, 'transactionalId must be a non-empty string.', {
        source: 'kafka',
      })
    }
    this.#options = options
    this.#kafka =
      options.kafka ??
      new Kafka({ brokers: options.brokers!, clientId: options.clientId ?? 'outboxkit-relay' })
    this.#maxRecordBytes = positiveInteger(
      'maxRecordBytes',
      options.maxRecordBytes ?? 1_000_000,
      undefined,
      'kafka',
    )
    this.#maxRequestBytes = positiveInteger(
      'maxRequestBytes',
      options.maxRequestBytes ?? 4 * 1024 * 1024,
      undefined,
      'kafka',
    )
    positiveInteger('requestTimeoutMs', options.requestTimeoutMs ?? 30_000, undefined, 'kafka')
    this.capabilities = { transactions: options.transactionalId !== undefined }
    this.#session = session
    this.exactlyOnce =
      options.exactlyOnce === undefined || session
        ? undefined
        : new KafkaExactlyOnce(this.#kafka, options, options.exactlyOnce)
  }

  /** Whether an exactly-once session's transport ended after a failure. @internal */
  get ended(): boolean {
    return this.#ended !== undefined
  }

  /**
   * Commits `messages` in a transaction of their own (an exactly-once session's markers), after
   * any publish in flight. @internal
   */
  commitAlone(topic: string, messages: Message[]): Promise<void> {
    const run = this.#queue.then(async () => {
      if (this.#ended) throw this.#ended
      const producer = await this.#getProducer()
      const began = Date.now()
      const transaction = await this.#guard(() => producer.transaction())
      try {
        const metadata = await transaction.send({ topic, messages, acks: -1 })
        if (metadata.some((m) => m.errorCode !== 0)) throw unacknowledgedError(new Set([topic]))
        await transaction.commit()
      } catch (error) {
        await transaction.abort().catch(() => {})
        throw await this.#failure(error, Date.now() - began)
      }
    })
    this.#queue = run.catch(() => {})
    return run
  }

  /**
   * Initialises the transactional producer now (an InitProducerId that fences every earlier
   * producer of the transactional id and aborts its open transaction), rather than at the first
   * transaction. @internal
   */
  async initialize(): Promise<void> {
    const producer = await this.#getProducer()
    const transaction = await this.#guard(() => producer.transaction())
    await this.#guard(() => transaction.abort())
  }

  publish(records: readonly ClaimedRecord[]): Promise<readonly PublishOutcome[]> {
    const run = this.#queue.then(() => this.#publish(records))
    this.#queue = run.catch(() => {})
    return run
  }

  async #publish(records: readonly ClaimedRecord[]): Promise<readonly PublishOutcome[]> {
    if (this.#closed)
      throw new OutboxKitError(ErrorCode.Closed, 'The Kafka transport is closed.', { source: 'kafka' })
    if (this.#ended) throw this.#ended
    if (this.#fenced) throw this.#fencedError()
    if (this.#session && records.length > 1 && records.some((r) => this.#session!.isolated(r.id)))
      return this.#publishIsolated(records)
    const outcomes: (PublishOutcome | undefined)[] = new Array(records.length)
    const sendable: SendItem[] = []
    // Each key's first failed record: the key's later records are held back, its earlier ones go.
    const failedAt = new Map<string, number>()
    const heldBack = (key: string, index: number) => (failedAt.get(key) ?? Number.POSITIVE_INFINITY) < index
    const fail = (key: string, index: number) => {
      if (!heldBack(key, index)) failedAt.set(key, index)
    }
    records.forEach((record, index) => {
      const message = toMessage(record)
      const size = messageSize(record, message)
      if (heldBack(record.key, index)) {
        outcomes[index] = notSent()
      } else if (size > this.#maxRecordBytes) {
        fail(record.key, index)
        outcomes[index] = {
          status: 'failed',
          error: `MESSAGE_TOO_LARGE: the record is about ${size} bytes; the limit (maxRecordBytes) is ${this.#maxRecordBytes}.`,
          retriable: false,
        }
      } else {
        sendable.push({ index, record, message, size })
      }
    })

    // Choose each record's partition here (the Java client's murmur2 of the key, as kafkajs does),
    // so every acknowledgement can be checked against the partitions actually sent to.
    const topics = [...new Set(sendable.map((item) => item.record.topic))]
    // Topics with an in-doubt partition are looked up on every publish: their records may only
    // go out on a fresh producer, and a fresh producer can load a topic's metadata only once every
    // partition of it has a leader.
    const doubtful = new Set([...this.#inDoubt].map(topicOf))
    const {
      counts: partitions,
      confirmed,
      unanswered,
    } = await this.#partitionCounts(topics, new Set(topics.filter((topic) => doubtful.has(topic))))
    const main: SendItem[] = []
    const fresh: SendItem[] = []
    let held = 0
    for (const item of sendable) {
      const count = partitions.get(item.record.topic)
      if (heldBack(item.record.key, item.index)) {
        outcomes[item.index] = notSent()
      } else if (typeof count !== 'number') {
        fail(item.record.key, item.index)
        outcomes[item.index] = {
          status: 'failed',
          error: count?.error ?? 'no metadata for the topic',
          retriable: count?.retriable ?? true,
        }
      } else {
        item.message.partition = partitionFor(item.record.topic, item.message, count)
        if (!this.#inDoubt.has(partitionKey(item))) main.push(item)
        else if (confirmed.has(item.record.topic)) fresh.push(item)
        else {
          // Unsafe on the main producer, impossible on a fresh one: fail now rather than wait.
          held++
          fail(item.record.key, item.index)
          outcomes[item.index] = {
            status: 'failed',
            error: `LEADER_NOT_AVAILABLE: the last send to ${item.record.topic}:${item.message.partition} has an unknown outcome, and the metadata of ${item.record.topic} does not show a leader for each of its partitions; its records are sent again, on a new producer, once it does.`,
            retriable: true,
          }
        }
      }
    }

    // In idempotent mode each partition leader gets its own send, and each send's outcome is
    // collected on its own: kafkajs runs one send over several brokers as a unit, and when one
    // broker fails it throws away the acknowledgements of the others, which would then be sent
    // again. (A transaction is all-or-nothing anyway: one send for the batch.)
    const groups: { lane: Lane; items: SendItem[] }[] = this.capabilities.transactions
      ? [{ lane: 'main', items: main }]
      : [
          ...this.#byLeader(main).map((items) => ({ lane: 'main' as const, items })),
          ...this.#byLeader(fresh).map((items) => ({ lane: 'fresh' as const, items })),
        ]
    const refused: { group: SendItem[]; error: OutboxKitError }[] = []
    const errors: OutboxKitError[] = []
    const doubtsBefore = this.#inDoubt.size
    await this.#retiring(async () => {
      await Promise.all(
        groups.map(async ({ lane, items: group }) => {
          try {
            const requests = splitRequests(group, this.#maxRequestBytes)
            if (this.capabilities.transactions) await this.#sendTransaction(requests, outcomes)
            else await this.#sendIdempotent(lane, requests, outcomes)
          } catch (error) {
            if (!(error instanceof OutboxKitError) || error.code !== ErrorCode.TransportFailed) throw error
            // The broker refused a record for what it is; the request does not say which.
            if (!error.retriable) refused.push({ group, error })
            else {
              errors.push(error)
              for (const item of group) outcomes[item.index] = notSent(error.message)
            }
          }
        }),
      )
      if (fresh.length > 0 && this.#inDoubt.size === doubtsBefore)
        await this.#promote(fresh, outcomes, confirmed)
    })
    // Nothing got through: the outcome of the whole call is in doubt (an outage), so throw and
    // let the relay release the batch without counting attempts. So too when nothing was sent
    // because in-doubt records wait for metadata the cluster did not give (unreachable, not a
    // leaderless partition it reports).
    if (errors.length === groups.length && (errors.length > 0 || (held > 0 && unanswered)))
      throw errors[0] ?? unanswered
    for (const { group, error } of refused) {
      // Send one record at a time to find the culprit, so the others still go out and only it
      // is dead-lettered.
      if (group.length === 1) {
        outcomes[group[0]!.index] = { status: 'failed', error: error.message, retriable: false }
        continue
      }
      if (this.#session) {
        // The session is over: its successor sends these records one per transaction.
        this.#session.refused(group.map((item) => item.record.id))
        for (const item of group)
          outcomes[item.index] = notSent(
            `the broker refused a record of its transaction (${error.message}); its records are sent one per transaction next`,
          )
        continue
      }
      for (const item of group) {
        if (heldBack(item.record.key, item.index)) {
          outcomes[item.index] = notSent()
          continue
        }
        const [outcome] = await this.#publish([item.record])
        outcomes[item.index] = outcome
        if (outcome?.status === 'failed') fail(item.record.key, item.index)
      }
    }
    return outcomes.map((o) => o ?? notSent())
  }

  /**
   * Exactly-once session mode, after the broker refused a record of a transaction: each record in
   * a transaction of its own, so only the refused one fails. A key's records after a failed one,
   * and everything after the session ended, are not sent.
   */
  async #publishIsolated(records: readonly ClaimedRecord[]): Promise<readonly PublishOutcome[]> {
    const outcomes: PublishOutcome[] = []
    const failedKeys = new Set<string>()
    for (const record of records) {
      if (failedKeys.has(record.key)) {
        outcomes.push(notSent())
        continue
      }
      if (this.#ended) {
        failedKeys.add(record.key)
        outcomes.push(notSent('the exactly-once session ended'))
        continue
      }
      const [outcome] = await this.#publish([record])
      outcomes.push(outcome ?? notSent())
      if (outcome?.status !== 'published') failedKeys.add(record.key)
    }
    return outcomes
  }

  /**
   * Sends the requests in one transaction and fills in outcomes: all of them become visible, or
   * none. Throws an OutboxKitError when the transaction did not commit.
   */
  async #sendTransaction(
    requests: readonly (readonly SendItem[])[],
    outcomes: (PublishOutcome | undefined)[],
  ): Promise<void> {
    if (requests.length === 0) return
    const producer = await this.#getProducer()
    const began = Date.now()
    const transaction = await this.#guard(() => producer.transaction())
    const sent = requests.flat().map((item) => item.record)
    // The session's progress rides in the last request, beside the records: one produce request
    // and one AddPartitionsToTxn fewer per transaction than sending it on its own.
    const progress = this.#session?.progress(sent)
    try {
      for (const [i, request] of requests.entries()) {
        const batch = this.#batch(request)
        const carriesProgress = progress !== undefined && i === requests.length - 1
        if (carriesProgress) batch.topicMessages.push(progress)
        const metadata = await this.#answered(transaction.sendBatch(batch))
        const missing = unacknowledged(request, metadata)
        if (carriesProgress && !metadata.some((m) => m.topicName === progress.topic && m.errorCode === 0))
          missing.add(progress.topic)
        if (missing.size > 0) throw unacknowledgedError(missing)
      }
      await this.#answered(transaction.commit(), 'commit')
    } catch (error) {
      // An abort that does not come back leaves the producer in ABORTING, where it can start no
      // transaction again: #failure retires it either way, and the next batch gets a new producer
      // whose initTransactions ends whatever this one left open.
      await this.#answered(transaction.abort(), 'abort').catch(() => {})
      throw await this.#failure(error, Date.now() - began)
    }
    this.#session?.committed(sent)
    for (const request of requests) for (const item of request) outcomes[item.index] = { status: 'published' }
  }

  /**
   * Sends the requests of one leader group on the main or the fresh producer and fills in
   * outcomes. A record counts as published only if the broker's answer acknowledges its
   * partition: kafkajs 2.2.4 can resolve a multi-partition send whose retry skipped a partition
   * after a leader change, and such records must be sent again. The partitions of a send whose
   * outcome is unknown become in doubt. Throws an OutboxKitError when nothing was published.
   */
  async #sendIdempotent(
    lane: Lane,
    requests: readonly (readonly SendItem[])[],
    outcomes: (PublishOutcome | undefined)[],
  ): Promise<void> {
    if (requests.length === 0) return
    // A producer that cannot be made sent nothing: no partition is in doubt.
    const producer = await (lane === 'main' ? this.#getProducer() : this.#getFresh())
    for (let i = 0; i < requests.length; i++) {
      const request = requests[i]!
      let missing: Set<string>
      try {
        missing = unacknowledged(request, await this.#answered(producer.sendBatch(this.#batch(request))))
      } catch (error) {
        const failure = await this.#failure(error)
        // A refusal of a record is the broker's answer; anything else leaves the outcome unknown.
        if (failure.retriable) this.#doubt(lane, request)
        if (i === 0) throw failure
        // Earlier requests were acknowledged and stay published; this one and later ones were not sent.
        for (const later of requests.slice(i))
          for (const item of later) outcomes[item.index] = notSent(failure.message)
        return
      }
      for (const item of request) {
        outcomes[item.index] = missing.has(partitionKey(item))
          ? { status: 'failed', error: unacknowledgedError(missing).message, retriable: true }
          : { status: 'published' }
      }
      if (missing.size > 0) {
        // What the producer believes of those partitions is in doubt; send nothing more in this call.
        this.#doubt(
          lane,
          request.filter((item) => missing.has(partitionKey(item))),
        )
        for (const entry of this.#metadata.values()) entry.at = 0
        for (const later of requests.slice(i + 1)) for (const item of later) outcomes[item.index] = notSent()
        return
      }
    }
  }

  /**
   * Marks the partitions of `items` in doubt. The main producer is kept for the other partitions;
   * a fresh producer is only ever used for in-doubt partitions, so it is replaced outright.
   */
  #doubt(lane: Lane, items: readonly SendItem[]): void {
    for (const item of items) this.#inDoubt.add(partitionKey(item))
    if (lane === 'fresh' && this.#fresh) {
      this.#retired.push(this.#fresh)
      this.#fresh = undefined
      this.producerRebuilds++
    }
  }

  /**
   * Makes the fresh producer the main one, once it has published every in-doubt record of this
   * call, nothing else fell in doubt, and every topic with an in-doubt partition has all its
   * leaders again (so the new main producer can load their metadata). The old main producer is
   * closed; the fresh one has no in-doubt partition, so the set is cleared.
   */
  async #promote(
    fresh: readonly SendItem[],
    outcomes: readonly (PublishOutcome | undefined)[],
    confirmed: ReadonlySet<string>,
  ): Promise<void> {
    if (!this.#fresh || !fresh.every((item) => outcomes[item.index]?.status === 'published')) return
    const others = [...new Set([...this.#inDoubt].map(topicOf))].filter((topic) => !confirmed.has(topic))
    if (others.length > 0) {
      const check = await this.#partitionCounts(others, new Set(others)).catch(() => undefined)
      if (!check || others.some((topic) => !check.confirmed.has(topic))) return
    }
    if (!this.#fresh) return
    if (this.#producer) this.#retired.push(this.#producer)
    this.#producer = this.#fresh
    this.#fresh = undefined
    this.#inDoubt.clear()
    this.producerRebuilds++
  }

  /**
   * Waits for a send at most `requestTimeoutMs`. kafkajs retries a send to an unreachable leader
   * for its whole retry budget, refreshing metadata that cannot load while the partition has no
   * leader; past the limit the send counts as in doubt and the publish goes on without it (it
   * settles in the background and is never relied on). A transaction's sends, commit and abort
   * are bounded the same way: past the limit the transaction's producer is replaced.
   */
  async #answered<T>(send: Promise<T>, what: 'send' | 'commit' | 'abort' = 'send'): Promise<T> {
    const limitMs = this.#options.requestTimeoutMs ?? 30_000
    send.catch(() => {})
    let timer: ReturnType<typeof setTimeout> | undefined
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new OutboxKitError(
              ErrorCode.TransportFailed,
              `Kafka did not answer ${what === 'send' ? 'a send' : `the transaction's ${what}`} within ${limitMs} ms (requestTimeoutMs); its outcome is unknown, so its records will be sent again.`,
              { source: 'kafka', retriable: true },
            ),
          ),
        limitMs,
      )
    })
    try {
      return await Promise.race([send, timeout])
    } finally {
      clearTimeout(timer)
    }
  }

  /**
   * Partition counts per topic (cached for a minute), or why a topic has none, and which topics
   * were just seen with a leader for every partition (`confirmed`). Topics in `confirm` are looked
   * up even when cached. A topic whose count is known waits at most LOOKUP_WAIT_MS for its lookup
   * and keeps its count while the lookup fails or is slow. A topic that does not exist is asked for
   * as a producer asks for it, so a broker with `auto.create.topics.enable=true` creates it on
   * first publish, as it would for a plain kafkajs producer (the admin client's own lookups never
   * create topics). `unanswered` is set when a lookup of a known topic failed or was too slow.
   */
  async #partitionCounts(
    topics: readonly string[],
    confirm: ReadonlySet<string> = new Set(),
  ): Promise<{
    counts: Map<string, number | TopicFault>
    confirmed: Set<string>
    unanswered: OutboxKitError | undefined
  }> {
    const counts = new Map<string, number | TopicFault>()
    const confirmed = new Set<string>()
    let unanswered: OutboxKitError | undefined
    const now = Date.now()
    const known = (topic: string) => {
      const cached = this.#metadata.get(topic)
      return cached !== undefined && now - cached.at < METADATA_TTL_MS && !confirm.has(topic)
    }
    // Records of topics already known go out without waiting for a topic never seen before
    // (looked up and possibly created by the broker, which takes hundreds of ms).
    const othersGo = topics.some(known)
    await Promise.all(
      topics.map(async (topic) => {
        const cached = this.#metadata.get(topic)
        if (cached && now - cached.at < METADATA_TTL_MS && !confirm.has(topic)) {
          counts.set(topic, cached.partitions)
          return
        }
        if (cached) {
          const found = await this.#waitForLookUp(topic)
          if (typeof found === 'number') confirmed.add(topic)
          else if (found.type === UNREACHABLE || found.type === PENDING)
            unanswered ??= new OutboxKitError(ErrorCode.TransportFailed, found.error, {
              source: 'kafka',
              retriable: true,
            })
          // kafkajs refuses a topic's whole metadata while one partition has no leader; the partition
          // count known before still routes the other partitions' records.
          counts.set(
            topic,
            typeof found === 'number' ? found : PASSING_FAULTS.has(found.type) ? cached.partitions : found,
          )
          return
        }
        const discovery = this.#discover(topic)
        const found = othersGo
          ? await waitAtMost(discovery, NEW_TOPIC_WAIT_MS, discovering(topic))
          : await discovery
        if (typeof found === 'number') confirmed.add(topic)
        counts.set(topic, found)
      }),
    )
    return { counts, confirmed, unanswered }
  }

  /**
   * The first lookup of a topic, shared by the publishes that want it: its metadata, after the
   * broker created it on first use where it does; it goes on in the background when a publish
   * stops waiting for it, and caches what it finds.
   */
  #discover(topic: string): Promise<number | TopicFault> {
    let discovery = this.#discoveries.get(topic)
    if (!discovery) {
      discovery = (async () => {
        const admin = await this.#getAdmin()
        let found = await this.#lookUp(admin, topic)
        if (typeof found !== 'number' && found.type === 'UNKNOWN_TOPIC_OR_PARTITION') {
          if (await this.#createOnFirstUse(admin, topic)) {
            // The broker creates the topic in the background; the admin client sees it a moment later.
            const deadline = Date.now() + AUTO_CREATE_WAIT_MS
            while (typeof found !== 'number' && Date.now() < deadline) {
              await new Promise((resolve) => setTimeout(resolve, 100))
              found = await this.#lookUp(admin, topic)
            }
          } else {
            found = { type: 'UNKNOWN_TOPIC_OR_PARTITION', error: missingTopic(topic), retriable: true }
          }
        }
        return found
      })().finally(() => this.#discoveries.delete(topic))
      // A publish that stopped waiting leaves nobody to see a failure: it is seen by the next one.
      discovery.catch(() => {})
      this.#discoveries.set(topic, discovery)
    }
    return discovery
  }

  /**
   * The topic's lookup, shared with any still under way, waited for at most LOOKUP_WAIT_MS: a
   * `PENDING` fault when it takes longer, an `UNREACHABLE` one when it throws.
   */
  async #waitForLookUp(topic: string): Promise<number | TopicFault> {
    let lookUp = this.#lookUps.get(topic)
    if (!lookUp) {
      lookUp = this.#getAdmin()
        .then((admin) => this.#lookUp(admin, topic))
        .catch(
          (error): TopicFault => ({
            type: UNREACHABLE,
            error: `Looking up ${topic} in Kafka failed: ${describeError(error)}`,
            retriable: true,
          }),
        )
        .finally(() => this.#lookUps.delete(topic))
      this.#lookUps.set(topic, lookUp)
    }
    let timer: ReturnType<typeof setTimeout> | undefined
    const pending = new Promise<TopicFault>((resolve) => {
      timer = setTimeout(
        () =>
          resolve({
            type: PENDING,
            error: `Kafka did not answer a metadata request for ${topic} within ${LOOKUP_WAIT_MS} ms.`,
            retriable: true,
          }),
        LOOKUP_WAIT_MS,
      )
    })
    try {
      return await Promise.race([lookUp, pending])
    } finally {
      clearTimeout(timer)
    }
  }

  /** The topic's partition count from the admin client, or the topic-level fault it reports. */
  async #lookUp(admin: Admin, topic: string): Promise<number | TopicFault> {
    try {
      const { topics: found } = await admin.fetchTopicMetadata({ topics: [topic] })
      const partitions = found[0]?.partitions.length ?? 0
      if (partitions > 0) {
        const leaders: number[] = []
        for (const p of found[0]!.partitions) leaders[p.partitionId] = p.leader
        this.#leaders.set(topic, leaders)
        this.#metadata.set(topic, { partitions, at: Date.now() })
        return partitions
      }
      return {
        type: 'UNKNOWN_TOPIC_OR_PARTITION',
        error: `UNKNOWN_TOPIC_OR_PARTITION: topic ${topic} has no partitions`,
        retriable: true,
      }
    } catch (error) {
      const type = protocolErrorType(error)
      // A topic fault fails that topic's records, not the batch.
      if (type !== undefined && TOPIC_FAULTS.has(type))
        return {
          type,
          error: `${type}: ${describeError(error)}`,
          retriable: !PERMANENT_TOPIC_FAULTS.has(type),
        }
      // A failed lookup says nothing about the producers: keep them.
      throw this.#describe(error)
    }
  }

  /**
   * Requests the topic's metadata with auto-creation allowed, through a short-lived plain producer
   * sending no records, as a kafkajs producer does before its first send. True if the broker
   * creates topics on use (the topic then appears shortly), false if it does not. A KRaft broker
   * answers that first request with UNKNOWN_TOPIC_OR_PARTITION in both cases, so its
   * `auto.create.topics.enable` decides; when that setting cannot be read (no DescribeConfigs
   * permission), the topic is assumed to be on its way.
   */
  async #createOnFirstUse(admin: Admin, topic: string): Promise<boolean> {
    const producer = this.#kafka.producer({
      allowAutoTopicCreation: true,
      createPartitioner: Partitioners.DefaultPartitioner,
      retry: { retries: 0 },
    })
    try {
      await producer.connect()
      await producer.send({ topic, acks: -1, messages: [] })
      return true
    } catch (error) {
      if (protocolErrorType(error) !== 'UNKNOWN_TOPIC_OR_PARTITION') throw this.#describe(error)
    } finally {
      await producer.disconnect().catch(() => {})
    }
    this.#autoCreates ??= brokerCreatesTopics(admin).catch(() => undefined)
    return (await this.#autoCreates) !== false
  }

  /** Groups records by the broker leading their partition, keeping their order. */
  #byLeader(items: readonly SendItem[]): SendItem[][] {
    const groups = new Map<number, SendItem[]>()
    for (const item of items) {
      const leader = this.#leaders.get(item.record.topic)?.[item.message.partition!] ?? -1
      const group = groups.get(leader) ?? []
      group.push(item)
      groups.set(leader, group)
    }
    return [...groups.values()]
  }

  /** Runs `fn`, then disconnects the producers discarded meanwhile (other sends may have used them). */
  async #retiring(fn: () => Promise<void>): Promise<void> {
    try {
      await fn()
    } finally {
      const retired = this.#retired
      this.#retired = []
      for (const producer of retired) producer.then((p) => p.disconnect()).catch(() => {})
    }
  }

  async #getAdmin(): Promise<Admin> {
    this.#admin ??= (async () => {
      const admin = this.#kafka.admin()
      await admin.connect()
      return admin
    })().catch((error) => {
      this.#admin = undefined
      // An unreachable cluster is an outage like a failed send: a retriable TRANSPORT_FAILED.
      throw this.#describe(error)
    })
    return this.#admin
  }

  #batch(items: readonly SendItem[]) {
    const byTopic = new Map<string, Message[]>()
    for (const { record, message } of items) {
      const list = byTopic.get(record.topic) ?? []
      list.push(message)
      byTopic.set(record.topic, list)
    }
    return {
      topicMessages: [...byTopic].map(([topic, messages]) => ({ topic, messages })),
      acks: -1,
      timeout: this.#options.requestTimeoutMs ?? 30_000,
      ...(this.#options.compression === undefined ? {} : { compression: this.#options.compression }),
    }
  }

  async #getProducer(): Promise<Producer> {
    this.#producer ??= this.#guard(async () => {
      const producer = this.#kafka.producer({
        createPartitioner: Partitioners.DefaultPartitioner,
        ...this.#options.producer,
        idempotent: true,
        maxInFlightRequests: 1,
        ...(this.#options.transactionalId === undefined
          ? {}
          : {
              transactionalId: this.#options.transactionalId,
              retry: {
                initialRetryTime: TRANSACTIONAL_INITIAL_RETRY_MS,
                retries: TRANSACTIONAL_RETRIES,
                ...this.#options.producer?.retry,
              },
            }),
      })
      await producer.connect()
      return producer
    }).catch((error) => {
      this.#producer = undefined
      throw error
    })
    return this.#producer
  }

  /** The fresh idempotent producer for in-doubt partitions (a new producer id, so new sequences). */
  async #getFresh(): Promise<Producer> {
    this.#fresh ??= (async () => {
      const producer = this.#kafka.producer({
        createPartitioner: Partitioners.DefaultPartitioner,
        ...this.#options.producer,
        idempotent: true,
        maxInFlightRequests: 1,
      })
      try {
        await producer.connect()
      } catch (error) {
        await producer.disconnect().catch(() => {})
        throw this.#describe(error)
      }
      return producer
    })().catch((error) => {
      this.#fresh = undefined
      throw error
    })
    return this.#fresh
  }

  /**
   * Handles a failed send or producer step and returns the error to throw. In transactional mode
   * the producer is discarded (a new one's `initTransactions` takes a new epoch, which aborts
   * whatever the failed transaction left open); in idempotent mode it is kept, and the caller
   * marks the send's partitions in doubt. `transactionAgeMs` is how long the failed transaction
   * had been open, when there was one.
   */
  async #failure(error: unknown, transactionAgeMs?: number): Promise<OutboxKitError> {
    if (this.#session) {
      // A session never goes on after a failure: the relay reconciles and opens a new one.
      const described = this.#describe(error, transactionAgeMs)
      this.#ended ??= described
      const producer = this.#producer
      this.#producer = undefined
      if (producer) {
        this.producerRebuilds++
        this.#retired.push(producer)
      }
      return described
    }
    if (this.capabilities.transactions) {
      const producer = this.#producer
      this.#producer = undefined
      if (producer) {
        this.producerRebuilds++
        this.#retired.push(producer)
      }
    }
    // Leaders may have moved: look them up again before the next batch is grouped.
    for (const entry of this.#metadata.values()) entry.at = 0
    return this.#describe(error, transactionAgeMs)
  }

  /**
   * The error to throw for a kafkajs failure. An epoch error in a transaction that has been open
   * for at least `transactionTimeout` is taken as expiry: the coordinator aborted it and bumped the
   * epoch, no other producer is involved, so the next batch starts on a new producer (its
   * `initTransactions` takes the new epoch) and this batch is retried. An epoch error in a younger
   * transaction can only come from another producer that initialised the same transactional id
   * after us: that is fencing, and the transport stops for good.
   */
  #describe(error: unknown, transactionAgeMs?: number): OutboxKitError {
    const type = protocolErrorType(error)
    const timeoutMs = this.#options.producer?.transactionTimeout ?? DEFAULT_TRANSACTION_TIMEOUT_MS
    if (
      type !== undefined &&
      EPOCH_ERRORS.has(type) &&
      transactionAgeMs !== undefined &&
      transactionAgeMs >= timeoutMs
    ) {
      return new OutboxKitError(
        ErrorCode.TransportFailed,
        `The Kafka transaction was open for ${transactionAgeMs} ms, longer than transactionTimeout (${timeoutMs} ms), so the coordinator aborted it (${type}); the batch will be published again on a new producer. If batches often take this long, raise producer.transactionTimeout or lower batchSize.`,
        { source: 'kafka', cause: error, retriable: true, details: { brokerError: type } },
      )
    }
    if (type !== undefined && FENCING.has(type)) {
      this.#fenced = true
      return this.#fencedError(error)
    }
    if (error instanceof OutboxKitError) return error
    return new OutboxKitError(
      ErrorCode.TransportFailed,
      `Publishing to Kafka failed${type ? ` (${type})` : ''}: ${describeError(error)}${type === undefined ? ' Check that the brokers are reachable; the records are published again later.' : ''}`,
      {
        source: 'kafka',
        cause: error,
        retriable: type === undefined || !RECORD_FAULTS.has(type),
        details: { brokerError: type ?? null },
      },
    )
  }

  async #guard<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn()
    } catch (error) {
      throw await this.#failure(error)
    }
  }

  #fencedError(cause?: unknown): OutboxKitError {
    return new OutboxKitError(
      ErrorCode.Fenced,
      `Another producer with transactionalId "${this.#options.transactionalId}" took over; this transport is fenced. Stop this relay.`,
      { source: 'kafka', cause, retriable: false },
    )
  }

  async close(): Promise<void> {
    this.#closed = true
    await this.#queue
    const producer = this.#producer
    const fresh = this.#fresh
    const admin = this.#admin
    this.#producer = undefined
    this.#fresh = undefined
    this.#admin = undefined
    await producer?.then((p) => p.disconnect()).catch(() => {})
    await fresh?.then((p) => p.disconnect()).catch(() => {})
    await admin?.then((a) => a.disconnect()).catch(() => {})
  }
}

const partitioner = Partitioners.DefaultPartitioner()
const syntheticMetadata = new Map<number, PartitionMetadata[]>()

/** The partition kafkajs' default (Java-compatible) partitioner picks for a keyed message. */
function partitionFor(topic: string, message: Message, partitions: number): number {
  let metadata = syntheticMetadata.get(partitions)
  if (!metadata) {
    metadata = Array.from({ length: partitions }, (_, partitionId) => ({
      partitionErrorCode: 0,
      partitionId,
      leader: 0,
      replicas: [0],
      isr: [0],
    }))
    syntheticMetadata.set(partitions, metadata)
  }
  return partitioner({ topic, partitionMetadata: metadata, message })
}

/** Splits records into requests of at most `maxBytes` (one record may exceed it), keeping their order. */
function splitRequests(items: readonly SendItem[], maxBytes: number): SendItem[][] {
  const requests: SendItem[][] = []
  let current: SendItem[] = []
  let bytes = 0
  for (const item of items) {
    if (current.length > 0 && bytes + item.size > maxBytes) {
      requests.push(current)
      current = []
      bytes = 0
    }
    current.push(item)
    bytes += item.size
  }
  if (current.length > 0) requests.push(current)
  return requests
}

function partitionKey(item: SendItem): string {
  return `${item.record.topic}\u0000${item.message.partition}`
}

/** The topic of a {@link partitionKey}. */
function topicOf(key: string): string {
  return key.slice(0, key.lastIndexOf('\u0000'))
}

/** The topic-partitions of a request that the broker's answer does not acknowledge. */
function unacknowledged(request: readonly SendItem[], metadata: readonly RecordMetadata[]): Set<string> {
  const acknowledged = new Set(
    metadata.filter((m) => m.errorCode === 0).map((m) => `${m.topicName}\u0000${m.partition}`),
  )
  const missing = new Set<string>()
  for (const item of request) {
    const key = partitionKey(item)
    if (!acknowledged.has(key)) missing.add(key)
  }
  return missing
}

function unacknowledgedError(missing: ReadonlySet<string>): OutboxKitError {
  const list = [...missing].map((k) => k.replace('\u0000', ':')).join(', ')
  return new OutboxKitError(
    ErrorCode.TransportFailed,
    `The broker did not acknowledge ${list}; those records will be sent again.`,
    {
      source: 'kafka',
      retriable: true,
    },
  )
}

/** Reads `auto.create.topics.enable` from one broker of the cluster. */
async function brokerCreatesTopics(admin: Admin): Promise<boolean | undefined> {
  const { brokers } = await admin.describeCluster()
  const broker = brokers[0]
  if (!broker) return undefined
  const { resources } = await admin.describeConfigs({
    includeSynonyms: false,
    resources: [
      {
        type: BROKER_CONFIG_RESOURCE,
        name: String(broker.nodeId),
        configNames: ['auto.create.topics.enable'],
      },
    ],
  })
  const value = resources[0]?.configEntries.find(
    (e) => e.configName === 'auto.create.topics.enable',
  )?.configValue
  return value === undefined ? undefined : value === 'true'
}

function discovering(topic: string): TopicFault {
  return {
    type: DISCOVERING,
    error: `${DISCOVERING}: the metadata of ${topic}, a topic not published to before, is still being looked up (the broker may be creating it); its records are published by a later attempt, the others' go on.`,
    retriable: true,
  }
}

/** `promise`'s value, or `fallback` once `ms` passed first; a rejection before then rejects. */
function waitAtMost<T>(promise: Promise<T>, ms: number, fallback: T): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined
  const late = new Promise<T>((resolve) => {
    timer = setTimeout(() => resolve(fallback), ms)
  })
  return Promise.race([promise, late]).finally(() => clearTimeout(timer))
}

function missingTopic(topic: string): string {
  return (
    `UNKNOWN_TOPIC_OR_PARTITION: topic "${topic}" does not exist and the broker does not create topics ` +
    `on first use (auto.create.topics.enable=false). Create it, e.g. \`kafka-topics.sh --bootstrap-server <broker> ` +
    `--create --topic ${topic} --partitions <n> --replication-factor <r>\` or kafkajs ` +
    `\`admin.createTopics({ topics: [{ topic: '${topic}', numPartitions: <n> }] })\`; its records are retried with backoff until then.`
  )
}

export function notSent(reason = 'an earlier record of its key failed'): PublishOutcome {
  return { status: 'failed', error: `Not sent: ${reason.replace(/\.$/, '')}.`, retriable: true }
}

function toMessage(record: ClaimedRecord): Message {
  const payload = record.payload
  return {
    key: record.key,
    value: Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength),
    headers: keepTraceHeaders(publishedHeaders(record)),
  }
}

const TRACE_HEADERS: ReadonlySet<string> = new Set([Headers.traceparent, Headers.tracestate, Headers.baggage])

/**
 * The trace context stored with an event travels to the broker unchanged. Producer
 * instrumentations (such as `@opentelemetry/instrumentation-kafkajs`) inject the send span's
 * context into every message's headers; this view ignores writes to the trace headers, so the
 * consumer continues the trace of the request that wrote the event, not the relay's.
 */
function keepTraceHeaders(headers: Record<string, string>): Record<string, string> {
  return new Proxy(headers, {
    set(target, name, value) {
      if (typeof name === 'string' && TRACE_HEADERS.has(name.toLowerCase())) return true
      return Reflect.set(target, name, value)
    },
    defineProperty(target, name, descriptor) {
      if (typeof name === 'string' && TRACE_HEADERS.has(name.toLowerCase())) return true
      return Reflect.defineProperty(target, name, descriptor)
    },
  })
}

function messageSize(record: ClaimedRecord, message: Message): number {
  let size = RECORD_OVERHEAD_BYTES + Buffer.byteLength(record.key) + record.payload.byteLength
  for (const [name, value] of Object.entries(message.headers ?? {})) {
    size += Buffer.byteLength(name) + (typeof value === 'string' ? Buffer.byteLength(value) : 0)
  }
  return size
}

/** The broker error type (`MESSAGE_TOO_LARGE`, ...) behind a kafkajs error, if any. */
export function protocolErrorType(error: unknown): string | undefined {
  for (let e: unknown = error, depth = 0; e && depth < 5; depth++) {
    const candidate = e as { type?: unknown; cause?: unknown; originalError?: unknown }
    if (typeof candidate.type === 'string') return candidate.type
    e = candidate.originalError ?? candidate.cause
  }
  return undefined
}
