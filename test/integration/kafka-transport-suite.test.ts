import { describe, expect, test } from 'bun:test'
import { createKafkaTransport, type KafkaTransport } from '../../src/adapters/kafka/index.js'
import { decodeHeaders } from '../../src/consumers/kafka-consumer-runner.js'
import { Headers } from '../../src/index.js'
import { type TransportHarness, type TransportReadRecord, transportSuite } from '../../src/testing/index.js'
import { createTopic, kafkaBrokers, testKafka, uniqueName, uniqueTopic } from '../support/kafka.js'

const MAX_RECORD_BYTES = 100_000

/** Reads `topic` from the beginning with a fresh group until every id in `ids` arrived. */
async function readKafka(topic: string, ids: readonly string[]): Promise<TransportReadRecord[]> {
  const consumer = testKafka().consumer({ groupId: uniqueName('suite-reader'), maxWaitTimeInMs: 200 })
  const read: TransportReadRecord[] = []
  const waiting = new Set(ids)
  let timer: ReturnType<typeof setTimeout> | undefined
  try {
    await consumer.connect()
    await consumer.subscribe({ topics: [topic], fromBeginning: true })
    await new Promise<void>((resolve, reject) => {
      timer = setTimeout(
        () => reject(new Error(`${waiting.size} of ${ids.length} records did not arrive in ${topic}`)),
        60_000,
      )
      if (waiting.size === 0) resolve()
      consumer
        .run({
          eachMessage: async ({ message }) => {
            const headers = decodeHeaders(message.headers)
            const id = headers[Headers.messageId] ?? ''
            read.push({
              id,
              topic,
              key: message.key?.toString('utf8') ?? '',
              payload: new Uint8Array(message.value ?? Buffer.alloc(0)),
              headers,
            })
            waiting.delete(id)
            if (waiting.size === 0) resolve()
          },
        })
        .catch(reject)
    })
    return read
  } finally {
    clearTimeout(timer)
    await consumer.disconnect()
  }
}

async function openKafkaHarness(transactional: boolean): Promise<TransportHarness> {
  const transports: KafkaTransport[] = []
  const make = (kafka = testKafka()) => {
    const transport = createKafkaTransport({
      kafka,
      maxRecordBytes: MAX_RECORD_BYTES,
      ...(transactional ? { transactionalId: uniqueName('suite-tx') } : {}),
    })
    transports.push(transport)
    return transport
  }
  return {
    transport: make(),
    topic: async () => {
      const topic = uniqueTopic('suite')
      await createTopic(kafkaBrokers(), topic, { partitions: 3 })
      return topic
    },
    read: readKafka,
    unreachable: async () =>
      make(
        testKafka(['127.0.0.1:1'], {
          connectionTimeout: 300,
          requestTimeout: 1_000,
          retry: { retries: 1, initialRetryTime: 100, maxRetryTime: 300 },
        }),
      ),
    close: async () => {
      for (const transport of transports) await transport.close()
    },
  }
}

const api = { describe, test, expect }
transportSuite(api, 'kafka (idempotent)', () => openKafkaHarness(false), {
  oversizePayloadBytes: MAX_RECORD_BYTES + 1,
})
transportSuite(api, 'kafka (transactional)', () => openKafkaHarness(true), {
  oversizePayloadBytes: MAX_RECORD_BYTES + 1,
})
