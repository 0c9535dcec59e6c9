/**
 * The Postgres change feed against a server of the test's own (test/support/private-servers.ts),
 * for what must not be done to the machine's server: WAL removed past a slot
 * (`max_slot_wal_keep_size`), and the server SIGKILLed and restarted under a reading feed.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from 'bun:test'
import { Kysely, PostgresDialect, sql } from 'kysely'
import pg from 'pg'
import { createKyselyOutboxStore, ensureOutboxSchema } from '../../src/adapters/kysely/index.js'
import { createPostgresChangeFeed, type PostgresChangeFeed } from '../../src/adapters/postgres-log/index.js'
import { ErrorCode, isOutboxKitError, Outbox } from '../../src/index.js'
import type { AnyDB } from '../support/databases.js'
import { type PrivateServer, startPrivatePostgres } from '../support/private-servers.js'

setDefaultTimeout(120_000)

let server: PrivateServer
let db: Kysely<AnyDB>
let outbox: Outbox<Kysely<AnyDB>>
const schema = 'pgfeed_private'

beforeAll(async () => {
  server = await startPrivatePostgres(undefined, {
    wal_level: 'logical',
    max_slot_wal_keep_size: '1MB',
    max_wal_size: '64MB',
  })
  const pool = new pg.Pool({ connectionString: server.url, max: 4 })
  // Idle connections die with the crashed server: not an error of the test.
  pool.on('error', () => {})
  db = new Kysely<AnyDB>({ dialect: new PostgresDialect({ pool }) })
  await sql.raw(`CREATE SCHEMA "${schema}"`).execute(db)
  await ensureOutboxSchema(db, { dialect: 'postgres', schema })
  outbox = new Outbox({ store: createKyselyOutboxStore({ db, schema }) })
})

afterAll(async () => {
  await db?.destroy()
  // The slots go with the server's data directory.
  await server?.close()
})

function feedOn(slot: string): PostgresChangeFeed {
  return createPostgresChangeFeed({ connectionString: server.url, slot, publication: slot, schema })
}

async function write(count: number, tag: string): Promise<string[]> {
  return db.transaction().execute((trx) =>
    outbox.add(
      trx,
      Array.from({ length: count }, (_, i) => ({
        topic: 't',
        key: `k${i % 3}`,
        type: 'T',
        payload: { tag, i },
      })),
    ),
  )
}

async function readAll(feed: PostgresChangeFeed, count: number): Promise<string[]> {
  const ids: string[] = []
  for (let i = 0; i < 200 && ids.length < count; i++) {
    const batch = await feed.read({ limit: 100, maxWaitMs: 100 })
    ids.push(...batch.records.map((r) => r.id))
  }
  return ids
}

describe('Postgres change feed on a server of its own', () => {
  test('WAL removed past the slot (wal_status lost) gives FEED_LOST, not a new slot', async () => {
    const feed = feedOn('pgfeed_walgone')
    await feed.open()
    await feed.close()
    // The slot is inactive; move the log on by several segments and let a checkpoint remove them.
    for (let i = 0; i < 6; i++) {
      await write(1, `w${i}`)
      await sql`SELECT pg_switch_wal()`.execute(db)
    }
    await sql`CHECKPOINT`.execute(db)
    const status = await sql<{ wal_status: string }>`
      SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'pgfeed_walgone'`.execute(db)
    expect(status.rows[0]?.wal_status).toBe('lost')
    let error: unknown
    try {
      await feed.open()
    } catch (e) {
      error = e
    }
    await feed.close()
    expect(isOutboxKitError(error, ErrorCode.FeedLost)).toBe(true)
    expect((error as { retriable: boolean }).retriable).toBe(false)
  })

  test('the server SIGKILLed under a reading feed: reads fail retriably, and a reopened feed delivers every record', async () => {
    const feed = feedOn('pgfeed_crash')
    await feed.open()
    const before = await write(5, 'before')
    const received = await readAll(feed, 5)
    expect(received).toEqual(before)
    await server.crash()
    let failure: unknown
    for (let i = 0; i < 50 && failure === undefined; i++) {
      failure = await feed.read({ limit: 10, maxWaitMs: 100 }).then(
        () => undefined,
        (e: unknown) => e,
      )
    }
    expect(isOutboxKitError(failure, ErrorCode.StoreFailed)).toBe(true)
    expect((failure as { retriable: boolean }).retriable).toBe(true)
    await feed.close()
    await server.start()
    const after = await write(5, 'after')
    await feed.open()
    // Nothing was confirmed: everything comes (again), in commit order.
    expect(await readAll(feed, 10)).toEqual([...before, ...after])
    await feed.close()
  })
})
