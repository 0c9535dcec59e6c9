/**
 * The Kafka transport's own logic, against a scripted kafkajs client: which records it reports
 * published, failed or dead, and when it throws its producer away. (Against a real broker:
 * test/integration/relay*.test.ts.)
 */
import { describe, expect, test } from 'bun:test'
import type { Kafka, ProducerBatch, RecordMetadata } from 'kafkajs'
import { createKafkaTransport } from '../../src/adapters/kafka/index.js'
import { type ClaimedRecord, ErrorCode, isOutboxKitError, toRecord } from '../../src/index.js'

type SendBehaviour = (
  batch: ProducerBatch,
  producer: number,
) => RecordMetadata[] | Error | Promise<RecordMetadata[]>

/** A broker error as kafkajs raises it for a metadata response (a KafkaJSProtocolError). */
function protocolError(type: string, retriable: boolean): Error {
  return Object.assign(new Error(`broker says ${type}`), { name: 'KafkaJSProtocolError', type, retriable })
}

/**
 * A kafkajs stand-in whose sends answer as `behaviour` says. Topics have `partitions` partitions,
 * unless `metadataError` names a broker error for a topic.
 */
function scriptedKafka(
  behaviour: SendBehaviour,
  partitions = 4,
  metadataError: (topic: string) => Error | 'no answer' | undefined = () => undefined,
  leaderOf: (partition: number) => number = () => 0,
) {
  const sent: ProducerBatch[] = []
  /** Which producer (1, 2, ... in order of creation) made each send. */
  const sentBy: number[] = []
  const disconnected = new Set<number>()
  let producers = 0
  const kafka = {
    admin: () => ({
      connect: async () => {},
      disconnect: async () => {},
      describeCluster: async () => ({ brokers: [{ nodeId: 0, host: 'scripted', port: 9092 }] }),
      describeConfigs: async () => ({
        resources: [{ configEntries: [{ configName: 'auto.create.topics.enable', configValue: 'false' }] }],
      }),
      fetchTopicMetadata: async ({ topics }: { topics: string[] }) => {
        for (const topic of topics) {
          const error = metadataError(topic)
          // kafkajs retries a lookup against an unreachable cluster for a while, then gives up.
          if (error === 'no answer') {
            await new Promise((r) => setTimeout(r, 1_000))
            throw Object.assign(new Error('Connection error: connect ECONNREFUSED'), {
              name: 'KafkaJSConnectionError',
            })
          }
          if (error) throw error
        }
        return {
          topics: topics.map((name) => ({
            name,
            partitions: Array.from({ length: partitions }, (_, partitionId) => ({
              partitionId,
              leader: leaderOf(partitionId),
            })),
          })),
        }
      },
    }),
    producer: () => {
      const id = ++producers
      return {
        connect: async () => {},
        disconnect: async () => {
          disconnected.add(id)
        },
        // A metadata request as a producer makes it (the transport's check for auto-creation).
        send: async ({ topic, messages }: { topic: string; messages: unknown[] }) => {
          if (messages.length > 0) throw new Error('the scripted kafkajs only answers metadata sends')
          const error = metadataError(topic)
          if (error === 'no answer') await new Promise(() => {})
          if (error) throw error
          return []
        },
        sendBatch: async (batch: ProducerBatch) => {
          sent.push(batch)
          sentBy.push(id)
          const answer = await behaviour(batch, id)
          if (answer instanceof Error) throw answer
          return answer
        },
      }
    },
  }
  return { kafka: kafka as unknown as Kafka, sent, sentBy, disconnected, producers: () => producers }
}

/** Acknowledges every partition a batch sent to. */
function ackAll(
  batch: ProducerBatch,
  except: (partition: number) => boolean = () => false,
): RecordMetadata[] {
  const partitions = new Set<string>()
  for (const { topic, messages } of batch.topicMessages ?? []) {
    for (const m of messages) partitions.add(`${topic}|${m.partition}`)
  }
  return [...partitions]
    .map((p) => p.split('|'))
    .filter(([, partition]) => !except(Number(partition)))
    .map(([topicName, partition]) => ({ topicName: topicName!, partition: Number(partition), errorCode: 0 }))
}

/** The partitions a batch sends to, in order of first appearance. */
function partitionsOf(batch: ProducerBatch): number[] {
  return [...new Set((batch.topicMessages ?? []).flatMap((t) => t.messages.map((m) => m.partition!)))]
}

/** The partition of each key, as sent. */
function keyPartitions(sent: readonly ProducerBatch[]): Map<string, number> {
  return new Map(
    sent.flatMap((b) =>
      (b.topicMessages ?? []).flatMap((t) => t.messages.map((m) => [String(m.key), m.partition!])),
    ),
  )
}

/** kafkajs' error for a connection the broker closed while a request was in flight. */
function connectionClosed(): Error {
  return Object.assign(new Error('Closed connection'), { name: 'KafkaJSConnectionClosedError' })
}

function records(count: number, keys: number, topic = 'orders'): ClaimedRecord[] {
  return Array.from({ length: count }, (_, i) => ({
    ...toRecord(
      { topic, key: `key-${i % keys}`, type: 'E', payload: { i } },
      { maxPayloadBytes: 1 << 20, maxHeaderBytes: 1 << 16 },
    ),
    attempts: 1,
    createdAt: new Date(),
  }))
}

describe('KafkaTransport', () => {
  test('records are sent to the murmur2 partition of their key, with id and type headers', async () => {
    const { kafka, sent } = scriptedKafka((b) => ackAll(b))
    const transport = createKafkaTransport({ kafka })
    const batch = records(20, 5)
    const outcomes = await transport.publish(batch)
    expect(outcomes.every((o) => o.status === 'published')).toBe(true)
    const messages = sent[0]!.topicMessages![0]!.messages
    const partitionOfKey = new Map<string, number>()
    for (const m of messages) {
      const key = String(m.key)
      expect(partitionOfKey.get(key) ?? m.partition).toBe(m.partition!)
      partitionOfKey.set(key, m.partition!)
      expect(m.headers?.['outboxkit-type']).toBe('E')
    }
    expect(messages.map((m) => m.headers?.['outboxkit-id'])).toEqual(batch.map((r) => r.id))
    expect(sent[0]!.acks).toBe(-1)
  })

  test('a send that resolves without acknowledging a partition leaves those records unpublished and renews the producer', async () => {
    let calls = 0
    const { kafka, sent, producers } = scriptedKafka((b) =>
      calls++ === 0 ? ackAll(b, (p) => p === 1) : ackAll(b),
    )
    const transport = createKafkaTransport({ kafka })
    const batch = records(40, 10)
    const outcomes = await transport.publish(batch)
    const partitionOf = new Map(
      sent[0]!.topicMessages![0]!.messages.map((m) => [m.headers?.['outboxkit-id'], m.partition]),
    )
    batch.forEach((record, i) => {
      const expected = partitionOf.get(record.id) === 1 ? 'failed' : 'published'
      expect(outcomes[i]!.status).toBe(expected)
    })
    expect(outcomes.some((o) => o.status === 'failed' && o.retriable)).toBe(true)
    // The next publish uses a new producer.
    await transport.publish(records(1, 1))
    expect(producers()).toBe(2)
  })

  test('a connection error throws a retriable TRANSPORT_FAILED and renews the producer', async () => {
    let calls = 0
    const { kafka, producers } = scriptedKafka((b) =>
      calls++ === 0
        ? Object.assign(new Error('Connection closed'), { name: 'KafkaJSConnectionClosedError' })
        : ackAll(b),
    )
    const transport = createKafkaTransport({ kafka })
    const error = await transport.publish(records(3, 1)).catch((e) => e)
    expect(isOutboxKitError(error, ErrorCode.TransportFailed)).toBe(true)
    expect(error.retriable).toBe(true)
    expect((await transport.publish(records(3, 1))).every((o) => o.status === 'published')).toBe(true)
    expect(producers()).toBe(2)
  })

  test('when one partition leader fails, the records of the partitions other brokers acknowledged are published, once', async () => {
    // Partitions 0 and 2 are led by broker 0, 1 and 3 by broker 1, which is down.
    const leaderOf = (partition: number) => partition % 2
    const down = Object.assign(new Error('Connection error: connect ECONNREFUSED 127.0.0.1:19094'), {
      name: 'KafkaJSNumberOfRetriesExceeded',
    })
    const { kafka, sent } = scriptedKafka(
      (b) =>
        b.topicMessages!.some((t) => t.messages.some((m) => leaderOf(m.partition!) === 1)) ? down : ackAll(b),
      4,
      () => undefined,
      leaderOf,
    )
    const transport = createKafkaTransport({ kafka })
    const batch = records(40, 10)
    const outcomes = await transport.publish(batch)
    const partitionOf = new Map(
      sent.flatMap((b) =>
        b.topicMessages![0]!.messages.map((m) => [m.headers?.['outboxkit-id'], m.partition!]),
      ),
    )
    batch.forEach((record, i) => {
      const outcome = outcomes[i]!
      if (leaderOf(partitionOf.get(record.id)!) === 0) expect(outcome.status).toBe('published')
      else expect(outcome.status === 'failed' && outcome.retriable).toBe(true)
    })
    expect(new Set(partitionOf.values())).toEqual(new Set([0, 1, 2, 3]))
    // Each record went out in exactly one send.
    expect(sent.flatMap((b) => b.topicMessages![0]!.messages)).toHaveLength(batch.length)
  })

  test('an in-doubt partition is never sent on the same producer again: a fresh producer takes it, then replaces the main one', async () => {
    // Partitions 0 and 2 are led by broker 0, 1 and 3 by broker 1, whose connection is cut mid-send.
    const leaderOf = (partition: number) => partition % 2
    let cut = true
    const { kafka, sent, sentBy, disconnected, producers } = scriptedKafka(
      (b) => (cut && leaderOf(partitionsOf(b)[0]!) === 1 ? connectionClosed() : ackAll(b)),
      4,
      () => undefined,
      leaderOf,
    )
    const transport = createKafkaTransport({ kafka })
    const first = await transport.publish(records(40, 10))
    const partitionOfKey = keyPartitions(sent)
    const batch = records(40, 10)
    first.forEach((outcome, i) => {
      const inDoubt = leaderOf(partitionOfKey.get(batch[i]!.key)!) === 1
      expect(outcome.status === 'published' ? 'published' : outcome.retriable && 'retry').toBe(
        inDoubt ? 'retry' : 'published',
      )
    })
    cut = false
    const before = sent.length
    const second = await transport.publish(records(40, 10))
    expect(second.every((o) => o.status === 'published')).toBe(true)
    for (let i = before; i < sent.length; i++) {
      for (const partition of partitionsOf(sent[i]!))
        expect(sentBy[i]).toBe(leaderOf(partition) === 1 ? 2 : 1)
    }
    // Once the fresh producer has published, it is the main one; the old one is closed.
    await new Promise((r) => setTimeout(r, 10))
    expect(disconnected.has(1)).toBe(true)
    const after = sent.length
    expect((await transport.publish(records(40, 10))).every((o) => o.status === 'published')).toBe(true)
    expect(sentBy.slice(after).every((id) => id === 2)).toBe(true)
    expect(producers()).toBe(2)
  })

  test('while the topic reports a leaderless partition, in-doubt records fail at once; the others still go out on the main producer', async () => {
    const leaderOf = (partition: number) => partition % 2
    let cut = true
    let leaderless = false
    const { kafka, sent, sentBy, producers } = scriptedKafka(
      (b) => (cut && leaderOf(partitionsOf(b)[0]!) === 1 ? connectionClosed() : ackAll(b)),
      4,
      () => (leaderless ? protocolError('LEADER_NOT_AVAILABLE', true) : undefined),
      leaderOf,
    )
    const transport = createKafkaTransport({ kafka })
    await transport.publish(records(40, 10))
    const partitionOfKey = keyPartitions(sent)
    cut = false
    leaderless = true
    for (let round = 0; round < 3; round++) {
      const before = sent.length
      const batch = records(40, 10)
      const outcomes = await transport.publish(batch)
      batch.forEach((record, i) => {
        const outcome = outcomes[i]!
        if (leaderOf(partitionOfKey.get(record.key)!) === 0) expect(outcome.status).toBe('published')
        else {
          expect(outcome.status === 'failed' && outcome.retriable).toBe(true)
          // The first record of each key says why; its later ones are held back behind it.
          if (i < 10) expect(outcome.status === 'failed' && outcome.error).toContain('LEADER_NOT_AVAILABLE')
        }
      })
      // Nothing went to the in-doubt partitions, and no new producer was made.
      expect(
        sent
          .slice(before)
          .flatMap(partitionsOf)
          .every((p) => leaderOf(p) === 0),
      ).toBe(true)
      expect(sentBy.slice(before).every((id) => id === 1)).toBe(true)
    }
    expect(producers()).toBe(1)
    leaderless = false
    expect((await transport.publish(records(40, 10))).every((o) => o.status === 'published')).toBe(true)
    expect(producers()).toBe(2)
  })

  test('when the cluster is unreachable and every partition is in doubt, the publish throws (an outage), then recovers on a fresh producer', async () => {
    let down = true
    const { kafka, producers } = scriptedKafka(
      (b) => (down ? connectionClosed() : ackAll(b)),
      4,
      () => (down ? 'no answer' : undefined),
    )
    const transport = createKafkaTransport({ kafka })
    const batch = records(8, 8)
    // The first publish needs metadata: let that one through.
    down = false
    await transport.publish(records(1, 1))
    down = true
    for (let round = 0; round < 2; round++) {
      const error = await transport.publish(batch).catch((e) => e)
      expect(isOutboxKitError(error, ErrorCode.TransportFailed) && error.retriable).toBe(true)
    }
    down = false
    await new Promise((r) => setTimeout(r, 1_100))
    expect((await transport.publish(batch)).every((o) => o.status === 'published')).toBe(true)
    expect(producers()).toBe(2)
  })

  test('a failed metadata lookup keeps the producer', async () => {
    const refused = Object.assign(new Error('Connection error: connect ECONNREFUSED'), {
      name: 'KafkaJSConnectionError',
    })
    const { kafka, producers } = scriptedKafka(
      (b) => ackAll(b),
      4,
      (topic) => (topic === 'elsewhere' ? refused : undefined),
    )
    const transport = createKafkaTransport({ kafka })
    expect((await transport.publish(records(4, 2))).every((o) => o.status === 'published')).toBe(true)
    const error = await transport.publish(records(1, 1, 'elsewhere')).catch((e) => e)
    expect(isOutboxKitError(error, ErrorCode.TransportFailed) && error.retriable).toBe(true)
    expect((await transport.publish(records(4, 2))).every((o) => o.status === 'published')).toBe(true)
    expect(producers()).toBe(1)
  })

  test('a send with no answer within requestTimeoutMs is in doubt: the publish does not wait for it', async () => {
    const leaderOf = (partition: number) => partition % 2
    let hang = true
    const { kafka, sent, sentBy } = scriptedKafka(
      (b) => (hang && leaderOf(partitionsOf(b)[0]!) === 1 ? new Promise(() => {}) : ackAll(b)),
      4,
      () => undefined,
      leaderOf,
    )
    const transport = createKafkaTransport({ kafka, requestTimeoutMs: 200 })
    const began = Date.now()
    const batch = records(40, 10)
    const outcomes = await transport.publish(batch)
    expect(Date.now() - began).toBeLessThan(2_000)
    const partitionOfKey = keyPartitions(sent)
    batch.forEach((record, i) => {
      const outcome = outcomes[i]!
      if (leaderOf(partitionOfKey.get(record.key)!) === 0) expect(outcome.status).toBe('published')
      else expect(outcome.status === 'failed' && outcome.retriable && outcome.error).toContain('200 ms')
    })
    hang = false
    const before = sent.length
    expect((await transport.publish(records(40, 10))).every((o) => o.status === 'published')).toBe(true)
    for (let i = before; i < sent.length; i++) {
      for (const partition of partitionsOf(sent[i]!))
        expect(sentBy[i]).toBe(leaderOf(partition) === 1 ? 2 : 1)
    }
  })

  test('a record over maxRecordBytes fails at once, not retriable, and holds back only its key', async () => {
    const { kafka, sent } = scriptedKafka((b) => ackAll(b))
    const transport = createKafkaTransport({ kafka, maxRecordBytes: 600 })
    const batch = records(4, 2)
    const big = { ...batch[0]!, payload: new Uint8Array(1_000) }
    const outcomes = await transport.publish([big, ...batch.slice(1)])
    expect(outcomes.map((o) => (o.status === 'failed' ? (o.retriable ? 'retry' : 'dead') : 'ok'))).toEqual([
      'dead',
      'ok',
      'retry',
      'ok',
    ])
    expect(sent[0]!.topicMessages![0]!.messages).toHaveLength(2)
  })

  test('a broker refusal of one record in a batch isolates it and sends the others', async () => {
    const tooLarge = Object.assign(new Error('too large'), { type: 'MESSAGE_TOO_LARGE', retriable: false })
    const { kafka } = scriptedKafka((b) => {
      const messages = b.topicMessages!.flatMap((t) => t.messages)
      return messages.some((m) => String(m.value).includes('"i":2')) ? tooLarge : ackAll(b)
    })
    const transport = createKafkaTransport({ kafka })
    const outcomes = await transport.publish(records(6, 6))
    expect(outcomes.map((o) => o.status)).toEqual([
      'published',
      'published',
      'failed',
      'published',
      'published',
      'published',
    ])
    const failure = outcomes[2]!
    expect(
      failure.status === 'failed' && !failure.retriable && failure.error.includes('MESSAGE_TOO_LARGE'),
    ).toBe(true)
  })

  test('a forbidden or invalid topic dead-letters its records at once; a missing or leaderless one is retried', async () => {
    const faults: Record<string, Error> = {
      forbidden: protocolError('TOPIC_AUTHORIZATION_FAILED', false),
      invalid: protocolError('INVALID_TOPIC_EXCEPTION', false),
      missing: protocolError('UNKNOWN_TOPIC_OR_PARTITION', true),
      leaderless: protocolError('LEADER_NOT_AVAILABLE', true),
    }
    const { kafka, sent } = scriptedKafka(
      (b) => ackAll(b),
      4,
      (topic) => faults[topic],
    )
    const transport = createKafkaTransport({ kafka })
    const batch = ['forbidden', 'invalid', 'missing', 'leaderless', 'orders'].flatMap((topic) =>
      records(1, 1, topic).map((r) => ({ ...r, key: topic })),
    )
    const outcomes = await transport.publish(batch)
    expect(outcomes.map((o) => (o.status === 'failed' ? (o.retriable ? 'retry' : 'dead') : 'ok'))).toEqual([
      'dead',
      'dead',
      'retry',
      'retry',
      'ok',
    ])
    expect(outcomes[0]!.status === 'failed' && outcomes[0]!.error).toContain('TOPIC_AUTHORIZATION_FAILED')
    expect(outcomes[1]!.status === 'failed' && outcomes[1]!.error).toContain('INVALID_TOPIC_EXCEPTION')
    const missing = outcomes[2]!.status === 'failed' ? outcomes[2]!.error : ''
    expect(missing).toContain('auto.create.topics.enable=false')
    expect(missing).toContain('admin.createTopics')
    expect(sent.flatMap((b) => b.topicMessages!.map((t) => t.topic))).toEqual(['orders'])
  })

  test('options are checked: no client, an empty transactional id', () => {
    for (const options of [{}, { brokers: [] }, { brokers: ['x:1'], transactionalId: '' }]) {
      let error: unknown
      try {
        createKafkaTransport(options)
      } catch (e) {
        error = e
      }
      expect(isOutboxKitError(error, ErrorCode.InvalidOptions)).toBe(true)
    }
  })
})
