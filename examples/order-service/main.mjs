/**
 * A minimal order service and inventory consumer with outboxkit, in plain JavaScript that runs
 * unchanged on Node, Bun and Deno:
 *
 *   node examples/order-service/main.mjs
 *   bun examples/order-service/main.mjs
 *   deno run --allow-env --allow-net --allow-read --allow-sys examples/order-service/main.mjs
 *
 * It imports the built package (`npm run build` first), needs PostgreSQL (DATABASE_URL, default
 * postgres://postgres@127.0.0.1:5432/test) and Kafka (KAFKA_BROKERS, default 127.0.0.1:9092), and
 * cleans up after itself. Exits 0 when every order took stock exactly once.
 */
import process from 'node:process'
import { Kafka, logLevel } from 'kafkajs'
import { Kysely, sql } from 'kysely'
import { PostgresJSDialect } from 'kysely-postgres-js'
import { IdempotentConsumer, Outbox, Relay } from 'outboxkit'
import { createKafkaTransport } from 'outboxkit/kafka'
import { createKafkaConsumerRunner } from 'outboxkit/kafka-consumer'
import { createKyselyInboxStore, createKyselyOutboxStore, ensureOutboxSchema } from 'outboxkit/kysely'
import postgres from 'postgres'

const ORDERS = 10
const url = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test'
const brokers = (process.env.KAFKA_BROKERS ?? '127.0.0.1:9092').split(',')
const suffix = Math.random().toString(36).slice(2, 8)
const schema = `example_${suffix}`
const topic = `example-orders-${suffix}`

const db = new Kysely({
  dialect: new PostgresJSDialect({ postgres: postgres(url, { max: 4, onnotice: () => {} }) }),
})
const kafka = new Kafka({ brokers, clientId: 'order-service-example', logLevel: logLevel.NOTHING })

// Tables: the outbox and inbox, and the service's own.
await sql.raw(`CREATE SCHEMA "${schema}"`).execute(db)
await ensureOutboxSchema(db, { dialect: 'postgres', schema })
await sql.raw(`CREATE TABLE "${schema}".orders (id text PRIMARY KEY, qty int NOT NULL)`).execute(db)
await sql.raw(`CREATE TABLE "${schema}".stock (sku text PRIMARY KEY, qty int NOT NULL)`).execute(db)
await sql.raw(`INSERT INTO "${schema}".stock VALUES ('widget', 1000)`).execute(db)
const admin = kafka.admin()
await admin.connect()
await admin.createTopics({ topics: [{ topic, numPartitions: 3 }], waitForLeaders: true })

// The order service: each order and its event in one transaction.
const store = createKyselyOutboxStore({ db, schema })
const outbox = new Outbox({ store })
for (let i = 1; i <= ORDERS; i++) {
  const order = { id: `order-${i}`, qty: i }
  await db.transaction().execute(async (trx) => {
    await trx.withSchema(schema).insertInto('orders').values(order).execute()
    await outbox.add(trx, { topic, key: order.id, type: 'OrderCreated', payload: order })
  })
}

// The relay: publishes what is in the outbox (here until it is empty; a service runs relay.start()).
const transport = createKafkaTransport({ kafka })
const relay = new Relay({ store, transport })
while ((await relay.runOnce()) > 0) {}

// The inventory service: takes stock once per order, whatever Kafka delivers.
const inventory = new IdempotentConsumer({
  store: createKyselyInboxStore({ db, schema }),
  name: 'inventory',
  handler: async (message, trx) => {
    await trx
      .withSchema(schema)
      .updateTable('stock')
      .set((eb) => ({ qty: eb('qty', '-', message.value.qty) }))
      .where('sku', '=', 'widget')
      .execute()
  },
})
let processed = 0
inventory.on('processed', () => processed++)
const runner = createKafkaConsumerRunner({
  kafka,
  groupId: `inventory-${suffix}`,
  topics: [topic],
  consumer: inventory,
  fromBeginning: true,
})
await runner.start()
const deadline = Date.now() + 60_000
while (processed < ORDERS && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50))

const { qty } = await db.withSchema(schema).selectFrom('stock').select('qty').executeTakeFirstOrThrow()
const expected = 1000 - (ORDERS * (ORDERS + 1)) / 2
console.log(
  `${ORDERS} orders written and published, ${processed} processed; stock ${qty} (expected ${expected})`,
)

await runner.stop()
await transport.close()
await admin.deleteTopics({ topics: [topic] }).catch(() => {})
await admin.disconnect()
await sql.raw(`DROP SCHEMA "${schema}" CASCADE`).execute(db)
await db.destroy()
process.exit(processed === ORDERS && qty === expected ? 0 : 1)
