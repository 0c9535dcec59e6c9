/**
 * The databases the measurements run on. Each `openDatabase` makes an isolated Postgres schema
 * (or MariaDB database) with a random name, holding the outbox and inbox tables and two business
 * tables, and drops it on `close()`.
 */
import { type Generated, Kysely, type LogEvent, MysqlDialect, sql } from 'kysely'
import { PostgresJSDialect } from 'kysely-postgres-js'
import { createPool } from 'mysql2'
import postgres from 'postgres'
import { ensureOutboxSchema, type SqlDialect } from '../../src/adapters/kysely/index.js'

export const POSTGRES_URL = process.env['OUTBOXKIT_POSTGRES_URL'] ?? 'postgres://postgres@127.0.0.1:5432/test'
export const MYSQL_URL = process.env['OUTBOXKIT_MYSQL_URL'] ?? 'mysql://root@127.0.0.1:3306/test'

export type BackendName = 'postgres.js' | 'mariadb'

/** Business tables written next to the outbox. */
export interface BenchTables {
  orders: {
    id: string
    customer: string
    total: number
    items: number
    created_at: Generated<Date>
  }
  effects: {
    message_id: string
    detail: string
  }
}

export type BenchKysely = Kysely<BenchTables>

export interface PoolOptions {
  /** Connections in the pool. Default 10. */
  max?: number
  /** Receives every statement the pool runs (for counting and timing). */
  log?: (event: LogEvent) => void
}

export interface BenchDatabase {
  readonly backend: BackendName
  readonly dialect: SqlDialect
  /** The isolated schema (Postgres) or database (MariaDB). */
  readonly schema: string
  /** The main pool (10 connections). */
  readonly db: BenchKysely
  /** Another Kysely instance with its own pool on the same database, closed with the database. */
  pool(options?: PoolOptions): BenchKysely
  /** A qualified, quoted table name for raw SQL. */
  table(name: string): string
  /** Runs SQL on the main pool and returns its rows. */
  query<R = Record<string, unknown>>(text: string): Promise<R[]>
  /** Empties the outbox table (between repetitions). */
  resetOutbox(): Promise<void>
  /** Refreshes planner statistics of a table, as autovacuum / InnoDB would for a table in steady use. */
  analyze(table: string): Promise<void>
  close(): Promise<void>
}

export function uniqueSchema(
  prefix = process.env['OUTBOXKIT_SCHEMA_PREFIX']
    ? `${process.env['OUTBOXKIT_SCHEMA_PREFIX']}_bench`
    : 'bench',
): string {
  return `${prefix}_${Date.now().toString(36)}_${Math.random().toString(36).slice(2, 8)}`
}

function postgresPool(options: PoolOptions = {}): BenchKysely {
  return new Kysely<BenchTables>({
    dialect: new PostgresJSDialect({
      postgres: postgres(POSTGRES_URL, { max: options.max ?? 10, onnotice: () => {} }),
    }),
    ...(options.log ? { log: options.log } : {}),
  })
}

function mysqlPool(options: PoolOptions = {}): BenchKysely {
  return new Kysely<BenchTables>({
    dialect: new MysqlDialect({ pool: createPool({ uri: MYSQL_URL, connectionLimit: options.max ?? 10 }) }),
    ...(options.log ? { log: options.log } : {}),
  })
}

/** A pool on the benchmark database (tables are addressed with their schema). */
export function openPool(backend: BackendName, options: PoolOptions = {}): BenchKysely {
  return backend === 'mariadb' ? mysqlPool(options) : postgresPool(options)
}

export async function openDatabase(backend: BackendName): Promise<BenchDatabase> {
  const schema = uniqueSchema()
  const dialect: SqlDialect = backend === 'mariadb' ? 'mysql' : 'postgres'
  const makePool = backend === 'mariadb' ? mysqlPool : postgresPool
  const q = (name: string) => (dialect === 'mysql' ? `\`${name}\`` : `"${name}"`)
  const table = (name: string) => `${q(schema)}.${q(name)}`
  const db = makePool()
  const pools: BenchKysely[] = []
  await sql
    .raw(dialect === 'mysql' ? `CREATE DATABASE ${q(schema)}` : `CREATE SCHEMA ${q(schema)}`)
    .execute(db)
  await ensureOutboxSchema(db, { dialect, schema })
  const idType = dialect === 'mysql' ? 'CHAR(36) CHARACTER SET ascii' : 'uuid'
  const timestamp =
    dialect === 'mysql'
      ? 'DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)'
      : 'timestamptz NOT NULL DEFAULT now()'
  await sql
    .raw(`CREATE TABLE ${table('orders')} (
      id ${idType} NOT NULL PRIMARY KEY,
      customer VARCHAR(64) NOT NULL,
      total NUMERIC(12, 2) NOT NULL,
      items INTEGER NOT NULL,
      created_at ${timestamp}
    )`)
    .execute(db)
  await sql
    .raw(`CREATE TABLE ${table('effects')} (message_id VARCHAR(255) NOT NULL, detail VARCHAR(255) NOT NULL)`)
    .execute(db)
  return {
    backend,
    dialect,
    schema,
    db,
    pool(options) {
      const pool = makePool(options)
      pools.push(pool)
      return pool
    },
    table,
    async query<R>(text: string) {
      return (await sql.raw(text).execute(db)).rows as R[]
    },
    async resetOutbox() {
      await sql.raw(`TRUNCATE TABLE ${table('outbox')}`).execute(db)
    },
    async analyze(name) {
      await sql.raw(`ANALYZE ${dialect === 'mysql' ? 'TABLE ' : ''}${table(name)}`).execute(db)
    },
    async close() {
      for (const pool of pools) await pool.destroy().catch(() => {})
      await sql
        .raw(dialect === 'mysql' ? `DROP DATABASE ${q(schema)}` : `DROP SCHEMA ${q(schema)} CASCADE`)
        .execute(db)
      await db.destroy()
    },
  }
}

/** A dedicated postgres.js connection for LISTEN. */
export function listenConnection(): postgres.Sql {
  return postgres(POSTGRES_URL, { max: 1, onnotice: () => {} })
}

/** The server's version string, e.g. `15.20` or `10.11.19-MariaDB`. */
export async function serverVersion(backend: BackendName): Promise<string> {
  const db = backend === 'mariadb' ? mysqlPool({ max: 1 }) : postgresPool({ max: 1 })
  try {
    const { rows } = await sql<{ v: string }>`SELECT version() AS v`.execute(db)
    const full = String(rows[0]?.v ?? 'unknown')
    return backend === 'mariadb' ? full : (/PostgreSQL [\d.]+/.exec(full)?.[0] ?? full)
  } finally {
    await db.destroy()
  }
}
