/**
 * Helpers for tests that talk to a real Kafka broker: the one started by
 * `scripts/kafka start` (127.0.0.1:9092) or the cluster named in KAFKA_BROKERS.
 */
import { randomUUID } from 'node:crypto'
import { type IHeaders, Kafka, type KafkaConfig, logLevel } from 'kafkajs'

/** Bootstrap brokers: `KAFKA_BROKERS` (comma separated) or the local single-node broker. */
export function kafkaBrokers(): string[] {
  const fromEnv = (process.env['KAFKA_BROKERS'] ?? '')
    .split(',')
    .map((broker) => broker.trim())
    .filter((broker) => broker.length > 0)
  return fromEnv.length > 0 ? fromEnv : ['127.0.0.1:9092']
}

/** A name no earlier run used: `<prefix>-<time>-<random>` (valid for topics, groups and transactional ids). */
export function uniqueName(prefix: string): string {
  return `${prefix}-${Date.now().toString(36)}-${randomUUID().slice(0, 8)}`
}

export function uniqueTopic(prefix = 'test'): string {
  return uniqueName(prefix)
}

/**
 * A kafkajs client for tests with short connection timeouts. Silent by default: kafkajs logs
 * retriable broker errors (coordinator loading, concurrent transactions) at ERROR before retrying
 * them, which reads like a failure. kafkajs itself honours `KAFKAJS_LOG_LEVEL=warn|info|debug`
 * over this level when more detail is needed.
 */
export function testKafka(brokers: string[] = kafkaBrokers(), config: Partial<KafkaConfig> = {}): Kafka {
  return new Kafka({
    clientId: 'outboxkit-test',
    brokers,
    logLevel: logLevel.NOTHING,
    connectionTimeout: 5_000,
    requestTimeout: 30_000,
    ...config,
  })
}

export interface CreateTopicOptions {
  partitions?: number
  replicationFactor?: number
  configEntries?: Record<string, string>
}

/**
 * Creates `topic` and waits until every broker of the cluster reports a leader for each of its
 * partitions (a new topic reaches each broker's metadata cache a moment after it is created).
 */
export async function createTopic(
  brokers: string[],
  topic: string,
  { partitions = 1, replicationFactor = 1, configEntries = {} }: CreateTopicOptions = {},
): Promise<void> {
  const deadline = Date.now() + 30_000
  const admin = testKafka(brokers).admin()
  await admin.connect()
  try {
    // kafkajs' own waitForLeaders gives up on UNKNOWN_TOPIC_OR_PARTITION, which a broker that has
    // not yet seen the new topic answers; waitForLeaders below retries it instead.
    await admin.createTopics({
      waitForLeaders: false,
      timeout: 30_000,
      topics: [
        {
          topic,
          numPartitions: partitions,
          replicationFactor,
          configEntries: Object.entries(configEntries).map(([name, value]) => ({ name, value })),
        },
      ],
    })
    const cluster = await admin.describeCluster()
    for (const node of cluster.brokers) {
      await waitForLeaders(`${node.host}:${node.port}`, topic, partitions, deadline)
    }
  } finally {
    await admin.disconnect()
  }
}

async function waitForLeaders(broker: string, topic: string, partitions: number, deadline: number) {
  const admin = testKafka([broker]).admin()
  await admin.connect()
  try {
    for (;;) {
      const led = await admin
        .fetchTopicMetadata({ topics: [topic] })
        .then(({ topics }) => topics[0]?.partitions.filter((partition) => partition.leader >= 0).length ?? 0)
        .catch(() => 0)
      if (led === partitions) return
      if (Date.now() > deadline) {
        throw new Error(
          `topic ${topic}: broker ${broker} knows a leader for ${led} of ${partitions} partitions`,
        )
      }
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
  } finally {
    await admin.disconnect()
  }
}

export interface ConsumedMessage {
  topic: string
  partition: number
  offset: string
  key: Buffer | null
  value: Buffer | null
  headers: IHeaders
}

export interface ConsumeOptions {
  topic: string
  /** Stop once this many messages have arrived. */
  count: number
  groupId?: string
  /** false (default) = read_committed: records of aborted or open transactions are skipped. */
  readUncommitted?: boolean
  timeoutMs?: number
}

/**
 * Reads `count` messages of `topic` from the beginning with a fresh consumer group,
 * then disconnects. Rejects (after disconnecting) if they do not arrive within `timeoutMs`.
 */
export async function consumeMessages(
  brokers: string[],
  {
    topic,
    count,
    groupId = uniqueName('test-group'),
    readUncommitted = false,
    timeoutMs = 30_000,
  }: ConsumeOptions,
): Promise<ConsumedMessage[]> {
  const consumer = testKafka(brokers).consumer({ groupId, readUncommitted, maxWaitTimeInMs: 500 })
  const received: ConsumedMessage[] = []
  // A record delivered again to this group (a rebalance while brokers come and go) is the same
  // offset: it is kept once, or the count would be reached before every record was read.
  const positions = new Set<string>()
  let timer: ReturnType<typeof setTimeout> | undefined
  try {
    await consumer.connect()
    await consumer.subscribe({ topics: [topic], fromBeginning: true })
    await new Promise<void>((resolve, reject) => {
      timer = setTimeout(() => {
        reject(
          new Error(`received ${received.length} of ${count} messages from ${topic} within ${timeoutMs} ms`),
        )
      }, timeoutMs)
      consumer
        .run({
          eachMessage: async ({ topic: from, partition, message }) => {
            const position = `${from}:${partition}:${message.offset}`
            if (positions.has(position)) return
            positions.add(position)
            received.push({
              topic: from,
              partition,
              offset: message.offset,
              key: message.key,
              value: message.value,
              headers: message.headers ?? {},
            })
            if (received.length >= count) resolve()
          },
        })
        .catch(reject)
    })
    return received
  } finally {
    clearTimeout(timer)
    await consumer.disconnect()
  }
}

/** All values of header `name` as UTF-8 strings (kafkajs gives repeated keys as an array). */
export function headerValues(headers: IHeaders, name: string): string[] {
  const value = headers[name]
  if (value === undefined) return []
  return (Array.isArray(value) ? value : [value]).map((item) => item.toString())
}

/** kafkajs' `ConfigResourceTypes.BROKER`. */
const BROKER_CONFIG_RESOURCE = 4

/**
 * A consumer group session timeout for tests that kill members: `preferredMs`, or the broker's
 * `group.min.session.timeout.ms` when that is higher. The broker `scripts/kafka` starts allows
 * 1 s; a broker with the default minimum (6 s) gets 6 s.
 */
export async function groupSessionTimeoutMs(preferredMs = 2_500): Promise<number> {
  const admin = testKafka().admin()
  await admin.connect()
  try {
    const { brokers } = await admin.describeCluster()
    const { resources } = await admin.describeConfigs({
      includeSynonyms: false,
      resources: [
        {
          type: BROKER_CONFIG_RESOURCE,
          name: String(brokers[0]!.nodeId),
          configNames: ['group.min.session.timeout.ms'],
        },
      ],
    })
    const minimum = Number(resources[0]?.configEntries[0]?.configValue ?? 6_000)
    return Math.max(preferredMs, Number.isFinite(minimum) ? minimum : 6_000)
  } finally {
    await admin.disconnect()
  }
}
