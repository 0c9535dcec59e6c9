/**
 * Opens the database named by a URL with the driver the user has installed: postgres:// through
 * postgres.js (and kysely-postgres-js) or pg, mysql:// through mysql2. Drivers are optional peer
 * dependencies, loaded only here.
 */
import { Kysely, MysqlDialect, PostgresDialect, sql } from 'kysely'
import {
  type ResolvedTables,
  resolveTables,
  type SqlDialect,
  type TableOptions,
} from '../adapters/kysely/schema.js'
import { CliError, ExitCode } from './exit-codes.js'

// biome-ignore lint/suspicious/noExplicitAny: the CLI queries tables Kysely has no types for.
export type AnyDB = any

export interface DatabaseOptions {
  databaseUrl?: string
  schema?: string
  outboxTable?: string
  inboxTable?: string
  layout?: string
  /** `postgres` (postgres.js) or `pg`; default postgres.js when installed, else pg. */
  pgDriver?: string
}

export interface Database {
  readonly db: Kysely<AnyDB>
  readonly dialect: SqlDialect
  /** The store options: dialect, schema, table names and layout. */
  readonly options: TableOptions
  readonly tables: ResolvedTables
  /** The schema (Postgres) or database (MySQL) that holds the tables. */
  readonly schemaName: string
  close(): Promise<void>
}

/** The URL with its password hidden, for messages. */
export function redact(url: string): string {
  try {
    const parsed = new URL(url)
    if (parsed.password) parsed.password = '***'
    return parsed.toString()
  } catch {
    return '(an unparsable URL)'
  }
}

async function load<T>(name: string): Promise<T> {
  return (await import(name)) as T
}

async function tryLoad<T>(name: string): Promise<T | undefined> {
  try {
    return await load<T>(name)
  } catch (error) {
    if ((error as { code?: unknown }).code === 'ERR_MODULE_NOT_FOUND') return undefined
    if ((error as { code?: unknown }).code === 'MODULE_NOT_FOUND') return undefined
    throw error
  }
}

interface PostgresJsModule {
  default: (url: string, options: Record<string, unknown>) => unknown
}
interface PostgresJsDialectModule {
  PostgresJSDialect: new (config: { postgres: unknown }) => PostgresDialect
}
interface PgModule {
  default: { Pool: new (config: Record<string, unknown>) => unknown }
}
interface Mysql2Module {
  createPool: (config: Record<string, unknown>) => unknown
}

async function postgresKysely(url: string, driver: string | undefined): Promise<Kysely<AnyDB>> {
  if (driver !== undefined && driver !== 'postgres' && driver !== 'pg') {
    throw new CliError(
      ExitCode.usage,
      'bad_flag',
      `--pg-driver must be postgres (postgres.js) or pg, got ${JSON.stringify(driver)}.`,
    )
  }
  const postgres = driver === 'pg' ? undefined : await tryLoad<PostgresJsModule>('postgres')
  const postgresDialect = postgres ? await tryLoad<PostgresJsDialectModule>('kysely-postgres-js') : undefined
  if (driver === 'postgres' && !(postgres && postgresDialect)) {
    throw new CliError(
      ExitCode.usage,
      'driver_missing',
      '--pg-driver postgres needs postgres.js and its Kysely dialect: npm install postgres kysely-postgres-js.',
    )
  }
  if (postgres && postgresDialect) {
    const client = postgres.default(url, { max: 4, onnotice: () => {}, connect_timeout: 10 })
    return new Kysely<AnyDB>({ dialect: new postgresDialect.PostgresJSDialect({ postgres: client }) })
  }
  const pg = await tryLoad<PgModule>('pg')
  if (!pg && driver === 'pg') {
    throw new CliError(ExitCode.usage, 'driver_missing', '--pg-driver pg needs pg: npm install pg.')
  }
  if (pg) {
    const pool = new pg.default.Pool({ connectionString: url, max: 4, connectionTimeoutMillis: 10_000 })
    // biome-ignore lint/suspicious/noExplicitAny: Kysely types only the part of pg's Pool it uses.
    return new Kysely<AnyDB>({ dialect: new PostgresDialect({ pool: pool as any }) })
  }
  throw new CliError(
    ExitCode.usage,
    'driver_missing',
    'A postgres:// URL needs a Postgres driver: npm install postgres kysely-postgres-js (or npm install pg).',
  )
}

async function mysqlKysely(url: string): Promise<Kysely<AnyDB>> {
  const mysql2 = await tryLoad<Mysql2Module>('mysql2')
  if (!mysql2) {
    throw new CliError(
      ExitCode.usage,
      'driver_missing',
      'A mysql:// URL needs the mysql2 driver: npm install mysql2.',
    )
  }
  const pool = mysql2.createPool({ uri: url, connectionLimit: 4, connectTimeout: 10_000 })
  // biome-ignore lint/suspicious/noExplicitAny: Kysely types only the part of mysql2's pool it uses.
  return new Kysely<AnyDB>({ dialect: new MysqlDialect({ pool: pool as any }) })
}

function dialectOf(url: string): SqlDialect {
  let protocol: string
  try {
    protocol = new URL(url).protocol
  } catch {
    throw new CliError(
      ExitCode.usage,
      'bad_database_url',
      'The database URL cannot be parsed: use postgres://user:password@host:5432/database or mysql://user:password@host:3306/database.',
    )
  }
  if (protocol === 'postgres:' || protocol === 'postgresql:') return 'postgres'
  if (protocol === 'mysql:' || protocol === 'mariadb:') return 'mysql'
  throw new CliError(
    ExitCode.usage,
    'bad_database_url',
    `The database URL scheme ${JSON.stringify(protocol)} is not supported: use postgres:// (or postgresql://) or mysql://.`,
  )
}

/** The table options from the flags; names are validated before any SQL is built. */
export function tableOptions(dialect: SqlDialect, options: DatabaseOptions): TableOptions {
  const layout = options.layout ?? 'outboxkit'
  if (layout !== 'outboxkit' && layout !== 'debezium') {
    throw new CliError(
      ExitCode.usage,
      'bad_flag',
      `--layout must be outboxkit or debezium, got ${JSON.stringify(layout)}.`,
    )
  }
  const table: TableOptions = { dialect, layout }
  if (options.schema !== undefined) table.schema = options.schema
  if (options.outboxTable !== undefined) table.outboxTable = options.outboxTable
  if (options.inboxTable !== undefined) table.inboxTable = options.inboxTable
  try {
    resolveTables(table)
  } catch (error) {
    throw new CliError(ExitCode.usage, 'bad_flag', (error as Error).message)
  }
  return table
}

/**
 * Connects and runs one query, so that an unreachable database ends the command with its own
 * exit code before anything else happens.
 */
export async function openDatabase(options: DatabaseOptions): Promise<Database> {
  const url = options.databaseUrl ?? process.env['DATABASE_URL']
  if (!url) {
    throw new CliError(
      ExitCode.usage,
      'no_database_url',
      'No database: pass --database-url postgres://... (or mysql://...) or set DATABASE_URL.',
    )
  }
  const dialect = dialectOf(url)
  const table = tableOptions(dialect, options)
  const db = dialect === 'postgres' ? await postgresKysely(url, options.pgDriver) : await mysqlKysely(url)
  let schemaName: string
  try {
    const current =
      dialect === 'postgres'
        ? await sql<{ s: string | null }>`SELECT current_schema() AS s`.execute(db)
        : await sql<{ s: string | null }>`SELECT DATABASE() AS s`.execute(db)
    schemaName = table.schema ?? current.rows[0]?.s ?? ''
  } catch (error) {
    await db.destroy().catch(() => {})
    throw new CliError(
      ExitCode.databaseUnreachable,
      'database_unreachable',
      `Cannot reach the database at ${redact(url)}: ${describe(error)}. Check that it is running, the host, port, user, password and database name.`,
      { cause: error },
    )
  }
  if (!schemaName) {
    await db.destroy().catch(() => {})
    throw new CliError(
      ExitCode.usage,
      'no_schema',
      'The database URL names no database: add one to the URL (mysql://host:3306/app) or pass --schema.',
    )
  }
  return {
    db,
    dialect,
    options: table,
    tables: resolveTables(table),
    schemaName,
    close: () => db.destroy(),
  }
}

/** A driver error's message, with its code when it has one. */
export function describe(error: unknown): string {
  if (error instanceof AggregateError && error.errors.length > 0) return describe(error.errors[0])
  if (!(error instanceof Error)) return String(error)
  const code = (error as { code?: unknown }).code
  const message = error.message || error.name
  return typeof code === 'string' && !message.includes(code) ? `${message} (${code})` : message
}
