/**
 * Tables created by the first schema version are brought to the current one: on MariaDB the key,
 * consumer and message id columns get the NO PAD collation, so 'abc' and 'abc ' become two ids,
 * and the rows already there are kept.
 */
import { beforeAll, describe, expect, test } from 'bun:test'
import { type Kysely, type Migration, Migrator, sql } from 'kysely'
import {
  createKyselyInboxStore,
  ensureOutboxSchema,
  outboxMigrations,
  outboxSchemaSql,
} from '../../src/adapters/kysely/index.js'
import { MYSQL_NO_PAD } from '../../src/adapters/kysely/schema.js'
import {
  type AnyDB,
  assertReachable,
  type Backend,
  mysqlBackend,
  postgresJsBackend,
} from '../support/databases.js'

const BACKENDS: readonly Backend[] = [mysqlBackend, postgresJsBackend]

beforeAll(async () => {
  for (const backend of BACKENDS) await assertReachable(backend)
})

/** The DDL of the first schema version: the current one without the NO PAD collation. */
function firstVersionSql(dialect: 'postgres' | 'mysql', schema: string): string[] {
  return outboxSchemaSql({ dialect, schema }).map((statement) => statement.replaceAll(` ${MYSQL_NO_PAD}`, ''))
}

async function migrate(db: Kysely<AnyDB>, migrations: Record<string, Migration>, schema: string) {
  const migrator = new Migrator({
    db,
    provider: { getMigrations: async () => migrations },
    migrationTableSchema: schema,
  })
  const { error, results } = await migrator.migrateToLatest()
  if (error) throw error
  return (results ?? []).map((r) => `${r.migrationName}:${r.status}`)
}

async function collations(db: Kysely<AnyDB>, schema: string): Promise<string[]> {
  const rows = await sql<{ c: string; k: string }>`
    SELECT column_name AS c, collation_name AS k FROM information_schema.columns
    WHERE table_schema = ${schema} AND column_name IN ('key', 'consumer', 'message_id')
    ORDER BY column_name`.execute(db)
  return rows.rows.map((r) => `${r.c}:${r.k}`)
}

for (const backend of BACKENDS) {
  describe(`schema migrations: ${backend.name}`, () => {
    test('migration 0002 upgrades tables made by the first version and keeps their rows', async () => {
      const database = await backend.open()
      const { db, schema, dialect } = database
      try {
        const first = firstVersionSql(dialect, schema)
        const current = outboxMigrations({ dialect, schema })
        const name0001 = 'outboxkit_0001_outbox'
        expect(Object.keys(current)).toEqual([
          name0001,
          'outboxkit_0002_outbox_nopad',
          'outboxkit_0003_outbox_pending_keys',
        ])
        // An application that ran the first version's 0001.
        expect(
          await migrate(
            db,
            {
              [name0001]: {
                async up(d) {
                  for (const s of first) await sql.raw(s).execute(d)
                },
              },
            },
            schema,
          ),
        ).toEqual([`${name0001}:Success`])
        const store = createKyselyInboxStore({ db, schema })
        expect(await store.transaction((tx) => store.markProcessed(tx, 'billing', 'abc'))).toBe(true)
        if (dialect === 'mysql') {
          expect(await collations(db, schema)).toEqual([
            'consumer:utf8mb4_bin',
            'key:utf8mb4_bin',
            'message_id:utf8mb4_bin',
          ])
          // The old layout is PAD SPACE: the padded id is taken for the same one.
          expect(await store.isProcessed('billing', 'abc ')).toBe(true)
        }

        expect(await migrate(db, current, schema)).toEqual([
          'outboxkit_0002_outbox_nopad:Success',
          'outboxkit_0003_outbox_pending_keys:Success',
        ])
        if (dialect === 'mysql') {
          expect(await collations(db, schema)).toEqual([
            'consumer:utf8mb4_nopad_bin',
            'key:utf8mb4_nopad_bin',
            'message_id:utf8mb4_nopad_bin',
          ])
        }
        expect(await store.isProcessed('billing', 'abc')).toBe(true)
        expect(await store.isProcessed('billing', 'abc ')).toBe(false)
        expect(await store.transaction((tx) => store.markProcessed(tx, 'billing', 'abc '))).toBe(true)
      } finally {
        await database.close()
      }
    }, 60_000)

    test('ensureOutboxSchema upgrades tables made by the first version', async () => {
      const database = await backend.open()
      const { db, schema, dialect } = database
      try {
        for (const s of firstVersionSql(dialect, schema)) await sql.raw(s).execute(db)
        await ensureOutboxSchema(db, { dialect, schema })
        await ensureOutboxSchema(db, { dialect, schema })
        const store = createKyselyInboxStore({ db, schema })
        expect(await store.transaction((tx) => store.markProcessed(tx, 'billing', 'abc'))).toBe(true)
        expect(await store.transaction((tx) => store.markProcessed(tx, 'billing', 'abc '))).toBe(true)
        if (dialect === 'mysql') {
          expect((await collations(db, schema)).every((c) => c.endsWith(':utf8mb4_nopad_bin'))).toBe(true)
        }
      } finally {
        await database.close()
      }
    }, 60_000)
  })
}
