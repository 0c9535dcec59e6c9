import { type Kysely, type Migration, sql } from 'kysely'
import { dropOutboxSchemaSql, outboxSchemaSql, resolveTables, type TableOptions } from './schema.js'

/**
 * The outbox and inbox tables as Kysely migrations, to spread into your own migration provider.
 * Names start with `outboxkit_` and the table name, so several outboxes can coexist.
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
  return {
    [`outboxkit_0001_${tables.outboxName}`]: {
      async up(db: Kysely<unknown>) {
        for (const statement of up) await sql.raw(statement).execute(db)
      },
      async down(db: Kysely<unknown>) {
        for (const statement of down) await sql.raw(statement).execute(db)
      },
    },
    [`outboxkit_0002_${tables.outboxName}_pending_keys`]: {
      up: (db: Kysely<unknown>) => addPendingKeyIndex(db, options),
      // The index goes with the table in 0001's down.
      async down() {},
    },
  }
}

/** Creates the tables if they do not exist (for tests, demos and apps without a migrator). */
export async function ensureOutboxSchema<DB>(db: Kysely<DB>, options: TableOptions): Promise<void> {
  for (const statement of outboxSchemaSql(options)) await sql.raw(statement).execute(db)
  await addPendingKeyIndex(db as Kysely<unknown>, options)
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
