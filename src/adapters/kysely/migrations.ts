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
  }
}

/** Creates the tables if they do not exist (for tests, demos and apps without a migrator). */
export async function ensureOutboxSchema<DB>(db: Kysely<DB>, options: TableOptions): Promise<void> {
  for (const statement of outboxSchemaSql(options)) await sql.raw(statement).execute(db)
}
