/**
 * The Kafka runner in batch mode, from real Kafka into real databases: a partition's fetch is
 * processed in one transaction, each side effect still applied exactly once (G5), per-key order
 * kept, and a poison message dead-lettered without blocking or redoing its neighbours.
 */
import { describe, expect, test } from 'bun:test'
import { Partitioners } from 'kafkajs'
import type { Kysely } from 'kysely'
import { sql } from 'kysely'
import { createKafkaTransport } from '../../src/adapters/kafka/index.js'
import { createKafkaConsumerRunner } from '../../src/consumers/index.js'
import { ErrorCode, isOutboxKitError, uuidv7 } from '../../src/index.js'
import { type ConsumerWorld, openConsumerWorld } from '../support/consumer-world.js'
import { type AnyDB, mysqlBackend, postgresJsBackend } from '../support/databases.js'
import { consumeMessages, createTopic, headerValues, testKafka, uniqueTopic } from '../support/kafka.js'
import { waitFor } from '../support/relay-world.js'

const BACKENDS = [postgresJsBackend, mysqlBackend]

interface Produced {
  readonly id: string
  readonly key: string
  readonly type?: string
}

async function produce(world: ConsumerWorld, records: readonly Produced[]): Promise<void> {
  const producer = testKafka(world.brokers).producer({
    idempotent: true,
    maxInFlightRequests: 1,
    createPartitioner: Partitioners.DefaultPartitioner,
  })
  await producer.connect()
  try {
    await producer.send({
      topic: world.topic,
      acks: -1,
      messages: records.map((r) => ({
        key: r.key,
        value: JSON.stringify({ id: r.id }),
        headers: {
          'outboxkit-id': r.id,
          'outboxkit-type': r.type ?? 'ItemReserved',
          'content-type': 'application/json',
        },
      })),
    })
  } finally {
    await producer.disconnect()
  }
}

/** A table of applied effects in the order they were written: `n` grows with each insert. */
async function createSequence(world: ConsumerWorld): Promise<string> {
  const { dialect, schema } = world.database
  const q = (name: string) => (dialect === 'mysql' ? `\`${name}\`` : `"${name}"`)
  const table = `${q(schema)}.${q('applied')}`
  const n = dialect === 'mysql' ? 'n bigint AUTO_INCREMENT PRIMARY KEY' : 'n bigserial PRIMARY KEY'
  await world.database.query(
    `CREATE TABLE ${table} (${n}, message_id varchar(255) NOT NULL, k varchar(255) NOT NULL, tx varchar(64) NOT NULL)`,
  )
  return table
}

/** A number per transaction object the handler is given: one object is one database transaction. */
function transactionNumbers(): (tx: Kysely<AnyDB>) => string {
  const numbers = new WeakMap<object, number>()
  let next = 0
  return (tx) => {
    if (!numbers.has(tx)) numbers.set(tx, next++)
    return String(numbers.get(tx))
  }
}

for (const backend of BACKENDS) {
  describe(`Kafka runner in batch mode on ${backend.name}`, () => {
    test("a fetch's records are processed in one transaction; records produced twice, and an id repeated within the fetch, have one side effect", async () => {
      const world = await openConsumerWorld(backend, { partitions: 1 })
      try {
        const table = await createSequence(world)
        const ids = Array.from({ length: 30 }, () => uuidv7())
        // Produced before the runner starts, in one send: the first fetch holds all 40 records.
        await produce(
          world,
          [...ids, ...ids.slice(0, 10)].map((id, i) => ({ id, key: `item-${i % 3}` })),
        )
        const transactionOf = transactionNumbers()
        const consumer = world.consumer({
          handler: async (m, tx: Kysely<AnyDB>) => {
            await sql`INSERT INTO ${sql.raw(table)} (message_id, k, tx) VALUES (${m.id}, ${m.key ?? ''}, ${transactionOf(tx)})`.execute(
              tx,
            )
          },
        })
        let handled = 0
        consumer.on('processed', () => handled++)
        consumer.on('duplicate', () => handled++)
        await world.run(consumer, undefined, { mode: 'batch' })
        await waitFor('every record handled', () => handled === 40, 60_000)
        const rows = await world.database.query<{ message_id: string; tx: string }>(
          `SELECT message_id, tx FROM ${table} ORDER BY n`,
        )
        expect(rows.map((r) => r.message_id)).toEqual(ids)
        expect(new Set(rows.map((r) => r.tx)).size).toBe(1)
        expect(await world.inboxCount('inventory')).toBe(30)
      } finally {
        await world.close()
      }
    }, 90_000)

    test("a poison message is dead-lettered after its attempts without blocking or redoing its neighbours' effects, and each key keeps its order", async () => {
      const world = await openConsumerWorld(backend, { partitions: 1 })
      const dlqTopic = uniqueTopic('consume-dlq')
      await createTopic(world.brokers, dlqTopic)
      const transport = createKafkaTransport({ kafka: testKafka(world.brokers) })
      try {
        const table = await createSequence(world)
        const records = Array.from({ length: 30 }, (_, i) => ({
          id: uuidv7(),
          key: `item-${i % 3}`,
          type: i === 10 ? 'Poison' : 'ItemReserved',
        }))
        const poison = records[10]!
        await produce(world, records)
        let poisonRuns = 0
        const transactionOf = transactionNumbers()
        const consumer = world.consumer({
          maxAttempts: 3,
          deadLetter: { topic: dlqTopic, transport },
          handler: async (m, tx: Kysely<AnyDB>) => {
            // Written, then rolled back when the handler throws.
            await sql`INSERT INTO ${sql.raw(table)} (message_id, k, tx) VALUES (${m.id}, ${m.key ?? ''}, ${transactionOf(tx)})`.execute(
              tx,
            )
            if (m.type === 'Poison') {
              poisonRuns++
              throw new Error('cannot reserve stock')
            }
          },
        })
        let processed = 0
        let dead = 0
        consumer.on('processed', () => processed++)
        consumer.on('deadLettered', () => dead++)
        await world.run(consumer, undefined, { mode: 'batch' })
        await waitFor(
          'the others processed and the poison dead-lettered',
          () => processed === 29 && dead === 1,
          60_000,
        )
        // Once in the batch that failed, then maxAttempts times alone.
        expect(poisonRuns).toBe(4)
        const rows = await world.database.query<{ message_id: string; k: string; tx: string }>(
          `SELECT message_id, k, tx FROM ${table} ORDER BY n`,
        )
        const expected = records.filter((r) => r !== poison)
        // Each neighbour once, in the order produced (so in order per key): the poison is left out.
        expect(rows.map((r) => r.message_id)).toEqual(expected.map((r) => r.id))
        // The ten before it committed together, the nineteen after it too.
        expect(new Set(rows.slice(0, 10).map((r) => r.tx)).size).toBe(1)
        expect(new Set(rows.slice(10).map((r) => r.tx)).size).toBe(1)
        const [letter] = await consumeMessages(world.brokers, { topic: dlqTopic, count: 1 })
        expect(headerValues(letter!.headers, 'outboxkit-id')).toEqual([poison.id])
        expect(headerValues(letter!.headers, 'outboxkit-dead-reason')[0]).toContain('cannot reserve stock')
        expect(await world.inboxCount('inventory')).toBe(30)
      } finally {
        await transport.close()
        await world.close()
      }
    }, 90_000)

    test('a batchHandler gets each chunk of batchSize records in one call; a poison message among them is found by halving and dead-lettered, the others applied once, in order', async () => {
      const world = await openConsumerWorld(backend, { partitions: 1 })
      try {
        const table = await createSequence(world)
        const records = Array.from({ length: 30 }, (_, i) => ({
          id: uuidv7(),
          key: `item-${i % 3}`,
          type: i === 10 ? 'Poison' : 'ItemReserved',
        }))
        const poison = records[10]!
        await produce(world, records)
        const transactionOf = transactionNumbers()
        const calls: number[] = []
        const consumer = world.consumer({
          maxAttempts: 2,
          batchHandler: async (messages, tx: Kysely<AnyDB>) => {
            calls.push(messages.length)
            const rows = messages.map((m) => sql`(${m.id}, ${m.key ?? ''}, ${transactionOf(tx)})`)
            await sql`INSERT INTO ${sql.raw(table)} (message_id, k, tx) VALUES ${sql.join(rows)}`.execute(tx)
            if (messages.some((m) => m.type === 'Poison')) throw new Error('cannot reserve stock')
          },
        })
        let processed = 0
        let dead = 0
        consumer.on('processed', () => processed++)
        consumer.on('deadLettered', () => dead++)
        await world.run(consumer, undefined, { mode: 'batch', batchSize: 8 })
        await waitFor(
          'the others processed and the poison dead-lettered',
          () => processed === 29 && dead === 1,
          60_000,
        )
        const rows = await world.database.query<{ message_id: string; tx: string }>(
          `SELECT message_id, tx FROM ${table} ORDER BY n`,
        )
        expect(rows.map((r) => r.message_id)).toEqual(records.filter((r) => r !== poison).map((r) => r.id))
        // Chunks of 8: [0–7] commits; [8–15] fails and is halved: [8–11] fails, [8–9] commits,
        // [10–11] fails, 10 alone twice (dead), 11 alone; [12–15] commits; then [16–23], [24–29].
        expect(calls).toEqual([8, 8, 4, 2, 2, 1, 1, 1, 4, 8, 6])
        expect(new Set(rows.map((r) => r.tx)).size).toBe(6)
        expect(await world.inboxCount('inventory')).toBe(30)
      } finally {
        await world.close()
      }
    }, 90_000)
  })
}

test("mode 'batch' needs a consumer with processBatch: INVALID_OPTIONS otherwise", () => {
  let error: unknown
  try {
    createKafkaConsumerRunner({
      kafka: testKafka(['127.0.0.1:1']),
      groupId: 'g',
      topics: ['t'],
      consumer: { process: async () => 'processed', deadLetter: async () => {} },
      mode: 'batch',
    })
  } catch (caught) {
    error = caught
  }
  expect(isOutboxKitError(error) && error.code).toBe(ErrorCode.InvalidOptions)
})
