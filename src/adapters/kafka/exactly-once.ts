import type { Admin, Kafka, Message } from 'kafkajs'
import { describeError, ErrorCode, OutboxKitError } from '../../core/errors.js'
import type { ClaimedRecord } from '../../core/message.js'
import { nonEmptyString, positiveInteger } from '../../core/options.js'
import type { ExactlyOnceSession, ExactlyOnceTransport, PublishOutcome } from '../../core/transport.js'
import { isUuid } from '../../core/uuid.js'
import {
  type KafkaExactlyOnceOptions,
  KafkaTransport,
  type KafkaTransportOptions,
} from './kafka-transport.js'

/**
 * The progress topic's records. Each is keyed:
 * - `genesis`: written once into partition 0 of a new, empty topic. A topic that holds records but
 *   no genesis was not made by outboxkit (or was recreated by the broker's auto-creation), so the
 *   history it should hold is gone.
 * - `shard:<n>`: a session's progress for shard n. The value is a version byte (1) followed by the
 *   16 bytes of each outbox row id the session committed and had not yet seen settled; the
 *   `outboxkit-relay` header names the relay. Compaction keeps the latest per shard, which is all
 *   that reconciliation needs.
 * - `marker:<relayId>`: a session's read marker, one per partition, with a random nonce. Reading up
 *   to one's own marker (committed after the session's fences) is reading to the end.
 */
const GENESIS_KEY = 'genesis'
const SHARD_KEY_PREFIX = 'shard:'
const MARKER_KEY_PREFIX = 'marker:'
const PROGRESS_FORMAT = 1
const RELAY_HEADER = 'outboxkit-relay'

const DEFAULT_PREFIX = 'outboxkit-'
const DEFAULT_READ_TIMEOUT_MS = 60_000

function unavailable(message: string, retriable: boolean, cause?: unknown): OutboxKitError {
  return new OutboxKitError(ErrorCode.ProgressUnavailable, message, {
    source: 'kafka',
    retriable,
    ...(cause === undefined ? {} : { cause }),
  })
}

/**
 * The Kafka side of exactly-once publishing: each relay's sessions publish in transactions under
 * the transactional id `<prefix><relayId>`, and every transaction carries the progress of the
 * shards it touched to a compacted progress topic. See `KafkaTransportOptions.exactlyOnce`.
 */
export class KafkaExactlyOnce implements ExactlyOnceTransport {
  readonly #kafka: Kafka
  readonly #transportOptions: KafkaTransportOptions
  readonly topic: string
  readonly prefix: string
  readonly #replicationFactor: number | undefined
  readonly readTimeoutMs: number
  /** The topic was seen (or created) by this transport: it is never created again. */
  #topicSeen = false
  /** Ids the broker refused a record among: later sessions send them one per transaction. */
  readonly isolatedIds = new Set<string>()

  constructor(kafka: Kafka, transportOptions: KafkaTransportOptions, options: KafkaExactlyOnceOptions) {
    this.#kafka = kafka
    this.#transportOptions = transportOptions
    this.topic = nonEmptyString('exactlyOnce.progressTopic', options?.progressTopic)
    this.prefix = options.transactionalIdPrefix ?? DEFAULT_PREFIX
    if (typeof this.prefix !== 'string') {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        'exactlyOnce.transactionalIdPrefix must be a string.',
        {
          source: 'kafka',
        },
      )
    }
    this.#replicationFactor =
      options.replicationFactor === undefined
        ? undefined
        : positiveInteger('exactlyOnce.replicationFactor', options.replicationFactor, undefined, 'kafka')
    this.readTimeoutMs = positiveInteger(
      'exactlyOnce.readTimeoutMs',
      options.readTimeoutMs ?? DEFAULT_READ_TIMEOUT_MS,
      undefined,
      'kafka',
    )
  }

  get kafka(): Kafka {
    return this.#kafka
  }

  async open(relayId: string): Promise<ExactlyOnceSession> {
    const { partitions, empty } = await this.#checkTopic()
    const session = new KafkaExactlyOnceSession(this, this.#transportOptions, relayId, partitions)
    try {
      await session.start(empty)
    } catch (error) {
      await session.close()
      throw error
    }
    return session
  }

  /**
   * Creates the progress topic when it is missing (once in this transport's life: a topic that
   * disappears afterwards was deleted, and its history with it), checks its settings, and returns
   * its partition count and whether it holds nothing yet.
   */
  async #checkTopic(): Promise<{ partitions: number; empty: boolean }> {
    const admin = this.#kafka.admin()
    try {
      await admin.connect()
      const topics = await admin.listTopics()
      if (!topics.includes(this.topic)) {
        if (this.#topicSeen) {
          throw unavailable(
            `The progress topic "${this.topic}" was deleted while the relay ran; what it held cannot be recovered, so exactly-once cannot be proven. Recreate it only after every relay has stopped and the outbox is reconciled by hand (docs/guarantees.md).`,
            false,
          )
        }
        await admin.createTopics({
          waitForLeaders: true,
          topics: [
            {
              topic: this.topic,
              numPartitions: 1,
              ...(this.#replicationFactor === undefined
                ? {}
                : { replicationFactor: this.#replicationFactor }),
              configEntries: [
                { name: 'cleanup.policy', value: 'compact' },
                { name: 'min.compaction.lag.ms', value: '0' },
                // Small segments keep the part compaction has not reached yet (read on every
                // reconciliation) small.
                { name: 'segment.bytes', value: String(16 * 1024 * 1024) },
                { name: 'segment.ms', value: String(10 * 60_000) },
              ],
            },
          ],
        })
      }
      await checkCompacted(admin, this.topic)
      const offsets = await admin.fetchTopicOffsets(this.topic)
      this.#topicSeen = true
      return { partitions: offsets.length, empty: offsets.every((o) => o.high === o.low) }
    } catch (error) {
      if (error instanceof OutboxKitError) throw error
      throw unavailable(
        `Could not check the progress topic "${this.topic}": ${describeError(error)}. The relay publishes nothing until it can.`,
        true,
        error,
      )
    } finally {
      await admin.disconnect().catch(() => {})
    }
  }
}

async function checkCompacted(admin: Admin, topic: string): Promise<void> {
  const { resources } = await admin.describeConfigs({
    includeSynonyms: false,
    resources: [{ type: TOPIC_CONFIG_RESOURCE, name: topic, configNames: ['cleanup.policy'] }],
  })
  const policy = resources[0]?.configEntries.find((e) => e.configName === 'cleanup.policy')?.configValue
  if (policy !== 'compact') {
    throw unavailable(
      `The progress topic "${topic}" has cleanup.policy=${policy ?? '(unknown)'}; it must be exactly "compact" (no time or size retention), or progress would be deleted. Fix it with \`kafka-configs.sh --alter --entity-type topics --entity-name ${topic} --add-config cleanup.policy=compact\`.`,
      false,
    )
  }
}

/** kafkajs' `ConfigResourceTypes.TOPIC` (not imported by name, see BROKER_CONFIG_RESOURCE). */
const TOPIC_CONFIG_RESOURCE = 2

/** One relay's exactly-once session: one transactional producer, fenced by the next session. */
class KafkaExactlyOnceSession implements ExactlyOnceSession {
  readonly #parent: KafkaExactlyOnce
  readonly #relayId: string
  readonly #partitions: number
  readonly #transport: KafkaTransport
  /** Shard → ids this session committed that the relay has not reported settled. */
  readonly #unsettled = new Map<number, Set<string>>()
  readonly #shardOf = new Map<string, number>()
  #closed = false

  constructor(
    parent: KafkaExactlyOnce,
    transportOptions: KafkaTransportOptions,
    relayId: string,
    partitions: number,
  ) {
    this.#parent = parent
    this.#relayId = relayId
    this.#partitions = Math.max(1, partitions)
    const { exactlyOnce: _, transactionalId: __, ...rest } = transportOptions
    this.#transport = new KafkaTransport(
      {
        ...rest,
        kafka: parent.kafka,
        transactionalId: `${parent.prefix}${relayId}`,
        // A deleted progress topic must fail the transaction, not come back empty and uncompacted.
        producer: { ...rest.producer, allowAutoTopicCreation: false },
      },
      {
        progress: (records) => ({ topic: parent.topic, messages: this.#progressMessages(records) }),
        committed: (records) => {
          for (const record of records) {
            const shard = record.shard!
            const ids = this.#unsettled.get(shard) ?? new Set<string>()
            this.#unsettled.set(shard, ids)
            ids.add(record.id)
            this.#shardOf.set(record.id, shard)
          }
        },
        refused: (ids) => {
          for (const id of ids) parent.isolatedIds.add(id)
        },
        isolated: (id) => parent.isolatedIds.has(id),
      },
    )
  }

  get active(): boolean {
    return !this.#closed && !this.#transport.ended
  }

  /** Takes the transactional id (fencing every earlier session of this relay) and marks a new topic. */
  async start(emptyTopic: boolean): Promise<void> {
    await this.#transport.initialize()
    if (emptyTopic) {
      await this.#transport.commitAlone(this.#parent.topic, [
        { key: GENESIS_KEY, value: JSON.stringify({ at: new Date().toISOString() }), partition: 0 },
      ])
    }
  }

  async publish(records: readonly ClaimedRecord[]): Promise<readonly PublishOutcome[]> {
    for (const record of records) {
      if (record.shard === undefined || !isUuid(record.id)) {
        throw new OutboxKitError(
          ErrorCode.InvalidOptions,
          `Exactly-once publishing needs records claimed by shard (claimOwned) with UUID ids; record ${record.id} has ${record.shard === undefined ? 'no shard' : 'an id that is not a UUID'}.`,
          { source: 'kafka' },
        )
      }
    }
    const outcomes = await this.#transport.publish(records)
    for (const record of records) this.#parent.isolatedIds.delete(record.id)
    return outcomes
  }

  settled(ids: readonly string[]): void {
    for (const id of ids) {
      const shard = this.#shardOf.get(id)
      if (shard === undefined) continue
      this.#shardOf.delete(id)
      this.#unsettled.get(shard)?.delete(id)
    }
  }

  async fence(relayIds: readonly string[]): Promise<void> {
    for (const relayId of new Set(relayIds)) {
      if (relayId === this.#relayId) continue
      const producer = this.#parent.kafka.producer({
        transactionalId: `${this.#parent.prefix}${relayId}`,
        idempotent: true,
        maxInFlightRequests: 1,
      })
      try {
        await producer.connect()
        // The first transaction initialises the id: the coordinator bumps its epoch, aborting what
        // the old producer left open and refusing whatever it sends or commits from now on.
        const transaction = await producer.transaction()
        await transaction.abort()
      } catch (error) {
        throw new OutboxKitError(
          ErrorCode.TransportFailed,
          `Could not fence relay ${relayId}'s transactional id before taking over its shards: ${describeError(error)}. Nothing of those shards is published until it is.`,
          { source: 'kafka', retriable: true, cause: error },
        )
      } finally {
        await producer.disconnect().catch(() => {})
      }
    }
  }

  async readProgress(shards: readonly number[]): Promise<ReadonlyMap<number, readonly string[]>> {
    const wanted = new Set(shards)
    const nonce = crypto.randomUUID()
    const markerKey = `${MARKER_KEY_PREFIX}${this.#relayId}`
    const topic = this.#parent.topic
    await this.#transport.commitAlone(
      topic,
      Array.from({ length: this.#partitions }, (_, partition) => ({
        key: markerKey,
        value: nonce,
        partition,
      })),
    )
    const groupId = `${this.#parent.prefix}progress-${this.#relayId}-${nonce}`
    const consumer = this.#parent.kafka.consumer({
      groupId,
      readUncommitted: false,
      allowAutoTopicCreation: false,
      maxWaitTimeInMs: 100,
    })
    const latest = new Map<number, readonly string[]>()
    const reached = new Set<number>()
    let genesis = false
    let timer: ReturnType<typeof setTimeout> | undefined
    try {
      await consumer.connect()
      await consumer.subscribe({ topic, fromBeginning: true })
      await new Promise<void>((resolve, reject) => {
        timer = setTimeout(
          () =>
            reject(
              unavailable(
                `Reading the progress topic "${topic}" to its end took longer than ${this.#parent.readTimeoutMs} ms. The relay publishes nothing until it can read it.`,
                true,
              ),
            ),
          this.#parent.readTimeoutMs,
        )
        // A consumer that crashed (kafkajs gave up on a lost connection) would restart only after
        // its own backoff, and again after each crash: the read fails now, and the relay starts a
        // fresh one after its backoff, rather than waiting out readTimeoutMs.
        consumer.on(consumer.events.CRASH, ({ payload }) => reject(payload.error))
        consumer
          .run({
            autoCommit: false,
            eachBatch: async ({ batch }) => {
              if (reached.has(batch.partition)) return
              for (const message of batch.messages) {
                const key = message.key?.toString() ?? ''
                if (key === GENESIS_KEY) {
                  genesis = true
                } else if (key === markerKey && message.value?.toString() === nonce) {
                  if (batch.partition === 0 && !genesis) {
                    reject(
                      unavailable(
                        `The progress topic "${topic}" holds records but not the genesis record outboxkit writes into a new topic: it was recreated (deleted, or created by the broker on first use), so the progress it held is gone and exactly-once cannot be proven. See docs/guarantees.md.`,
                        false,
                      ),
                    )
                    return
                  }
                  reached.add(batch.partition)
                  break
                } else if (key.startsWith(SHARD_KEY_PREFIX)) {
                  const shard = Number(key.slice(SHARD_KEY_PREFIX.length))
                  if (!wanted.has(shard)) continue
                  const ids = decodeIds(message.value)
                  if (!ids) {
                    reject(
                      unavailable(
                        `The progress topic "${topic}" holds a record for shard ${shard} (offset ${message.offset}) that outboxkit did not write; exactly-once cannot be proven. Only outboxkit relays may write to it.`,
                        false,
                      ),
                    )
                    return
                  }
                  latest.set(shard, ids)
                }
              }
              if (reached.size === this.#partitions) resolve()
            },
          })
          .catch(reject)
      })
    } catch (error) {
      if (error instanceof OutboxKitError) throw error
      throw unavailable(
        `Could not read the progress topic "${topic}": ${describeError(error)}. The relay publishes nothing until it can.`,
        true,
        error,
      )
    } finally {
      clearTimeout(timer)
      await consumer.disconnect().catch(() => {})
      void this.#deleteGroup(groupId)
    }
    return latest
  }

  async close(): Promise<void> {
    this.#closed = true
    await this.#transport.close()
  }

  /** One message per shard of `records`: what this session committed of it and its records. */
  #progressMessages(records: readonly ClaimedRecord[]): Message[] {
    const byShard = new Map<number, string[]>()
    for (const record of records) {
      const shard = record.shard!
      const ids = byShard.get(shard) ?? [...(this.#unsettled.get(shard) ?? [])]
      byShard.set(shard, ids)
      ids.push(record.id)
    }
    return [...byShard].map(([shard, ids]) => ({
      key: `${SHARD_KEY_PREFIX}${shard}`,
      value: encodeIds(ids),
      partition: shard % this.#partitions,
      headers: { [RELAY_HEADER]: this.#relayId },
    }))
  }

  /** The read's consumer group served once; it is removed so groups do not pile up. */
  async #deleteGroup(groupId: string): Promise<void> {
    const admin = this.#parent.kafka.admin()
    try {
      await admin.connect()
      await admin.deleteGroups([groupId])
    } catch {
      // Best effort: an empty group expires on its own.
    } finally {
      await admin.disconnect().catch(() => {})
    }
  }
}

/** Version byte, then 16 bytes per UUID. */
export function encodeIds(ids: readonly string[]): Buffer {
  const buffer = Buffer.alloc(1 + ids.length * 16)
  buffer[0] = PROGRESS_FORMAT
  ids.forEach((id, i) => {
    buffer.write(id.replaceAll('-', ''), 1 + i * 16, 16, 'hex')
  })
  return buffer
}

/** The ids of a progress value, or undefined when it is not one. */
export function decodeIds(value: Buffer | null | undefined): string[] | undefined {
  if (!value || value.length < 1 || value[0] !== PROGRESS_FORMAT || (value.length - 1) % 16 !== 0)
    return undefined
  const ids: string[] = []
  for (let offset = 1; offset < value.length; offset += 16) {
    const hex = value.toString('hex', offset, offset + 16)
    ids.push(
      `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`,
    )
  }
  return ids
}
