/**
 * Smoke tests against a real Kafka broker (`scripts/kafka start`, or KAFKA_BROKERS):
 * the guarantees the relay relies on hold with kafkajs on this broker.
 */
import { describe, expect, test } from 'bun:test'
import { type IHeaders, Partitioners } from 'kafkajs'
import {
  consumeMessages,
  createTopic,
  headerValues,
  kafkaBrokers,
  testKafka,
  uniqueName,
  uniqueTopic,
} from '../support/kafka'

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
})
