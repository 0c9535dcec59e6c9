/**
 * The IdempotentConsumer fed from real Kafka by the Kafka runner, with side effects in real
 * databases: each message's side effect is applied exactly once (G5).
 */
import { describe, expect, test } from 'bun:test'
import { Partitioners } from 'kafkajs'
import { Kysely, MysqlDialect, PostgresDialect } from 'kysely'
import { createPool } from 'mysql2'
import pg from 'pg'
import { createKafkaTransport } from '../../src/adapters/kafka/index.js'
import { createKyselyInboxStore, createKyselyOutboxStore } from '../../src/adapters/kysely/index.js'
import { Relay, uuidv7 } from '../../src/index.js'
import { openConsumerWorld } from '../support/consumer-world.js'
import { type AnyDB, MYSQL_URL, mysqlBackend, POSTGRES_URL, postgresJsBackend } from '../support/databases.js'
import { consumeMessages, createTopic, headerValues, testKafka, uniqueTopic } from '../support/kafka.js'
import { waitFor } from '../support/relay-world.js'
import { startTcpProxy } from '../support/tcp-proxy.js'

const BACKENDS = [postgresJsBackend, mysqlBackend]

function record(id: string | undefined, type = 'OrderCreated', key = 'order-1') {
  return {
    key,
    value: JSON.stringify({ id, type }),
    headers: {
      ...(id ? { 'outboxkit-id': id } : {}),
      'outboxkit-type': type,
      'content-type': 'application/json',
    },
  }
}

async function produce(
  brokers: string[],
  topic: string,
  messages: ReturnType<typeof record>[],
  partition?: number,
) {
  const producer = testKafka(brokers).producer({
    idempotent: true,
    maxInFlightRequests: 1,
    createPartitioner: Partitioners.DefaultPartitioner,
  })
  await producer.connect()
  try {
    await producer.send({
      topic,
      acks: -1,
      messages: messages.map((m) => (partition === undefined ? m : { ...m, partition })),
    })
  } finally {
    await producer.disconnect()
  }
}

for (const backend of BACKENDS) {
  describe(`IdempotentConsumer from Kafka on ${backend.name}`, () => {
    test('the same record produced twice, and the same id on two partitions, has one side effect', async () => {
      const world = await openConsumerWorld(backend, { partitions: 2 })
      try {
        const ids = Array.from({ length: 10 }, () => uuidv7())
        await produce(
          world.brokers,
          world.topic,
          ids.map((id) => record(id)),
        )
        await produce(
          world.brokers,
          world.topic,
          ids.map((id) => record(id)),
        ) // the producer-side duplicate
        await produce(
          world.brokers,
          world.topic,
          ids.slice(0, 5).map((id) => record(id)),
          0,
        )
        await produce(
          world.brokers,
          world.topic,
          ids.slice(0, 5).map((id) => record(id)),
          1,
        ) // same ids, both partitions
        const consumer = world.consumer({ handler: (m, tx) => world.applyEffect(tx, m) })
        let duplicates = 0
        consumer.on('duplicate', () => duplicates++)
        await world.run(consumer)
        await waitFor('all deliveries handled', () => duplicates === 20, 60_000)
        const effects = await world.effects()
        expect([...effects.keys()].sort()).toEqual([...ids].sort())
        expect([...effects.values()].every((n) => n === 1)).toBe(true)
        expect(await world.inboxCount('inventory')).toBe(10)
      } finally {
        await world.close()
      }
    }, 90_000)

    test('a handler that always throws: the message is dead-lettered after the configured attempts, later ones processed', async () => {
      const world = await openConsumerWorld(backend, { partitions: 1 })
      const dlqTopic = uniqueTopic('consume-dlq')
      await createTopic(world.brokers, dlqTopic)
      const transport = createKafkaTransport({ kafka: testKafka(world.brokers) })
      try {
        const ids = Array.from({ length: 6 }, () => uuidv7())
        await produce(
          world.brokers,
          world.topic,
          ids.map((id, i) => record(id, i === 2 ? 'Poison' : 'OrderCreated')),
        )
        let attempts = 0
        const consumer = world.consumer({
          maxAttempts: 3,
          deadLetter: { topic: dlqTopic, transport },
          handler: async (m, tx) => {
            await world.applyEffect(tx, m) // written, then rolled back when the handler throws
            if (m.type === 'Poison') {
              attempts++
              throw new Error('cannot reserve stock')
            }
          },
        })
        let processed = 0
        consumer.on('processed', () => processed++)
        await world.run(consumer)
        await waitFor('the others processed', () => processed === 5, 60_000)
        expect(attempts).toBe(3)
        const effects = await world.effects()
        expect(effects.has(ids[2]!)).toBe(false)
        expect(effects.size).toBe(5)
        const [letter] = await consumeMessages(world.brokers, { topic: dlqTopic, count: 1 })
        expect(headerValues(letter!.headers, 'outboxkit-id')).toEqual([ids[2]!])
        expect(headerValues(letter!.headers, 'outboxkit-dead-reason')[0]).toContain('cannot reserve stock')
        expect(headerValues(letter!.headers, 'outboxkit-original-topic')).toEqual([world.topic])
      } finally {
        await transport.close()
        await world.close()
      }
    }, 90_000)

    test('a record without a message id goes to the dead letter, never processed without dedupe', async () => {
      const world = await openConsumerWorld(backend, { partitions: 1 })
      try {
        const good = uuidv7()
        await produce(world.brokers, world.topic, [record(undefined, 'NoId'), record(good)])
        const consumer = world.consumer({ handler: (m, tx) => world.applyEffect(tx, m) })
        const dead: string[] = []
        consumer.on('deadLettered', (e) => dead.push(e.reason))
        let processed = 0
        consumer.on('processed', () => processed++)
        await world.run(consumer)
        await waitFor('processed', () => processed === 1 && dead.length === 1, 60_000)
        expect(dead[0]).toContain('MISSING_MESSAGE_ID')
        expect([...(await world.effects()).keys()]).toEqual([good])
      } finally {
        await world.close()
      }
    }, 90_000)

    test('records whose ids no inbox can store (300 characters, a NUL) are dead-lettered once each, their offsets committed, and the partition goes on', async () => {
      const world = await openConsumerWorld(backend, { partitions: 1 })
      const dlqTopic = uniqueTopic('consume-dlq')
      await createTopic(world.brokers, dlqTopic)
      const transport = createKafkaTransport({ kafka: testKafka(world.brokers) })
      const admin = testKafka(world.brokers).admin()
      await admin.connect()
      try {
        const tooLong = 'x'.repeat(300)
        const withNul = `${uuidv7()}\u0000`
        const good = [uuidv7(), uuidv7(), uuidv7()]
        // A foreign producer: plain kafkajs, the ids in the outboxkit-id header, one partition.
        await produce(
          world.brokers,
          world.topic,
          [record(tooLong), record(withNul), ...good.map((id) => record(id))],
          0,
        )
        const consumer = world.consumer({
          deadLetter: { topic: dlqTopic, transport },
          handler: (m, tx) => world.applyEffect(tx, m),
        })
        const dead: string[] = []
        consumer.on('deadLettered', (e) => dead.push(e.reason))
        let processed = 0
        consumer.on('processed', () => processed++)
        const groupId = uniqueTopic('poison-group')
        await world.run(consumer, groupId)
        await waitFor('the good records processed', () => processed === good.length, 60_000)
        const committed = async () => {
          const [offsets] = await admin.fetchOffsets({ groupId, topics: [world.topic] })
          return offsets?.partitions.find((p) => p.partition === 0)?.offset
        }
        await waitFor('every offset committed', async () => (await committed()) === '5', 30_000)

        expect(dead.map((reason) => reason.split(':')[0])).toEqual([
          'INVALID_MESSAGE_ID',
          'INVALID_MESSAGE_ID',
        ])
        expect([...(await world.effects()).keys()].sort()).toEqual([...good].sort())
        expect(await world.inboxCount('inventory')).toBe(good.length)
        // One letter each: asking for a third one finds none.
        const letters = await consumeMessages(world.brokers, { topic: dlqTopic, count: 2 })
        expect(
          letters.map((l) => headerValues(l.headers, 'outboxkit-dead-reason')[0]?.split(':')[0]),
        ).toEqual(['INVALID_MESSAGE_ID', 'INVALID_MESSAGE_ID'])
        const more = await consumeMessages(world.brokers, {
          topic: dlqTopic,
          count: 3,
          timeoutMs: 2_000,
        }).catch((e: Error) => e)
        expect(more instanceof Error).toBe(true)
      } finally {
        await admin.disconnect()
        await transport.close()
        await world.close()
      }
    }, 90_000)

    test('a database that refuses connections while records arrive: the partition waits, then every record is processed once, none dead-lettered', async () => {
      const world = await openConsumerWorld(backend, { partitions: 1 })
      const port = backend.dialect === 'mysql' ? 15421 : 15422
      const proxy = await startTcpProxy({
        port,
        targetHost: '127.0.0.1',
        targetPort: backend.dialect === 'mysql' ? 3306 : 5432,
      })
      const url = new URL(backend.dialect === 'mysql' ? MYSQL_URL : POSTGRES_URL)
      url.port = String(port)
      const db =
        backend.dialect === 'mysql'
          ? new Kysely<AnyDB>({
              dialect: new MysqlDialect({ pool: createPool({ uri: url.toString(), connectionLimit: 2 }) }),
            })
          : new Kysely<AnyDB>({
              dialect: new PostgresDialect({
                pool: (() => {
                  const pool = new pg.Pool({ connectionString: url.toString(), max: 2 })
                  pool.on('error', () => {})
                  pool.on('connect', (client) => client.on('error', () => {}))
                  return pool
                })(),
              }),
            })
      try {
        await proxy.refuse()
        const ids = Array.from({ length: 5 }, () => uuidv7())
        await produce(
          world.brokers,
          world.topic,
          ids.map((id) => record(id)),
        )
        const consumer = world.consumer({
          store: createKyselyInboxStore({ db, schema: world.database.schema }),
          maxAttempts: 1,
          handler: (m, tx) => world.applyEffect(tx, m),
        })
        let outages = 0
        consumer.on('unavailable', () => {
          if (++outages === 5) void proxy.restore()
        })
        const dead: string[] = []
        consumer.on('deadLettered', (e) => dead.push(e.reason))
        let processed = 0
        consumer.on('processed', () => processed++)
        await world.run(consumer)
        await waitFor('every record processed', () => processed === ids.length, 60_000)
        expect(outages).toBeGreaterThanOrEqual(5)
        expect(dead).toEqual([])
        const effects = await world.effects()
        expect(ids.map((id) => effects.get(id))).toEqual(ids.map(() => 1))
      } finally {
        await world.close()
        await db.destroy().catch(() => {})
        await proxy.close()
      }
    }, 90_000)

    test('a chained event added by the handler is published only if its side effect committed', async () => {
      const world = await openConsumerWorld(backend, { partitions: 1 })
      const chained = uniqueTopic('chained')
      await createTopic(world.brokers, chained)
      const transport = createKafkaTransport({ kafka: testKafka(world.brokers) })
      try {
        const ids = [uuidv7(), uuidv7(), uuidv7()]
        await produce(world.brokers, world.topic, [record(ids[0]), record(ids[1], 'Poison'), record(ids[2])])
        const consumer = world.consumer({
          maxAttempts: 2,
          handler: async (m, tx) => {
            await world.applyEffect(tx, m)
            await world.outbox.add(tx, {
              topic: chained,
              key: m.key ?? 'k',
              type: 'StockReserved',
              payload: { for: m.id },
            })
            if (m.type === 'Poison') throw new Error('rolled back with its chained event')
          },
        })
        let settled = 0
        consumer.on('processed', () => settled++)
        consumer.on('deadLettered', () => settled++)
        await world.run(consumer)
        await waitFor('all handled', () => settled === 3, 60_000)

        const relay = new Relay({
          store: createKyselyOutboxStore({ db: world.database.db, schema: world.database.schema }),
          transport,
        })
        while ((await relay.runOnce()) > 0) {}
        const published = await consumeMessages(world.brokers, { topic: chained, count: 2 })
        expect(published.map((m) => JSON.parse(m.value!.toString()).for)).toEqual([ids[0], ids[2]])
        const more = await consumeMessages(world.brokers, {
          topic: chained,
          count: 3,
          timeoutMs: 2_000,
        }).catch((e: Error) => e)
        expect(more instanceof Error).toBe(true)
      } finally {
        await transport.close()
        await world.close()
      }
    }, 90_000)

    test('runners joining and leaving the group mid-stream (rebalances) still apply each side effect once', async () => {
      const world = await openConsumerWorld(backend, { partitions: 4 })
      try {
        const ids = Array.from({ length: 600 }, () => uuidv7())
        const groupId = uniqueTopic('rebalance-group')
        let handled = 0
        const makeConsumer = () =>
          world.consumer({
            handler: async (m, tx) => {
              await world.applyEffect(tx, m)
              // Slow enough that rebalances happen while messages are in hand.
              await new Promise((r) => setTimeout(r, 2))
            },
          })
        const first = makeConsumer()
        first.on('processed', () => handled++)
        const firstRunner = await world.run(first, groupId)
        await produce(
          world.brokers,
          world.topic,
          ids.slice(0, 300).map((id, i) => record(id, 'OrderCreated', `order-${i % 40}`)),
        )
        await waitFor('some processed', () => handled >= 50, 60_000)
        const second = makeConsumer()
        second.on('processed', () => handled++)
        await world.run(second, groupId) // the group rebalances to two members
        await produce(
          world.brokers,
          world.topic,
          ids.slice(300).map((id, i) => record(id, 'OrderCreated', `order-${i % 40}`)),
        )
        await waitFor('more processed', () => handled >= 400, 60_000)
        await firstRunner.stop() // and back to one
        await waitFor('all side effects', async () => (await world.effects()).size === ids.length, 90_000)
        const effects = await world.effects()
        expect([...effects.values()].every((n) => n === 1)).toBe(true)
        expect(await world.inboxCount('inventory')).toBe(ids.length)
      } finally {
        await world.close()
      }
    }, 180_000)
  })
}
