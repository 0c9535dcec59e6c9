/**
 * Interop with real Debezium (docs/debezium.md): Kafka Connect standalone with Debezium's Postgres
 * connector and outbox event router reads an outbox table in the `debezium` layout written by
 * `outbox.add`, and the Kafka runner feeds its records to an IdempotentConsumer with the message
 * id taken from the router's `id` header. Then the move from the built-in relay to Debezium on the
 * same table, and back. Needs Java and Maven (scripts/debezium); fails, never skips, without them.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { type Kysely, sql } from 'kysely'
import { createKafkaTransport } from '../../src/adapters/kafka/index.js'
import {
  createKyselyInboxStore,
  createKyselyOutboxStore,
  ensureOutboxSchema,
} from '../../src/adapters/kysely/index.js'
import { createKafkaConsumerRunner, type KafkaConsumerRunner } from '../../src/consumers/index.js'
import {
  IdempotentConsumer,
  type InboundMessage,
  Outbox,
  type OutboxMessageInput,
  Relay,
} from '../../src/index.js'
import { type AnyDB, postgresJsBackend, type TestDatabase } from '../support/databases.js'
import {
  connectorProperties,
  DebeziumWorker,
  debeziumHeaderColumnsSql,
  debeziumScript,
  debeziumTracingColumnSql,
} from '../support/debezium.js'
import { createTopic, kafkaBrokers, testKafka, uniqueName } from '../support/kafka.js'
import { waitFor } from '../support/relay-world.js'

const brokers = kafkaBrokers()

/** A schema `dbz_<time>_<random>` with the outbox in the Debezium layout, its header columns and an effects table. */
async function openWorld() {
  const base = await postgresJsBackend.open()
  const schema = uniqueName('dbz').replaceAll('-', '_')
  await sql.raw(`CREATE SCHEMA "${schema}"`).execute(base.db)
  const options = { dialect: 'postgres', schema, layout: 'debezium' } as const
  await ensureOutboxSchema(base.db, options)
  for (const statement of debeziumHeaderColumnsSql(schema)) await sql.raw(statement).execute(base.db)
  await sql
    .raw(`CREATE TABLE "${schema}".effects (
  n serial PRIMARY KEY, message_id text NOT NULL, topic text NOT NULL, key text, type text,
  traceparent text, payload text, value text, router_headers text)`)
    .execute(base.db)
  const store = createKyselyOutboxStore({ db: base.db, ...options })
  let trace: Record<string, string> = {}
  const outbox = new Outbox({ store, tracing: { capture: () => trace } })
  const runners: KafkaConsumerRunner[] = []
  const query = async <R>(text: string) => (await sql.raw(text).execute(base.db)).rows as R[]
  return {
    db: base.db as Kysely<AnyDB>,
    schema,
    store,
    query,
    /** Writes events in one transaction with `traceparent` as the active trace context (none if undefined). */
    async write(messages: OutboxMessageInput[], traceparent?: string): Promise<string[]> {
      trace = traceparent ? { traceparent } : {}
      return store.transaction((trx) => outbox.add(trx, messages))
    },
    consumer() {
      const consumer = new IdempotentConsumer<Kysely<AnyDB>>({
        store: createKyselyInboxStore({ db: base.db, schema }),
        name: 'interop',
        handler: async (message: InboundMessage, trx) => {
          await sql`INSERT INTO ${sql.table(`${schema}.effects`)} (message_id, topic, key, type, traceparent, payload, value, router_headers)
            VALUES (${message.id}, ${message.topic}, ${message.key}, ${message.type ?? null},
              ${message.headers['traceparent'] ?? null}, ${new TextDecoder().decode(message.payload)},
              ${message.value instanceof Uint8Array ? null : JSON.stringify(message.value)}, ${message.headers['outboxkit-headers'] ?? null})`.execute(
            trx,
          )
        },
      })
      let duplicates = 0
      consumer.on('duplicate', () => {
        duplicates++
      })
      return { consumer, duplicates: () => duplicates }
    },
    async run(consumer: IdempotentConsumer<Kysely<AnyDB>>, topics: string[]) {
      const runner = createKafkaConsumerRunner({
        kafka: testKafka(brokers),
        groupId: uniqueName('dbz-group'),
        topics,
        consumer,
        fromBeginning: true,
        // The router's `id` header, or the relay's `outboxkit-id` for records it published.
        messageId: (record) => record.headers['id'] ?? record.headers['outboxkit-id'],
        consumerConfig: { maxWaitTimeInMs: 200 },
      })
      await runner.start()
      runners.push(runner)
      return runner
    },
    async effects() {
      return query<{
        message_id: string
        topic: string
        key: string
        type: string | null
        traceparent: string | null
        payload: string
        value: string | null
        router_headers: string | null
      }>(`SELECT * FROM "${schema}".effects ORDER BY n`)
    },
    async close() {
      for (const runner of runners) await runner.stop()
      await sql.raw(`DROP SCHEMA "${schema}" CASCADE`).execute(base.db)
      await (base as TestDatabase).close()
    },
  }
}

type World = Awaited<ReturnType<typeof openWorld>>

/** Records in the topics (sum of high watermarks). */
async function recordCount(topics: string[]): Promise<number> {
  const admin = testKafka(brokers).admin()
  await admin.connect()
  try {
    let total = 0
    for (const topic of topics) {
      for (const p of await admin.fetchTopicOffsets(topic)) total += Number(p.high) - Number(p.low)
    }
    return total
  } finally {
    await admin.disconnect()
  }
}

/** Every record of the topics with its partition and headers, read from the beginning. */
async function readAll(topics: string[]) {
  const expected = await recordCount(topics)
  const consumer = testKafka(brokers).consumer({ groupId: uniqueName('dbz-read'), maxWaitTimeInMs: 200 })
  const records: { topic: string; partition: number; key: string; headers: Record<string, string> }[] = []
  await consumer.connect()
  try {
    await consumer.subscribe({ topics, fromBeginning: true })
    await consumer.run({
      eachMessage: async ({ topic, partition, message }) => {
        const headers: Record<string, string> = {}
        for (const [name, value] of Object.entries(message.headers ?? {})) {
          if (value !== null && value !== undefined) headers[name] = value.toString()
        }
        records.push({ topic, partition, key: message.key?.toString() ?? '', headers })
      },
    })
    await waitFor(`${expected} records of ${topics.join(', ')}`, () => records.length >= expected, 30_000)
  } finally {
    await consumer.disconnect()
  }
  return records
}

function byKey(rows: readonly { key: string; message_id: string }[]): Record<string, string[]> {
  const result: Record<string, string[]> = {}
  for (const row of rows) {
    result[row.key] ??= []
    result[row.key]!.push(row.message_id)
  }
  return result
}

const TRACE = (n: number) => `00-${n.toString(16).padStart(32, 'a')}-${n.toString(16).padStart(16, 'b')}-01`

const workers: DebeziumWorker[] = []

beforeAll(async () => {
  const probe = await postgresJsBackend.open()
  try {
    const [row] = (await sql<{ wal_level: string }>`SHOW wal_level`.execute(probe.db)).rows
    if (row?.wal_level !== 'logical') {
      throw new Error(
        `Debezium needs Postgres wal_level=logical, this server has ${row?.wal_level}: run bash scripts/db-config`,
      )
    }
  } finally {
    await probe.close()
  }
  // Fetches the jars (Maven) once, so the timed steps below are Connect's own start-up.
  await debeziumScript(['fetch'])
}, 180_000)

/** Stops every worker a test started, dropping its slot (one left behind retains WAL for ever). */
async function stopWorkers() {
  for (const worker of workers.splice(0)) await worker.stop()
}

afterAll(async () => {
  await stopWorkers()
})

async function startWorker(properties: Record<string, string>, env: Record<string, string> = {}) {
  const worker = new DebeziumWorker(properties, env)
  workers.push(worker)
  await worker.start()
  return worker
}

describe('Debezium outbox event router → IdempotentConsumer', () => {
  test('each event is applied once, a redelivery after a Connect crash is skipped, order, type and traceparent survive', async () => {
    const world: World = await openWorld()
    try {
      const orders = `${world.schema}.orders`
      const payments = `${world.schema}.payments`
      for (const topic of [orders, payments]) await createTopic(brokers, topic, { partitions: 3 })
      // Offsets are flushed only on a clean stop, so the SIGKILL below leaves the slot unconfirmed.
      const worker = await startWorker(connectorProperties({ name: world.schema, schema: world.schema }), {
        DEBEZIUM_OFFSET_FLUSH_MS: '600000',
      })

      const payload = (key: string, step: number) => ({
        zeta: step,
        alpha: { list: [1, { b: 2, a: 1 }], text: 'ünïcödé ✓', nothing: null },
        key,
      })
      const written: {
        id: string
        topic: string
        key: string
        type: string
        payload: unknown
        traceparent?: string
      }[] = []
      let trace = 1
      for (let step = 0; step < 4; step++) {
        for (const key of ['order-1', 'order-2', 'order-3']) {
          const traceparent = TRACE(trace++)
          const message = {
            topic: orders,
            key,
            type: step === 0 ? 'OrderCreated' : 'OrderChanged',
            payload: payload(key, step),
          }
          const [id] = await world.write([message], traceparent)
          written.push({
            id: id!,
            topic: orders,
            key,
            type: message.type,
            payload: message.payload,
            traceparent,
          })
        }
      }
      // Another application's logical decoding message reaches every slot of the database: the
      // connector must not pass it to the router (docs/debezium.md, the connector).
      await world.query(`SELECT pg_logical_emit_message(true, 'another-app', 'not an outbox event')`)
      // Several events of one key in one transaction; the last one written without a trace context.
      const paymentMessages = [0, 1, 2].map((step) => ({
        topic: payments,
        key: 'payment-1',
        type: 'PaymentCaptured',
        payload: payload('payment-1', step),
      }))
      const paymentIds = await world.write(paymentMessages.slice(0, 2), TRACE(trace))
      for (const [i, id] of paymentIds.entries()) {
        written.push({
          id,
          topic: payments,
          key: 'payment-1',
          type: 'PaymentCaptured',
          payload: paymentMessages[i]!.payload,
          traceparent: TRACE(trace),
        })
      }
      const [untraced] = await world.write([paymentMessages[2]!])
      written.push({
        id: untraced!,
        topic: payments,
        key: 'payment-1',
        type: 'PaymentCaptured',
        payload: paymentMessages[2]!.payload,
      })

      const { consumer, duplicates } = world.consumer()
      await world.run(consumer, [orders, payments])
      await waitFor(
        'every event applied',
        async () => (await world.effects()).length >= written.length,
        30_000,
      )

      const effects = await world.effects()
      expect(effects.map((e) => e.message_id).sort()).toEqual(written.map((w) => w.id).sort())
      expect(byKey(effects)).toEqual(byKey(written.map((w) => ({ key: w.key, message_id: w.id }))))
      for (const w of written) {
        const effect = effects.find((e) => e.message_id === w.id)!
        expect(effect.topic).toBe(w.topic)
        // The payload is bytea: Debezium hands over the bytes outboxkit wrote, JSON key order and
        // all, and the content-type header makes the consumer decode them.
        expect(effect.payload).toBe(JSON.stringify(w.payload))
        expect(JSON.parse(effect.value!)).toEqual(w.payload)
        expect(effect.type).toBe(w.type)
        expect(effect.traceparent).toBe(w.traceparent ?? null)
        // The `headers` column is jsonb: Postgres re-serialises it (spaces, its own key order).
        const stored = {
          'content-type': 'application/json',
          ...(w.traceparent ? { traceparent: w.traceparent } : {}),
        }
        expect(JSON.parse(effect.router_headers!)).toEqual(stored)
        if (w.traceparent) expect(effect.router_headers).not.toBe(JSON.stringify(stored))
      }
      const records = await readAll([orders, payments])
      expect(records).toHaveLength(written.length)
      for (const record of records) {
        expect(record.headers['id']).toBeDefined()
        expect(record.headers['outboxkit-id']).toBeUndefined()
        // `type` is a header only because the placement puts it there.
        expect(record.headers['outboxkit-type']).toBeDefined()
        expect(record.headers['type']).toBeUndefined()
      }
      expect(duplicates()).toBe(0)

      // Connect dies before flushing offsets; the slot was never confirmed, so the restarted
      // connector streams every change again.
      await worker.kill()
      await worker.start()
      await waitFor(
        'the redelivered records',
        async () => (await recordCount([orders, payments])) >= 2 * written.length,
        30_000,
      )
      await waitFor('every redelivery skipped', () => duplicates() >= written.length, 30_000)
      expect(duplicates()).toBe(written.length)
      const after = await world.effects()
      expect(after).toHaveLength(written.length)
      expect(
        await world.query<{ n: string }>(`SELECT count(*) AS n FROM "${world.schema}".outbox_inbox`),
      ).toEqual([{ n: String(written.length) }])
      await worker.stop()
      expect(
        await world.query(`SELECT slot_name FROM pg_replication_slots WHERE slot_name = '${worker.slot}'`),
      ).toEqual([])
    } finally {
      await stopWorkers()
      await world.close()
    }
  }, 90_000)
})

describe("Debezium's own tracing", () => {
  test('with the OpenTelemetry SDK in the worker, the router continues the stored trace in a span of its own', async () => {
    const world: World = await openWorld()
    try {
      for (const statement of debeziumTracingColumnSql(world.schema))
        await sql.raw(statement).execute(world.db)
      const topic = `${world.schema}.orders`
      await createTopic(brokers, topic, { partitions: 1 })
      const properties = connectorProperties({ name: world.schema, schema: world.schema })
      await startWorker(
        {
          ...properties,
          // No traceparent column in a header: the router's tracing writes that header.
          'transforms.outbox.table.fields.additional.placement':
            'type:header:outboxkit-type,content_type:header:content-type',
          'transforms.outbox.tracing.with.context.field.only': 'true',
        },
        { DEBEZIUM_OTEL: 'true' },
      )
      const traceparent = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'
      const event = (n: number) => ({ topic, key: 'order-1', type: 'OrderCreated', payload: { n } })
      const [traced] = await world.write([event(1)], traceparent)
      const [untraced] = await world.write([event(2)])
      const { consumer } = world.consumer()
      await world.run(consumer, [topic])
      await waitFor('both events applied', async () => (await world.effects()).length === 2, 30_000)
      const [first, second] = await world.effects()
      expect([first!.message_id, second!.message_id]).toEqual([traced!, untraced!])
      // Same trace, same flags; the parent is Debezium's `debezium-read` span, not the writer's.
      const [version, traceId, spanId, flags] = first!.traceparent!.split('-')
      expect([version, traceId, flags]).toEqual(['00', '0af7651916cd43dd8448eb211c80319c', '01'])
      expect(spanId).toMatch(/^[0-9a-f]{16}$/)
      expect(spanId).not.toBe('b7ad6b7169203331')
      expect(second!.traceparent).toBeNull()
    } finally {
      await stopWorkers()
      await world.close()
    }
  }, 60_000)
})

describe('moving between the built-in relay and Debezium on one table', () => {
  test('relay stopped, then Debezium with snapshot.mode=no_data: the rows written in between are never published', async () => {
    const world: World = await openWorld()
    const transport = createKafkaTransport({ kafka: testKafka(brokers) })
    try {
      const topic = `${world.schema}.orders`
      await createTopic(brokers, topic, { partitions: 1 })
      const { consumer } = world.consumer()
      await world.run(consumer, [topic])
      const event = (phase: string) => ({ topic, key: 'order-1', type: phase, payload: { phase } })
      const relay = new Relay({ store: world.store, transport, pollIntervalMs: 50 })
      await relay.start()
      const [published] = await world.write([event('relay')])
      await waitFor('the relay to publish', async () => (await world.effects()).length === 1)
      await relay.stop()
      const [gap] = await world.write([event('gap')])
      await startWorker(connectorProperties({ name: world.schema, schema: world.schema }))
      const [streamed] = await world.write([event('debezium')])
      // Debezium publishes in log order: once the later row is applied, the gap row was passed over.
      await waitFor('the row written after the slot', async () => (await world.effects()).length === 2)
      expect((await world.effects()).map((e) => e.message_id)).toEqual([published!, streamed!])
      expect(await recordCount([topic])).toBe(2)
      const rows = await world.query<{ id: string; status: number }>(
        `SELECT id::text AS id, status FROM "${world.schema}".outbox ORDER BY seq`,
      )
      expect(rows).toEqual([
        { id: published!, status: 1 },
        { id: gap!, status: 0 },
        { id: streamed!, status: 0 },
      ])
    } finally {
      await stopWorkers()
      await transport.close()
      await world.close()
    }
  }, 60_000)

  test('relay → Debezium (a snapshot of the pending rows) → relay: nothing lost, the only duplicates carry the same id and are skipped', async () => {
    const world: World = await openWorld()
    const transport = createKafkaTransport({ kafka: testKafka(brokers) })
    try {
      const topic = `${world.schema}.orders`
      await createTopic(brokers, topic, { partitions: 3 })
      const keys = ['order-1', 'order-2', 'order-3']
      const written: { key: string; message_id: string }[] = []
      const write = async (phase: string, perKey = 1) => {
        for (let i = 0; i < perKey; i++) {
          for (const key of keys) {
            const [id] = await world.write([{ topic, key, type: phase, payload: { phase, i } }])
            written.push({ key, message_id: id! })
          }
        }
      }
      const pending = async () =>
        Number(
          (
            await world.query<{ n: string }>(
              `SELECT count(*) AS n FROM "${world.schema}".outbox WHERE status = 0`,
            )
          )[0]!.n,
        )
      const { consumer, duplicates } = world.consumer()
      await world.run(consumer, [topic])
      const applied = (count: number) =>
        waitFor(`${count} events applied`, async () => (await world.effects()).length >= count, 30_000)

      // 1. The relay publishes and marks.
      let relay = new Relay({ store: world.store, transport, pollIntervalMs: 50 })
      await relay.start()
      await write('relay-a', 2)
      await applied(written.length)
      await waitFor('relay-a marked', async () => (await pending()) === 0)

      // 2. To Debezium: stop the relay (a graceful stop releases what it claimed), then start
      // Debezium with a snapshot of exactly the rows still pending: those written while neither
      // runs are published by the snapshot, the rows the relay published are not read again.
      await relay.stop()
      await write('gap')
      const worker = await startWorker(
        connectorProperties({
          name: world.schema,
          schema: world.schema,
          extra: {
            'snapshot.mode': 'initial',
            'snapshot.select.statement.overrides': `${world.schema}.outbox`,
            [`snapshot.select.statement.overrides.${world.schema}.outbox`]: `SELECT * FROM "${world.schema}"."outbox" WHERE status = 0 ORDER BY seq`,
          },
        }),
      )
      await write('debezium', 2)
      await applied(written.length)
      expect(await recordCount([topic])).toBe(written.length)
      // Debezium never marks rows: everything it published is still pending in the table.
      expect(await pending()).toBe(keys.length * 3)

      // 3. Back to the relay: mark the pending rows as published. Debezium publishes in log order,
      // so once it has delivered a row committed after the UPDATE it has delivered every row the
      // UPDATE marked. Rows written from the UPDATE until Debezium stops stay pending and are
      // published by both: the duplicates of the switch.
      await sql`UPDATE ${sql.table(`${world.schema}.outbox`)} SET status = 1, published_at = now() WHERE status = 0`.execute(
        world.db,
      )
      const beforeOverlap = written.length
      await write('overlap')
      const overlap = written.length - beforeOverlap
      await applied(written.length)
      await worker.stop()
      relay = new Relay({ store: world.store, transport, pollIntervalMs: 50 })
      await relay.start()
      await write('relay-b')
      await waitFor('the overlap redelivered and skipped', () => duplicates() >= overlap, 30_000)
      await applied(written.length)
      await waitFor('relay-b marked', async () => (await pending()) === 0)
      await relay.stop()

      const effects = await world.effects()
      expect(effects).toHaveLength(written.length)
      expect(byKey(effects)).toEqual(byKey(written))
      expect(duplicates()).toBe(overlap)
      const records = await readAll([topic])
      expect(records).toHaveLength(written.length + overlap)
      // Connect's producer and the relay's partition a key alike, so one key stays on one partition.
      for (const key of keys) {
        expect(new Set(records.filter((r) => r.key === key).map((r) => r.partition)).size).toBe(1)
      }
      expect(records.filter((r) => r.headers['outboxkit-id'] !== undefined)).toHaveLength(
        keys.length * 3 + overlap,
      )
    } finally {
      await stopWorkers()
      await transport.close()
      await world.close()
    }
  }, 90_000)
})
