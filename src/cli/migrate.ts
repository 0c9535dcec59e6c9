/**
 * `outboxkit migrate`: runs the outbox migrations (src/adapters/kysely/migrations.ts) with
 * Kysely's Migrator, recording them in `<outbox>_migration`. `--dry-run` prints the statements
 * instead: the migrations run against a connection that answers their reads from the database
 * and records, without running, everything else.
 */
import {
  type CompiledQuery,
  type DatabaseConnection,
  type Driver,
  Kysely,
  type Migration,
  Migrator,
  MysqlAdapter,
  MysqlIntrospector,
  MysqlQueryCompiler,
  PostgresAdapter,
  PostgresIntrospector,
  PostgresQueryCompiler,
  type QueryResult,
} from 'kysely'
import { ensureOutboxSchema, outboxMigrations } from '../adapters/kysely/migrations.js'
import { type AnyDB, type Database, describe } from './connection.js'
import { CliError, ExitCode } from './exit-codes.js'
import { appliedMigrations, existingTables, migrationTables } from './schema-state.js'

export interface MigrationPlan {
  readonly name: string
  readonly statements: readonly string[]
}

export interface MigrateResult {
  readonly dryRun: boolean
  /** Migrations run (or, with `dryRun`, that would run), in order, with their statements when dry. */
  readonly migrations: readonly MigrationPlan[]
  /** Migrations that had already run. */
  readonly alreadyApplied: readonly string[]
}

export async function migrate(database: Database, dryRun: boolean): Promise<MigrateResult> {
  const migrations = outboxMigrations(database.options)
  const names = Object.keys(migrations).sort()
  const tables = await existingTables(database)
  const applied = new Set((await appliedMigrations(database, tables)) ?? [])
  if (tables.has(database.tables.outboxName) && !applied.has(names[0]!)) {
    // Tables made another way (ensureOutboxSchema, outboxSchemaSql) at any earlier version: the
    // first migration's DDL assumes no table or a current one, so it brings them to the current
    // layout the way ensureOutboxSchema does; the later migrations then find nothing to do.
    migrations[names[0]!] = { up: (db) => ensureOutboxSchema(db, database.options) }
  }
  const pending = names.filter((n) => !applied.has(n))
  const alreadyApplied = names.filter((n) => applied.has(n))
  if (dryRun) {
    const plans: MigrationPlan[] = []
    if (!tables.has(database.tables.outboxName) && pending[0] === names[0]) {
      // New tables: the first migration creates them at the current layout, and the later ones
      // find nothing to change (reads made now, before the tables exist, would say otherwise).
      plans.push({ name: names[0]!, statements: await recordStatements(database, migrations[names[0]!]!) })
      for (const name of pending.slice(1)) plans.push({ name, statements: [] })
    } else {
      for (const name of pending) {
        plans.push({ name, statements: await recordStatements(database, migrations[name]!) })
      }
    }
    return { dryRun, migrations: plans, alreadyApplied }
  }
  const { table, lock } = migrationTables(database)
  const migrator = new Migrator({
    db: database.db,
    provider: { getMigrations: async () => migrations },
    migrationTableName: table,
    migrationLockTableName: lock,
    migrationTableSchema: database.schemaName,
  })
  const { error, results } = await migrator.migrateToLatest()
  if (error) {
    const failed = results?.find((r) => r.status === 'Error')?.migrationName
    throw new CliError(
      ExitCode.failed,
      'migration_failed',
      `Migration ${failed ?? '(setup)'} failed: ${describe(error)}. Nothing after it ran; fix the cause and run migrate again.`,
      { cause: error },
    )
  }
  const ran = (results ?? []).filter((r) => r.status === 'Success').map((r) => r.migrationName)
  return { dryRun, migrations: ran.map((name) => ({ name, statements: [] })), alreadyApplied }
}

/** The statements a migration would run now: its reads go to the database, the rest is recorded. */
async function recordStatements(database: Database, migration: Migration): Promise<string[]> {
  const recorded: string[] = []
  const real = database.db
  const connection: DatabaseConnection = {
    async executeQuery<R>(query: CompiledQuery): Promise<QueryResult<R>> {
      if (/^\s*(select|show|with)\b/i.test(query.sql))
        return (await real.executeQuery(query)) as QueryResult<R>
      recorded.push(query.sql)
      return { rows: [] }
    },
    // biome-ignore lint/correctness/useYield: migrations never stream.
    async *streamQuery() {
      throw new Error('not supported in a dry run')
    },
  }
  const driver: Driver = {
    async init() {},
    async acquireConnection() {
      return connection
    },
    async beginTransaction() {},
    async commitTransaction() {},
    async rollbackTransaction() {},
    async releaseConnection() {},
    async destroy() {},
  }
  const mysql = database.dialect === 'mysql'
  const recorder = new Kysely<AnyDB>({
    dialect: {
      createAdapter: () => (mysql ? new MysqlAdapter() : new PostgresAdapter()),
      createDriver: () => driver,
      createIntrospector: (db) => (mysql ? new MysqlIntrospector(db) : new PostgresIntrospector(db)),
      createQueryCompiler: () => (mysql ? new MysqlQueryCompiler() : new PostgresQueryCompiler()),
    },
  })
  await migration.up(recorder)
  await recorder.destroy()
  return recorded
}
