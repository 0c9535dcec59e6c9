/**
 * The binlog change feed against the machine's MariaDB (log_bin, ROW, FULL): what it reads, what
 * it skips, where it resumes, and how it refuses to skip. Assertions read the tables directly.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { Kysely, MysqlDialect, type Transaction } from 'kysely'
import { createPool } from 'mysql2'
import { type Connection, createConnection } from 'mysql2/promise'
import { outboxSchemaSql } from '../../src/adapters/kysely/index.js'
import { createKyselyOutboxStore } from '../../src/adapters/kysely/kysely-outbox-store.js'
import {
  createMysqlChangeFeed,
  type MysqlChangeFeed,
  type MysqlChangeFeedOptions,
} from '../../src/adapters/mysql-binlog/index.js'
import { type ClaimedRecord, ErrorCode, isOutboxKitError, Outbox, uuidv7 } from '../../src/index.js'
import { MYSQL_URL, uniqueName } from '../support/databases.js'

// biome-ignore lint/suspicious/noExplicitAny: the tables have no Kysely types.
type AnyDB = any

const schema = uniqueName('binlog')
let admin: Connection
let db: Kysely<AnyDB>

beforeAll(async () => {
  admin = await createConnection({ uri: MYSQL_URL })
  await admin.query(`CREATE DATABASE \`${schema}\``)
  db = new Kysely<AnyDB>({
    dialect: new MysqlDialect({ pool: createPool({ uri: MYSQL_URL, database: schema, connectionLimit: 5 }) }),
  })
})

afterAll(async () => {
  await db?.destroy()
  await admin?.query(`DROP DATABASE IF EXISTS \`${schema}\``)
  await admin?.end()
})

/** A fresh outbox table, a store to write it, and feeds reading it. */
async function openTable(): Promise<{
  table: string
  outbox: Outbox<Transaction<AnyDB>>
  store: ReturnType<typeof createKyselyOutboxStore<AnyDB>>
  feed(feedName?: string, options?: Partial<MysqlChangeFeedOptions>): MysqlChangeFeed
}> {
  const table = uniqueName('ob')
  for (const statement of outboxSchemaSql({ dialect: 'mysql', schema, outboxTable: table })) {
    await admin.query(statement)
  }
  const store = createKyselyOutboxStore({ db, schema, outboxTable: table })
  return {
    table,
    outbox: new Outbox({ store }),
    store,
    feed: (feedName, options = {}) =>
      createMysqlChangeFeed({
        ...options,
        connection: MYSQL_URL,
        schema,
        outboxTable: table,
        serverId: 100_000 + Math.floor(Math.random() * 1_000_000_000),
        ...(feedName === undefined ? {} : { feedName }),
      }),
  }
}

const feeds: MysqlChangeFeed[] = []
afterAll(async () => {
  for (const feed of feeds) await feed.close()
})

async function opened(feed: MysqlChangeFeed): Promise<MysqlChangeFeed> {
  feeds.push(feed)
  await feed.open()
  return feed
}

/** Reads until `count` records arrived (in as many batches as it takes), with each batch. */
async function readRecords(
  feed: MysqlChangeFeed,
  count: number,
  limit = 100,
): Promise<{ records: ClaimedRecord[]; positions: (string | undefined)[] }> {
  const records: ClaimedRecord[] = []
  const positions: (string | undefined)[] = []
  for (let round = 0; records.length < count; round++) {
    if (round > 100)
      throw new Error(
        `only ${records.length} of ${count} records arrived: ${records.map((r) => r.id).join(' ')}`,
      )
    const batch = await feed.read({ limit, maxWaitMs: 250 })
    if (batch.records.length > 0) positions.push(batch.position)
    records.push(...batch.records)
  }
  return { records, positions }
}

function message(key: string, n: number) {
  return { topic: 'binlog.events', key, type: 'Happened', payload: { key, n } }
}

describe('MariaDB binlog change feed', () => {
  test('committed transactions arrive in commit order, whole, with the stored bytes; rolled-back ones never', async () => {
    const { table, outbox, feed: makeFeed } = await openTable()
    const feed = await opened(makeFeed())

    // Commit order differs from id order: the transaction that wrote first commits last.
    const early = await createConnection({ uri: MYSQL_URL, database: schema })
    const late = await createConnection({ uri: MYSQL_URL, database: schema })
    const payload = new Uint8Array([0, 255, 1, 128, 34, 92, 0])
    const headers = {
      traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
      tracestate: 'vendor=a,b',
      'content-type': 'application/octet-stream',
      'x-note': 'é ü \u0000 "quoted"',
    }
    const firstId = uuidv7()
    await early.beginTransaction()
    await early.query(
      `INSERT INTO \`${table}\` (id, topic, \`key\`, type, payload, headers) VALUES (?, ?, ?, ?, ?, ?)`,
      [firstId, 'binlog.bytes', 'k1', 'Raw', Buffer.from(payload), JSON.stringify(headers)],
    )
    const committedFirst = await db
      .transaction()
      .execute(async (trx) => [
        ...((await outbox.add(trx, [message('k2', 1), message('k2', 2)])) as string[]),
      ])
    await late.beginTransaction()
    const rolledBack = uuidv7()
    await late.query(
      `INSERT INTO \`${table}\` (id, topic, \`key\`, type, payload, headers) VALUES (?, 't', 'k3', 'X', 'x', '{}')`,
      [rolledBack],
    )
    await late.rollback()
    await early.commit()
    await early.end()
    await late.end()
    const last = (await db.transaction().execute((trx) => outbox.add(trx, message('k1', 3)))) as string

    const { records, positions } = await readRecords(feed, 4)
    expect(records.map((r) => r.id)).toEqual([...committedFirst, firstId, last])
    expect(records.some((r) => r.id === rolledBack)).toBe(false)
    expect(positions.every((p) => p !== undefined && /^.+:\d+$/.test(p))).toBe(true)

    const raw = records[2]!
    expect(raw.topic).toBe('binlog.bytes')
    expect(raw.key).toBe('k1')
    expect(raw.type).toBe('Raw')
    expect(raw.attempts).toBe(1)
    expect(raw.shard).toBeUndefined()
    expect(raw.payload).toEqual(payload)
    expect(raw.headers).toEqual(headers)

    // Each record as the table holds it, read directly.
    const [rows] = await admin.query(
      `SELECT id, topic, \`key\`, type, payload, headers, created_at FROM \`${schema}\`.\`${table}\` ORDER BY seq`,
    )
    const byId = new Map((rows as Record<string, unknown>[]).map((row) => [String(row['id']), row]))
    for (const record of records) {
      const row = byId.get(record.id)!
      expect(record.topic).toBe(String(row['topic']))
      expect(record.key).toBe(String(row['key']))
      expect(record.type).toBe(String(row['type']))
      expect(Buffer.from(record.payload).equals(row['payload'] as Buffer)).toBe(true)
      expect(record.headers).toEqual(JSON.parse(String(row['headers'])))
      expect(record.createdAt.getTime()).toBe((row['created_at'] as Date).getTime())
    }
  }, 30_000)

  test("the 'debezium' layout reads topic and key from aggregatetype and aggregateid", async () => {
    const table = uniqueName('dbz')
    for (const statement of outboxSchemaSql({
      dialect: 'mysql',
      schema,
      outboxTable: table,
      layout: 'debezium',
    })) {
      await admin.query(statement)
    }
    const store = createKyselyOutboxStore({ db, schema, outboxTable: table, layout: 'debezium' })
    const feed = await opened(
      createMysqlChangeFeed({
        connection: MYSQL_URL,
        schema,
        outboxTable: table,
        layout: 'debezium',
        serverId: 4_000_001,
      }),
    )
    const id = (await db
      .transaction()
      .execute((trx) => new Outbox({ store }).add(trx, message('order-7', 1)))) as string
    const [record] = (await readRecords(feed, 1)).records
    expect(record).toMatchObject({ id, topic: 'binlog.events', key: 'order-7', type: 'Happened' })
  }, 30_000)

  test('a transaction larger than the limit comes in parts; only its last part carries a position', async () => {
    const { outbox, feed: makeFeed } = await openTable()
    const feed = await opened(makeFeed())
    const ids = (await db.transaction().execute((trx) =>
      outbox.add(
        trx,
        Array.from({ length: 5 }, (_, n) => message('big', n)),
      ),
    )) as string[]
    const { records, positions } = await readRecords(feed, 5, 2)
    expect(records.map((r) => r.id)).toEqual(ids)
    expect(positions.slice(0, -1).every((p) => p === undefined)).toBe(true)
    expect(positions.at(-1)).toBeDefined()
  }, 30_000)

  test('a first open reads the pending rows of a consistent snapshot, then the binlog after it, each row once', async () => {
    const { table, outbox, feed: makeFeed } = await openTable()
    const before = (await db
      .transaction()
      .execute((trx) => outbox.add(trx, [message('s', 1), message('s', 2), message('t', 1)]))) as string[]
    const published = (await db.transaction().execute((trx) => outbox.add(trx, message('s', 0)))) as string
    await admin.query(`UPDATE \`${schema}\`.\`${table}\` SET status = 1 WHERE id = ?`, [published])
    // A writer that commits while the feed opens lands in the snapshot or in the binlog, not both.
    const racing = db.transaction().execute((trx) => outbox.add(trx, message('s', 3)))
    const feed = await opened(makeFeed())
    const during = (await racing) as string
    const after = (await db.transaction().execute((trx) => outbox.add(trx, message('s', 4)))) as string
    const { records } = await readRecords(feed, 5)
    expect(records.map((r) => r.id)).toEqual([...before, during, after])
    const more = await feed.read({ limit: 100, maxWaitMs: 300 })
    expect(more.records).toEqual([])
  }, 30_000)

  test("firstOpen 'log-end' starts at the binlog's end and stores it at once", async () => {
    const { table, outbox, feed: makeFeed } = await openTable()
    await db.transaction().execute((trx) => outbox.add(trx, message('e', 1)))
    const feed = await opened(makeFeed(undefined, { firstOpen: 'log-end' }))
    const [rows] = await admin.query(
      `SELECT binlog_file FROM \`${schema}\`.\`${table}_feed_position\` WHERE feed = 'default'`,
    )
    expect((rows as unknown[]).length).toBe(1)
    const after = (await db.transaction().execute((trx) => outbox.add(trx, message('e', 2)))) as string
    const { records } = await readRecords(feed, 1)
    expect(records.map((r) => r.id)).toEqual([after])
  }, 30_000)

  test('a feed reads on across a binlog rotation, and resumes in the older file', async () => {
    const { outbox, feed: makeFeed } = await openTable()
    const feed = await opened(makeFeed())
    const a = (await db.transaction().execute((trx) => outbox.add(trx, message('o', 1)))) as string
    const first = await readRecords(feed, 1)
    await admin.query('FLUSH BINARY LOGS')
    const b = (await db.transaction().execute((trx) => outbox.add(trx, message('o', 2)))) as string
    const second = await readRecords(feed, 1)
    expect([...first.records, ...second.records].map((r) => r.id)).toEqual([a, b])
    const file = (position: string | undefined) => position!.slice(0, position!.lastIndexOf(':'))
    expect(file(second.positions[0])).not.toBe(file(first.positions[0]))
    await feed.confirm(first.positions[0]!)
    await feed.close()
    await feed.open()
    expect((await readRecords(feed, 1)).records.map((r) => r.id)).toEqual([b])
  }, 30_000)

  test('a feed whose buffer fills pauses the stream and resumes it as the relay reads', async () => {
    const { outbox, feed: makeFeed } = await openTable()
    const feed = await opened(makeFeed(undefined, { maxBufferedRecords: 2 }))
    const ids: string[] = []
    for (let n = 0; n < 8; n++) {
      ids.push((await db.transaction().execute((trx) => outbox.add(trx, message(`w${n % 3}`, n)))) as string)
    }
    const { records } = await readRecords(feed, 8, 1)
    expect(records.map((r) => r.id)).toEqual(ids)
  }, 30_000)

  test('updates and deletes of outbox rows are not read', async () => {
    const { table, outbox, feed: makeFeed } = await openTable()
    const feed = await opened(makeFeed())
    const first = (await db.transaction().execute((trx) => outbox.add(trx, message('u', 1)))) as string
    await admin.query(`UPDATE \`${schema}\`.\`${table}\` SET status = 1, attempts = 3 WHERE id = ?`, [first])
    await admin.query(`DELETE FROM \`${schema}\`.\`${table}\` WHERE id = ?`, [first])
    const second = (await db.transaction().execute((trx) => outbox.add(trx, message('u', 2)))) as string
    const { records } = await readRecords(feed, 2)
    expect(records.map((r) => r.id)).toEqual([first, second])
    // Nothing else follows.
    const after = await feed.read({ limit: 100, maxWaitMs: 300 })
    expect(after.records).toEqual([])
  }, 30_000)

  test('a feed closed without confirming reads its records again; after a confirm it does not', async () => {
    const { outbox, feed: makeFeed } = await openTable()
    const feed = await opened(makeFeed())
    const a = (await db.transaction().execute((trx) => outbox.add(trx, message('r', 1)))) as string
    const first = await readRecords(feed, 1)
    expect(first.records.map((r) => r.id)).toEqual([a])
    await feed.close()

    await feed.open()
    const again = await readRecords(feed, 1)
    expect(again.records.map((r) => r.id)).toEqual([a])
    await feed.confirm(again.positions.at(-1)!)
    expect((await feed.lag()).ageMs).toBe(0)
    await feed.close()

    const b = (await db.transaction().execute((trx) => outbox.add(trx, message('r', 2)))) as string
    await feed.open()
    const { records } = await readRecords(feed, 1)
    expect(records.map((r) => r.id)).toEqual([b])
  }, 30_000)

  test('confirm only moves forwards, and lag counts the bytes and the age behind it', async () => {
    const { table, outbox, feed: makeFeed } = await openTable()
    const feed = await opened(makeFeed())
    await db.transaction().execute((trx) => outbox.add(trx, message('f', 1)))
    const one = await readRecords(feed, 1)
    await db.transaction().execute((trx) => outbox.add(trx, message('f', 2)))
    const two = await readRecords(feed, 1)
    const lag = await feed.lag()
    expect(lag.bytes).toBeGreaterThan(0)
    expect(lag.ageMs).toBeGreaterThanOrEqual(0)

    await feed.confirm(two.positions.at(-1)!)
    await feed.confirm(one.positions.at(-1)!)
    const [rows] = await admin.query(
      `SELECT CONCAT(binlog_file, ':', binlog_position) AS position, committed_at FROM \`${schema}\`.\`${table}_feed_position\` WHERE feed = 'default'`,
    )
    const stored = (rows as { position: string; committed_at: Date | null }[])[0]!
    expect(stored.position).toBe(two.positions.at(-1)!)
    // The commit time of the confirmed transaction, to the second (for recovery after FEED_LOST).
    expect(stored.committed_at).toBeInstanceOf(Date)
    expect(Math.abs(stored.committed_at!.getTime() - two.records[0]!.createdAt.getTime())).toBeLessThan(2_000)
    expect((await feed.lag()).ageMs).toBe(0)
  }, 30_000)

  test('a second reader of the same feed gets FEED_BUSY until the first closes; another feed name reads alongside', async () => {
    const { outbox, feed: makeFeed } = await openTable()
    const first = await opened(makeFeed())
    const second = makeFeed()
    feeds.push(second)
    const busy = await second.open().then(
      () => undefined,
      (error: unknown) => error,
    )
    expect(isOutboxKitError(busy, ErrorCode.FeedBusy)).toBe(true)
    expect((busy as { retriable: boolean }).retriable).toBe(true)

    const other = await opened(makeFeed('audit'))
    const id = (await db.transaction().execute((trx) => outbox.add(trx, message('b', 1)))) as string
    expect((await readRecords(other, 1)).records.map((r) => r.id)).toEqual([id])

    await first.close()
    await second.open()
    // The standby reads what the first never confirmed.
    expect((await readRecords(second, 1)).records.map((r) => r.id)).toEqual([id])
  }, 30_000)

  test('rows are read as their transaction left them: a requeued dead row comes again with its id; rows deleted or not pending at commit never', async () => {
    const { table, outbox, store, feed: makeFeed } = await openTable()
    const feed = await opened(makeFeed())
    const dead = (await db.transaction().execute((trx) => outbox.add(trx, message('q', 1)))) as string
    expect((await readRecords(feed, 1)).records.map((r) => r.id)).toEqual([dead])
    await feed.markDead([{ id: dead, error: 'refused' }])
    // On MySQL a requeue inserts a copy under a temporary id, deletes the row, then renames the copy.
    expect((await store.requeue([dead])).requeued).toEqual([dead])

    const conn = await createConnection({ uri: MYSQL_URL, database: schema })
    const gone = uuidv7()
    const settled = uuidv7()
    await conn.beginTransaction()
    await conn.query(
      `INSERT INTO \`${table}\` (id, topic, \`key\`, type, payload, headers) VALUES (?, 't', 'q', 'X', 'x', '{}')`,
      [gone],
    )
    await conn.query(`DELETE FROM \`${table}\` WHERE id = ?`, [gone])
    await conn.query(
      `INSERT INTO \`${table}\` (id, topic, \`key\`, type, payload, headers, status) VALUES (?, 't', 'q', 'X', 'x', '{}', 1)`,
      [settled],
    )
    await conn.commit()
    await conn.end()
    const last = (await db.transaction().execute((trx) => outbox.add(trx, message('q', 2)))) as string

    const { records } = await readRecords(feed, 2)
    expect(records.map((r) => r.id)).toEqual([dead, last])
    expect(records[0]!.payload).toEqual(new TextEncoder().encode(JSON.stringify({ key: 'q', n: 1 })))
  }, 30_000)

  test('a reader whose connection is killed fails its next read as retriable, and a standby opens', async () => {
    const { table, outbox, feed: makeFeed } = await openTable()
    const feed = await opened(makeFeed())
    const [holder] = await admin.query(`SELECT IS_USED_LOCK(CONCAT('outboxkit_feed_', MD5(?))) AS id`, [
      `${schema}.${table}.default`,
    ])
    const thread = (holder as { id: number | null }[])[0]!.id
    expect(thread).not.toBeNull()
    await admin.query(`KILL ${Number(thread)}`)
    let failure: unknown
    for (let round = 0; round < 100 && failure === undefined; round++) {
      failure = await feed.read({ limit: 10, maxWaitMs: 100 }).then(
        () => undefined,
        (error: unknown) => error,
      )
    }
    expect(isOutboxKitError(failure, ErrorCode.StoreFailed)).toBe(true)
    expect((failure as { retriable: boolean }).retriable).toBe(true)
    // Its confirms fail too: the lock and the position writes share the dead session.
    const standby = await opened(makeFeed())
    const id = (await db.transaction().execute((trx) => outbox.add(trx, message('k', 1)))) as string
    expect((await readRecords(standby, 1)).records.map((r) => r.id)).toEqual([id])
    await feed.close()
  }, 30_000)

  test('a binlog stream the server ends fails the next read as retriable; reopened, the feed resumes', async () => {
    const { outbox, feed: makeFeed } = await openTable()
    const dumps = async () => {
      const [rows] = await admin.query(
        "SELECT ID AS id FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%'",
      )
      return new Set((rows as { id: number }[]).map((r) => Number(r.id)))
    }
    const others = await dumps()
    const feed = await opened(makeFeed())
    const a = (await db.transaction().execute((trx) => outbox.add(trx, message('x', 1)))) as string
    expect((await readRecords(feed, 1)).records.map((r) => r.id)).toEqual([a])
    const mine = [...(await dumps())].filter((id) => !others.has(id))
    expect(mine.length).toBe(1)
    await admin.query(`KILL ${mine[0]}`)
    let failure: unknown
    for (let round = 0; round < 100 && failure === undefined; round++) {
      failure = await feed.read({ limit: 10, maxWaitMs: 100 }).then(
        () => undefined,
        (error: unknown) => error,
      )
    }
    expect(isOutboxKitError(failure, ErrorCode.StoreFailed)).toBe(true)
    expect((failure as { retriable: boolean }).retriable).toBe(true)
    await feed.close()
    const b = (await db.transaction().execute((trx) => outbox.add(trx, message('x', 2)))) as string
    await feed.open()
    expect((await readRecords(feed, 2)).records.map((r) => r.id)).toEqual([a, b])
  }, 30_000)

  test('a closed feed opens again at once: its lock is released before its session ends', async () => {
    const { feed: makeFeed } = await openTable()
    const feed = makeFeed(undefined, { firstOpen: 'log-end' })
    feeds.push(feed)
    let busy = 0
    for (let round = 0; round < 100; round++) {
      await feed.open().catch((error: unknown) => {
        if (!isOutboxKitError(error, ErrorCode.FeedBusy)) throw error
        busy++
      })
      await feed.close()
    }
    expect(busy).toBe(0)
  }, 30_000)

  test('markDead marks the rows dead with their error, as the polling store does', async () => {
    const { table, outbox, feed: makeFeed } = await openTable()
    const feed = await opened(makeFeed())
    const ids = (await db
      .transaction()
      .execute((trx) => outbox.add(trx, [message('d', 1), message('d', 2), message('d', 3)]))) as string[]
    await readRecords(feed, 3)
    await feed.markDead([
      { id: ids[0]!, error: 'refused: too large' },
      { id: ids[2]!, error: 'x'.repeat(5000) },
    ])
    const [rows] = await admin.query(
      `SELECT id, status, last_error FROM \`${schema}\`.\`${table}\` ORDER BY seq`,
    )
    const state = (rows as { id: string; status: number; last_error: string | null }[]).map((r) => [
      r.status,
      r.last_error?.length ?? null,
    ])
    expect(state).toEqual([
      [2, 'refused: too large'.length],
      [0, null],
      [2, 4000],
    ])
  }, 30_000)

  test('a stored position in a purged binlog file fails with FEED_LOST instead of skipping', async () => {
    const { table, outbox, feed: makeFeed } = await openTable()
    const feed = await opened(makeFeed())
    await db.transaction().execute((trx) => outbox.add(trx, message('p', 1)))
    const { positions } = await readRecords(feed, 1)
    const stored = positions.at(-1)!
    await feed.confirm(stored)
    await feed.close()
    await db.transaction().execute((trx) => outbox.add(trx, message('p', 2)))

    // Readers of the old files (the other tests' feeds) keep them from being purged.
    for (const each of feeds) await each.close()
    // Only files older than the one just opened are purged: the current one stays. The server
    // keeps a file until its transactions are checkpointed, so purging may take a few tries.
    await admin.query('FLUSH BINARY LOGS')
    const [status] = await admin.query('SHOW MASTER STATUS')
    const current = (status as { File: string }[])[0]!.File
    const storedFile = stored.slice(0, stored.lastIndexOf(':'))
    let remaining: string[] = []
    for (let attempt = 0; attempt < 50; attempt++) {
      await admin.query(`PURGE BINARY LOGS TO '${current}'`)
      const [logs] = await admin.query('SHOW BINARY LOGS')
      remaining = (logs as { Log_name: string }[]).map((l) => l.Log_name)
      if (!remaining.includes(storedFile)) break
      await Bun.sleep(100)
    }
    expect(remaining).not.toContain(storedFile)

    const lost = await feed.open().then(
      () => undefined,
      (error: unknown) => error,
    )
    expect(isOutboxKitError(lost, ErrorCode.FeedLost)).toBe(true)
    expect((lost as { retriable: boolean }).retriable).toBe(false)
    // The stored position is kept for the operator; nothing was moved past it.
    const [rows] = await admin.query(
      `SELECT CONCAT(binlog_file, ':', binlog_position) AS position FROM \`${schema}\`.\`${table}_feed_position\``,
    )
    expect((rows as { position: string }[])[0]!.position).toBe(stored)
  }, 30_000)
})
