import { expect } from 'bun:test'
/**
 * A database (one of the backends), an outbox table in its own schema, and a fresh topic: the
 * setting of every relay test.
 */
import { createKafkaTransport, type KafkaTransportOptions } from '../../src/adapters/kafka/index.js'
import {
  createKyselyOutboxStore,
  ensureOutboxSchema,
  type KyselyOutboxStore,
} from '../../src/adapters/kysely/index.js'
import { Outbox, type OutboxMessageInput } from '../../src/index.js'
import type { AnyDB, Backend, TestDatabase } from './databases.js'
import {
  type ConsumedMessage,
  createTopic,
  headerValues,
  kafkaBrokers,
  testKafka,
  uniqueTopic,
} from './kafka.js'

export interface RelayWorld {
  readonly database: TestDatabase
  readonly store: KyselyOutboxStore<AnyDB>
  readonly outbox: Outbox<import('kysely').Kysely<AnyDB>>
  readonly topic: string
  readonly brokers: string[]
  /** Writes events in one transaction each; returns their ids in write order. */
  write(messages: readonly OutboxMessageInput[]): Promise<string[]>
  /** Rows by status, read directly. */
  counts(): Promise<{ pending: number; published: number; dead: number; claimed: number }>
  transport(options?: Partial<KafkaTransportOptions>): ReturnType<typeof createKafkaTransport>
  close(): Promise<void>
}

export async function openRelayWorld(
  backend: Backend,
  options: {
    partitions?: number
    replicationFactor?: number
    topicConfig?: Record<string, string>
    brokers?: string[]
  } = {},
): Promise<RelayWorld> {
  const database = await backend.open()
  const { schema, dialect } = database
  await ensureOutboxSchema(database.db, { dialect, schema })
  const store = createKyselyOutboxStore({ db: database.db, schema })
  const outbox = new Outbox({ store })
  const brokers = options.brokers ?? kafkaBrokers()
  const topic = uniqueTopic('relay')
  await createTopic(brokers, topic, {
    partitions: options.partitions ?? 3,
    replicationFactor: options.replicationFactor ?? 1,
    configEntries: options.topicConfig ?? {},
  })
  const transports: { close(): Promise<void> }[] = []
  const table = dialect === 'mysql' ? `\`${schema}\`.\`outbox\`` : `"${schema}"."outbox"`
  return {
    database,
    store,
    outbox,
    topic,
    brokers,
    async write(messages) {
      return store.transaction((trx) => outbox.add(trx, messages))
    },
    async counts() {
      const rows = await database.query<{ status: unknown; claimed: unknown; n: unknown }>(
        `SELECT status, CASE WHEN claim_token IS NULL THEN 0 ELSE 1 END AS claimed, count(*) AS n FROM ${table} GROUP BY status, CASE WHEN claim_token IS NULL THEN 0 ELSE 1 END`,
      )
      const result = { pending: 0, published: 0, dead: 0, claimed: 0 }
      for (const row of rows) {
        const n = Number(row.n)
        const status = Number(row.status)
        if (status === 0) result.pending += n
        if (status === 1) result.published += n
        if (status === 2) result.dead += n
        if (Number(row.claimed) === 1) result.claimed += n
      }
      return result
    },
    transport(extra = {}) {
      const transport = createKafkaTransport({ kafka: testKafka(brokers), ...extra })
      transports.push(transport)
      return transport
    },
    async close() {
      for (const transport of transports) await transport.close()
      await database.close()
    },
  }
}

export async function waitFor(
  what: string,
  condition: () => Promise<boolean> | boolean,
  timeoutMs = 60_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

/** The outboxkit message id of a consumed record. */
export function messageId(message: ConsumedMessage): string {
  return headerValues(message.headers, 'outboxkit-id')[0] ?? ''
}

/** Number of records in a topic written without transactions (sum of high watermarks). */
export async function recordCount(brokers: string[], topic: string): Promise<number> {
  const admin = testKafka(brokers).admin()
  await admin.connect()
  try {
    const offsets = await admin.fetchTopicOffsets(topic)
    return offsets.reduce((sum, p) => sum + Number(p.high) - Number(p.low), 0)
  } finally {
    await admin.disconnect()
  }
}

/** Every record of a non-transactional topic, read with a fresh consumer group. */
export async function consumeAll(brokers: string[], topic: string): Promise<ConsumedMessage[]> {
  const count = await recordCount(brokers, topic)
  if (count === 0) return []
  const { consumeMessages } = await import('./kafka.js')
  return consumeMessages(brokers, { topic, count, timeoutMs: 60_000 })
}

/** For each key, the message ids in the order they appear in the topic (first occurrence). */
export function orderByKey(messages: readonly ConsumedMessage[]): Record<string, string[]> {
  const sorted = [...messages].sort(
    (a, b) => a.partition - b.partition || Number(a.offset) - Number(b.offset),
  )
  const byKey = new Map<string, string[]>()
  for (const m of sorted) {
    const key = m.key?.toString() ?? ''
    const ids = byKey.get(key) ?? []
    const id = messageId(m)
    if (!ids.includes(id)) ids.push(id)
    byKey.set(key, ids)
  }
  return Object.fromEntries(byKey)
}

/** For each key, the ids of its published rows in write (seq) order, read directly. */
export async function writeOrderByKey(world: RelayWorld, status = 1): Promise<Record<string, string[]>> {
  const quote = (name: string) => (world.database.dialect === 'mysql' ? `\`${name}\`` : `"${name}"`)
  const rows = await world.database.query<{ id: unknown; k: unknown }>(
    `SELECT id, ${quote('key')} AS k FROM ${quote(world.database.schema)}.${quote('outbox')} WHERE status = ${status} ORDER BY seq`,
  )
  const byKey = new Map<string, string[]>()
  for (const row of rows) byKey.set(String(row.k), [...(byKey.get(String(row.k)) ?? []), String(row.id)])
  return Object.fromEntries(byKey)
}

/** `count` events for `topic` spread over `keys` keys (`key-0` ...), payload `{ tag, i }`, type `E`. */
export function events(topic: string, count: number, keys: number, tag: string): OutboxMessageInput[] {
  return Array.from({ length: count }, (_, i) => ({
    topic,
    key: `key-${i % keys}`,
    type: 'E',
    payload: { tag, i },
  }))
}

/**
 * A view of `target` whose `methods` wait until `release()` before they run, as if the process
 * calling them were frozen; `entered` resolves at the first such call.
 */
export function stalled<T extends object>(
  target: T,
  methods: readonly (keyof T & string)[],
): { view: T; entered: Promise<void>; release(): void } {
  let release!: () => void
  const gate = new Promise<void>((r) => (release = r))
  let enter!: () => void
  const entered = new Promise<void>((r) => (enter = r))
  const held = new Set<string>(methods)
  const view = new Proxy(target, {
    get(t, name, receiver) {
      const value = Reflect.get(t, name, receiver)
      if (typeof value !== 'function') return value
      if (typeof name === 'string' && held.has(name)) {
        return async (...args: unknown[]) => {
          enter()
          await gate
          return value.apply(t, args)
        }
      }
      return value.bind(t)
    },
  })
  return { view, entered, release }
}

/**
 * Checks that every copy of a message id in `consumed` is the same record (same key, same value);
 * returns how many copies are extra.
 */
export function expectDuplicatesIdentical(consumed: readonly ConsumedMessage[]): number {
  const first = new Map<string, string>()
  let duplicates = 0
  for (const m of consumed) {
    const fingerprint = `${m.key?.toString()}|${m.value?.toString('base64')}`
    const seen = first.get(messageId(m))
    if (seen === undefined) first.set(messageId(m), fingerprint)
    else {
      duplicates++
      expect(fingerprint).toBe(seen)
    }
  }
  return duplicates
}

/**
 * Every record of `topic` a `read_committed` reader sees, read to the end: a sentinel is written
 * to each partition, and the read stops once each partition's sentinel arrived (a reader reaches
 * it only after every transaction written before it was committed or aborted).
 */
export async function consumeCommitted(brokers: string[], topic: string): Promise<ConsumedMessage[]> {
  const kafka = testKafka(brokers)
  const admin = kafka.admin()
  await admin.connect()
  const partitions = (await admin.fetchTopicOffsets(topic)).length
  await admin.disconnect()
  const sentinel = `sentinel-${crypto.randomUUID()}`
  const producer = kafka.producer()
  await producer.connect()
  await producer.send({
    topic,
    acks: -1,
    messages: Array.from({ length: partitions }, (_, partition) => ({ key: sentinel, value: '', partition })),
  })
  await producer.disconnect()
  const consumer = kafka.consumer({ groupId: `committed-${crypto.randomUUID()}`, maxWaitTimeInMs: 200 })
  const received: ConsumedMessage[] = []
  const positions = new Set<string>()
  const reached = new Set<number>()
  let timer: ReturnType<typeof setTimeout> | undefined
  try {
    await consumer.connect()
    await consumer.subscribe({ topics: [topic], fromBeginning: true })
    await new Promise<void>((resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`did not read ${topic} to its end within 60 s`)), 60_000)
      consumer
        .run({
          eachMessage: async ({ partition, message }) => {
            const position = `${partition}:${message.offset}`
            if (positions.has(position) || reached.has(partition)) return
            positions.add(position)
            if (message.key?.toString() === sentinel) {
              reached.add(partition)
              if (reached.size === partitions) resolve()
              return
            }
            received.push({
              topic,
              partition,
              offset: message.offset,
              key: message.key,
              value: message.value,
              headers: message.headers ?? {},
            })
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
