import { describe, expect, test } from 'bun:test'
import {
  type DatabaseConnection,
  type Dialect,
  type Driver,
  Kysely,
  MysqlDialect,
  PostgresAdapter,
  PostgresIntrospector,
  PostgresQueryCompiler,
} from 'kysely'
import {
  createKyselyInboxStore,
  createKyselyOutboxStore,
  outboxMigrations,
  outboxSchemaSql,
  PGliteDialect,
} from '../../src/adapters/kysely/index.js'
import { ErrorCode, isOutboxKitError, Outbox } from '../../src/index.js'
import { captureError } from '../../src/testing/test-api.js'

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

interface Stores {
  outbox: ReturnType<typeof createKyselyOutboxStore<unknown>>
  inbox: ReturnType<typeof createKyselyInboxStore<unknown>>
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

  test.each([0, -1, 1.5, 10_001, Number.NaN])('insertChunkSize %p is refused, naming the option', (size) => {
    const { db } = recordingDb()
    let error: unknown
    try {
      createKyselyOutboxStore({ db, insertChunkSize: size })
    } catch (e) {
      error = e
    }
    expect(isOutboxKitError(error, ErrorCode.InvalidOptions)).toBe(true)
    expect((error as { details: Record<string, unknown> }).details['option']).toBe('insertChunkSize')
  })

  test.each([
    ['claim limit 0', (s: Stores) => s.outbox.claim({ limit: 0, leaseMs: 1_000 }), 'claim limit'],
    ['claim limit 0.5', (s: Stores) => s.outbox.claim({ limit: 0.5, leaseMs: 1_000 }), 'claim limit'],
    ['claim limit 10 001', (s: Stores) => s.outbox.claim({ limit: 10_001, leaseMs: 1_000 }), 'claim limit'],
    ['claim leaseMs 0', (s: Stores) => s.outbox.claim({ limit: 10, leaseMs: 0 }), 'claim leaseMs'],
    ['outbox purge limit 0', (s: Stores) => s.outbox.purge({ olderThanMs: 0, limit: 0 }), 'purge limit'],
    ['outbox purge olderThanMs -1', (s: Stores) => s.outbox.purge({ olderThanMs: -1 }), 'purge olderThanMs'],
    ['inbox purge limit -3', (s: Stores) => s.inbox.purge({ olderThanMs: 0, limit: -3 }), 'purge limit'],
    [
      'inbox purge olderThanMs NaN',
      (s: Stores) => s.inbox.purge({ olderThanMs: Number.NaN }),
      'purge olderThanMs',
    ],
  ] as const)('%s is a typed INVALID_OPTIONS error, before any SQL', async (_name, call, option) => {
    const { db, statements } = recordingDb()
    const stores = { outbox: createKyselyOutboxStore({ db }), inbox: createKyselyInboxStore({ db }) }
    let error: unknown
    try {
      await call(stores)
    } catch (e) {
      error = e
    }
    expect(isOutboxKitError(error, ErrorCode.InvalidOptions)).toBe(true)
    expect((error as { details: Record<string, unknown> }).details['option']).toBe(option)
    expect(statements).toHaveLength(0)
  })

  test('outbox.add with the root Kysely instance does not compile, and throws INVALID_OPTIONS before any SQL', async () => {
    interface Tables {
      orders: { id: string }
    }
    const { db: untyped, statements } = recordingDb()
    const db = untyped as Kysely<Tables>
    const outbox = new Outbox({ store: createKyselyOutboxStore({ db }) })
    const message = { topic: 'order.events', key: 'o-1', type: 'OrderCreated', payload: {} }
    const error = await captureError(() =>
      // @ts-expect-error the root instance would write outside the caller's transaction
      outbox.add(db, message),
    )
    expect(isOutboxKitError(error, ErrorCode.InvalidOptions)).toBe(true)
    expect((error as Error).message).toContain('db.transaction().execute(async (trx)')
    expect(statements).toHaveLength(0)

    // Inside the transaction it is written.
    await db.transaction().execute((trx) => outbox.add(trx, message))
    expect(statements.some((s) => s.startsWith('INSERT INTO "outbox"'))).toBe(true)
  })

  test('the debezium layout names the columns the Debezium outbox router reads', () => {
    const [table] = outboxSchemaSql({ dialect: 'postgres', layout: 'debezium' })
    for (const column of ['"id" uuid', '"aggregatetype"', '"aggregateid"', '"type"', '"payload"']) {
      expect(table).toContain(column)
    }
  })
})

describe('the table-less mode (messagePrefix)', () => {
  function refusal(make: () => unknown): { code: string | undefined; message: string; option: unknown } {
    try {
      make()
    } catch (error) {
      return {
        code: isOutboxKitError(error) ? error.code : 'not an OutboxKitError',
        message: (error as Error).message,
        option: (error as { details?: Record<string, unknown> }).details?.['option'],
      }
    }
    return { code: undefined, message: '', option: undefined }
  }

  test('PGlite and MySQL refuse it with INVALID_OPTIONS that says what to do', () => {
    const pglite = new Kysely<unknown>({ dialect: new PGliteDialect({ pglite: {} as never }) })
    const pgliteRefusal = refusal(() =>
      createKyselyOutboxStore({ db: pglite, messagePrefix: 'outboxkit:app' }),
    )
    expect(pgliteRefusal).toMatchObject({ code: ErrorCode.InvalidOptions, option: 'messagePrefix' })
    expect(pgliteRefusal.message).toContain('PGlite has no')
    expect(pgliteRefusal.message).toContain('polling Relay')
    const mysql = new Kysely<unknown>({ dialect: new MysqlDialect({ pool: {} as never }) })
    const mysqlRefusal = refusal(() => createKyselyOutboxStore({ db: mysql, messagePrefix: 'outboxkit:app' }))
    expect(mysqlRefusal).toMatchObject({ code: ErrorCode.InvalidOptions, option: 'messagePrefix' })
    expect(mysqlRefusal.message).toContain('MySQL and MariaDB')
    expect(mysqlRefusal.message).toContain('mysql-binlog')
  })

  test('a bad prefix, or deleteAfterAdd or notify beside it, is refused', () => {
    const { db } = recordingDb()
    for (const messagePrefix of ['', 'a\u0000b', 'tab\there', 'x'.repeat(256), '\ud800']) {
      expect(refusal(() => createKyselyOutboxStore({ db, messagePrefix }))).toMatchObject({
        code: ErrorCode.InvalidOptions,
        option: 'messagePrefix',
      })
    }
    expect(
      refusal(() => createKyselyOutboxStore({ db, messagePrefix: 'p', deleteAfterAdd: true })).code,
    ).toBe(ErrorCode.InvalidOptions)
    expect(refusal(() => createKyselyOutboxStore({ db, messagePrefix: 'p', notify: true })).code).toBe(
      ErrorCode.InvalidOptions,
    )
    expect(refusal(() => createKyselyOutboxStore({ db, messagePrefix: 'outboxkit:app.outbox' })).code).toBe(
      undefined,
    )
  })

  test('add emits one transactional message per record and writes no row; claim refuses', async () => {
    const { db, statements } = recordingDb()
    const store = createKyselyOutboxStore({ db, messagePrefix: 'outboxkit:app' })
    const outbox = new Outbox({ store })
    await db.transaction().execute((trx) =>
      outbox.add(trx, [
        { topic: 't', key: 'a', type: 'A', payload: 1 },
        { topic: 't', key: 'b', type: 'B', payload: 2 },
      ]),
    )
    expect(statements).toHaveLength(1)
    expect(statements[0]).toContain('pg_logical_emit_message(true,')
    expect(statements[0]).not.toContain('INSERT')
    for (const claim of [
      () => store.claim({ limit: 1, leaseMs: 1_000 }),
      () => store.claimOwned('relay-1', { limit: 1 }),
    ]) {
      const error = await captureError(claim)
      expect(isOutboxKitError(error, ErrorCode.InvalidOptions)).toBe(true)
      expect((error as Error).message).toContain('LogRelay')
    }
  })
})
