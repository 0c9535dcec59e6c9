/**
 * Smoke tests against a real Kafka broker (`scripts/kafka start`, or KAFKA_BROKERS):
 * the guarantees the relay relies on hold with kafkajs on this broker.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { type IHeaders, type Kafka, Partitioners, type Producer, type Transaction } from 'kafkajs'
import { createKafkaTransport } from '../../src/adapters/kafka/index.js'
import { type ClaimedRecord, ErrorCode, isOutboxKitError, toRecord } from '../../src/index.js'
import {
  consumeMessages,
  createTopic,
  headerValues,
  kafkaBrokers,
  testKafka,
  uniqueName,
  uniqueTopic,
} from '../support/kafka'
import { kafkaScript } from '../support/processes.js'

const brokers = kafkaBrokers()

describe('kafka broker', () => {
  test('idempotent producer to consumer group: keys, values and headers arrive intact and in order', async () => {
    const topic = uniqueTopic('smoke-idempotent')
    await createTopic(brokers, topic, { partitions: 1 })

    const binary = Buffer.from([0x00, 0xff, 0xfe, 0x80, 0x0a])
    const sent = Array.from({ length: 25 }, (_, i) => ({
      key: `order-${i % 3}`,
      value: i === 7 ? binary : JSON.stringify({ seq: i, text: `zażółć ${i} 🚀` }),
      headers: {
        'outbox-id': `evt-${i}`,
        'content-type': 'application/json',
        'x-repeated': ['first', `second-${i}`],
      } satisfies IHeaders,
    }))

    const producer = testKafka(brokers).producer({
      idempotent: true,
      maxInFlightRequests: 1,
      createPartitioner: Partitioners.DefaultPartitioner,
    })
    await producer.connect()
    try {
      // Three sends so that ordering across requests is covered, not only within one batch.
      for (const chunk of [sent.slice(0, 10), sent.slice(10, 11), sent.slice(11)]) {
        const metadata = await producer.send({ topic, acks: -1, messages: chunk })
        expect(metadata).toHaveLength(1)
        expect(metadata[0]?.errorCode).toBe(0)
      }
    } finally {
      await producer.disconnect()
    }

    const received = await consumeMessages(brokers, {
      topic,
      count: sent.length,
      groupId: uniqueName('smoke-idempotent-group'),
    })

    expect(received).toHaveLength(sent.length)
    received.forEach((message, i) => {
      const expected = sent[i]!
      expect(message.partition).toBe(0)
      expect(message.offset).toBe(String(i))
      expect(message.key?.toString()).toBe(expected.key)
      const expectedValue = typeof expected.value === 'string' ? Buffer.from(expected.value) : expected.value
      expect(message.value?.equals(expectedValue)).toBe(true)
      expect(headerValues(message.headers, 'outbox-id')).toEqual([expected.headers['outbox-id']])
      expect(headerValues(message.headers, 'content-type')).toEqual(['application/json'])
      expect(headerValues(message.headers, 'x-repeated')).toEqual(expected.headers['x-repeated'])
    })
  }, 60_000)

  test('transactional producer: read_committed sees the committed transaction and none of the aborted one', async () => {
    const topic = uniqueTopic('smoke-tx')
    await createTopic(brokers, topic, { partitions: 1 })

    const producer = testKafka(brokers).producer({
      transactionalId: uniqueName('smoke-tx-producer'),
      idempotent: true,
      maxInFlightRequests: 1,
      createPartitioner: Partitioners.DefaultPartitioner,
    })
    await producer.connect()
    try {
      const aborted = await producer.transaction()
      await aborted.send({
        topic,
        acks: -1,
        messages: ['a1', 'a2', 'a3'].map((value) => ({ key: 'k', value })),
      })
      await aborted.abort()

      const committed = await producer.transaction()
      await committed.send({
        topic,
        acks: -1,
        messages: ['c1', 'c2', 'c3'].map((value) => ({ key: 'k', value })),
      })
      await committed.commit()

      // A last committed record marks the end: everything before it has been read once it arrives.
      const end = await producer.transaction()
      await end.send({ topic, acks: -1, messages: [{ key: 'k', value: 'end' }] })
      await end.commit()
    } finally {
      await producer.disconnect()
    }

    const committedView = await consumeMessages(brokers, {
      topic,
      count: 4,
      groupId: uniqueName('smoke-tx-committed'),
      readUncommitted: false,
    })
    expect(committedView.map((message) => message.value?.toString())).toEqual(['c1', 'c2', 'c3', 'end'])

    // The aborted records are in the log: a read_uncommitted consumer sees them.
    const uncommittedView = await consumeMessages(brokers, {
      topic,
      count: 7,
      groupId: uniqueName('smoke-tx-uncommitted'),
      readUncommitted: true,
    })
    expect(uncommittedView.map((message) => message.value?.toString())).toEqual([
      'a1',
      'a2',
      'a3',
      'c1',
      'c2',
      'c3',
      'end',
    ])
  }, 60_000)

  test('a transaction that outlives transactionTimeout is aborted by the coordinator; the transport recovers and the next publish succeeds', async () => {
    const topic = uniqueTopic('smoke-tx-timeout')
    await createTopic(brokers, topic, { partitions: 1 })
    const kafka = testKafka(brokers)
    // The first commit waits until the coordinator has aborted the transaction: the abort marker
    // it writes moves the partition's end offset past the records sent.
    let held = false
    const holdFirstCommit = async (sent: number) => {
      if (held) return
      held = true
      const admin = kafka.admin()
      await admin.connect()
      try {
        for (;;) {
          const [partition] = await admin.fetchTopicOffsets(topic)
          if (Number(partition?.high ?? 0) > sent) return
          await new Promise((r) => setTimeout(r, 250))
        }
      } finally {
        await admin.disconnect()
      }
    }
    const transport = createKafkaTransport({
      kafka: withCommitHook(kafka, () => holdFirstCommit(3)),
      transactionalId: uniqueName('smoke-tx-timeout'),
      producer: { transactionTimeout: 1_000 },
    })
    try {
      const error = await transport.publish(claimed(topic, ['late-1', 'late-2', 'late-3'])).catch((e) => e)
      expect(isOutboxKitError(error, ErrorCode.TransportFailed)).toBe(true)
      expect(error.retriable).toBe(true)
      expect(error.message).toContain('transactionTimeout')
      const outcomes = await transport.publish(claimed(topic, ['again-1', 'again-2']))
      expect(outcomes.map((o) => o.status)).toEqual(['published', 'published'])
    } finally {
      await transport.close()
    }
    const committed = await consumeMessages(brokers, { topic, count: 2 })
    expect(committed.map((m) => m.value?.toString())).toEqual(['"again-1"', '"again-2"'])
  }, 90_000)

  test('a second transport with the same transactionalId fences the first, which reports FENCED', async () => {
    const topic = uniqueTopic('smoke-tx-fenced')
    await createTopic(brokers, topic, { partitions: 1 })
    const transactionalId = uniqueName('smoke-tx-fenced')
    const first = createKafkaTransport({ kafka: testKafka(brokers), transactionalId })
    const second = createKafkaTransport({ kafka: testKafka(brokers), transactionalId })
    try {
      expect((await first.publish(claimed(topic, ['a']))).map((o) => o.status)).toEqual(['published'])
      expect((await second.publish(claimed(topic, ['b']))).map((o) => o.status)).toEqual(['published'])
      const error = await first.publish(claimed(topic, ['c'])).catch((e) => e)
      expect(isOutboxKitError(error, ErrorCode.Fenced)).toBe(true)
      // Fenced for good: it does not try again.
      expect(
        isOutboxKitError(await first.publish(claimed(topic, ['d'])).catch((e) => e), ErrorCode.Fenced),
      ).toBe(true)
      expect((await second.publish(claimed(topic, ['e']))).map((o) => o.status)).toEqual(['published'])
    } finally {
      await first.close()
      await second.close()
    }
    const committed = await consumeMessages(brokers, { topic, count: 3 })
    expect(committed.map((m) => m.value?.toString())).toEqual(['"a"', '"b"', '"e"'])
  }, 90_000)
})

describe('topics that do not exist yet', () => {
  test('a broker with auto.create.topics.enable creates the topic on first publish', async () => {
    const topic = uniqueTopic('smoke-auto-create')
    const transport = createKafkaTransport({ kafka: testKafka(brokers) })
    try {
      const outcomes = await transport.publish(claimed(topic, ['first', 'second']))
      expect(outcomes.map((o) => (o.status === 'failed' ? o.error : o.status))).toEqual([
        'published',
        'published',
      ])
    } finally {
      await transport.close()
    }
    const received = await consumeMessages(brokers, { topic, count: 2 })
    expect(received.map((m) => m.value?.toString())).toEqual(['"first"', '"second"'])
  }, 60_000)

  test("a topic not seen before does not hold back a known topic's records: they go out, its own are retried", async () => {
    const known = uniqueTopic('smoke-known')
    await createTopic(brokers, known, { partitions: 1 })
    const fresh = uniqueTopic('smoke-fresh')
    const transport = createKafkaTransport({ kafka: testKafka(brokers) })
    try {
      expect((await transport.publish(claimed(known, ['warm']))).map((o) => o.status)).toEqual(['published'])
      // The new topic's lookup and its creation by the broker take longer than the publish waits.
      const outcomes = await transport.publish([...claimed(known, ['a', 'b']), ...claimed(fresh, ['c'])])
      expect(outcomes.slice(0, 2).map((o) => o.status)).toEqual(['published', 'published'])
      const [late] = outcomes.slice(2)
      expect(late).toMatchObject({ status: 'failed', retriable: true })
      expect(late?.status === 'failed' && late.error).toContain('DISCOVERING')
      // The lookup went on meanwhile: a later attempt publishes the record.
      let retried = await transport.publish(claimed(fresh, ['c']))
      for (let i = 0; i < 50 && retried[0]?.status !== 'published'; i++) {
        await Bun.sleep(100)
        retried = await transport.publish(claimed(fresh, ['c']))
      }
      expect(retried.map((o) => o.status)).toEqual(['published'])
    } finally {
      await transport.close()
    }
  }, 60_000)

  test('a topic name the broker refuses dead-letters its records at once', async () => {
    const transport = createKafkaTransport({ kafka: testKafka(brokers) })
    try {
      // Message validation refuses such names; a record from elsewhere (another store) may not be checked.
      const [record] = claimed('x', ['v'])
      const outcomes = await transport.publish([{ ...record!, topic: 'no spaces allowed' }])
      const outcome = outcomes[0]!
      expect(outcome.status).toBe('failed')
      expect(outcome.status === 'failed' && outcome.retriable).toBe(false)
      expect(outcome.status === 'failed' && outcome.error).toContain('INVALID_TOPIC_EXCEPTION')
    } finally {
      await transport.close()
    }
  }, 60_000)
})

/** A broker of its own, started with auto.create.topics.enable=false, on a port no other test uses. */
const NO_AUTO_CREATE = { KAFKA_PORT: '9210', KAFKA_AUTO_CREATE_TOPICS: 'false' }
const noAutoCreateBrokers = ['127.0.0.1:9210']

describe('a broker that does not create topics on use', () => {
  beforeAll(() => {
    kafkaScript(['start'], NO_AUTO_CREATE)
  }, 180_000)
  afterAll(() => {
    kafkaScript(['stop'], NO_AUTO_CREATE)
  }, 120_000)

  test('a missing topic fails its records retriably, saying how to create it; once created they publish', async () => {
    const topic = uniqueTopic('smoke-no-auto-create')
    const transport = createKafkaTransport({ kafka: testKafka(noAutoCreateBrokers) })
    try {
      const [missing] = await transport.publish(claimed(topic, ['early']))
      expect(missing?.status).toBe('failed')
      expect(missing?.status === 'failed' && missing.retriable).toBe(true)
      const error = missing?.status === 'failed' ? missing.error : ''
      expect(error).toContain(`topic "${topic}" does not exist`)
      expect(error).toContain('kafka-topics.sh')
      const admin = testKafka(noAutoCreateBrokers).admin()
      await admin.connect()
      try {
        expect(await admin.listTopics()).not.toContain(topic)
      } finally {
        await admin.disconnect()
      }

      await createTopic(noAutoCreateBrokers, topic, { partitions: 2 })
      const outcomes = await transport.publish(claimed(topic, ['early', 'later']))
      expect(outcomes.map((o) => o.status)).toEqual(['published', 'published'])
    } finally {
      await transport.close()
    }
    const received = await consumeMessages(noAutoCreateBrokers, { topic, count: 2 })
    expect(received.map((m) => m.value?.toString())).toEqual(['"early"', '"later"'])
  }, 60_000)
})

/** Records as a relay claims them, one per value, all of key `k`. */
function claimed(topic: string, values: readonly string[]): ClaimedRecord[] {
  return values.map((value) => ({
    ...toRecord(
      { topic, key: 'k', type: 'E', payload: value },
      { maxPayloadBytes: 1 << 20, maxHeaderBytes: 1 << 16 },
    ),
    attempts: 1,
    createdAt: new Date(),
  }))
}

/** The real client, with `beforeCommit` awaited before each transaction's commit. */
function withCommitHook(kafka: Kafka, beforeCommit: () => Promise<void>): Kafka {
  const producer = (config?: Parameters<Kafka['producer']>[0]): Producer => {
    const real = kafka.producer(config)
    return {
      ...real,
      transaction: async (): Promise<Transaction> => {
        const transaction = await real.transaction()
        return {
          ...transaction,
          commit: async () => {
            await beforeCommit()
            await transaction.commit()
          },
        }
      },
    }
  }
  return { admin: () => kafka.admin(), producer } as unknown as Kafka
}
