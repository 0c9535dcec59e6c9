/**
 * `outboxkit feed create|drop` and the feeds in `outboxkit status`, the built bin against the real
 * Postgres (wal_level=logical) and MariaDB (row-based binlog). Assertions read the catalogs and
 * tables directly; a feed the command created is then read by the library's own change feed.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { createKyselyOutboxStore } from '../../src/adapters/kysely/index.js'
import { createMysqlChangeFeed } from '../../src/adapters/mysql-binlog/index.js'
import { createPostgresChangeFeed, dropPostgresFeed } from '../../src/adapters/postgres-log/index.js'
import { Outbox } from '../../src/core/outbox.js'
import { buildCli, runCli, startRelayCommand } from '../support/cli.js'
import {
  assertReachable,
  MYSQL_URL,
  mysqlBackend,
  POSTGRES_URL,
  postgresJsBackend,
  type TestDatabase,
  uniqueName,
} from '../support/databases.js'
import { consumeMessages, createTopic, kafkaBrokers, uniqueTopic } from '../support/kafka.js'

/** Starts `outboxkit relay --json` on the schema and collects its event lines. */
function startRelay(url: string, schema: string, args: readonly string[]) {
  return startRelayCommand(['--schema', schema, ...args], {
    DATABASE_URL: url,
    KAFKA_BROKERS: kafkaBrokers().join(','),
  })
}

/** Writes 30 events on 3 keys; the relay must deliver each key's in order. */
async function writeAndCheck(database: TestDatabase, topic: string, relay: ReturnType<typeof startRelay>) {
  const store = createKyselyOutboxStore({ db: database.db, schema: database.schema })
  const outbox = new Outbox({ store })
  await store.transaction(async (trx) => {
    for (let i = 0; i < 30; i++) await outbox.add(trx, { topic, key: `k${i % 3}`, type: 'E', payload: { i } })
  })
  const received = await consumeMessages(kafkaBrokers(), { topic, count: 30 })
  for (const key of ['k0', 'k1', 'k2']) {
    const values = received.filter((m) => String(m.key) === key).map((m) => JSON.parse(String(m.value)).i)
    expect(values).toEqual([...values].sort((a, b) => a - b))
    expect(values).toHaveLength(10)
  }
  await relay.until('confirmed')
  relay.child.kill('SIGTERM')
  expect(await relay.closed).toBe(0)
  expect(relay.events.find((e) => e.event === 'started')).toMatchObject({ mode: 'log' })
  // On its way out the relay may still confirm what it settled: `confirmed` between the two.
  const names = relay.events.map((e) => e.event)
  expect(names.at(-1)).toBe('stopped')
  expect(names.indexOf('stopping')).toBeGreaterThan(names.lastIndexOf('published'))
}

beforeAll(async () => {
  await assertReachable(postgresJsBackend)
  await assertReachable(mysqlBackend)
  await buildCli()
}, 120_000)

async function addEvent(database: TestDatabase, key: string): Promise<string> {
  const store = createKyselyOutboxStore({ db: database.db, schema: database.schema })
  const outbox = new Outbox({ store })
  return store.transaction((trx) => outbox.add(trx, { topic: 'orders', key, type: 'E', payload: { key } }))
}

describe('outboxkit feed: Postgres', () => {
  let database: TestDatabase
  const slots: string[] = []
  const cli = (args: readonly string[], env: Record<string, string | undefined> = {}) =>
    runCli([...args, '--schema', database.schema], { DATABASE_URL: POSTGRES_URL, ...env })
  const json = async (args: readonly string[]) => {
    const run = await cli([...args, '--json'])
    if (run.code !== 0) throw new Error(`outboxkit ${args.join(' ')} exited ${run.code}: ${run.stderr}`)
    return JSON.parse(run.stdout)
  }
  const newSlot = () => {
    const slot = uniqueName('okcli').toLowerCase()
    slots.push(slot)
    return slot
  }
  const slotRow = async (slot: string) =>
    (
      await database.query<{ active: boolean }>(
        `SELECT active FROM pg_replication_slots WHERE slot_name = '${slot}'`,
      )
    )[0]
  const publication = async (name: string) =>
    (await database.query(`SELECT 1 FROM pg_publication WHERE pubname = '${name}'`)).length > 0

  beforeAll(async () => {
    database = await postgresJsBackend.open()
    const migrated = await cli(['migrate'])
    expect(migrated.code).toBe(0)
  })
  afterAll(async () => {
    for (const slot of slots) {
      await dropPostgresFeed({
        connectionString: POSTGRES_URL,
        slot,
        publication: slot,
        schema: database.schema,
      }).catch(() => {})
    }
    await database.close()
  })

  test('create --dry-run prints the SQL and makes nothing; create makes publication, slot and marker, and is idempotent', async () => {
    const slot = newSlot()
    const dry = await cli(['feed', 'create', '--slot', slot, '--dry-run'])
    expect(dry.code).toBe(0)
    expect(dry.stdout).toContain('CREATE PUBLICATION')
    expect(dry.stdout).toContain('pg_create_logical_replication_slot')
    expect(await slotRow(slot)).toBeUndefined()
    expect(await publication(slot)).toBe(false)

    const created = await json(['feed', 'create', '--slot', slot])
    expect(created).toMatchObject({ dryRun: false, kind: 'postgres-logical', name: slot })
    const doctor = await cli(['doctor', '--json'], { KAFKA_BROKERS: undefined })
    expect(
      JSON.parse(doctor.stdout).checks.find((c: { name: string }) => c.name === `feed ${slot}`),
    ).toMatchObject({
      status: 'ok',
    })
    expect(await slotRow(slot)).toEqual({ active: false })
    expect(await publication(slot)).toBe(true)
    expect(await database.query(`SELECT slot_name FROM "${database.schema}".outbox_feeds`)).toEqual([
      { slot_name: slot },
    ])
    expect((await cli(['feed', 'create', '--slot', slot])).code).toBe(0)

    // The library's feed reads what was written after the command made the slot.
    const id = await addEvent(database, 'k1')
    const feed = createPostgresChangeFeed({
      connectionString: POSTGRES_URL,
      slot,
      publication: slot,
      schema: database.schema,
    })
    try {
      await feed.open()
      const batch = await feed.read({ limit: 10, maxWaitMs: 5_000 })
      expect(batch.records.map((r) => r.id)).toEqual([id])
    } finally {
      await feed.close()
    }
  }, 60_000)

  test('status lists the feed with its state and the WAL it holds back; a dropped slot shows as LOST and create refuses to make it again', async () => {
    const slot = newSlot()
    expect((await cli(['feed', 'create', '--slot', slot])).code).toBe(0)
    await addEvent(database, 'k2')
    const report = await json(['status'])
    const feed = report.feeds.find((f: { name: string }) => f.name === slot)
    expect(feed).toMatchObject({ kind: 'postgres-logical', name: slot, publication: slot, state: 'idle' })
    expect(feed.lagBytes).toBeGreaterThan(0)
    const human = await cli(['status'])
    expect(human.stdout).toContain('feeds (log-tailing relays)')
    expect(human.stdout).toContain(slot)

    await database.query(`SELECT pg_drop_replication_slot('${slot}')`)
    const after = await json(['status'])
    expect(after.feeds.find((f: { name: string }) => f.name === slot)).toMatchObject({
      state: 'lost',
      lagBytes: null,
    })
    expect((await cli(['status'])).stdout).toContain('LOST')
    // doctor fails the feed (the broker left out: no broker given).
    const doctor = await cli(['doctor', '--json'], { KAFKA_BROKERS: undefined })
    expect(doctor.code).toBe(1)
    const check = JSON.parse(doctor.stdout).checks.find((c: { name: string }) => c.name === `feed ${slot}`)
    expect(check).toMatchObject({ status: 'fail' })
    expect(check.fix).toContain('outboxkit feed drop')
    const again = await cli(['feed', 'create', '--slot', slot])
    expect(again.code).toBe(1)
    expect(again.stderr).toContain('skip every event written since')
    expect(await slotRow(slot)).toBeUndefined()
  }, 60_000)

  test('drop refuses a slot a relay is reading, then drops slot, marker and publication', async () => {
    const slot = newSlot()
    expect((await cli(['feed', 'create', '--slot', slot])).code).toBe(0)
    const feed = createPostgresChangeFeed({
      connectionString: POSTGRES_URL,
      slot,
      publication: slot,
      schema: database.schema,
    })
    await feed.open()
    try {
      expect((await json(['status'])).feeds.find((f: { name: string }) => f.name === slot).state).toBe(
        'streaming',
      )
      const busy = await cli(['feed', 'drop', '--slot', slot])
      expect(busy.code).toBe(1)
      expect(busy.stderr).toContain('in use by a running relay')
    } finally {
      await feed.close()
    }
    // The walsender may take a moment to leave after the connection closed.
    let dropped = await cli(['feed', 'drop', '--slot', slot])
    for (let i = 0; i < 20 && dropped.code !== 0; i++) {
      await Bun.sleep(100)
      dropped = await cli(['feed', 'drop', '--slot', slot])
    }
    expect(dropped.code).toBe(0)
    expect(await slotRow(slot)).toBeUndefined()
    expect(await publication(slot)).toBe(false)
    expect(
      await database.query(
        `SELECT slot_name FROM "${database.schema}".outbox_feeds WHERE slot_name = '${slot}'`,
      ),
    ).toEqual([])
  }, 60_000)

  test('--no-table: a publication of no table, for a feed of logical decoding messages, without an outbox table', async () => {
    const slot = newSlot()
    const empty = await postgresJsBackend.open()
    try {
      const run = await runCli(['feed', 'create', '--slot', slot, '--no-table', '--schema', empty.schema], {
        DATABASE_URL: POSTGRES_URL,
      })
      expect(run.code).toBe(0)
      expect(await slotRow(slot)).toEqual({ active: false })
      expect(
        await database.query(`SELECT puballtables, (SELECT count(*)::int FROM pg_publication_tables t WHERE t.pubname = p.pubname) AS tables
          FROM pg_publication p WHERE pubname = '${slot}'`),
      ).toEqual([{ puballtables: false, tables: 0 }])
    } finally {
      await dropPostgresFeed({
        connectionString: POSTGRES_URL,
        slot,
        publication: slot,
        schema: empty.schema,
      }).catch(() => {})
      await empty.close()
    }
  }, 60_000)

  test('relay --slot tails the slot instead of polling: every event in key order, SIGTERM stops it cleanly', async () => {
    const slot = newSlot()
    const topic = uniqueTopic('cli-log')
    await createTopic(kafkaBrokers(), topic, { partitions: 2 })
    expect((await cli(['feed', 'create', '--slot', slot])).code).toBe(0)
    const relay = startRelay(POSTGRES_URL, database.schema, ['--slot', slot])
    await relay.until('opened')
    await writeAndCheck(database, topic, relay)
    // The rows stay pending: the log relay never marks them.
    expect((await json(['status'])).outbox.pending).toBeGreaterThanOrEqual(30)
  }, 60_000)

  test('relay log mode: flags of the other mode or database are bad usage (exit 2)', async () => {
    for (const args of [
      ['--slot', 'x', '--ownership', 'shards'],
      ['--slot', 'x', '--server-id', '5'],
      ['--publication', 'x'],
      ['--server-id', '5'],
    ]) {
      const run = await cli(['relay', ...args], { KAFKA_BROKERS: kafkaBrokers().join(',') })
      expect({ args, code: run.code }).toEqual({ args, code: 2 })
    }
  }, 60_000)

  test('bad usage: no --slot, --feed on Postgres, a bad slot name (exit 2); no outbox table (exit 4)', async () => {
    expect((await cli(['feed', 'create'])).code).toBe(2)
    expect((await cli(['feed', 'create', '--feed', 'x'])).code).toBe(2)
    const bad = await cli(['feed', 'create', '--slot', 'Not-A-Slot'])
    expect(bad.code).toBe(2)
    expect(bad.stderr).toContain('lower-case letters')
    const empty = await postgresJsBackend.open()
    try {
      const run = await runCli(['feed', 'create', '--slot', newSlot(), '--schema', empty.schema], {
        DATABASE_URL: POSTGRES_URL,
      })
      expect(run.code).toBe(4)
      expect(run.stderr).toContain('outboxkit migrate')
    } finally {
      await empty.close()
    }
  }, 60_000)
})

describe('outboxkit feed: MariaDB', () => {
  let database: TestDatabase
  const cli = (args: readonly string[]) =>
    runCli([...args, '--schema', database.schema], { DATABASE_URL: MYSQL_URL })
  const json = async (args: readonly string[]) => {
    const run = await cli([...args, '--json'])
    if (run.code !== 0) throw new Error(`outboxkit ${args.join(' ')} exited ${run.code}: ${run.stderr}`)
    return JSON.parse(run.stdout)
  }
  beforeAll(async () => {
    database = await mysqlBackend.open()
    expect((await cli(['migrate'])).code).toBe(0)
  })
  afterAll(async () => {
    await database.close()
  })

  test('create makes the position table; status shows a feed once it confirmed, with the binlog bytes behind; drop forgets it', async () => {
    const positions = async () =>
      database.query<{ feed: string }>(
        `SELECT feed FROM information_schema.tables t JOIN \`${database.schema}\`.outbox_feed_position p
         WHERE t.table_schema = '${database.schema}' AND t.table_name = 'outbox_feed_position'`,
      )
    const dry = await cli(['feed', 'create', '--dry-run'])
    expect(dry.code).toBe(0)
    expect(dry.stdout).toContain('CREATE TABLE IF NOT EXISTS')
    expect((await json(['status'])).feeds).toBeNull()
    expect(await json(['feed', 'create'])).toMatchObject({ kind: 'mysql-binlog', name: 'default' })
    expect((await json(['status'])).feeds).toEqual([])

    const feed = createMysqlChangeFeed({
      connection: MYSQL_URL,
      schema: database.schema,
      feedName: 'orders',
      serverId: 7_000 + Math.floor(Math.random() * 1_000),
      firstOpen: 'log-end',
    })
    try {
      await feed.open()
    } finally {
      await feed.close()
    }
    await addEvent(database, 'k1')
    const [entry] = (await json(['status'])).feeds
    expect(entry).toMatchObject({ kind: 'mysql-binlog', name: 'orders', state: 'unknown' })
    expect(entry.confirmedPosition).toMatch(/^.+:\d+$/)
    expect(entry.lagBytes).toBeGreaterThan(0)
    expect(await positions()).toEqual([{ feed: 'orders' }])

    expect((await cli(['feed', 'drop', '--feed', 'orders'])).code).toBe(0)
    expect(await positions()).toEqual([])
    expect((await cli(['feed', 'create', '--slot', 'x'])).code).toBe(2)
    expect((await cli(['feed', 'create', '--no-table'])).code).toBe(2)
  }, 60_000)

  test('relay --server-id tails the binlog instead of polling: every event in key order, SIGTERM stops it cleanly', async () => {
    const topic = uniqueTopic('cli-binlog')
    await createTopic(kafkaBrokers(), topic, { partitions: 2 })
    const serverId = String(8_000 + Math.floor(Math.random() * 1_000))
    const relay = startRelay(MYSQL_URL, database.schema, [
      '--server-id',
      serverId,
      '--feed',
      'cli',
      '--first-open',
      'log-end',
    ])
    await relay.until('opened')
    await writeAndCheck(database, topic, relay)
    expect((await json(['status'])).feeds.map((f: { name: string }) => f.name)).toContain('cli')
  }, 60_000)
})
