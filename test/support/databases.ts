/**
 * The database backends every store test loops over. Each `open()` makes an isolated schema (or
 * MySQL database) with a random name and drops it on `close()`, so tests can run in parallel and
 * twice in a row. `query` reads the database directly, never through the store under test.
 */
import { randomUUID } from 'node:crypto'
import { PGlite } from '@electric-sql/pglite'
import { Kysely, MysqlDialect, PostgresDialect, sql } from 'kysely'
import { PostgresJSDialect } from 'kysely-postgres-js'
import { createPool } from 'mysql2'
import pg from 'pg'
import postgres from 'postgres'
import { PGliteDialect } from '../../src/adapters/kysely/index.js'
import type { SqlDialect } from '../../src/adapters/kysely/schema.js'

export const POSTGRES_URL = process.env['OUTBOXKIT_POSTGRES_URL'] ?? 'postgres://postgres@127.0.0.1:5432/test'
export const MYSQL_URL = process.env['OUTBOXKIT_MYSQL_URL'] ?? 'mysql://root@127.0.0.1:3306/test'

// Any database: the tables the tests create live in their own schema.
// biome-ignore lint/suspicious/noExplicitAny: tests query tables Kysely has no types for.
export type AnyDB = any

export interface TestDatabase {
  readonly backend: string
  readonly dialect: SqlDialect
  /** The isolated schema (Postgres) or database (MySQL) for this test. */
  readonly schema: string
  readonly db: Kysely<AnyDB>
  /** Runs SQL directly and returns its rows. */
  query<R = Record<string, unknown>>(text: string): Promise<R[]>
  /** A second, independent Kysely instance on the same database (another "process"). */
  openPeer(): Promise<Kysely<AnyDB>>
  close(): Promise<void>
}

export interface Backend {
  readonly name: string
  readonly dialect: SqlDialect
  open(): Promise<TestDatabase>
}

/** Prefix of the schemas (MySQL: databases) tests create; `OUTBOXKIT_SCHEMA_PREFIX` sets it. */
export const SCHEMA_PREFIX = process.env['OUTBOXKIT_SCHEMA_PREFIX'] ?? 'ok'

/**
 * `<prefix>_<time>_<random>`: unique across the test processes that run side by side (the random
 * part from the system's generator, not from a per-process `Math.random`).
 */
export function uniqueName(prefix: string): string {
  return `${prefix}_${Date.now().toString(36)}_${randomUUID().slice(0, 8)}`
}

function postgresBackend(name: string, makeDb: () => Kysely<AnyDB>): Backend {
  return {
    name,
    dialect: 'postgres',
    async open() {
      const schema = uniqueName(SCHEMA_PREFIX)
      const admin = makeDb()
      await sql.raw(`CREATE SCHEMA "${schema}"`).execute(admin)
      const peers: Kysely<AnyDB>[] = []
      return {
        backend: name,
        dialect: 'postgres',
        schema,
        db: admin,
        async query<R>(text: string) {
          return (await sql.raw(text).execute(admin)).rows as R[]
        },
        async openPeer() {
          const peer = makeDb()
          peers.push(peer)
          return peer
        },
        async close() {
          for (const peer of peers) await peer.destroy()
          await sql.raw(`DROP SCHEMA "${schema}" CASCADE`).execute(admin)
          await admin.destroy()
        },
      }
    },
  }
}

/** A postgres.js backend on the server at `url` (the machine's by default). */
export function postgresJsBackendAt(url: string): Backend {
  return postgresBackend(
    'postgres.js',
    () =>
      new Kysely<AnyDB>({
        dialect: new PostgresJSDialect({ postgres: postgres(url, { max: 10, onnotice: () => {} }) }),
      }),
  )
}

export const postgresJsBackend = postgresJsBackendAt(POSTGRES_URL)

/**
 * A pg backend on the server at `url`, with the 'error' listeners a pool needs to survive its
 * server going away (docs/relay.md, Failures).
 */
export function pgBackendAt(url: string): Backend {
  return postgresBackend('pg', () => {
    const pool = new pg.Pool({ connectionString: url, max: 10 })
    pool.on('error', () => {})
    pool.on('connect', (client) => client.on('error', () => {}))
    return new Kysely<AnyDB>({ dialect: new PostgresDialect({ pool }) })
  })
}

export const pgBackend = postgresBackend(
  'pg',
  () =>
    new Kysely<AnyDB>({
      dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: POSTGRES_URL, max: 10 }) }),
    }),
)

/** A MariaDB backend on the server at `url` (the machine's by default). */
export function mysqlBackendAt(url: string): Backend {
  return {
    name: 'mariadb',
    dialect: 'mysql',
    async open() {
      const schema = uniqueName(SCHEMA_PREFIX)
      const makeDb = (database?: string) =>
        new Kysely<AnyDB>({
          dialect: new MysqlDialect({
            pool: createPool({ uri: url, connectionLimit: 10, ...(database ? { database } : {}) }),
          }),
        })
      const admin = makeDb()
      await sql.raw(`CREATE DATABASE \`${schema}\``).execute(admin)
      const peers: Kysely<AnyDB>[] = []
      return {
        backend: 'mariadb',
        dialect: 'mysql',
        schema,
        db: admin,
        async query<R>(text: string) {
          return (await sql.raw(text).execute(admin)).rows as R[]
        },
        async openPeer() {
          const peer = makeDb()
          peers.push(peer)
          return peer
        },
        async close() {
          for (const peer of peers) await peer.destroy()
          await sql.raw(`DROP DATABASE \`${schema}\``).execute(admin)
          await admin.destroy()
        },
      }
    },
  }
}

export const mysqlBackend = mysqlBackendAt(MYSQL_URL)

// One embedded database per test process (it takes seconds to boot); each test gets a schema in it.
let sharedPglite: Promise<{ pglite: PGlite; db: Kysely<AnyDB> }> | undefined

/** The embedded database shared by this test process. */
export function sharedPgliteDatabase(): Promise<{ pglite: PGlite; db: Kysely<AnyDB> }> {
  sharedPglite ??= PGlite.create().then((pglite) => ({
    pglite,
    db: new Kysely<AnyDB>({ dialect: new PGliteDialect({ pglite }) }),
  }))
  return sharedPglite
}

export const pgliteBackend: Backend = {
  name: 'pglite',
  dialect: 'postgres',
  async open() {
    const schema = uniqueName(SCHEMA_PREFIX)
    const { db } = await sharedPgliteDatabase()
    await sql.raw(`CREATE SCHEMA "${schema}"`).execute(db)
    return {
      backend: 'pglite',
      dialect: 'postgres',
      schema,
      db,
      async query<R>(text: string) {
        return (await sql.raw(text).execute(db)).rows as R[]
      },
      // PGlite is one in-process database: a peer is the same instance.
      async openPeer() {
        return db
      },
      async close() {
        await sql.raw(`DROP SCHEMA "${schema}" CASCADE`).execute(db)
      },
    }
  },
}

export const SQL_BACKENDS: readonly Backend[] = [postgresJsBackend, pgBackend, mysqlBackend, pgliteBackend]

/** Fails with a clear message when a database server is not reachable. */
export async function assertReachable(backend: Backend): Promise<void> {
  try {
    const database = await backend.open()
    await database.close()
  } catch (error) {
    throw new Error(
      `[outboxkit tests] The ${backend.name} backend is not reachable (${String(error)}). Start the database or set OUTBOXKIT_POSTGRES_URL / OUTBOXKIT_MYSQL_URL.`,
    )
  }
}
