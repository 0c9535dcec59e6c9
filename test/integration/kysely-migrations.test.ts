/**
 * Tables created by the first schema version are brought to the current one: on MariaDB the key,
 * consumer and message id columns get the NO PAD collation, so 'abc' and 'abc ' become two ids,
 * and the rows already there are kept.
 */
import { beforeAll, describe, expect, test } from 'bun:test'
import { type Kysely, type Migration, Migrator, sql } from 'kysely'
import {
  createKyselyInboxStore,
  createKyselyOutboxStore,
  ensureOutboxSchema,
  outboxMigrations,
} from '../../src/adapters/kysely/index.js'
import { MYSQL_NO_PAD, SHARD_COUNT, schemaSql } from '../../src/adapters/kysely/schema.js'
import { Outbox } from '../../src/core/outbox.js'
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

/** The DDL of the first schema version: the one before shards, without the NO PAD collation. */
function firstVersionSql(dialect: 'postgres' | 'mysql', schema: string): string[] {
  return schemaSql({ dialect, schema }, false).map((statement) =>
    statement.replaceAll(` ${MYSQL_NO_PAD}`, ''),
  )
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
          'outboxkit_0004_outbox_shards',
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
          'outboxkit_0004_outbox_shards:Success',
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

/** Writes one event per key through the store, the way an application would. */
async function addEvents(db: Kysely<AnyDB>, schema: string, keys: readonly string[]): Promise<void> {
  const store = createKyselyOutboxStore({ db, schema })
  const outbox = new Outbox({ store })
  await store.transaction((tx) =>
    outbox.add(
      tx,
      keys.map((key) => ({ topic: 'orders', key, type: 'E', payload: null })),
    ),
  )
}

async function shardsByKey(database: { query<R>(t: string): Promise<R[]>; schema: string; dialect: string }) {
  const q = (n: string) => (database.dialect === 'mysql' ? `\`${n}\`` : `"${n}"`)
  const rows = await database.query<{ k: string; s: unknown }>(
    `SELECT ${q('key')} AS k, shard AS s FROM ${q(database.schema)}.${q('outbox')} ORDER BY seq`,
  )
  return rows.map((r) => [r.k, r.s === null ? null : Number(r.s)] as const)
}

const SAMPLE_KEYS = ['order-1', 'order-2', 'a', 'crème brûlée', '顧客-42', 'x'.repeat(255)]

for (const backend of BACKENDS) {
  describe(`shard migration: ${backend.name}`, () => {
    test('0004 gives an existing table with rows the shard column, index and tables, and can run twice', async () => {
      const database = await backend.open()
      const { db, schema, dialect } = database
      try {
        for (const s of schemaSql({ dialect, schema }, false)) await sql.raw(s).execute(db)
        await addEvents(db, schema, SAMPLE_KEYS)
        const migration = outboxMigrations({ dialect, schema })['outboxkit_0004_outbox_shards']!
        await migration.up(db)
        await migration.up(db)
        const before = await shardsByKey(database)
        expect(before.map(([k]) => k)).toEqual(SAMPLE_KEYS)
        for (const [, shard] of before) {
          expect(shard).not.toBe(null)
          expect(shard!).toBeGreaterThanOrEqual(0)
          expect(shard!).toBeLessThan(SHARD_COUNT)
        }
        // Rows written after the migration get the same shard for the same key.
        await addEvents(db, schema, SAMPLE_KEYS)
        const after = await shardsByKey(database)
        expect(after.slice(SAMPLE_KEYS.length)).toEqual(before)
        const q = (n: string) => (dialect === 'mysql' ? `\`${n}\`` : `"${n}"`)
        const shards = await database.query<{ n: unknown; e: unknown }>(
          `SELECT count(*) AS n, max(epoch) AS e FROM ${q(schema)}.${q('outbox_shards')} WHERE owner IS NULL`,
        )
        expect(Number(shards[0]!.n)).toBe(SHARD_COUNT)
        expect(Number(shards[0]!.e)).toBe(0)
        const indexName = dialect === 'mysql' ? 'outbox_status_shard_key_seq' : 'outbox_pending_shard'
        const indexes =
          dialect === 'mysql'
            ? await database.query(
                `SELECT 1 FROM information_schema.statistics WHERE table_schema = '${schema}' AND index_name = '${indexName}'`,
              )
            : await database.query(
                `SELECT 1 FROM pg_indexes WHERE schemaname = '${schema}' AND indexname = '${indexName}'`,
              )
        expect(indexes.length).toBeGreaterThan(0)
        // The store reads the old rows by shard.
        const store = createKyselyOutboxStore({ db, schema })
        const state = await store.syncShards('relay-1', { leaseMs: 30_000 })
        expect(state.owned).toHaveLength(SHARD_COUNT)
        const claim = await store.claimOwned('relay-1', { limit: 100 })
        expect(claim.records).toHaveLength(2 * SAMPLE_KEYS.length)
        // down, then up again.
        await migration.down!(db)
        await migration.up(db)
        expect(await shardsByKey(database)).toEqual(after)
      } finally {
        await database.close()
      }
    }, 60_000)

    test('the migrations adopt a table made before shard ownership without a migrator', async () => {
      const database = await backend.open()
      const { db, schema, dialect } = database
      try {
        for (const s of schemaSql({ dialect, schema }, false)) await sql.raw(s).execute(db)
        await addEvents(db, schema, SAMPLE_KEYS)
        const migrations = outboxMigrations({ dialect, schema })
        expect(await migrate(db, migrations, schema)).toEqual(
          Object.keys(migrations).map((name) => `${name}:Success`),
        )
        const shards = await shardsByKey(database)
        expect(shards.map(([k]) => k)).toEqual(SAMPLE_KEYS)
        expect(shards.every(([, shard]) => shard !== null)).toBe(true)
      } finally {
        await database.close()
      }
    }, 60_000)

    test('ensureOutboxSchema adds shards to an existing table with rows, idempotently', async () => {
      const database = await backend.open()
      const { db, schema, dialect } = database
      try {
        for (const s of schemaSql({ dialect, schema }, false)) await sql.raw(s).execute(db)
        await addEvents(db, schema, SAMPLE_KEYS)
        await ensureOutboxSchema(db, { dialect, schema })
        await ensureOutboxSchema(db, { dialect, schema })
        const rows = await shardsByKey(database)
        expect(rows.every(([, s]) => s !== null && s >= 0 && s < SHARD_COUNT)).toBe(true)
        const store = createKyselyOutboxStore({ db, schema })
        await store.syncShards('relay-1', { leaseMs: 30_000 })
        expect((await store.claimOwned('relay-1', { limit: 100 })).records).toHaveLength(SAMPLE_KEYS.length)
      } finally {
        await database.close()
      }
    }, 60_000)
  })
}

test('Postgres and MariaDB compute the same shard for the same key', async () => {
  const results: (readonly (readonly [string, number | null])[])[] = []
  for (const backend of BACKENDS) {
    const database = await backend.open()
    try {
      await ensureOutboxSchema(database.db, { dialect: database.dialect, schema: database.schema })
      await addEvents(database.db, database.schema, SAMPLE_KEYS)
      results.push(await shardsByKey(database))
    } finally {
      await database.close()
    }
  }
  expect(results[0]).toEqual(results[1]!)
  // Not all in one shard: the hash spreads keys.
  expect(new Set(results[0]!.map(([, s]) => s)).size).toBeGreaterThan(1)
}, 60_000)
