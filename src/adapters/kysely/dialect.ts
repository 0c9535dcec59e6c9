/**
 * What differs between Postgres and MySQL/MariaDB in the statements the stores run, and how to
 * tell which one a Kysely instance speaks.
 */
import { type Kysely, MysqlAdapter, PostgresAdapter, type RawBuilder, sql } from 'kysely'
import { ErrorCode, OutboxKitError } from '../../core/errors.js'
import { type ResolvedTables, resolveTables, type SqlDialect, type TableOptions } from './schema.js'

export interface DialectSql {
  /** The database's current time. */
  readonly now: RawBuilder<Date>
  /** The database's current time plus `ms` milliseconds. */
  plusMs(ms: number): RawBuilder<Date>
  /** The database's current time minus `ms` milliseconds. */
  minusMs(ms: number): RawBuilder<Date>
  /** Milliseconds between an (aggregated) timestamp expression and now. */
  ageMs(expression: RawBuilder<unknown>): RawBuilder<number | string | null>
}

export const DIALECT_SQL: Readonly<Record<SqlDialect, DialectSql>> = {
  postgres: {
    now: sql<Date>`now()`,
    plusMs: (ms) => sql<Date>`(now() + ${ms}::double precision * interval '1 millisecond')`,
    minusMs: (ms) => sql<Date>`(now() - ${ms}::double precision * interval '1 millisecond')`,
    ageMs: (e) => sql`(extract(epoch from (now() - ${e})) * 1000)`,
  },
  mysql: {
    now: sql<Date>`NOW(6)`,
    plusMs: (ms) => sql<Date>`(NOW(6) + INTERVAL ${Math.round(ms * 1000)} MICROSECOND)`,
    minusMs: (ms) => sql<Date>`(NOW(6) - INTERVAL ${Math.round(ms * 1000)} MICROSECOND)`,
    ageMs: (e) => sql`(TIMESTAMPDIFF(MICROSECOND, ${e}, NOW(6)) / 1000)`,
  },
}

/**
 * The SQL dialect of a Kysely instance, from its adapter. Dialects built on Kysely's Postgres or
 * MySQL adapters (postgres.js, pg, PGlite, mysql2) are recognised; for others pass `dialect`.
 */
export function detectDialect(db: Kysely<unknown>, source: string): SqlDialect {
  const adapter = db.getExecutor().adapter
  if (adapter instanceof PostgresAdapter) return 'postgres'
  if (adapter instanceof MysqlAdapter) return 'mysql'
  // A second bundled copy of Kysely fails instanceof; fall back to the class names.
  for (let proto = Object.getPrototypeOf(adapter); proto; proto = Object.getPrototypeOf(proto)) {
    const name: unknown = proto.constructor?.name
    if (name === 'PostgresAdapter') return 'postgres'
    if (name === 'MysqlAdapter') return 'mysql'
  }
  throw new OutboxKitError(
    ErrorCode.InvalidOptions,
    "Cannot tell the SQL dialect of this Kysely instance; pass dialect: 'postgres' or 'mysql'.",
    { source },
  )
}

/** Numbers come back as strings from some drivers (bigint, numeric); normalise them. */
export function toNumber(value: unknown): number {
  if (typeof value === 'number') return value
  if (typeof value === 'bigint') return Number(value)
  if (typeof value === 'string') return Number(value)
  return 0
}

export function toDate(value: unknown): Date {
  if (value instanceof Date) return value
  if (typeof value === 'string' || typeof value === 'number') return new Date(value)
  return new Date(Number.NaN)
}

/** bytea/BLOB columns come back as Buffer or Uint8Array; return a plain Uint8Array view. */
export function toBytes(value: unknown): Uint8Array {
  if (value instanceof Uint8Array) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength)
  if (typeof value === 'string') return new TextEncoder().encode(value)
  throw new OutboxKitError(ErrorCode.StoreFailed, `Expected a bytes column, got ${typeof value}.`)
}

export function toHeaders(value: unknown): Record<string, string> {
  const parsed: unknown = typeof value === 'string' ? JSON.parse(value) : value
  if (typeof parsed !== 'object' || parsed === null) return {}
  const headers: Record<string, string> = {}
  for (const [name, v] of Object.entries(parsed)) if (typeof v === 'string') headers[name] = v
  return headers
}

/** Checks a store's options and resolves its dialect and (validated) table names. */
export function resolveStoreSetup(
  options: { db?: unknown; dialect?: SqlDialect } & Partial<TableOptions>,
  factory: string,
): { dialect: SqlDialect; tables: ResolvedTables } {
  const db = options?.db as Kysely<unknown> | undefined
  if (!db || typeof db.getExecutor !== 'function') {
    throw new OutboxKitError(ErrorCode.InvalidOptions, `${factory}({ db }) needs a Kysely instance.`)
  }
  const dialect = options.dialect ?? detectDialect(db, 'kysely')
  return { dialect, tables: resolveTables({ ...options, dialect }) }
}
