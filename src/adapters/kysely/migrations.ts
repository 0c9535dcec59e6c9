import { type Kysely, type Migration, sql } from 'kysely'
import {
  dropOutboxSchemaSql,
  outboxDowngradeSql,
  outboxSchemaSql,
  outboxShardsUpgradeSql,
  outboxUpgradeSql,
  quote,
  resolveTables,
  type TableOptions,
} from './schema.js'

/**
 * The outbox and inbox tables as Kysely migrations, to spread into your own migration provider.
 * Names start with `outboxkit_`, a four-digit version and the table name, so several outboxes can
 * coexist and Kysely's name order is the order they must run in:
 *
 * - `outboxkit_0001_<table>` creates both tables (with the current column types);
 * - `outboxkit_0002_<table>_nopad` gives tables an earlier 0001 created the NO PAD collation
 *   for keys, consumer names and message ids on MariaDB (a no-op on Postgres and on tables that
 *   already have it);
 * - `outboxkit_0003_<table>_pending_keys` adds MySQL's (status, key, seq) index;
 * - `outboxkit_0004_<table>_shards` adds shard ownership: the stored generated `shard` column
 *   and its index, and the `<table>_shards` and `<table>_relays` tables. Adding a stored column
 *   rewrites the outbox table (Postgres takes an ACCESS EXCLUSIVE lock for the rewrite; MariaDB
 *   copies the table, blocking writes): run it when the table is small (purged) or in a quiet
 *   window.
 *
 * @example
 * ```ts
 * const migrator = new Migrator({ db, provider: { getMigrations: async () => ({
 *   ...outboxMigrations({ dialect: 'postgres' }), ...myMigrations } ) } })
 * ```
 */
export function outboxMigrations(options: TableOptions): Record<string, Migration> {
  const tables = resolveTables(options)
  const up = outboxSchemaSql(options)
  const down = dropOutboxSchemaSql(options)
  const upgrade = outboxUpgradeSql(options)
  const downgrade = outboxDowngradeSql(options)
  return {
    [`outboxkit_0001_${tables.outboxName}`]: {
      async up(db: Kysely<unknown>) {
        // A table made without a migrator (ensureOutboxSchema, outboxSchemaSql) before shard
        // ownership lacks the shard column that the current DDL indexes: add it first, as
        // ensureOutboxSchema does, so the migrations can adopt such a table.
        if (await tableExists(db, options)) await addShards(db, options)
        for (const statement of up) await sql.raw(statement).execute(db)
      },
      async down(db: Kysely<unknown>) {
        for (const statement of down) await sql.raw(statement).execute(db)
      },
    },
    [`outboxkit_0002_${tables.outboxName}_nopad`]: {
      async up(db: Kysely<unknown>) {
        if (await hasPadSpaceColumns(db, options)) {
          for (const statement of upgrade) await sql.raw(statement).execute(db)
        }
      },
      async down(db: Kysely<unknown>) {
        for (const statement of downgrade) await sql.raw(statement).execute(db)
      },
    },
    [`outboxkit_0003_${tables.outboxName}_pending_keys`]: {
      up: (db: Kysely<unknown>) => addPendingKeyIndex(db, options),
      // The index goes with the table in 0001's down.
      async down() {},
    },
    [`outboxkit_0004_${tables.outboxName}_shards`]: {
      up: (db: Kysely<unknown>) => addShards(db, options),
      async down(db: Kysely<unknown>) {
        const q = (name: string) => quote(tables.dialect, name)
        await sql.raw(`DROP TABLE IF EXISTS ${tables.relays}`).execute(db)
        await sql.raw(`DROP TABLE IF EXISTS ${tables.shards}`).execute(db)
        if (tables.dialect === 'mysql') {
          await sql
            .raw(
              `ALTER TABLE ${tables.outbox} DROP KEY ${q(`${tables.outboxName}_status_shard_key_seq`)}, DROP COLUMN ${tables.columns.shard}`,
            )
            .execute(db)
        } else {
          // The index goes with the column.
          await sql
            .raw(`ALTER TABLE ${tables.outbox} DROP COLUMN IF EXISTS ${tables.columns.shard}`)
            .execute(db)
        }
      },
    },
  }
}

/**
 * Creates the tables if they do not exist, and upgrades tables an earlier version created (for
 * tests, demos and apps without a migrator).
 */
export async function ensureOutboxSchema<DB>(db: Kysely<DB>, options: TableOptions): Promise<void> {
  // The shard column first: the current DDL indexes it, and CREATE TABLE IF NOT EXISTS leaves an
  // older table as it is.
  if (await tableExists(db, options)) await addShards(db as Kysely<unknown>, options)
  for (const statement of outboxSchemaSql(options)) await sql.raw(statement).execute(db)
  if (await hasPadSpaceColumns(db, options)) {
    for (const statement of outboxUpgradeSql(options)) await sql.raw(statement).execute(db)
  }
  await addPendingKeyIndex(db as Kysely<unknown>, options)
}

/** MariaDB: whether the key, consumer or message id column still has a PAD SPACE collation. */
async function hasPadSpaceColumns<DB>(db: Kysely<DB>, options: TableOptions): Promise<boolean> {
  const t = resolveTables(options)
  if (t.dialect !== 'mysql') return false
  const version = await sql<{ v: string }>`SELECT VERSION() AS v`.execute(db)
  // MySQL has no utf8mb4_nopad_bin; the DDL's executable comment leaves its columns alone.
  if (!/mariadb/i.test(String(version.rows[0]?.v ?? ''))) return false
  const schema = options.schema === undefined ? sql`DATABASE()` : sql`${options.schema}`
  const key = t.layout === 'debezium' ? 'aggregateid' : 'key'
  const rows = await sql<{ n: unknown }>`
    SELECT count(*) AS n FROM information_schema.columns c
    WHERE c.table_schema = ${schema} AND (
      (c.table_name = ${t.outboxName} AND c.column_name = ${key}) OR
      (c.table_name = ${t.inboxName} AND c.column_name IN ('consumer', 'message_id')))
      AND c.collation_name NOT LIKE '%nopad%'`.execute(db)
  return Number(rows.rows[0]?.n ?? 0) > 0
}

/**
 * MySQL tables created before the claim hopped over blocked keys lack the (status, key, seq)
 * index it walks; Postgres already has the partial (key, seq) index. Adds it when missing
 * (MySQL has no CREATE INDEX IF NOT EXISTS).
 */
async function addPendingKeyIndex(db: Kysely<unknown>, options: TableOptions): Promise<void> {
  const t = resolveTables(options)
  if (t.dialect !== 'mysql') return
  const index = `${t.outboxName}_status_key_seq`
  const schema = options.schema === undefined ? sql`DATABASE()` : sql`${options.schema}`
  const found = await sql<{ n: unknown }>`SELECT COUNT(*) AS n FROM information_schema.statistics
    WHERE table_schema = ${schema} AND table_name = ${t.outboxName} AND index_name = ${index}`.execute(db)
  if (Number(found.rows[0]?.n ?? 0) > 0) return
  const c = t.columns
  await sql.raw(`CREATE INDEX \`${index}\` ON ${t.outbox} (${c.status}, ${c.key}, ${c.seq})`).execute(db)
}

async function tableExists<DB>(db: Kysely<DB>, options: TableOptions): Promise<boolean> {
  const t = resolveTables(options)
  const schema =
    options.schema === undefined
      ? t.dialect === 'mysql'
        ? sql`DATABASE()`
        : sql`current_schema()`
      : sql`${options.schema}`
  const found = await sql<{ n: unknown }>`SELECT COUNT(*) AS n FROM information_schema.tables
    WHERE table_schema = ${schema} AND table_name = ${t.outboxName}`.execute(db)
  return Number(found.rows[0]?.n ?? 0) > 0
}

/**
 * Adds shard ownership to an outbox table created before it: the generated `shard` column (every
 * existing row gets its shard; a stored column rewrites the table), its index, and the shard and
 * relay tables. Idempotent.
 */
async function addShards(db: Kysely<unknown>, options: TableOptions): Promise<void> {
  const t = resolveTables(options)
  const statements = outboxShardsUpgradeSql(options)
  if (t.dialect === 'postgres') {
    for (const statement of statements) await sql.raw(statement).execute(db)
    return
  }
  // MySQL has no ADD COLUMN IF NOT EXISTS: the ALTER runs only when the column is missing.
  const schema = options.schema === undefined ? sql`DATABASE()` : sql`${options.schema}`
  const found = await sql<{ n: unknown }>`SELECT COUNT(*) AS n FROM information_schema.columns
    WHERE table_schema = ${schema} AND table_name = ${t.outboxName} AND column_name = 'shard'`.execute(db)
  const [alter, ...tables] = statements
  if (Number(found.rows[0]?.n ?? 0) === 0) await sql.raw(alter!).execute(db)
  for (const statement of tables) await sql.raw(statement).execute(db)
}
