/**
 * The log-tailing relay end to end: a `LogRelay` on the Postgres change feed, in its own process,
 * publishing to the real broker, killed with SIGKILL mid-stream and restarted. Nothing is lost,
 * each key keeps its order, and a duplicate is always the same message (same id, key and value).
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { Kysely, PostgresDialect, sql } from 'kysely'
import pg from 'pg'
import { createKyselyOutboxStore, ensureOutboxSchema } from '../../src/adapters/kysely/index.js'
import { dropPostgresFeed, postgresFeedSetup } from '../../src/adapters/postgres-log/index.js'
import { Outbox, type OutboxMessageInput } from '../../src/index.js'
import { type AnyDB, POSTGRES_URL, uniqueName } from '../support/databases.js'
import { createTopic, kafkaBrokers, uniqueTopic } from '../support/kafka.js'
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

const schema = uniqueName('pgfeed')
const slot = uniqueName('pgfeed').toLowerCase()
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
async function writeOrder(): Promise<Record<string, string[]>> {
  const rows = await sql<{ id: string; key: string }>`
    SELECT id::text AS id, key FROM ${sql.raw(`"${schema}"."outbox"`)} ORDER BY seq`.execute(db)
  const byKey: Record<string, string[]> = {}
  for (const row of rows.rows) byKey[row.key] = [...(byKey[row.key] ?? []), row.id]
  return byKey
}

beforeAll(async () => {
  await sql.raw(`CREATE SCHEMA "${schema}"`).execute(db)
  await ensureOutboxSchema(db, { dialect: 'postgres', schema })
  // The slot exists before anything is written, as a migration would make it: rows written
  // before a slot's creation are not in its log.
  for (const statement of postgresFeedSetup({ slot, publication: slot, schema }))
    await sql.raw(statement).execute(db)
})

afterAll(async () => {
  // The killed relays' walsenders may linger a moment; a slot in use cannot be dropped.
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
  await sql.raw(`DROP SCHEMA "${schema}" CASCADE`).execute(db)
  await db.destroy()
  expect(left.rows).toEqual([])
})

describe('log-tailing relay on Postgres logical replication', () => {
  test('a relay process killed with SIGKILL mid-stream, then restarted, loses nothing and keeps per-key order', async () => {
    const topic = uniqueTopic('pgfeed')
    await createTopic(brokers, topic, { partitions: 3 })
    const env = { SCHEMA: schema, SLOT: slot, BROKERS: brokers.join(','), BATCH_SIZE: '200' }
    const workers: Worker[] = []
    try {
      const ids: string[] = []
      for (let t = 0; t < 4; t++) ids.push(...(await write(events(topic, 500, 25, `t${t}`))))
      // Three times: start a relay, let it publish part of what is there, write more, kill it.
      for (let round = 1; round <= 3; round++) {
        const worker = await startWorker('log-relay-worker', env)
        workers.push(worker)
        const target = round * 900
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
      expect(orderByKey(consumed)).toEqual(await writeOrder())
      // The graceful stop confirmed everything: the slot holds nothing of the outbox back.
      const confirmed = last.output().match(/confirmed (\S+)/g) ?? []
      expect(confirmed.length).toBeGreaterThan(0)
      console.log(`postgres-log: ${duplicates} duplicates after 3 kills of ${ids.length} records`)
    } finally {
      for (const worker of workers) await worker.kill('SIGKILL')
    }
  }, 240_000)
})
