/**
 * Read-only questions about the outbox tables: which exist, which migrations `outboxkit migrate`
 * has recorded, and whether tables made another way are at the current layout.
 */
import { sql } from 'kysely'
import { outboxMigrations } from '../adapters/kysely/migrations.js'
import type { Database } from './connection.js'

/** The migration bookkeeping tables of `outboxkit migrate`, one pair per outbox table. */
export function migrationTables(database: Database): { table: string; lock: string } {
  const name = database.tables.outboxName
  return { table: `${name}_migration`, lock: `${name}_migration_lock` }
}

/** The names of the migrations of the current version, in the order they run. */
export function currentMigrations(database: Database): string[] {
  return Object.keys(outboxMigrations(database.options)).sort()
}

export async function existingTables(database: Database): Promise<Set<string>> {
  const rows = await sql<{ name: string }>`SELECT table_name AS name FROM information_schema.tables
    WHERE table_schema = ${database.schemaName}`.execute(database.db)
  return new Set(rows.rows.map((r) => String(r.name)))
}

export async function hasColumn(database: Database, table: string, column: string): Promise<boolean> {
  const rows = await sql<{ n: unknown }>`SELECT count(*) AS n FROM information_schema.columns
    WHERE table_schema = ${database.schemaName} AND table_name = ${table} AND column_name = ${column}`.execute(
    database.db,
  )
  return Number(rows.rows[0]?.n ?? 0) > 0
}

/** Migrations recorded by `outboxkit migrate`, or undefined when it never ran here. */
export async function appliedMigrations(
  database: Database,
  tables?: Set<string>,
): Promise<string[] | undefined> {
  const present = tables ?? (await existingTables(database))
  const { table } = migrationTables(database)
  if (!present.has(table)) return undefined
  const q = database.dialect === 'mysql' ? (n: string) => `\`${n}\`` : (n: string) => `"${n}"`
  const rows = await sql<{
    name: string
  }>`SELECT name FROM ${sql.raw(`${q(database.schemaName)}.${q(table)}`)}
    ORDER BY name`.execute(database.db)
  return rows.rows.map((r) => String(r.name))
}

export interface SchemaState {
  readonly outbox: boolean
  readonly inbox: boolean
  readonly shards: boolean
  /** Migrations not yet run (by `outboxkit migrate`'s records or, without them, by the layout). */
  readonly pending: readonly string[]
  /** `migrate` when `outboxkit migrate` keeps the records; `layout` when the tables came another way. */
  readonly source: 'migrate' | 'layout'
}

export async function schemaState(database: Database): Promise<SchemaState> {
  const tables = await existingTables(database)
  const t = database.tables
  const outbox = tables.has(t.outboxName)
  const inbox = tables.has(t.inboxName)
  const shards = tables.has(`${t.outboxName}_shards`) && tables.has(`${t.outboxName}_relays`)
  const all = currentMigrations(database)
  const applied = await appliedMigrations(database, tables)
  if (applied) {
    const done = new Set(applied)
    return { outbox, inbox, shards, pending: all.filter((m) => !done.has(m)), source: 'migrate' }
  }
  // Tables created by ensureOutboxSchema or by the user's own migrator: current when the last
  // migration's column and tables are there.
  const current = outbox && inbox && shards && (await hasColumn(database, t.outboxName, 'shard'))
  return { outbox, inbox, shards, pending: current ? [] : all, source: 'layout' }
}
