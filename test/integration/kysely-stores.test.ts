import { beforeAll, describe, expect, test } from 'bun:test'
import { sql } from 'kysely'
import {
  createKyselyOutboxStore,
  ensureOutboxSchema,
  outboxMigrations,
} from '../../src/adapters/kysely/index.js'
import { Outbox } from '../../src/core/outbox.js'
import { inboxStoreSuite, outboxStoreSuite, shardSuite } from '../../src/testing/index.js'
import { assertReachable, mysqlBackend, postgresJsBackend, SQL_BACKENDS } from '../support/databases.js'
import { openInboxHarness, openOutboxHarness } from '../support/kysely-harness.js'

const api = { describe, test, expect }

beforeAll(async () => {
  for (const backend of SQL_BACKENDS) await assertReachable(backend)
})

for (const backend of SQL_BACKENDS) {
  const concurrentTransactions = backend.name !== 'pglite'
  outboxStoreSuite(api, backend.name, () => openOutboxHarness(backend), { concurrentTransactions })
  inboxStoreSuite(api, backend.name, () => openInboxHarness(backend), { concurrentTransactions })
  shardSuite(api, backend.name, () => openOutboxHarness(backend), { concurrentTransactions })
}

shardSuite(api, 'mariadb, debezium layout', () => openOutboxHarness(mysqlBackend, 'debezium'), {
  concurrentTransactions: true,
})

// The Debezium-compatible column layout runs the same suite.
for (const backend of [postgresJsBackend, mysqlBackend]) {
  outboxStoreSuite(api, `${backend.name}, debezium layout`, () => openOutboxHarness(backend, 'debezium'), {
    concurrentTransactions: true,
  })
}

// MySQL tables created before the claim looked beyond its window lack the index it walks.
test('mariadb: the pending-keys migration adds the (status, key, seq) index to an existing table, once', async () => {
  const database = await mysqlBackend.open()
  try {
    const options = { dialect: 'mysql' as const, schema: database.schema }
    await ensureOutboxSchema(database.db, options)
    const table = `\`${database.schema}\`.\`outbox\``
    await sql.raw(`DROP INDEX \`outbox_status_key_seq\` ON ${table}`).execute(database.db)
    const columns = async () =>
      (
        await sql<{
          column_name: string
        }>`SELECT column_name AS column_name FROM information_schema.statistics
          WHERE table_schema = ${database.schema} AND table_name = 'outbox' AND index_name = 'outbox_status_key_seq'
          ORDER BY seq_in_index`.execute(database.db)
      ).rows.map((r) => r.column_name)
    expect(await columns()).toEqual([])
    const migration = outboxMigrations(options)['outboxkit_0003_outbox_pending_keys']!
    await migration.up(database.db)
    await migration.up(database.db)
    expect(await columns()).toEqual(['status', 'key', 'seq'])
  } finally {
    await database.close()
  }
})

// A take (the sync's FOR UPDATE on the shard rows) waits for a settle in flight on those shards
// (FOR SHARE), so the new owner's first read sees the previous owner's committed marks. Postgres
// locks the fence before the rows; MySQL's settle (one multi-table UPDATE) locks each row first,
// then its shard: see the MySQL test below for a settle held up before it read its fence.
for (const backend of [postgresJsBackend]) {
  test(`${backend.name}: a sync taking a shard waits for a settle holding it, then sees its marks`, async () => {
    const database = await backend.open()
    try {
      const { db, schema, dialect } = database
      await ensureOutboxSchema(db, { dialect, schema })
      const a = createKyselyOutboxStore({ db, schema })
      const b = createKyselyOutboxStore({ db: await database.openPeer(), schema })
      const outbox = new Outbox({ store: a })
      const [id] = await a.transaction((tx) =>
        outbox.add(tx, [{ topic: 't', key: 'k', type: 'E', payload: null }]),
      )
      await a.syncShards('relay-a', { leaseMs: 300 })
      const claim = await a.claimOwned('relay-a', { limit: 10 })
      const shard = claim.records[0]!.shard!
      await new Promise((resolve) => setTimeout(resolve, 500))
      const q = (n: string) => (dialect === 'mysql' ? `\`${n}\`` : `"${n}"`)
      const outboxTable = `${q(schema)}.${q('outbox')}`
      // relay-a's markPublished is held up on the row (a third transaction locks it) after it
      // read the fence; relay-b's sync, taking the expired shard, must wait for it to commit.
      let taken = false
      let settle: Promise<unknown> | undefined
      let pending: Promise<{ owned: readonly { shard: number }[] }> | undefined
      const blocker = await database.openPeer()
      await blocker.transaction().execute(async (trx) => {
        await sql.raw(`SELECT id FROM ${outboxTable} WHERE id = '${id}' FOR UPDATE`).execute(trx)
        settle = a.markPublished(claim.token, [id!])
        await new Promise((resolve) => setTimeout(resolve, 200))
        pending = b.syncShards('relay-b', { leaseMs: 30_000 }).then((state) => {
          taken = true
          return state
        })
        await new Promise((resolve) => setTimeout(resolve, 300))
        expect(taken).toBe(false)
      })
      expect(await settle).toEqual({ settled: 1, lost: [] })
      const state = await pending!
      expect(state.owned.map((s) => s.shard)).toContain(shard)
      expect((await b.claimOwned('relay-b', { limit: 10 })).records).toEqual([])
    } finally {
      await database.close()
    }
  }, 30_000)
}

// MySQL: a settle waiting for a row lock has not read its shard row yet, so a take does not wait
// for it; once it reads the shard row it finds the new epoch, writes nothing, and the new owner
// claims the row.
test('mariadb: a settle held up on a row lock is fenced by a take that commits meanwhile, and the new owner claims the row', async () => {
  const database = await mysqlBackend.open()
  try {
    const { db, schema, dialect } = database
    await ensureOutboxSchema(db, { dialect, schema })
    const a = createKyselyOutboxStore({ db, schema })
    const b = createKyselyOutboxStore({ db: await database.openPeer(), schema })
    const outbox = new Outbox({ store: a })
    const [id] = await a.transaction((tx) =>
      outbox.add(tx, [{ topic: 't', key: 'k', type: 'E', payload: null }]),
    )
    await a.syncShards('relay-a', { leaseMs: 300 })
    const claim = await a.claimOwned('relay-a', { limit: 10 })
    const shard = claim.records[0]!.shard!
    await new Promise((resolve) => setTimeout(resolve, 500))
    let settle: Promise<unknown> | undefined
    const blocker = await database.openPeer()
    await blocker.transaction().execute(async (trx) => {
      await sql.raw(`SELECT id FROM \`${schema}\`.\`outbox\` WHERE id = '${id}' FOR UPDATE`).execute(trx)
      settle = a.markPublished(claim.token, [id!])
      await new Promise((resolve) => setTimeout(resolve, 200))
      const state = await b.syncShards('relay-b', { leaseMs: 30_000 })
      expect(state.owned.map((s) => s.shard)).toContain(shard)
    })
    expect(await settle).toEqual({ settled: 0, lost: [id] })
    expect((await b.claimOwned('relay-b', { limit: 10 })).records.map((r) => r.id)).toEqual([id!])
  } finally {
    await database.close()
  }
}, 30_000)
