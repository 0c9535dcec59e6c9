/**
 * The Postgres change feed on the real server (wal_level = logical): records of committed
 * transactions in commit order, byte for byte; positions, redelivery and confirmation; one reader
 * per slot; a dropped slot; an idle outbox. Every slot a test makes is dropped in afterAll, since a
 * leftover slot holds WAL forever.
 */
import { afterAll, afterEach, beforeAll, describe, expect, setDefaultTimeout, test } from 'bun:test'
import { Kysely, PostgresDialect, sql } from 'kysely'
import pg from 'pg'
import { createKyselyOutboxStore, ensureOutboxSchema } from '../../src/adapters/kysely/index.js'
import {
  createPostgresChangeFeed,
  dropPostgresFeed,
  encodeLogicalMessage,
  type PostgresChangeFeed,
  postgresFeedSetup,
} from '../../src/adapters/postgres-log/index.js'
import type { FeedBatch } from '../../src/core/change-feed.js'
import { ErrorCode, isOutboxKitError, Outbox, type OutboxMessageInput } from '../../src/index.js'
import { type AnyDB, POSTGRES_URL, SCHEMA_PREFIX, uniqueName } from '../support/databases.js'

// A record that never arrives fails readRecords' bounded loop (20 s) rather than the test's timeout.
setDefaultTimeout(60_000)

const TRACEPARENT = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'

const schema = uniqueName(`${SCHEMA_PREFIX}_pgfeed`)
const db = new Kysely<AnyDB>({
  dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: POSTGRES_URL, max: 6 }) }),
})
const store = createKyselyOutboxStore({ db, schema })
const outbox = new Outbox({ store, tracing: { capture: () => ({ traceparent: TRACEPARENT }) } })
const slots = new Set<string>()
const feeds: PostgresChangeFeed[] = []

function newFeed(slot: string = uniqueSlot(), maxBufferedRecords?: number): PostgresChangeFeed {
  slots.add(slot)
  const feed = createPostgresChangeFeed({
    connectionString: POSTGRES_URL,
    slot,
    publication: slot,
    schema,
    ...(maxBufferedRecords === undefined ? {} : { maxBufferedRecords }),
  })
  feeds.push(feed)
  return feed
}

function uniqueSlot(): string {
  return uniqueName(`${SCHEMA_PREFIX}_pgfeed`).toLowerCase()
}

async function query<R = Record<string, unknown>>(text: string): Promise<R[]> {
  return (await sql.raw(text).execute(db)).rows as R[]
}

function message(
  key: string,
  payload: OutboxMessageInput['payload'],
  extra: Partial<OutboxMessageInput> = {},
) {
  return { topic: 'pgfeed.events', key, type: 'Tested', payload, ...extra }
}

async function write(messages: readonly OutboxMessageInput[]): Promise<string[]> {
  return db.transaction().execute((trx) => outbox.add(trx, messages))
}

/** Reads until `count` records arrived (bounded), keeping every batch. */
async function readRecords(feed: PostgresChangeFeed, count: number, limit = 100): Promise<FeedBatch[]> {
  const batches: FeedBatch[] = []
  let seen = 0
  for (let i = 0; i < 100 && seen < count; i++) {
    const batch = await feed.read({ limit, maxWaitMs: 200 })
    if (batch.records.length > 0) batches.push(batch)
    seen += batch.records.length
  }
  expect(seen).toBe(count)
  return batches
}

async function slotRow(slot: string) {
  const rows = await query<{ active: boolean; confirmed: string; active_pid: number | null }>(
    `SELECT active, active_pid, confirmed_flush_lsn::text AS confirmed FROM pg_replication_slots WHERE slot_name = '${slot}'`,
  )
  return rows[0]
}

async function lsnAfter(a: string, b: string): Promise<boolean> {
  const rows = await query<{ after: boolean }>(`SELECT '${a}'::pg_lsn > '${b}'::pg_lsn AS after`)
  return rows[0]!.after
}

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise
  } catch (error) {
    return error
  }
  throw new Error('expected a rejection')
}

beforeAll(async () => {
  await sql.raw(`CREATE SCHEMA "${schema}"`).execute(db)
  await ensureOutboxSchema(db, { dialect: 'postgres', schema })
  await sql.raw(`CREATE TABLE "${schema}"."pgfeed_other" (id serial PRIMARY KEY, note text)`).execute(db)
})

/** Closes the feeds and drops the slots made so far: a server has few slots, and others use them too. */
async function dropAll(): Promise<void> {
  for (const feed of feeds.splice(0)) await feed.close()
  for (const slot of slots) {
    await query(
      `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '${slot}' AND active`,
    )
    for (let i = 0; i < 100; i++) {
      try {
        await dropPostgresFeed({ connectionString: POSTGRES_URL, slot, publication: slot, schema })
        break
      } catch {
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
    }
    const left = await query(`SELECT 1 FROM pg_replication_slots WHERE slot_name = '${slot}'`)
    expect(left).toEqual([])
    slots.delete(slot)
  }
}

afterEach(dropAll)

afterAll(async () => {
  await dropAll()
  await sql.raw(`DROP SCHEMA "${schema}" CASCADE`).execute(db)
  await db.destroy()
})

describe('Postgres change feed', () => {
  test('committed transactions arrive in commit order, byte for byte; rolled-back ones never', async () => {
    const feed = newFeed()
    await feed.open()
    const bytes = Uint8Array.from({ length: 256 }, (_, i) => i)
    const first = await write([
      message('a', bytes, { contentType: 'application/x-raw', headers: { 'x-tenant': 'acme' } }),
      message('b', { text: 'zß€😀', n: 1 }),
    ])
    await db
      .transaction()
      .execute(async (trx) => {
        await outbox.add(trx, message('a', 'rolled back'))
        throw new Error('roll back')
      })
      .catch(() => {})
    // T1 inserts first but commits after T2: the log has T2 first.
    let release!: () => void
    const gate = new Promise<void>((resolve) => {
      release = resolve
    })
    let inserted!: () => void
    const t1Inserted = new Promise<void>((resolve) => {
      inserted = resolve
    })
    const t1 = db.transaction().execute(async (trx) => {
      const ids = await outbox.add(trx, [message('c', 'late commit')])
      inserted()
      await gate
      return ids
    })
    await t1Inserted
    const t2 = await write([message('c', 'early commit')])
    release()
    const late = await t1

    const batches = await readRecords(feed, 4)
    const records = batches.flatMap((b) => b.records)
    expect(records.map((r) => r.id)).toEqual([...first, ...t2, ...late])
    expect(batches.every((b) => b.position !== undefined)).toBe(true)
    const [raw, json] = records
    expect(raw!.payload).toEqual(bytes)
    expect(raw!.topic).toBe('pgfeed.events')
    expect(raw!.key).toBe('a')
    expect(raw!.type).toBe('Tested')
    expect(raw!.attempts).toBe(1)
    expect(raw!.createdAt).toBeInstanceOf(Date)
    expect(raw!.headers).toEqual({
      'x-tenant': 'acme',
      'content-type': 'application/x-raw',
      traceparent: TRACEPARENT,
    })
    expect(new TextDecoder().decode(json!.payload)).toBe(JSON.stringify({ text: 'zß€😀', n: 1 }))
    expect(records.some((r) => new TextDecoder().decode(r.payload).includes('rolled back'))).toBe(false)
    await feed.close()
  })

  test('UPDATE and DELETE of outbox rows are not records', async () => {
    const feed = newFeed()
    await feed.open()
    const [one] = await write([message('k', 'one')])
    await query(`UPDATE "${schema}"."outbox" SET status = 1 WHERE id = '${one}'`)
    await query(`DELETE FROM "${schema}"."outbox" WHERE id = '${one}'`)
    const [two] = await write([message('k', 'two')])
    const records = (await readRecords(feed, 2)).flatMap((b) => b.records)
    expect(records.map((r) => r.id)).toEqual([one!, two!])
    // Nothing else is ready.
    const after = await feed.read({ limit: 10, maxWaitMs: 300 })
    expect(after.records).toEqual([])
    await feed.close()
  })

  test('a transaction larger than the limit is split; only its last part carries the position', async () => {
    const feed = newFeed()
    await feed.open()
    const ids = await write([message('s', 1), message('s', 2), message('s', 3)])
    const [single] = await write([message('s', 4)])
    const first = await feed.read({ limit: 2, maxWaitMs: 2000 })
    expect(first.records.map((r) => r.id)).toEqual(ids.slice(0, 2))
    expect(first.position).toBeUndefined()
    // The rest of the first transaction comes next, with its position (whole transactions after
    // it may share the batch).
    const rest = await readRecords(feed, 2, 2)
    expect(rest.flatMap((b) => b.records).map((r) => r.id)).toEqual([ids[2]!, single!])
    expect(rest[0]!.records[0]!.id).toBe(ids[2]!)
    expect(rest.every((b) => b.position !== undefined)).toBe(true)
    await feed.close()
  })

  test('a feed closed without confirming redelivers from the last confirmed position', async () => {
    const slot = uniqueSlot()
    const feed = newFeed(slot)
    await feed.open()
    const confirmed = await write([message('r', 1)])
    const unconfirmed = await write([message('r', 2), message('r', 3)])
    const [batchOne] = await readRecords(feed, 1, 1)
    const rest = await readRecords(feed, 2)
    expect(batchOne!.records.map((r) => r.id)).toEqual(confirmed)
    expect(rest.flatMap((b) => b.records).map((r) => r.id)).toEqual(unconfirmed)
    await feed.confirm(batchOne!.position!)
    await feed.close()

    const again = newFeed(slot)
    await again.open()
    const redelivered = await readRecords(again, 2)
    expect(redelivered.flatMap((b) => b.records).map((r) => r.id)).toEqual(unconfirmed)
    await again.confirm(redelivered.at(-1)!.position!)
    await again.close()

    const third = newFeed(slot)
    await third.open()
    const fresh = await write([message('r', 4)])
    const next = await readRecords(third, 1)
    expect(next.flatMap((b) => b.records).map((r) => r.id)).toEqual(fresh)
    await third.close()
  })

  test('confirming a transaction never skips the next one, even when its commit follows at once', async () => {
    const slot = uniqueSlot()
    const feed = newFeed(slot)
    await feed.open()
    const a = new pg.Client({ connectionString: POSTGRES_URL })
    const b = new pg.Client({ connectionString: POSTGRES_URL })
    await a.connect()
    await b.connect()
    const insert = (key: string) =>
      `INSERT INTO "${schema}"."outbox" (id, topic, key, type, payload) VALUES (gen_random_uuid(), 't', '${key}', 'T', '\\x00') RETURNING id::text`
    await a.query('BEGIN')
    await b.query('BEGIN')
    const first = (await a.query(insert('first'))).rows[0].id as string
    const second = (await b.query(insert('second'))).rows[0].id as string
    // Nothing between the two commit records: the second starts where the first ends.
    await a.query('COMMIT')
    await b.query('COMMIT')
    await a.end()
    await b.end()
    const [one] = await readRecords(feed, 1, 1)
    expect(one!.records.map((r) => r.id)).toEqual([first])
    await feed.confirm(one!.position!)
    await feed.close()
    const again = newFeed(slot)
    await again.open()
    const redelivered = await readRecords(again, 1)
    expect(redelivered.flatMap((r) => r.records).map((r) => r.id)).toEqual([second])
    await again.close()
  })

  test('a second reader of the same slot gets FEED_BUSY (retriable) and takes over once the first closes', async () => {
    const slot = uniqueSlot()
    const first = newFeed(slot)
    await first.open()
    const second = newFeed(slot)
    const error = await rejection(second.open())
    expect(isOutboxKitError(error, ErrorCode.FeedBusy)).toBe(true)
    expect((error as { retriable: boolean }).retriable).toBe(true)
    await first.close()
    await second.open()
    expect((await slotRow(slot))?.active).toBe(true)
    await second.close()
  })

  test('a slot dropped under the feed: reading fails, and opening again gives FEED_LOST', async () => {
    const slot = uniqueSlot()
    const feed = newFeed(slot)
    await feed.open()
    await write([message('l', 1)])
    await readRecords(feed, 1)
    await query(
      `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '${slot}'`,
    )
    let dropped = false
    for (let i = 0; i < 100 && !dropped; i++) {
      try {
        await query(`SELECT pg_drop_replication_slot('${slot}')`)
        dropped = true
      } catch {
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
    }
    expect(dropped).toBe(true)
    let failure: unknown
    for (let i = 0; i < 50 && failure === undefined; i++) {
      failure = await feed.read({ limit: 10, maxWaitMs: 200 }).then(
        () => undefined,
        (error: unknown) => error,
      )
    }
    expect(isOutboxKitError(failure, ErrorCode.StoreFailed)).toBe(true)
    await feed.close()
    const error = await rejection(feed.open())
    expect(isOutboxKitError(error, ErrorCode.FeedLost)).toBe(true)
    expect((error as { retriable: boolean }).retriable).toBe(false)
    // Never made again behind the operator's back.
    expect(await slotRow(slot)).toBeUndefined()
    await feed.close()
  })

  test('an idle outbox with writes to other tables still moves confirmed_flush_lsn on', async () => {
    const slot = uniqueSlot()
    const feed = newFeed(slot)
    await feed.open()
    const before = (await slotRow(slot))!.confirmed
    for (let i = 0; i < 5; i++) await query(`INSERT INTO "${schema}"."pgfeed_other" (note) VALUES ('x${i}')`)
    let moved = false
    for (let i = 0; i < 50 && !moved; i++) {
      const batch = await feed.read({ limit: 10, maxWaitMs: 200 })
      expect(batch.records).toEqual([])
      if (batch.position !== undefined) {
        await feed.confirm(batch.position)
        for (let j = 0; j < 50 && !moved; j++) {
          moved = await lsnAfter((await slotRow(slot))!.confirmed, before)
          if (!moved) await new Promise((resolve) => setTimeout(resolve, 20))
        }
      }
    }
    expect(moved).toBe(true)
    await feed.close()
  })

  test('markDead marks the outbox rows dead with their error', async () => {
    const feed = newFeed()
    await feed.open()
    const ids = await write([message('d', 1), message('d', 2), message('d', 3)])
    await readRecords(feed, 3)
    await feed.markDead([
      { id: ids[0]!, error: 'refused by the broker' },
      { id: ids[2]!, error: 'too many attempts' },
    ])
    const rows = await query<{ id: string; status: number; last_error: string | null }>(
      `SELECT id::text, status, last_error FROM "${schema}"."outbox" WHERE id IN ('${ids.join("','")}') ORDER BY seq`,
    )
    expect(rows).toEqual([
      { id: ids[0]!, status: 2, last_error: 'refused by the broker' },
      { id: ids[1]!, status: 0, last_error: null },
      { id: ids[2]!, status: 2, last_error: 'too many attempts' },
    ])
    await feed.close()
  })

  test('lag: bytes behind the end of the log, and the age of records read but not confirmed', async () => {
    const feed = newFeed()
    await feed.open()
    await write([message('g', 1)])
    const [batch] = await readRecords(feed, 1)
    const behind = await feed.lag()
    expect(behind.bytes).toBeGreaterThan(0)
    expect(behind.ageMs).toBeGreaterThanOrEqual(0)
    await feed.confirm(batch!.position!)
    expect((await feed.lag()).ageMs).toBe(0)
    await feed.close()
  })

  test('a backlog far larger than maxBufferedRecords is received in parts, in order', async () => {
    const slot = uniqueSlot()
    // The slot first, then the backlog, then the feed: as a relay restarting far behind.
    for (const statement of postgresFeedSetup({ slot, publication: slot, schema })) await query(statement)
    slots.add(slot)
    const ids: string[] = []
    for (let t = 0; t < 60; t++) {
      ids.push(...(await write(Array.from({ length: 100 }, (_, i) => message(`b${i % 7}`, { t, i })))))
    }
    const feed = newFeed(slot, 200)
    await feed.open()
    // Nothing read yet: an unbounded feed would take in the whole backlog (given this long).
    for (let i = 0; i < 100 && feed.bufferedRecords < ids.length; i++) {
      await new Promise((resolve) => setTimeout(resolve, 30))
    }
    const buffered = feed.bufferedRecords
    // Paused at 200 ready records; what one socket read already held comes on top.
    expect(buffered).toBeGreaterThanOrEqual(200)
    expect(buffered).toBeLessThan(ids.length / 2)
    const received: string[] = []
    for (let i = 0; i < 1_000 && received.length < ids.length; i++) {
      const batch = await feed.read({ limit: 50, maxWaitMs: 200 })
      received.push(...batch.records.map((r) => r.id))
    }
    expect(received).toEqual(ids)
    await feed.close()
  })

  test('deleteAfterAdd: the table stays empty, the log still carries each record', async () => {
    const feed = newFeed()
    await feed.open()
    const deleting = createKyselyOutboxStore({ db, schema, deleteAfterAdd: true })
    const writer = new Outbox({ store: deleting })
    const before = await query<{ n: string }>(`SELECT count(*)::text AS n FROM "${schema}"."outbox"`)
    const bytes = Uint8Array.from([0, 255, 10, 13, 0])
    const ids = await db
      .transaction()
      .execute((trx) => writer.add(trx, [message('x', bytes), message('x', 2)]))
    const after = await query<{ n: string }>(`SELECT count(*)::text AS n FROM "${schema}"."outbox"`)
    expect(after).toEqual(before)
    const records = (await readRecords(feed, 2)).flatMap((b) => b.records)
    expect(records.map((r) => r.id)).toEqual(ids)
    expect(records[0]!.payload).toEqual(bytes)
    const refused = await rejection(deleting.claim({ limit: 10, leaseMs: 1_000 }))
    expect(isOutboxKitError(refused, ErrorCode.InvalidOptions)).toBe(true)
    await feed.close()
  })

  test('the setup SQL is idempotent and never recreates a slot that was dropped', async () => {
    const slot = uniqueSlot()
    slots.add(slot)
    const statements = postgresFeedSetup({ slot, publication: slot, schema })
    for (const statement of [...statements, ...statements]) await query(statement)
    expect(await slotRow(slot)).toBeDefined()
    await query(`SELECT pg_drop_replication_slot('${slot}')`)
    for (const statement of statements) await query(statement)
    expect(await slotRow(slot)).toBeUndefined()
  })
})

describe('Postgres change feed: logical decoding messages (the table-less mode)', () => {
  const prefix = `outboxkit:${schema}`
  const messageStore = createKyselyOutboxStore({ db, schema, messagePrefix: prefix })
  const messageOutbox = new Outbox({
    store: messageStore,
    tracing: { capture: () => ({ traceparent: TRACEPARENT, tracestate: 'vendor=1' }) },
  })

  function newMessageFeed(options: { table?: boolean; slot?: string } = {}): PostgresChangeFeed {
    const slot = options.slot ?? uniqueSlot()
    slots.add(slot)
    const feed = createPostgresChangeFeed({
      connectionString: POSTGRES_URL,
      slot,
      publication: slot,
      schema,
      messagePrefix: prefix,
      ...(options.table === undefined ? {} : { table: options.table }),
    })
    feeds.push(feed)
    return feed
  }

  const count = async (table: string) =>
    Number((await query<{ n: string }>(`SELECT count(*)::text AS n FROM "${schema}"."${table}"`))[0]!.n)

  test('messages and table INSERTs arrive in commit order together, byte for byte; nothing is written to the table', async () => {
    const feed = newMessageFeed()
    await feed.open()
    const rowsBefore = await count('outbox')
    const bytes = Uint8Array.from({ length: 256 }, (_, i) => i)
    const first = await db.transaction().execute(async (trx) => {
      await sql`INSERT INTO ${sql.raw(`"${schema}"."pgfeed_other"`)} (note) VALUES ('order 1')`.execute(trx)
      return messageOutbox.add(trx, [
        message('a', bytes, { contentType: 'application/x-raw', headers: { 'x-tenant': 'ünï 😀' } }),
        message('b', { text: 'zß€😀', n: 1 }),
      ])
    })
    expect(await count('outbox')).toBe(rowsBefore)
    // A row written the old way, in a transaction of its own, then a message again.
    const row = await write([message('a', 'a row')])
    const last = await db.transaction().execute((trx) => messageOutbox.add(trx, [message('a', 'a message')]))
    const records = (await readRecords(feed, 4)).flatMap((b) => b.records)
    expect(records.map((r) => r.id)).toEqual([...first, ...row, ...last])
    const raw = records[0]!
    expect(raw.payload).toEqual(bytes)
    expect(raw).toMatchObject({ topic: 'pgfeed.events', key: 'a', type: 'Tested', attempts: 1 })
    expect(raw.headers).toEqual({
      'x-tenant': 'ünï 😀',
      'content-type': 'application/x-raw',
      traceparent: TRACEPARENT,
      tracestate: 'vendor=1',
    })
    expect(Math.abs(raw.createdAt.getTime() - Date.now())).toBeLessThan(60_000)
    expect(new TextDecoder().decode(records[1]!.payload)).toBe(JSON.stringify({ text: 'zß€😀', n: 1 }))
    await feed.close()
  })

  test('a rolled-back transaction emits nothing; other prefixes and non-transactional messages are ignored', async () => {
    const feed = newMessageFeed({ table: false })
    await feed.open()
    await db
      .transaction()
      .execute(async (trx) => {
        await messageOutbox.add(trx, message('r', 'rolled back'))
        throw new Error('roll back')
      })
      .catch(() => {})
    // Valid records under another prefix, and outside any transaction: only the filter keeps them out.
    await query(`SELECT pg_logical_emit_message(true, 'someone-else', 'not ours')`)
    const other = new Outbox({
      store: createKyselyOutboxStore({ db, schema, messagePrefix: `${prefix}-other` }),
    })
    await db.transaction().execute((trx) => other.add(trx, [message('r', 'another prefix')]))
    const [outside] = messageOutbox.prepare([message('r', 'outside any transaction')])
    await sql`SELECT pg_logical_emit_message(false, ${prefix}, CAST(${Buffer.from(encodeLogicalMessage(outside!))} AS bytea))`.execute(
      db,
    )
    const kept = await db.transaction().execute((trx) => messageOutbox.add(trx, [message('r', 'kept')]))
    const records = (await readRecords(feed, 1)).flatMap((b) => b.records)
    expect(records.map((r) => r.id)).toEqual(kept)
    expect(records.some((r) => new TextDecoder().decode(r.payload).includes('rolled back'))).toBe(false)
    // Nothing more comes.
    const more = await feed.read({ limit: 10, maxWaitMs: 300 })
    expect(more.records).toEqual([])
    await feed.close()
  })

  test('with table: false the publication has no table and the INSERTs of the table are not read', async () => {
    const feed = newMessageFeed({ table: false })
    await feed.open()
    await write([message('t', 'a row')])
    const ids = await db.transaction().execute((trx) => messageOutbox.add(trx, [message('t', 'a message')]))
    const records = (await readRecords(feed, 1)).flatMap((b) => b.records)
    expect(records.map((r) => r.id)).toEqual(ids)
    const published = await query(
      `SELECT 1 FROM pg_publication_tables WHERE pubname = '${[...slots].at(-1)}'`,
    )
    expect(published).toEqual([])
    await feed.close()
  })

  test('restarted, the feed reads again after the confirmed position, with the same ids', async () => {
    const slot = uniqueSlot()
    const feed = newMessageFeed({ slot })
    await feed.open()
    const firstIds = await db
      .transaction()
      .execute((trx) => messageOutbox.add(trx, [message('s', 1), message('s', 2)]))
    const [firstBatch] = await readRecords(feed, 2)
    await feed.confirm(firstBatch!.position!)
    const secondIds = await db.transaction().execute((trx) => messageOutbox.add(trx, [message('s', 3)]))
    await readRecords(feed, 1)
    // Not confirmed: read again after a restart.
    await feed.close()
    const again = newMessageFeed({ slot })
    await again.open()
    const records = (await readRecords(again, 1)).flatMap((b) => b.records)
    expect(records.map((r) => r.id)).toEqual(secondIds)
    expect(firstIds).not.toContain(records[0]!.id)
    await again.close()
  })

  test('a dead record without a row is kept whole in <outboxTable>_dead; so is one deleted as it was added', async () => {
    const feed = newMessageFeed()
    await feed.open()
    const bytes = Uint8Array.from([0, 255, 1, 254])
    const [id] = await db
      .transaction()
      .execute((trx) => messageOutbox.add(trx, [message('d', bytes, { headers: { 'x-a': 'b' } })]))
    const deleting = new Outbox({ store: createKyselyOutboxStore({ db, schema, deleteAfterAdd: true }) })
    const [deletedId] = await db.transaction().execute((trx) => deleting.add(trx, [message('d', 2)]))
    const [rowId] = await write([message('d', 3)])
    const records = (await readRecords(feed, 3)).flatMap((b) => b.records)
    await feed.markDead(records.map((record) => ({ id: record.id, error: `dead ${record.id}`, record })))
    // An id outbox.add never writes (a foreign message's) cannot have a row: kept, never a failed UPDATE.
    await feed.markDead([
      { id: 'not-a-uuid', error: 'foreign', record: { ...records[0]!, id: 'not-a-uuid' } },
    ])
    const dead = await query<Record<string, unknown>>(
      `SELECT id, topic, key, type, payload, headers, created_at, last_error FROM "${schema}"."outbox_dead" WHERE slot_name = '${[...slots].at(-1)}' ORDER BY id`,
    )
    expect(dead.map((d) => d['id']).sort()).toEqual([id, deletedId, 'not-a-uuid'].sort())
    const kept = dead.find((d) => d['id'] === id)!
    expect(new Uint8Array(kept['payload'] as Uint8Array)).toEqual(bytes)
    expect(kept).toMatchObject({ topic: 'pgfeed.events', key: 'd', type: 'Tested', last_error: `dead ${id}` })
    expect(kept['headers']).toMatchObject({ 'x-a': 'b', traceparent: TRACEPARENT })
    expect(kept['created_at']).toEqual(records[0]!.createdAt)
    // The row that exists is marked in the table, not copied.
    const row = await query<{ status: number }>(
      `SELECT status FROM "${schema}"."outbox" WHERE id = '${rowId}'`,
    )
    expect(row).toEqual([{ status: 2 }])
    await feed.close()
  })

  test('a message with the prefix that is not an outbox record is kept in the dead table; the feed goes on', async () => {
    const feed = newMessageFeed({ table: false })
    await feed.open()
    await query(`SELECT pg_logical_emit_message(true, '${prefix}', '\\x02ff'::bytea)`)
    const ids = await db.transaction().execute((trx) => messageOutbox.add(trx, [message('m', 'after')]))
    const batches = await readRecords(feed, 1)
    expect(batches.flatMap((b) => b.records.map((r) => r.id))).toEqual(ids)
    const dead = await query<{ id: string; content: Uint8Array; last_error: string }>(
      `SELECT id, content, last_error FROM "${schema}"."outbox_dead" WHERE slot_name = '${[...slots].at(-1)}'`,
    )
    expect(dead).toHaveLength(1)
    expect(dead[0]!.id).toMatch(/^lsn:[0-9A-F]+\/[0-9A-F]+$/)
    expect(new Uint8Array(dead[0]!.content)).toEqual(Uint8Array.from([2, 255]))
    expect(dead[0]!.last_error).toContain('version is 2')
    await feed.close()
  })
})
