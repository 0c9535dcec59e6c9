/**
 * Retention on the SQL stores: the lock keeps passes to one database session at a time (two
 * independent pools stand for two processes), a holder's work can use the stores meanwhile, and a
 * pass deletes exactly the rows its horizons name. Rows are read back with plain SQL.
 */
import { beforeAll, describe, expect, test } from 'bun:test'
import {
  createKyselyInboxStore,
  createKyselyOutboxStore,
  ensureOutboxSchema,
} from '../../src/adapters/kysely/index.js'
import { Outbox, Retention } from '../../src/index.js'
import {
  assertReachable,
  type Backend,
  mysqlBackend,
  pgliteBackend,
  postgresJsBackend,
  type TestDatabase,
} from '../support/databases.js'

const BACKENDS: readonly Backend[] = [postgresJsBackend, mysqlBackend, pgliteBackend]

beforeAll(async () => {
  for (const backend of BACKENDS) await assertReachable(backend)
})

function tableOf(database: TestDatabase, name: string): string {
  const q = (n: string) => (database.dialect === 'mysql' ? `\`${n}\`` : `"${n}"`)
  return `${q(database.schema)}.${q(name)}`
}

/** Rows of `status` created `hoursAgo` hours ago, written with SQL. */
function oldRows(database: TestDatabase, count: number, status: number, hoursAgo: number): string {
  const table = tableOf(database, 'outbox')
  return database.dialect === 'mysql'
    ? `INSERT INTO ${table} (id, topic, \`key\`, type, payload, headers, status, created_at)
       SELECT UUID(), 't', CONCAT('k-', seq), 'T', x'00', '{}', ${status}, NOW(6) - INTERVAL ${hoursAgo} HOUR
       FROM seq_1_to_${count}`
    : `INSERT INTO ${table} (id, topic, "key", type, payload, headers, status, created_at)
       SELECT gen_random_uuid(), 't', 'k-' || g, 'T', '\\x00'::bytea, '{}', ${status}, now() - interval '${hoursAgo} hours'
       FROM generate_series(1, ${count}) g`
}

function oldInbox(database: TestDatabase, count: number, hoursAgo: number): string {
  const table = tableOf(database, 'outbox_inbox')
  return database.dialect === 'mysql'
    ? `INSERT INTO ${table} (consumer, message_id, processed_at)
       SELECT 'billing', UUID(), NOW(6) - INTERVAL ${hoursAgo} HOUR FROM seq_1_to_${count}`
    : `INSERT INTO ${table} (consumer, message_id, processed_at)
       SELECT 'billing', gen_random_uuid()::text, now() - interval '${hoursAgo} hours' FROM generate_series(1, ${count}) g`
}

const HOUR = 3_600_000

for (const backend of BACKENDS) {
  describe(`retention on ${backend.name}`, () => {
    test('runExclusive: one session holds a lock at a time; the holder can use the store meanwhile', async () => {
      const database = await backend.open()
      try {
        const { schema, dialect } = database
        await ensureOutboxSchema(database.db, { dialect, schema })
        const a = createKyselyOutboxStore({ db: database.db, schema })
        const b = createKyselyOutboxStore({ db: await database.openPeer(), schema })
        const other = createKyselyOutboxStore({ db: await database.openPeer(), schema, outboxTable: 'other' })
        let release!: () => void
        const gate = new Promise<void>((resolve) => {
          release = resolve
        })
        let entered!: () => void
        const inside = new Promise<void>((resolve) => {
          entered = resolve
        })
        const held = a.runExclusive('retention', async () => {
          entered()
          await gate
          // Statements of the holder run on their own connections, also on a one-session PGlite.
          return (await a.stats()).pending
        })
        await inside
        expect(await b.runExclusive('retention', async () => 'ran')).toEqual({ acquired: false })
        expect(await a.runExclusive('retention', async () => 'ran')).toEqual({ acquired: false })
        // The lock belongs to its table and its name.
        expect(await other.runExclusive('retention', async () => 'ran')).toEqual({
          acquired: true,
          value: 'ran',
        })
        expect(await b.runExclusive('another', async () => 'ran')).toEqual({ acquired: true, value: 'ran' })
        release()
        expect(await held).toEqual({ acquired: true, value: 0 })
        expect(await b.runExclusive('retention', async () => 'ran')).toEqual({ acquired: true, value: 'ran' })
        // A failing holder releases it too.
        await expect(
          b.runExclusive('retention', async () => {
            throw new Error('boom')
          }),
        ).rejects.toThrow('boom')
        expect((await a.runExclusive('retention', async () => 1)).acquired).toBe(true)
      } finally {
        await database.close()
      }
    }, 60_000)

    test('a pass deletes published, dead and inbox rows past their horizons, in batches, and nothing else', async () => {
      const database = await backend.open()
      try {
        const { schema, dialect } = database
        await ensureOutboxSchema(database.db, { dialect, schema })
        const store = createKyselyOutboxStore({ db: database.db, schema })
        const inbox = createKyselyInboxStore({ db: database.db, schema })
        await database.query(oldRows(database, 1_200, 1, 48)) // published, 2 days old
        await database.query(oldRows(database, 30, 1, 1)) // published, 1 hour old: kept
        await database.query(oldRows(database, 20, 2, 48)) // dead, 2 days old
        await database.query(oldRows(database, 10, 2, 12)) // dead, 12 hours old: kept
        await database.query(oldRows(database, 5, 0, 48)) // pending, 2 days old: kept
        await database.query(oldInbox(database, 700, 48))
        await database.query(oldInbox(database, 3, 1))
        const outbox = new Outbox({ store })
        await database.db
          .transaction()
          .execute((trx) => outbox.add(trx, { topic: 't', key: 'fresh', type: 'T', payload: {} }))
        const claim = await store.claim({ limit: 100, leaseMs: 60_000 })
        expect(claim.records.length).toBeGreaterThan(0)

        const retention = new Retention({
          outbox: { store, publishedOlderThanMs: 6 * HOUR, deadOlderThanMs: 24 * HOUR },
          inbox: { store: inbox, olderThanMs: 24 * HOUR },
          batchSize: 500,
          pauseMs: 0,
          logger: false,
        })
        const report = await retention.runOnce()
        expect(report).toMatchObject({ acquired: true, published: 1_200, dead: 20, inbox: 700 })
        // 1 200 published: 3 batches; 20 dead: 1; 700 inbox: 2.
        expect(report.batches).toBe(6)
        const left = await database.query<{ status: unknown; n: unknown }>(
          `SELECT status, count(*) AS n FROM ${tableOf(database, 'outbox')} GROUP BY status ORDER BY status`,
        )
        expect(left.map((r) => [Number(r.status), Number(r.n)])).toEqual([
          [0, 6],
          [1, 30],
          [2, 10],
        ])
        const inboxLeft = await database.query<{ n: unknown }>(
          `SELECT count(*) AS n FROM ${tableOf(database, 'outbox_inbox')}`,
        )
        expect(Number(inboxLeft[0]!.n)).toBe(3)
        // The claim still holds its rows.
        expect(
          (
            await store.markPublished(
              claim.token,
              claim.records.map((r) => r.id),
            )
          ).lost,
        ).toEqual([])
      } finally {
        await database.close()
      }
    }, 60_000)
  })
}
