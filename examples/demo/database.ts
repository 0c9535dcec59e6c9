/**
 * The demo's database: an embedded PGlite by default, or the PostgreSQL / MariaDB / MySQL server
 * named by DATABASE_URL. On a server the demo works in a fresh schema (Postgres) or database
 * (MySQL) with a unique name, which `close()` drops again.
 */
import { randomUUID } from 'node:crypto'
import { PGlite } from '@electric-sql/pglite'
import { type ColumnType, Kysely, MysqlDialect, sql } from 'kysely'
import { PostgresJSDialect } from 'kysely-postgres-js'
import { createPool } from 'mysql2'
import postgres from 'postgres'
import { ensureOutboxSchema, PGliteDialect, type SqlDialect } from '../../src/adapters/kysely/index.js'

type Count = ColumnType<number | string | bigint, never, never>

/** The tables the demo reads and writes. The outbox and inbox tables are outboxkit's own. */
export interface DemoTables {
  orders: { id: string; sku: string; qty: number }
  stock: { sku: string; qty: number }
  outbox: {
    seq: Count
    id: string
    topic: string
    key: string
    type: string
    payload: Uint8Array
    /** jsonb on Postgres (parsed by the driver), text on MySQL. */
    headers: unknown
    status: number
  }
  outbox_inbox: { consumer: string; message_id: string }
}

export interface DemoDatabase {
  /** What the demo runs on, for the log. */
  readonly label: string
  readonly dialect: SqlDialect
  readonly db: Kysely<DemoTables>
  /** What `close()` does to the data, for the log. */
  readonly dropped: string
  /** Closes the connections and drops the demo's schema or database. */
  close(): Promise<void>
}

/** The stock every SKU starts with. */
export const INITIAL_STOCK = 100_000

export const SKUS = ['mug', 'tee', 'cap', 'pen', 'bag'] as const

/** Opens the database named by `url` (or an embedded one) and creates the demo's tables. */
export async function openDatabase(url: string | undefined): Promise<DemoDatabase> {
  const database = await connect(url)
  try {
    await ensureOutboxSchema(database.db, { dialect: database.dialect })
    await database.db.schema
      .createTable('orders')
      .addColumn('id', 'varchar(64)', (c) => c.primaryKey())
      .addColumn('sku', 'varchar(64)', (c) => c.notNull())
      .addColumn('qty', 'integer', (c) => c.notNull())
      .execute()
    await database.db.schema
      .createTable('stock')
      .addColumn('sku', 'varchar(64)', (c) => c.primaryKey())
      .addColumn('qty', 'integer', (c) => c.notNull())
      .execute()
    await database.db
      .insertInto('stock')
      .values(SKUS.map((sku) => ({ sku, qty: INITIAL_STOCK })))
      .execute()
  } catch (error) {
    await database.close().catch(() => {})
    throw error
  }
  return database
}

async function connect(url: string | undefined): Promise<DemoDatabase> {
  if (url === undefined || url === '') return openPglite()
  const protocol = url.slice(0, url.indexOf(':'))
  if (protocol === 'postgres' || protocol === 'postgresql') return openPostgres(url)
  if (protocol === 'mysql' || protocol === 'mariadb') return openMysql(url.replace(/^mariadb:/, 'mysql:'))
  throw new Error(
    `DATABASE_URL must start with postgres://, postgresql://, mysql:// or mariadb:// (got ${protocol || url}).`,
  )
}

function uniqueName(): string {
  return `outboxkit_demo_${randomUUID().slice(0, 8)}`
}

/** Shows where a URL points without its credentials. */
function describeUrl(url: string): string {
  const parsed = new URL(url)
  return `${parsed.host}${parsed.pathname}`
}

async function openPglite(): Promise<DemoDatabase> {
  const pglite = await PGlite.create()
  const db = new Kysely<DemoTables>({ dialect: new PGliteDialect({ pglite }) })
  return {
    label: 'PGlite (embedded Postgres, in memory)',
    dialect: 'postgres',
    db,
    dropped: 'in-memory database discarded',
    async close() {
      await db.destroy()
      await pglite.close()
    },
  }
}

async function openPostgres(url: string): Promise<DemoDatabase> {
  const schema = uniqueName()
  const admin = postgres(url, { max: 1, onnotice: () => {} })
  try {
    await admin.unsafe(`CREATE SCHEMA "${schema}"`)
  } catch (error) {
    await admin.end({ timeout: 1 }).catch(() => {})
    throw error
  }
  // Every connection of the demo works in the new schema, so no name needs qualifying.
  const client = postgres(url, { max: 10, onnotice: () => {}, connection: { search_path: schema } })
  const db = new Kysely<DemoTables>({ dialect: new PostgresJSDialect({ postgres: client }) })
  return {
    label: `PostgreSQL ${describeUrl(url)}, schema ${schema}`,
    dialect: 'postgres',
    db,
    dropped: `schema ${schema} dropped`,
    async close() {
      try {
        await db.destroy()
        await admin.unsafe(`DROP SCHEMA "${schema}" CASCADE`)
      } finally {
        await admin.end({ timeout: 5 })
      }
    },
  }
}

async function openMysql(url: string): Promise<DemoDatabase> {
  const database = uniqueName()
  const admin = new Kysely<DemoTables>({
    dialect: new MysqlDialect({ pool: createPool({ uri: url, connectionLimit: 1 }) }),
  })
  try {
    await sql.raw(`CREATE DATABASE \`${database}\``).execute(admin)
  } catch (error) {
    await admin.destroy().catch(() => {})
    throw error
  }
  const db = new Kysely<DemoTables>({
    dialect: new MysqlDialect({ pool: createPool({ uri: url, database, connectionLimit: 10 }) }),
  })
  return {
    label: `MySQL/MariaDB ${describeUrl(url)}, database ${database}`,
    dialect: 'mysql',
    db,
    dropped: `database ${database} dropped`,
    async close() {
      try {
        await db.destroy()
        await sql.raw(`DROP DATABASE \`${database}\``).execute(admin)
      } finally {
        await admin.destroy()
      }
    },
  }
}
