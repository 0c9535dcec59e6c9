import { beforeAll, describe, expect, test } from 'bun:test'
import { sql } from 'kysely'
import { ensureOutboxSchema, outboxMigrations } from '../../src/adapters/kysely/index.js'
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
