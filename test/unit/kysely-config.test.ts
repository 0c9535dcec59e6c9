import { describe, expect, test } from 'bun:test'
import {
  type DatabaseConnection,
  type Dialect,
  type Driver,
  Kysely,
  PostgresAdapter,
  PostgresIntrospector,
  PostgresQueryCompiler,
} from 'kysely'
import {
  createKyselyInboxStore,
  createKyselyOutboxStore,
  outboxMigrations,
  outboxSchemaSql,
} from '../../src/adapters/kysely/index.js'
import { ErrorCode, isOutboxKitError } from '../../src/index.js'

/** A Postgres-flavoured Kysely whose driver records every statement instead of running it. */
function recordingDb(): { db: Kysely<unknown>; statements: string[] } {
  const statements: string[] = []
  const connection: DatabaseConnection = {
    async executeQuery(query) {
      statements.push(query.sql)
      return { rows: [] }
    },
    // biome-ignore lint/correctness/useYield: never streamed
    async *streamQuery() {
      throw new Error('no streaming')
    },
  }
  const driver: Driver = {
    init: async () => {},
    acquireConnection: async () => connection,
    beginTransaction: async () => {},
    commitTransaction: async () => {},
    rollbackTransaction: async () => {},
    releaseConnection: async () => {},
    destroy: async () => {},
  }
  const dialect: Dialect = {
    createAdapter: () => new PostgresAdapter(),
    createDriver: () => driver,
    createQueryCompiler: () => new PostgresQueryCompiler(),
    createIntrospector: (db) => new PostgresIntrospector(db),
  }
  return { db: new Kysely<unknown>({ dialect }), statements }
}

const hostile = [
  'outbox; DROP TABLE users',
  'out"box',
  'out`box',
  "out'box",
  '1outbox',
  '',
  'x'.repeat(49),
  'schéma',
  'a.b',
  'a b',
  'a--',
]

describe('Kysely store configuration', () => {
  test.each(hostile)('the identifier %p is rejected at configuration time, before any SQL', (name) => {
    const { db, statements } = recordingDb()
    for (const make of [
      () => createKyselyOutboxStore({ db, outboxTable: name }),
      () => createKyselyOutboxStore({ db, schema: name }),
      () => createKyselyInboxStore({ db, inboxTable: name }),
      () => outboxSchemaSql({ dialect: 'mysql', outboxTable: name }),
      () => outboxMigrations({ dialect: 'postgres', schema: name }),
    ]) {
      let error: unknown
      try {
        make()
      } catch (e) {
        error = e
      }
      expect(isOutboxKitError(error, ErrorCode.InvalidIdentifier)).toBe(true)
    }
    expect(statements).toHaveLength(0)
  })

  test('the dialect is inferred from the Kysely adapter', () => {
    const { db } = recordingDb()
    expect(createKyselyOutboxStore({ db }).tables.dialect).toBe('postgres')
  })

  test('an unknown dialect or layout is an INVALID_OPTIONS error', () => {
    const { db } = recordingDb()
    for (const make of [
      () => createKyselyOutboxStore({ db, dialect: 'sqlite' as never }),
      () => createKyselyOutboxStore({ db, layout: 'kafka-connect' as never }),
      () => createKyselyOutboxStore({ db: undefined as never }),
    ]) {
      let error: unknown
      try {
        make()
      } catch (e) {
        error = e
      }
      expect(isOutboxKitError(error, ErrorCode.InvalidOptions)).toBe(true)
    }
  })

  test('the debezium layout names the columns the Debezium outbox router reads', () => {
    const [table] = outboxSchemaSql({ dialect: 'postgres', layout: 'debezium' })
    for (const column of ['"id" uuid', '"aggregatetype"', '"aggregateid"', '"type"', '"payload"']) {
      expect(table).toContain(column)
    }
  })
})
