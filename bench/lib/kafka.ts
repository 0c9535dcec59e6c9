/** Kafka helpers: the raw kafkajs baselines and the messages every measurement sends. */
import type { Kafka, Message, Producer } from 'kafkajs'
import { Partitioners } from 'kafkajs'
import type { OutboxMessageInput } from '../../src/index.js'
import { createTopic, kafkaBrokers, testKafka, uniqueName } from '../../test/support/kafka.js'

export { kafkaBrokers, testKafka, uniqueName }

/** About 250 bytes of JSON, like a small domain event. */
export const PAYLOAD = {
  orderId: 'x'.repeat(36),
  total: 123.45,
  items: [{ sku: 'ABC-123', qty: 2 }],
  note: 'y'.repeat(100),
}
const PAYLOAD_JSON = JSON.stringify(PAYLOAD)

/** The key of the i-th event over `keys` keys, round-robin. */
export function keyOf(i: number, keys: number): string {
  return `key-${i % keys}`
}

/** The outbox message for the i-th event. */
export function outboxMessage(topic: string, i: number, keys: number): OutboxMessageInput {
  return { topic, key: keyOf(i, keys), type: 'OrderCreated', payload: PAYLOAD }
}

/** The record a relay would send for the i-th event, built the way an application would. */
export function rawMessage(i: number, keys: number, payload: string = PAYLOAD_JSON): Message {
  return {
    key: keyOf(i, keys),
    value: payload,
    headers: {
      'outboxkit-id': crypto.randomUUID(),
      'outboxkit-type': 'OrderCreated',
      'content-type': 'application/json',
    },
  }
}

/**
 * A kafkajs producer with the settings the relay's transport forces: idempotent, one request in
 * flight, the Java-compatible partitioner (sends use acks -1).
 */
export async function rawProducer(kafka: Kafka, transactionalId?: string): Promise<Producer> {
  const producer = kafka.producer({
    idempotent: true,
    maxInFlightRequests: 1,
    createPartitioner: Partitioners.DefaultPartitioner,
    ...(transactionalId === undefined ? {} : { transactionalId }),
  })
  await producer.connect()
  return producer
}

/** Sends events [from, to) in batches of `batch`, each batch one acknowledged request. */
export async function sendRaw(
  producer: Producer,
  topic: string,
  from: number,
  to: number,
  batch: number,
  keys: number,
): Promise<void> {
  for (let start = from; start < to; start += batch) {
    const messages: Message[] = []
    for (let i = start; i < Math.min(start + batch, to); i++) messages.push(rawMessage(i, keys))
    await producer.sendBatch({ topicMessages: [{ topic, messages }], acks: -1 })
  }
}

/** A fresh topic with `partitions` partitions, ready for producers. */
export async function freshTopic(prefix: string, partitions: number): Promise<string> {
  const topic = uniqueName(prefix)
  await createTopic(kafkaBrokers(), topic, { partitions })
  return topic
}

/**
 * kafkajs schedules some timers with a negative delay, which Bun reports as a
 * TimeoutNegativeWarning on every run (the timer fires at once, as kafkajs expects). Drops that
 * one warning; every other warning is still printed.
 */
export function silenceNegativeTimeoutWarnings(): void {
  process.removeAllListeners('warning')
  process.on('warning', (warning) => {
    if (warning.name !== 'TimeoutNegativeWarning') console.error(warning)
  })
}
