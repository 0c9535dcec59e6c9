/**
 * The log-tailing relay end to end: a `LogRelay` on the Postgres change feed, in its own process,
 * publishing to the real broker, killed with SIGKILL mid-stream and restarted. Nothing is lost,
 * each key keeps its order, and a duplicate is always the same message (same id, key and value).
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'bun:test'
import { Kysely, PostgresDialect, sql } from 'kysely'
import pg from 'pg'
import { createKafkaTransport } from '../../src/adapters/kafka/index.js'
import { createKyselyOutboxStore, ensureOutboxSchema } from '../../src/adapters/kysely/index.js'
import {
  createPostgresChangeFeed,
  dropPostgresFeed,
  encodeLogicalMessage,
  postgresFeedSetup,
} from '../../src/adapters/postgres-log/index.js'
import {
  ErrorCode,
  isOutboxKitError,
  LogRelay,
  Outbox,
  type OutboxMessageInput,
  type Transport,
} from '../../src/index.js'
import { type AnyDB, POSTGRES_URL, SCHEMA_PREFIX, uniqueName } from '../support/databases.js'
import { createTopic, headerValues, kafkaBrokers, testKafka, uniqueTopic } from '../support/kafka.js'
import { startWorker, type Worker } from '../support/processes.js'
import {
  consumeAll,
  events,
  expectDuplicatesIdentical,
  messageId,
  orderByKey,
  recordCount,
  waitFor,
} from '../support/relay-world.js'

const schema = uniqueName(`${SCHEMA_PREFIX}_pgfeed`)
const slots = new Set<string>()
const db = new Kysely<AnyDB>({
  dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: POSTGRES_URL, max: 4 }) }),
})
const store = createKyselyOutboxStore({ db, schema })
const outbox = new Outbox({ store })
const brokers = kafkaBrokers()

async function write(messages: readonly OutboxMessageInput[]): Promise<string[]> {
  return db.transaction().execute((trx) => outbox.add(trx, messages))
}

/** For each key, its ids in commit order (one writer, so seq order). */
async function writeOrder(topic: string): Promise<Record<string, string[]>> {
  const rows = await sql<{ id: string; key: string }>`
    SELECT id::text AS id, key FROM ${sql.raw(`"${schema}"."outbox"`)} WHERE topic = ${topic} ORDER BY seq`.execute(
    db,
  )
  const byKey: Record<string, string[]> = {}
  for (const row of rows.rows) byKey[row.key] = [...(byKey[row.key] ?? []), row.id]
  return byKey
}

/**
 * A new slot for one test, made before anything is written, as a migration would make it: rows
 * written before a slot's creation are not in its log.
 */
async function newSlot(table = true): Promise<string> {
  const slot = uniqueName(`${SCHEMA_PREFIX}_pgfeed`).toLowerCase()
  slots.add(slot)
  for (const statement of postgresFeedSetup({ slot, publication: slot, schema, table }))
    await sql.raw(statement).execute(db)
  return slot
}

/** Drops the slots: killed relays' walsenders may linger a moment, and a slot in use cannot be dropped. */
async function dropSlots(): Promise<void> {
  for (const slot of slots) {
    for (let i = 0; i < 100; i++) {
      try {
        await sql
          .raw(
            `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '${slot}' AND active`,
          )
          .execute(db)
        await dropPostgresFeed({ connectionString: POSTGRES_URL, slot, publication: slot, schema })
        break
      } catch {
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
    }
    const left = await sql`SELECT 1 FROM pg_replication_slots WHERE slot_name = ${slot}`.execute(db)
    expect(left.rows).toEqual([])
    slots.delete(slot)
  }
}

beforeAll(async () => {
  await sql.raw(`CREATE SCHEMA "${schema}"`).execute(db)
  await ensureOutboxSchema(db, { dialect: 'postgres', schema })
})

afterEach(dropSlots)

afterAll(async () => {
  await dropSlots()
  await sql.raw(`DROP SCHEMA "${schema}" CASCADE`).execute(db)
  await db.destroy()
})

describe('log-tailing relay on Postgres logical replication', () => {
  test('a relay process killed with SIGKILL mid-stream, then restarted, loses nothing and keeps per-key order', async () => {
    const slot = await newSlot()
    const topic = uniqueTopic('pgfeed')
    await createTopic(brokers, topic, { partitions: 3 })
    const env = {
      SCHEMA: schema,
      SLOT: slot,
      BROKERS: brokers.join(','),
      BATCH_SIZE: '200',
      PUBLISH_DELAY_MS: '100',
    }
    const workers: Worker[] = []
    try {
      const ids: string[] = []
      for (let t = 0; t < 4; t++) ids.push(...(await write(events(topic, 500, 25, `t${t}`))))
      // Three times: start a relay, let it publish part of what is there, write more, kill it.
      for (let round = 1; round <= 3; round++) {
        const worker = await startWorker('log-relay-worker', env)
        workers.push(worker)
        // Below what is written, so the round ends mid-stream whatever the duplicates.
        const target = Math.min(ids.length - 300, round * 800)
        await waitFor(
          `round ${round} progress`,
          async () => (await recordCount(brokers, topic)) >= target,
          60_000,
        )
        ids.push(...(await write(events(topic, 300, 25, `r${round}`))))
        await worker.kill('SIGKILL')
      }
      const last = await startWorker('log-relay-worker', env)
      workers.push(last)
      let consumed: Awaited<ReturnType<typeof consumeAll>> = []
      const expected = new Set(ids)
      await waitFor(
        'every record published',
        async () => {
          if ((await recordCount(brokers, topic)) < ids.length) return false
          consumed = await consumeAll(brokers, topic)
          return (
            consumed.filter((m) => expected.has(messageId(m))).length >= ids.length &&
            new Set(consumed.map(messageId)).size === ids.length
          )
        },
        90_000,
      )
      await last.kill('SIGTERM')

      expect(new Set(consumed.map(messageId))).toEqual(expected)
      const duplicates = expectDuplicatesIdentical(consumed)
      expect(consumed.length).toBe(ids.length + duplicates)
      expect(orderByKey(consumed)).toEqual(await writeOrder(topic))
      // The graceful stop confirmed everything: the slot holds nothing of the outbox back.
      const confirmed = last.output().match(/confirmed (\S+)/g) ?? []
      expect(confirmed.length).toBeGreaterThan(0)
      console.log(`postgres-log: ${duplicates} duplicates after 3 kills of ${ids.length} records`)
    } finally {
      for (const worker of workers) await worker.kill('SIGKILL')
    }
  }, 240_000)

  test('a standby relay process takes over when the reading one is killed', async () => {
    const slot = await newSlot()
    const topic = uniqueTopic('pgfeed')
    await createTopic(brokers, topic, { partitions: 2 })
    const env = { SCHEMA: schema, SLOT: slot, BROKERS: brokers.join(','), BATCH_SIZE: '100' }
    const workers: Worker[] = []
    try {
      const ids = await write(events(topic, 200, 10, 'before'))
      const first = await startWorker('log-relay-worker', env)
      workers.push(first)
      await waitFor('the first relay reads', () => first.output().includes('opened'), 30_000)
      const second = await startWorker('log-relay-worker', env)
      workers.push(second)
      await waitFor('the second relay waits as a standby', () => second.output().includes('standby'), 30_000)
      await waitFor(
        'the first relay publishes',
        async () => (await recordCount(brokers, topic)) >= 200,
        60_000,
      )
      await first.kill('SIGKILL')
      await waitFor('the standby takes over', () => second.output().includes('opened'), 30_000)
      ids.push(...(await write(events(topic, 200, 10, 'after'))))
      let consumed: Awaited<ReturnType<typeof consumeAll>> = []
      await waitFor(
        'every record published',
        async () => {
          if ((await recordCount(brokers, topic)) < ids.length) return false
          consumed = await consumeAll(brokers, topic)
          return new Set(consumed.map(messageId)).size === ids.length
        },
        60_000,
      )
      await second.kill('SIGTERM')
      expect(new Set(consumed.map(messageId))).toEqual(new Set(ids))
      expectDuplicatesIdentical(consumed)
      expect(orderByKey(consumed)).toEqual(await writeOrder(topic))
    } finally {
      for (const worker of workers) await worker.kill('SIGKILL')
    }
  }, 180_000)

  test('a slot dropped under a running LogRelay stops it with FEED_LOST', async () => {
    const slot = await newSlot()
    const topic = uniqueTopic('pgfeed')
    await createTopic(brokers, topic, { partitions: 1 })
    const feed = createPostgresChangeFeed({ connectionString: POSTGRES_URL, slot, publication: slot, schema })
    const transport = createKafkaTransport({ kafka: testKafka(brokers) })
    const relay = new LogRelay({
      feed,
      transport,
      pollIntervalMs: 50,
      backoff: { initialMs: 20, maxMs: 100 },
      logger: false,
    })
    const errors: { error: unknown; retryInMs: number }[] = []
    relay.on('error', (e) => errors.push(e))
    let published = 0
    relay.on('published', (e) => {
      published += e.count
    })
    try {
      await write(events(topic, 10, 2, 'lost'))
      await relay.start()
      await waitFor('published', () => published >= 10, 60_000)
      for (let dropped = false, i = 0; !dropped && i < 100; i++) {
        await sql
          .raw(
            `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '${slot}' AND active`,
          )
          .execute(db)
        dropped = await sql
          .raw(`SELECT pg_drop_replication_slot('${slot}')`)
          .execute(db)
          .then(
            () => true,
            () => false,
          )
      }
      await waitFor('the relay stops', () => !relay.running, 60_000)
      const last = errors.at(-1)!
      expect(isOutboxKitError(last.error, ErrorCode.FeedLost)).toBe(true)
      expect(last.retryInMs).toBe(-1)
    } finally {
      await relay.stop()
      await transport.close()
    }
  }, 120_000)
})

describe('log-tailing relay on Postgres: the table-less mode (logical decoding messages)', () => {
  const prefix = `outboxkit:${schema}`
  const TRACEPARENT = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'
  const messageStore = createKyselyOutboxStore({ db, schema, messagePrefix: prefix })
  const messageOutbox = new Outbox({
    store: messageStore,
    tracing: { capture: () => ({ traceparent: TRACEPARENT, tracestate: 'congo=t61rcWkgMzE' }) },
  })

  async function writeMessages(messages: readonly OutboxMessageInput[]): Promise<string[]> {
    return db.transaction().execute((trx) => messageOutbox.add(trx, messages))
  }

  test('a business row and its events in one transaction reach Kafka byte for byte, trace context included; a rollback and other prefixes send nothing', async () => {
    const slot = await newSlot(false)
    const topic = uniqueTopic('pgmsg')
    await createTopic(brokers, topic, { partitions: 1 })
    await sql.raw(`CREATE TABLE IF NOT EXISTS "${schema}"."orders" (id text PRIMARY KEY)`).execute(db)
    const rows = await sql.raw(`SELECT count(*)::int AS n FROM "${schema}"."outbox"`).execute(db)
    const bytes = Uint8Array.from({ length: 256 }, (_, i) => 255 - i)
    const ids = await db.transaction().execute(async (trx) => {
      await sql`INSERT INTO ${sql.raw(`"${schema}"."orders"`)} (id) VALUES ('o-1')`.execute(trx)
      return messageOutbox.add(trx, [
        {
          topic,
          key: 'o-1',
          type: 'OrderCreated',
          payload: bytes,
          contentType: 'application/octet-stream',
          headers: { 'x-tenant': 'acme ünï 😀' },
        },
        { topic, key: 'o-1', type: 'OrderPriced', payload: { total: 12.5, note: 'zß€' } },
      ])
    })
    await db
      .transaction()
      .execute(async (trx) => {
        await sql`INSERT INTO ${sql.raw(`"${schema}"."orders"`)} (id) VALUES ('o-2')`.execute(trx)
        await messageOutbox.add(trx, [{ topic, key: 'o-2', type: 'OrderCreated', payload: 'rolled back' }])
        throw new Error('roll back')
      })
      .catch(() => {})
    // Other prefixes (another tool's messages, a near miss) and a non-transactional message: ignored.
    // Valid records, so only the prefix keeps them out.
    await sql.raw(`SELECT pg_logical_emit_message(true, 'other-tool', 'x')`).execute(db)
    const nearMiss = new Outbox({
      store: createKyselyOutboxStore({ db, schema, messagePrefix: `${prefix}x` }),
    })
    await db
      .transaction()
      .execute((trx) => nearMiss.add(trx, [{ topic, key: 'o-4', type: 'E', payload: 'near miss' }]))
    const [outside] = messageOutbox.prepare([{ topic, key: 'o-5', type: 'E', payload: 'not transactional' }])
    await sql`SELECT pg_logical_emit_message(false, ${prefix}, CAST(${Buffer.from(encodeLogicalMessage(outside!))} AS bytea))`.execute(
      db,
    )
    const after = await writeMessages([{ topic, key: 'o-3', type: 'OrderCreated', payload: 'after' }])
    expect((await sql.raw(`SELECT count(*)::int AS n FROM "${schema}"."outbox"`).execute(db)).rows).toEqual(
      rows.rows,
    )
    const feed = createPostgresChangeFeed({
      connectionString: POSTGRES_URL,
      slot,
      publication: slot,
      schema,
      messagePrefix: prefix,
      table: false,
    })
    const transport = createKafkaTransport({ kafka: testKafka(brokers) })
    const relay = new LogRelay({ feed, transport, pollIntervalMs: 50, logger: false })
    let confirmed = 0
    relay.on('confirmed', (e) => {
      confirmed += e.records
    })
    try {
      await relay.start()
      await waitFor('three records confirmed', () => confirmed >= 3, 60_000)
      // Nothing else comes: the rolled-back event was never in the log.
      await new Promise((resolve) => setTimeout(resolve, 300))
      const consumed = await consumeAll(brokers, topic)
      expect(consumed.map(messageId)).toEqual([...ids, ...after])
      const [raw, json] = consumed
      expect(new Uint8Array(raw!.value!)).toEqual(bytes)
      expect(raw!.key!.toString()).toBe('o-1')
      expect(headerValues(raw!.headers, 'traceparent')).toEqual([TRACEPARENT])
      expect(headerValues(raw!.headers, 'tracestate')).toEqual(['congo=t61rcWkgMzE'])
      expect(headerValues(raw!.headers, 'x-tenant')).toEqual(['acme ünï 😀'])
      expect(headerValues(raw!.headers, 'content-type')).toEqual(['application/octet-stream'])
      expect(headerValues(raw!.headers, 'outboxkit-type')).toEqual(['OrderCreated'])
      expect(json!.value!.toString()).toBe(JSON.stringify({ total: 12.5, note: 'zß€' }))
      expect(headerValues(json!.headers, 'content-type')).toEqual(['application/json'])
    } finally {
      await relay.stop()
      await transport.close()
    }
  }, 120_000)

  test('a relay process killed with SIGKILL mid-stream resumes after the confirmed position: same ids, per-key order over many keys', async () => {
    const slot = await newSlot(false)
    const topic = uniqueTopic('pgmsg')
    await createTopic(brokers, topic, { partitions: 4 })
    const env = {
      SCHEMA: schema,
      SLOT: slot,
      BROKERS: brokers.join(','),
      BATCH_SIZE: '150',
      PUBLISH_DELAY_MS: '100',
      MESSAGE_PREFIX: prefix,
      TABLE: 'false',
    }
    // One writer, so each key's order is the order of these calls.
    const expectedOrder: Record<string, string[]> = {}
    const ids: string[] = []
    const writeSome = async (messages: OutboxMessageInput[]) => {
      const written = await writeMessages(messages)
      written.forEach((id, i) => {
        const key = messages[i]!.key
        expectedOrder[key] = [...(expectedOrder[key] ?? []), id]
      })
      ids.push(...written)
    }
    const workers: Worker[] = []
    try {
      for (let t = 0; t < 4; t++) await writeSome(events(topic, 400, 60, `t${t}`))
      for (let round = 1; round <= 2; round++) {
        const worker = await startWorker('log-relay-worker', env)
        workers.push(worker)
        const target = Math.min(ids.length - 300, round * 700)
        await waitFor(
          `round ${round} progress`,
          async () => (await recordCount(brokers, topic)) >= target,
          60_000,
        )
        await writeSome(events(topic, 300, 60, `r${round}`))
        await worker.kill('SIGKILL')
      }
      const last = await startWorker('log-relay-worker', env)
      workers.push(last)
      let consumed: Awaited<ReturnType<typeof consumeAll>> = []
      const expected = new Set(ids)
      await waitFor(
        'every record published',
        async () => {
          if ((await recordCount(brokers, topic)) < ids.length) return false
          consumed = await consumeAll(brokers, topic)
          return new Set(consumed.map(messageId)).size === ids.length
        },
        90_000,
      )
      await last.kill('SIGTERM')
      expect(new Set(consumed.map(messageId))).toEqual(expected)
      const duplicates = expectDuplicatesIdentical(consumed)
      expect(consumed.length).toBe(ids.length + duplicates)
      expect(Object.keys(expectedOrder).length).toBe(60)
      expect(orderByKey(consumed)).toEqual(expectedOrder)
      console.log(`postgres-log messages: ${duplicates} duplicates after 2 kills of ${ids.length} records`)
    } finally {
      for (const worker of workers) await worker.kill('SIGKILL')
    }
  }, 240_000)

  test('a slot that falls behind maxLagBytes is reported loudly: lagExceeded, a warning, health, bytes > 0', async () => {
    const slot = await newSlot(false)
    const topic = uniqueTopic('pgmsg')
    await createTopic(brokers, topic, { partitions: 1 })
    const feed = createPostgresChangeFeed({
      connectionString: POSTGRES_URL,
      slot,
      publication: slot,
      schema,
      messagePrefix: prefix,
      table: false,
    })
    const transport = createKafkaTransport({ kafka: testKafka(brokers) })
    // The broker "hangs": nothing is published, so nothing is confirmed while the log grows.
    let release!: () => void
    const released = new Promise<void>((resolve) => {
      release = resolve
    })
    const holding: Transport = {
      name: transport.name,
      capabilities: transport.capabilities,
      publish: async (records) => {
        await released
        return transport.publish(records)
      },
      close: () => transport.close(),
    }
    const warnings: { message: string; fields: unknown }[] = []
    const relay = new LogRelay({
      feed,
      transport: holding,
      pollIntervalMs: 50,
      lagIntervalMs: 100,
      maxLagBytes: 64 * 1024,
      logger: {
        warn: (message: string, fields?: unknown) => warnings.push({ message, fields }),
        error: () => {},
      },
    })
    const exceeded: { bytes: number; maxLagBytes: number }[] = []
    relay.on('lagExceeded', (e) => exceeded.push(e))
    const big = 'x'.repeat(2_000)
    try {
      await relay.start()
      await writeMessages([{ topic, key: 'first', type: 'E', payload: 'first' }])
      // The relay now waits on the broker with the first record; the log grows behind it.
      for (let t = 0; t < 20; t++) {
        await writeMessages(
          Array.from({ length: 10 }, (_, i) => ({ topic, key: `k${i}`, type: 'E', payload: big })),
        )
      }
      await waitFor('lagExceeded', () => exceeded.length > 0, 30_000)
      expect(exceeded[0]!.bytes).toBeGreaterThan(64 * 1024)
      expect(relay.health()).toMatchObject({ lagExceeded: true })
      expect(relay.health().lag!.bytes).toBeGreaterThan(64 * 1024)
      expect(warnings.filter((w) => w.message.includes('maxLagBytes'))).toHaveLength(1)
      release()
      await waitFor('back within the limit', () => relay.health().lagExceeded === false, 60_000)
      expect(await recordCount(brokers, topic)).toBe(201)
    } finally {
      release()
      await relay.stop()
      await transport.close()
    }
  }, 120_000)
})
