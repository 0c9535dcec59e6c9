/**
 * The end-to-end scenario every runtime check shares, written against the built package exactly
 * as a user imports it (`outboxkit`, `outboxkit/kysely`, `outboxkit/kafka`,
 * `outboxkit/kafka-consumer`): orders and their events are written in transactions, a relay
 * publishes the events to a fresh Kafka topic, an IdempotentConsumer applies one side effect per
 * event, and then every record is delivered a second time to prove the side effects stay at one.
 *
 * Plain ESM JavaScript with only `node:process` from the platform, so Node, Bun and Deno run it
 * unchanged; the Workers check writes from inside workerd and uses the rest of it from Node.
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
import { writeOrder } from '../../examples/worker/write-order.mjs'

export { writeOrder }

export const POSTGRES_URL = process.env.OUTBOXKIT_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/test'

export function kafkaBrokers() {
  const fromEnv = (process.env.KAFKA_BROKERS ?? '')
    .split(',')
    .map((broker) => broker.trim())
    .filter((broker) => broker.length > 0)
  return fromEnv.length > 0 ? fromEnv : ['127.0.0.1:9092']
}

/** A name no earlier run used; valid as a Postgres schema, a topic and a consumer group. */
export function uniqueName(prefix) {
  return `${prefix}_${Date.now().toString(36)}_${crypto.randomUUID().slice(0, 8)}`
}

/** The runtime running this file, with its version: `node 20.x`, `bun 1.x`, `deno 2.x`. */
export function runtimeName() {
  if (globalThis.Deno?.version?.deno) return `deno ${globalThis.Deno.version.deno}`
  if (globalThis.Bun?.version) return `bun ${globalThis.Bun.version}`
  return `node ${process.versions.node}`
}

/** Named checks; `finish` prints `result: N passed, N failed`, the line scripts/test counts. */
export class Checks {
  passed = 0
  failed = 0

  check(name, ok, detail = '') {
    if (ok) {
      this.passed++
      console.log(`ok - ${name}`)
    } else {
      this.failed++
      console.log(`not ok - ${name}${detail ? `: ${detail}` : ''}`)
    }
  }

  /** Records a failure that stopped the scenario before its checks ran. */
  crash(error) {
    this.failed++
    console.log(
      `not ok - the scenario ran to the end: ${error instanceof Error ? error.stack : String(error)}`,
    )
  }

  /** Prints the result line and returns the process exit code. */
  finish() {
    console.log(`result: ${this.passed} passed, ${this.failed} failed`)
    return this.failed === 0 && this.passed > 0 ? 0 : 1
  }
}

/**
 * Fails the check once `ms` elapsed, whatever is still pending: a hung broker or database
 * connection must fail it, not stall the test command. `onExpire` (cleanup, the result line) gets
 * 10 s before the process exits. Returns a function that cancels the deadline.
 */
export function deadline(ms, onExpire) {
  const timer = setTimeout(async () => {
    await Promise.race([onExpire?.(), new Promise((resolve) => setTimeout(resolve, 10_000))]).catch(() => {})
    process.exit(1)
  }, ms)
  return () => clearTimeout(timer)
}

export async function waitFor(what, condition, timeoutMs = 60_000) {
  const until = Date.now() + timeoutMs
  while (!(await condition())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

export function openDatabase(url = POSTGRES_URL) {
  return new Kysely({
    dialect: new PostgresJSDialect({ postgres: postgres(url, { max: 5, onnotice: () => {} }) }),
  })
}

/**
 * A fresh schema with the outbox and inbox tables, an `orders` table and an `effects` table
 * (no unique constraint: a side effect applied twice shows up as two rows), and a fresh topic.
 */
export async function openWorld(label) {
  const db = openDatabase()
  const schema = uniqueName(`rt_${label}`)
  const topic = uniqueName(`rt-${label}`).replaceAll('_', '-')
  const kafka = new Kafka({
    clientId: `outboxkit-${label}`,
    brokers: kafkaBrokers(),
    logLevel: logLevel.NOTHING,
    connectionTimeout: 5_000,
  })
  await sql`CREATE SCHEMA ${sql.id(schema)}`.execute(db)
  await ensureOutboxSchema(db, { dialect: 'postgres', schema })
  await sql`CREATE TABLE ${sql.id(schema, 'orders')} (id text PRIMARY KEY, amount integer NOT NULL)`.execute(
    db,
  )
  await sql`CREATE TABLE ${sql.id(schema, 'effects')} (message_id text NOT NULL, order_id text NOT NULL)`.execute(
    db,
  )
  await createTopic(kafka, topic, 3)
  let closing
  return {
    db,
    schema,
    topic,
    kafka,
    // Idempotent: the deadline and the scenario's own cleanup may both call it.
    close() {
      closing ??= (async () => {
        try {
          await sql`DROP SCHEMA ${sql.id(schema)} CASCADE`.execute(db)
        } finally {
          await db.destroy()
          const admin = kafka.admin()
          await admin.connect()
          await admin.deleteTopics({ topics: [topic] }).catch(() => {})
          await admin.disconnect()
        }
      })()
      return closing
    },
  }
}

/** Creates the topic and waits until each partition has a leader. */
async function createTopic(kafka, topic, partitions) {
  const admin = kafka.admin()
  await admin.connect()
  try {
    await admin.createTopics({ waitForLeaders: false, topics: [{ topic, numPartitions: partitions }] })
    await waitFor(
      `leaders for ${topic}`,
      async () => {
        const metadata = await admin.fetchTopicMetadata({ topics: [topic] }).catch(() => undefined)
        const led = metadata?.topics[0]?.partitions.filter((p) => p.leader >= 0).length ?? 0
        return led === partitions
      },
      30_000,
    )
  } finally {
    await admin.disconnect()
  }
}

/** The writer side of the scenario, run in this process. */
export async function writeOrders(world, count) {
  const outbox = new Outbox({ store: createKyselyOutboxStore({ db: world.db, schema: world.schema }) })
  const written = []
  for (let i = 0; i < count; i++) {
    const orderId = `order-${i}`
    written.push({
      orderId,
      eventId: await writeOrder(world.db, outbox, { ...world, orderId, amount: 100 + i }),
    })
  }
  const rolledBack = { orderId: 'order-rolled-back', threw: false }
  try {
    await writeOrder(world.db, outbox, {
      ...world,
      orderId: rolledBack.orderId,
      amount: 1,
      failAfterAdd: true,
    })
  } catch (error) {
    if (!(error instanceof Error) || error.message !== 'payment declined') throw error
    rolledBack.threw = true
  }
  return { written, rolledBack }
}

/**
 * Relays the outbox to the topic and consumes it with an IdempotentConsumer (side effect: one
 * `effects` row per event, in the inbox transaction), then replays every record through a fresh
 * consumer group under the same consumer name. Returns what each phase observed.
 */
export async function relayAndConsume(world, expectedCount) {
  const { db, schema, topic, kafka } = world
  const store = createKyselyOutboxStore({ db, schema })
  const transport = createKafkaTransport({ kafka })
  const relay = new Relay({ store, transport, pollIntervalMs: 100, lagIntervalMs: 0 })
  const consumer = new IdempotentConsumer({
    store: createKyselyInboxStore({ db, schema }),
    name: 'fulfilment',
    backoff: { initialMs: 20, maxMs: 200 },
    handler: async (message, trx) => {
      const orderId = message.value?.orderId ?? ''
      await sql`INSERT INTO ${sql.id(schema, 'effects')} (message_id, order_id) VALUES (${message.id}, ${orderId})`.execute(
        trx,
      )
    },
  })
  let processed = 0
  let duplicates = 0
  consumer.on('processed', () => processed++)
  consumer.on('duplicate', () => duplicates++)
  const runners = []
  const run = async () => {
    const runner = createKafkaConsumerRunner({
      kafka,
      groupId: uniqueName('rt-group'),
      topics: [topic],
      consumer,
      fromBeginning: true,
      consumerConfig: { maxWaitTimeInMs: 200 },
    })
    runners.push(runner)
    await runner.start()
  }
  try {
    await relay.start()
    await run()
    await waitFor(`${expectedCount} events processed`, () => processed >= expectedCount)
    await relay.stop()
    // Every record again, through a second group: the inbox must turn each into a duplicate.
    await run()
    await waitFor(`${expectedCount} redeliveries skipped`, () => duplicates >= expectedCount)
    // Give a stray extra delivery (there should be none) the chance to show up.
    await new Promise((resolve) => setTimeout(resolve, 500))
  } finally {
    for (const runner of runners) await runner.stop()
    await relay.stop()
    await transport.close()
  }
  return { processed, duplicates }
}

/** The database facts the checks compare with what was written. */
export async function observe(world) {
  const { db, schema } = world
  const rows = async (query) => (await query.execute(db)).rows
  const orders = await rows(sql`SELECT id FROM ${sql.id(schema, 'orders')} ORDER BY id`)
  const outboxRows = await rows(sql`SELECT id, status FROM ${sql.id(schema, 'outbox')}`)
  const effects = await rows(
    sql`SELECT message_id, order_id, count(*)::int AS n FROM ${sql.id(schema, 'effects')} GROUP BY message_id, order_id`,
  )
  const inbox = await rows(
    sql`SELECT count(*)::int AS n FROM ${sql.id(schema, 'outbox_inbox')} WHERE consumer = 'fulfilment'`,
  )
  return {
    orderIds: orders.map((r) => String(r.id)),
    outbox: outboxRows.map((r) => ({ id: String(r.id), status: Number(r.status) })),
    effects: effects.map((r) => ({ messageId: String(r.message_id), orderId: String(r.order_id), n: r.n })),
    inboxCount: inbox[0]?.n ?? 0,
  }
}

/** The checks every runtime reports, from what was written and what the database shows. */
export function verify(checks, { written, rolledBack }, seen, counts) {
  const eventIds = written.map((w) => w.eventId).sort()
  const orderIds = written.map((w) => w.orderId).sort()
  checks.check(
    `${written.length} orders committed, each with one outbox event`,
    JSON.stringify(seen.orderIds) === JSON.stringify(orderIds) &&
      JSON.stringify(seen.outbox.map((r) => r.id).sort()) === JSON.stringify(eventIds),
    `orders ${seen.orderIds.length}, outbox rows ${seen.outbox.length}`,
  )
  checks.check(
    'the rolled-back transaction left neither its order nor its event',
    rolledBack.threw &&
      !seen.orderIds.includes(rolledBack.orderId) &&
      !seen.effects.some((e) => e.orderId === rolledBack.orderId),
    JSON.stringify(rolledBack),
  )
  checks.check(
    'the relay published every event (status published)',
    seen.outbox.length === written.length && seen.outbox.every((r) => r.status === 1),
    JSON.stringify(seen.outbox.filter((r) => r.status !== 1)),
  )
  const effectIds = seen.effects.map((e) => e.messageId).sort()
  const byEvent = new Map(written.map((w) => [w.eventId, w.orderId]))
  checks.check(
    'each event had its side effect exactly once, for its own order',
    JSON.stringify(effectIds) === JSON.stringify(eventIds) &&
      seen.effects.every((e) => e.n === 1 && byEvent.get(e.messageId) === e.orderId),
    JSON.stringify(seen.effects.filter((e) => e.n !== 1)),
  )
  checks.check(
    'every record delivered again was skipped as a duplicate',
    counts.processed === written.length && counts.duplicates === written.length,
    `processed ${counts.processed}, duplicates ${counts.duplicates}`,
  )
  checks.check(
    'the inbox holds one row per event',
    seen.inboxCount === written.length,
    `inbox ${seen.inboxCount}`,
  )
}
