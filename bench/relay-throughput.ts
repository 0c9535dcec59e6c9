/**
 * Relay throughput against raw kafkajs, side by side on the same broker and messages.
 *
 *   bun bench/relay-throughput.ts [--events 20000] [--batch 500] [--keys 50] [--backend postgres.js|mariadb]
 *
 * Baseline: an idempotent kafkajs producer (acks -1, one request in flight) sending the same
 * records in batches of the same size. Measured: a relay draining an outbox table of those
 * records to Kafka (claim, publish, mark). Repetitions alternate; the median ratio is reported.
 */
import { Partitioners } from 'kafkajs'
import { createKafkaTransport } from '../src/adapters/kafka/index.js'
import { createKyselyOutboxStore, ensureOutboxSchema } from '../src/adapters/kysely/index.js'
import { Outbox, Relay } from '../src/index.js'
import { mysqlBackend, postgresJsBackend } from '../test/support/databases.js'
import { createTopic, kafkaBrokers, testKafka, uniqueTopic } from '../test/support/kafka.js'

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 ? process.argv[i + 1]! : fallback
}
const events = Number(arg('events', '20000'))
const batch = Number(arg('batch', '500'))
const keys = Number(arg('keys', '50'))
const repetitions = Number(arg('repetitions', '3'))
const backend = arg('backend', 'postgres.js') === 'mariadb' ? mysqlBackend : postgresJsBackend
const payload = { orderId: 'x'.repeat(36), total: 123.45, items: [{ sku: 'ABC-123', qty: 2 }], note: 'y'.repeat(100) }

async function rawKafka(topic: string): Promise<number> {
  const producer = testKafka().producer({
    idempotent: true,
    maxInFlightRequests: 1,
    createPartitioner: Partitioners.DefaultPartitioner,
  })
  await producer.connect()
  const value = JSON.stringify(payload)
  const started = performance.now()
  for (let start = 0; start < events; start += batch) {
    const messages = Array.from({ length: Math.min(batch, events - start) }, (_, i) => ({
      key: `key-${(start + i) % keys}`,
      value,
      headers: { 'outboxkit-id': crypto.randomUUID(), 'outboxkit-type': 'OrderCreated', 'content-type': 'application/json' },
    }))
    await producer.sendBatch({ topicMessages: [{ topic, messages }], acks: -1 })
  }
  const seconds = (performance.now() - started) / 1000
  await producer.disconnect()
  return events / seconds
}

async function relay(topic: string): Promise<number> {
  const database = await backend.open()
  try {
    await ensureOutboxSchema(database.db, { dialect: database.dialect, schema: database.schema })
    const store = createKyselyOutboxStore({ db: database.db, schema: database.schema })
    const outbox = new Outbox({ store })
    for (let start = 0; start < events; start += 1000) {
      await store.transaction((trx) =>
        outbox.add(
          trx,
          Array.from({ length: Math.min(1000, events - start) }, (_, i) => ({
            topic,
            key: `key-${(start + i) % keys}`,
            type: 'OrderCreated',
            payload,
          })),
        ),
      )
    }
    const transport = createKafkaTransport({ kafka: testKafka() })
    const relayInstance = new Relay({ store, transport, batchSize: batch })
    const started = performance.now()
    while ((await relayInstance.runOnce()) > 0) {}
    const seconds = (performance.now() - started) / 1000
    await transport.close()
    return events / seconds
  } finally {
    await database.close()
  }
}

const topic = uniqueTopic('bench-relay')
await createTopic(kafkaBrokers(), topic, { partitions: 3 })
await rawKafka(topic) // warm-up: connections, metadata, JIT
const ratios: number[] = []
for (let r = 0; r < repetitions; r++) {
  const raw = await rawKafka(topic)
  const relayed = await relay(topic)
  ratios.push(relayed / raw)
  console.log(
    `rep ${r + 1}: raw kafkajs ${raw.toFixed(0)} ev/s, relay (${backend.name}) ${relayed.toFixed(0)} ev/s, ratio ${(relayed / raw).toFixed(2)}`,
  )
}
ratios.sort((a, b) => a - b)
console.log(
  `median relay/raw = ${ratios[Math.floor(ratios.length / 2)]!.toFixed(2)} (events ${events}, batch ${batch}, keys ${keys})`,
)
process.exit(0)
