/**
 * The `outboxkit` command end to end: the built bin (dist/cli.js) run as a user runs it, against
 * real Postgres and MariaDB (and Kafka for doctor). Assertions read the tables directly.
 */

import { beforeAll, describe, expect, test } from 'bun:test'
import { spawnSync } from 'node:child_process'
import { sql } from 'kysely'
import { createKyselyOutboxStore } from '../../src/adapters/kysely/index.js'
import { MYSQL_NO_PAD, schemaSql } from '../../src/adapters/kysely/schema.js'
import { Outbox } from '../../src/core/outbox.js'
import { buildCli, CLI, runCli, startCli, startRelayCommand } from '../support/cli.js'
import {
  assertReachable,
  type Backend,
  MYSQL_URL,
  mysqlBackend,
  POSTGRES_URL,
  pgBackend,
  postgresJsBackend,
  type TestDatabase,
} from '../support/databases.js'
import { consumeMessages, createTopic, kafkaBrokers, uniqueTopic } from '../support/kafka.js'

/** The command picks postgres.js when installed; OUTBOXKIT_PG_DRIVER=pg runs the same tests through pg. */
const BACKENDS: readonly { backend: Backend; url: string; env: Record<string, string> }[] = [
  { backend: postgresJsBackend, url: POSTGRES_URL, env: { OUTBOXKIT_PG_DRIVER: 'postgres' } },
  { backend: pgBackend, url: POSTGRES_URL, env: { OUTBOXKIT_PG_DRIVER: 'pg' } },
  { backend: mysqlBackend, url: MYSQL_URL, env: {} },
]

beforeAll(async () => {
  for (const { backend } of BACKENDS) await assertReachable(backend)
  await buildCli()
}, 120_000)

/** Opens a fresh schema and returns a runner of the command pointed at it. */
async function open(backend: Backend, url: string, driverEnv: Record<string, string>) {
  const database = await backend.open()
  const cli = (args: readonly string[], env: Record<string, string | undefined> = {}) =>
    runCli([...args, '--schema', database.schema], { DATABASE_URL: url, ...driverEnv, ...env })
  const json = async (args: readonly string[]) => {
    const run = await cli([...args, '--json'])
    if (run.code !== 0) throw new Error(`outboxkit ${args.join(' ')} exited ${run.code}: ${run.stderr}`)
    return JSON.parse(run.stdout)
  }
  return { database, cli, json }
}

async function tablesOf(database: TestDatabase): Promise<string[]> {
  const rows = await sql<{ name: string }>`SELECT table_name AS name FROM information_schema.tables
    WHERE table_schema = ${database.schema} ORDER BY table_name`.execute(database.db)
  return rows.rows.map((r) => String(r.name))
}

async function addEvents(database: TestDatabase, events: readonly { key: string; type?: string }[]) {
  const store = createKyselyOutboxStore({ db: database.db, schema: database.schema })
  const outbox = new Outbox({ store })
  await database.db.transaction().execute(async (trx) => {
    for (const [i, e] of events.entries()) {
      await outbox.add(trx, { topic: 'orders', key: e.key, type: e.type ?? `E${i}`, payload: { i } })
    }
  })
  return store
}

for (const { backend, url, env: driverEnv } of BACKENDS) {
  describe(`outboxkit migrate: ${backend.name}`, () => {
    test('--dry-run prints the SQL of every migration and creates nothing', async () => {
      const { database, cli } = await open(backend, url, driverEnv)
      try {
        const run = await cli(['migrate', '--dry-run'])
        expect(run.code).toBe(0)
        expect(run.stdout).toContain('-- outboxkit_0001_outbox')
        expect(run.stdout).toContain('CREATE TABLE IF NOT EXISTS')
        expect(run.stdout).toContain('-- outboxkit_0004_outbox_shards')
        expect(await tablesOf(database)).toEqual([])
      } finally {
        await database.close()
      }
    })

    test('creates the tables at the current version; a second run has nothing to do', async () => {
      const { database, json } = await open(backend, url, driverEnv)
      try {
        const first = await json(['migrate'])
        expect(first.migrations.map((m: { name: string }) => m.name)).toEqual([
          'outboxkit_0001_outbox',
          'outboxkit_0002_outbox_nopad',
          'outboxkit_0003_outbox_pending_keys',
          'outboxkit_0004_outbox_shards',
        ])
        expect(await tablesOf(database)).toEqual([
          'outbox',
          'outbox_inbox',
          'outbox_migration',
          'outbox_migration_lock',
          'outbox_relays',
          'outbox_shards',
        ])
        const second = await json(['migrate'])
        expect(second.migrations).toEqual([])
        expect(second.alreadyApplied).toHaveLength(4)
        const dry = await json(['migrate', '--dry-run'])
        expect(dry.migrations).toEqual([])
      } finally {
        await database.close()
      }
    })

    test('upgrades tables an earlier version created, keeping their rows; --dry-run shows the ALTER first', async () => {
      const { database, cli, json } = await open(backend, url, driverEnv)
      try {
        const old = schemaSql({ dialect: backend.dialect, schema: database.schema }, false).map((s) =>
          s.replaceAll(` ${MYSQL_NO_PAD}`, ''),
        )
        for (const statement of old) await sql.raw(statement).execute(database.db)
        await database.query(
          `INSERT INTO ${q(backend, database.schema)}.${q(backend, 'outbox')} (id, topic, ${q(backend, 'key')}, type, payload, headers)
           VALUES ('0193a000-0000-7000-8000-000000000001', 'orders', 'k1', 'E', 'x', '{}')`,
        )
        const dry = await cli(['migrate', '--dry-run'])
        expect(dry.code).toBe(0)
        expect(dry.stdout).toMatch(/ALTER TABLE .*outbox.* ADD (COLUMN )?(IF NOT EXISTS )?.shard/)
        expect(await tablesOf(database)).not.toContain('outbox_shards')
        await json(['migrate'])
        const rows = await database.query<{ shard: unknown }>(
          `SELECT shard FROM ${q(backend, database.schema)}.${q(backend, 'outbox')}`,
        )
        expect(rows).toHaveLength(1)
        expect(rows[0]!.shard).not.toBeNull()
        expect(await tablesOf(database)).toContain('outbox_shards')
      } finally {
        await database.close()
      }
    })
  })

  describe(`outboxkit table options: ${backend.name}`, () => {
    test('--outbox-table, --inbox-table and --layout debezium name the tables and columns the store uses', async () => {
      const { database, json } = await open(backend, url, driverEnv)
      try {
        const names = ['--outbox-table', 'events', '--inbox-table', 'events_seen', '--layout', 'debezium']
        await json(['migrate', ...names])
        expect(await tablesOf(database)).toEqual([
          'events',
          'events_migration',
          'events_migration_lock',
          'events_relays',
          'events_seen',
          'events_shards',
        ])
        const options = { schema: database.schema, outboxTable: 'events', layout: 'debezium' } as const
        const store = createKyselyOutboxStore({ db: database.db, ...options })
        await database.db.transaction().execute(async (trx) => {
          await new Outbox({ store }).add(trx, { topic: 'orders', key: 'o-1', type: 'E', payload: {} })
        })
        const e = `${q(backend, database.schema)}.${q(backend, 'events')}`
        await database.query(`UPDATE ${e} SET status = 2, last_error = 'x'`)
        const listed = await json(['dead', 'list', ...names])
        expect(listed.rows[0]).toMatchObject({ topic: 'orders', key: 'o-1' })
        const report = await json(['status', ...names])
        expect(report.outbox).toMatchObject({ table: 'events', dead: 1, pending: 0 })
        expect(report.inbox.table).toBe('events_seen')
        const requeued = await json(['dead', 'requeue', '--all', ...names])
        expect(requeued.requeued).toHaveLength(1)
        const claim = await store.claim({ limit: 10, leaseMs: 60_000 })
        expect(claim.records.map((r) => [r.topic, r.key])).toEqual([['orders', 'o-1']])
      } finally {
        await database.close()
      }
    })
  })

  describe(`outboxkit status: ${backend.name}`, () => {
    test('counts the backlog, the keys blocked behind a failed head, dead rows and the inbox', async () => {
      const { database, json } = await open(backend, url, driverEnv)
      try {
        await json(['migrate'])
        await addEvents(database, [{ key: 'k1' }, { key: 'k1' }, { key: 'k1' }, { key: 'k2' }, { key: 'k3' }])
        const o = `${q(backend, database.schema)}.${q(backend, 'outbox')}`
        const key = q(backend, 'key')
        // k1's head failed and waits an hour for its retry; k3's only row is dead.
        const later = backend.dialect === 'mysql' ? 'NOW(6) + INTERVAL 1 HOUR' : "now() + interval '1 hour'"
        await database.query(
          `UPDATE ${o} SET attempts = 3, last_error = 'broker said no', available_at = ${later}
           WHERE seq = (SELECT m FROM (SELECT min(seq) AS m FROM ${o} WHERE ${key} = 'k1') x)`,
        )
        await database.query(`UPDATE ${o} SET status = 2, last_error = 'too large' WHERE ${key} = 'k3'`)
        const inbox = `${q(backend, database.schema)}.${q(backend, 'outbox_inbox')}`
        await database.query(
          `INSERT INTO ${inbox} (consumer, message_id) VALUES ('billing', 'a'), ('billing', 'b'), ('shipping', 'a')`,
        )
        const report = await json(['status'])
        expect(report.outbox).toMatchObject({ pending: 4, ready: 3, claimed: 0, waitingRetry: 1, dead: 1 })
        expect(report.outbox.oldestPendingAgeMs).toBeGreaterThanOrEqual(0)
        expect(report.blockedKeys.count).toBe(1)
        expect(report.blockedKeys.keys[0]).toMatchObject({
          key: 'k1',
          attempts: 3,
          behind: 2,
          lastError: 'broker said no',
        })
        expect(report.shards).toMatchObject({ total: 64, unowned: 64, owners: [], relays: [] })
        expect(report.inbox).toEqual({
          table: 'outbox_inbox',
          rows: 3,
          consumers: [
            { consumer: 'billing', rows: 2, lastProcessedAt: expect.any(String) },
            { consumer: 'shipping', rows: 1, lastProcessedAt: expect.any(String) },
          ],
        })
      } finally {
        await database.close()
      }
    })

    test('shows the live claims of the rows relays and the shard owners', async () => {
      const { database, json } = await open(backend, url, driverEnv)
      try {
        await json(['migrate'])
        const store = await addEvents(database, [{ key: 'a' }, { key: 'a' }, { key: 'b' }])
        const claim = await store.claim({ limit: 10, leaseMs: 60_000 })
        await store.syncShards('relay-1', { leaseMs: 60_000 })
        const report = await json(['status'])
        expect(report.claims).toEqual([
          { token: claim.token, rows: 3, keys: 2, leaseUntil: expect.any(String) },
        ])
        expect(report.outbox).toMatchObject({ pending: 3, claimed: 3, ready: 0 })
        expect(report.shards.owners).toEqual([
          { relayId: 'relay-1', shards: 64, leaseUntil: expect.any(String) },
        ])
        expect(report.shards.relays.map((r: { relayId: string }) => r.relayId)).toEqual(['relay-1'])
      } finally {
        await database.close()
      }
    })

    test('a human report on stdout; --watch --json prints a report per refresh until SIGTERM, then exits 0', async () => {
      const { database, cli, json } = await open(backend, url, driverEnv)
      try {
        await json(['migrate'])
        const human = await cli(['status'])
        expect(human.code).toBe(0)
        expect(human.stdout).toContain('pending   0')
        const child = startCli(['status', '--watch', '100ms', '--json', '--schema', database.schema], {
          DATABASE_URL: url,
          ...driverEnv,
        })
        let out = ''
        await new Promise<void>((resolve) => {
          child.stdout.on('data', (d) => {
            out += d
            if (out.split('\n').filter(Boolean).length >= 2) resolve()
          })
        })
        child.kill('SIGTERM')
        const code = await new Promise((resolve) => child.on('close', resolve))
        expect(code).toBe(0)
        const reports = out
          .split('\n')
          .filter(Boolean)
          .map((l) => JSON.parse(l))
        expect(reports[0].outbox.pending).toBe(0)
      } finally {
        await database.close()
      }
    })

    test('missing tables: exit 4 and says to run migrate', async () => {
      const { database, cli } = await open(backend, url, driverEnv)
      try {
        const run = await cli(['status'])
        expect(run.code).toBe(4)
        expect(run.stderr).toContain('does not exist: run outboxkit migrate')
        const asJson = await cli(['status', '--json'])
        expect(asJson.code).toBe(4)
        expect(JSON.parse(asJson.stdout).error).toMatchObject({ reason: 'tables_missing', exitCode: 4 })
      } finally {
        await database.close()
      }
    })
  })

  describe(`outboxkit dead: ${backend.name}`, () => {
    /** k: e0..e3 in write order; `dead` of them made dead; l: one pending row. */
    async function withDeadRows(database: TestDatabase, dead: readonly string[]) {
      const store = await addEvents(database, [
        { key: 'k', type: 'e0' },
        { key: 'k', type: 'e1' },
        { key: 'k', type: 'e2' },
        { key: 'k', type: 'e3' },
        { key: 'l', type: 'l0' },
      ])
      const o = `${q(backend, database.schema)}.${q(backend, 'outbox')}`
      const list = dead.map((t) => `'${t}'`).join(', ')
      await database.query(
        `UPDATE ${o} SET status = 2, attempts = 5, last_error = 'MESSAGE_TOO_LARGE' WHERE type IN (${list})`,
      )
      const ids = await database.query<{ id: string; type: string }>(`SELECT id, type FROM ${o} ORDER BY seq`)
      return { store, id: (type: string) => String(ids.find((r) => r.type === type)!.id) }
    }

    test('list and show dead rows; show of a row that is not dead exits 1', async () => {
      const { database, cli, json } = await open(backend, url, driverEnv)
      try {
        await json(['migrate'])
        const { id } = await withDeadRows(database, ['e0', 'e2'])
        const listed = await json(['dead', 'list'])
        expect(listed.total).toBe(2)
        expect(listed.rows.map((r: { type: string }) => r.type)).toEqual(['e0', 'e2'])
        expect(listed.rows[0]).toMatchObject({
          key: 'k',
          topic: 'orders',
          attempts: 5,
          lastError: 'MESSAGE_TOO_LARGE',
        })
        expect((await json(['dead', 'list', '--key', 'l'])).total).toBe(0)
        expect((await json(['dead', 'list', '--limit', '1'])).rows).toHaveLength(1)
        const shown = await json(['dead', 'show', id('e2')])
        expect(shown).toMatchObject({ id: id('e2'), type: 'e2', payload: '{"i":2}', payloadEncoding: 'utf8' })
        expect(shown.headers['content-type']).toBe('application/json')
        const human = await cli(['dead', 'list'])
        expect(human.stdout).toContain(id('e0'))
        const pending = await cli(['dead', 'show', id('e1')])
        expect(pending.code).toBe(1)
        expect(pending.stderr).toContain(`No dead row has the id ${id('e1')}`)
        expect((await cli(['dead', 'show', 'not-an-id'])).code).toBe(1)
      } finally {
        await database.close()
      }
    })

    test('requeue puts the row at the end of its key: claimed after the rows pending then, never beside a claim holding the key', async () => {
      const { database, cli, json } = await open(backend, url, driverEnv)
      try {
        await json(['migrate'])
        const { store, id } = await withDeadRows(database, ['e0'])
        // A relay holds k's pending rows while the dead head is requeued.
        const first = await store.claim({ limit: 10, leaseMs: 60_000 })
        expect(first.records.map((r) => r.type)).toEqual(['e1', 'e2', 'e3', 'l0'])
        const run = await json(['dead', 'requeue', id('e0')])
        expect(run).toEqual({ requeued: [id('e0')], skipped: [] })
        expect((await store.claim({ limit: 10, leaseMs: 60_000 })).records).toEqual([])
        await store.markPublished(
          first.token,
          first.records.map((r) => r.id),
        )
        const next = await store.claim({ limit: 10, leaseMs: 60_000 })
        expect(next.records.map((r) => [r.type, r.id, r.attempts])).toEqual([['e0', id('e0'), 1]])
        // Not dead any more: a second requeue skips it and exits 1.
        const again = await cli(['dead', 'requeue', id('e0')])
        expect(again.code).toBe(1)
        expect(again.stdout).toContain('skipped 1')
      } finally {
        await database.close()
      }
    })

    test("requeue --all keeps the order of one key's dead rows, behind its pending ones", async () => {
      const { database, json } = await open(backend, url, driverEnv)
      try {
        await json(['migrate'])
        const { store, id } = await withDeadRows(database, ['e0', 'e2'])
        const run = await json(['dead', 'requeue', '--all', '--key', 'k'])
        expect(run).toEqual({ requeued: [id('e0'), id('e2')], skipped: [] })
        const claim = await store.claim({ limit: 10, leaseMs: 60_000 })
        expect(claim.records.filter((r) => r.key === 'k').map((r) => r.type)).toEqual([
          'e1',
          'e3',
          'e0',
          'e2',
        ])
        expect((await json(['dead', 'list'])).total).toBe(0)
      } finally {
        await database.close()
      }
    })

    test('drop deletes dead rows only; --all needs --yes; ids or --all, not neither', async () => {
      const { database, cli, json } = await open(backend, url, driverEnv)
      try {
        await json(['migrate'])
        const { id } = await withDeadRows(database, ['e0', 'e2', 'l0'])
        const mixed = await cli(['dead', 'drop', id('e0'), id('e1'), '--json'])
        expect(mixed.code).toBe(1)
        expect(JSON.parse(mixed.stdout)).toEqual({ dropped: [id('e0')], skipped: [id('e1')] })
        const o = `${q(backend, database.schema)}.${q(backend, 'outbox')}`
        expect(
          (await database.query<{ type: string }>(`SELECT type FROM ${o} ORDER BY seq`)).map((r) => r.type),
        ).toEqual(['e1', 'e2', 'e3', 'l0'])
        const unconfirmed = await cli(['dead', 'drop', '--all'])
        expect(unconfirmed.code).toBe(2)
        expect(unconfirmed.stderr).toContain('add --yes')
        expect((await cli(['dead', 'requeue'])).code).toBe(2)
        expect((await cli(['dead', 'drop', id('e2'), '--all', '--yes'])).code).toBe(2)
        expect(await json(['dead', 'drop', '--all', '--yes', '--topic', 'orders'])).toEqual({
          dropped: [id('e2'), id('l0')],
          skipped: [],
        })
        expect((await database.query(`SELECT id FROM ${o}`)).length).toBe(2)
      } finally {
        await database.close()
      }
    })
  })

  describe(`outboxkit purge: ${backend.name}`, () => {
    /** Old (10 days) and new rows of every status, and old and new inbox rows of two consumers. */
    async function withHistory(database: TestDatabase) {
      await addEvents(
        database,
        ['pub-old', 'pub-old', 'pub-old', 'pub-old', 'pub-old', 'pub-new', 'dead-old', 'pending-old'].map(
          (type, i) => ({
            key: `k${i}`,
            type,
          }),
        ),
      )
      const o = `${q(backend, database.schema)}.${q(backend, 'outbox')}`
      const i = `${q(backend, database.schema)}.${q(backend, 'outbox_inbox')}`
      const old = backend.dialect === 'mysql' ? 'NOW(6) - INTERVAL 10 DAY' : "now() - interval '10 days'"
      await database.query(`UPDATE ${o} SET status = 1 WHERE type LIKE 'pub-%'`)
      await database.query(`UPDATE ${o} SET status = 2 WHERE type = 'dead-old'`)
      await database.query(`UPDATE ${o} SET created_at = ${old} WHERE type LIKE '%-old'`)
      await database.query(
        `INSERT INTO ${i} (consumer, message_id, processed_at) VALUES
         ('billing', 'a', ${old}), ('billing', 'b', ${old}), ('billing', 'c', ${backend.dialect === 'mysql' ? 'NOW(6)' : 'now()'}),
         ('shipping', 'a', ${old})`,
      )
      return {
        types: async () =>
          (await database.query<{ type: string }>(`SELECT type FROM ${o} ORDER BY seq`)).map((r) => r.type),
        inbox: async () =>
          (
            await database.query<{ c: string; m: string }>(
              `SELECT consumer AS c, message_id AS m FROM ${i} ORDER BY consumer, message_id`,
            )
          ).map((r) => `${r.c}/${r.m}`),
      }
    }

    test('deletes published rows and inbox rows past the horizon, in batches; dead rows only with --include-dead; pending only with --include-pending', async () => {
      const { database, cli, json } = await open(backend, url, driverEnv)
      try {
        await json(['migrate'])
        const { types, inbox } = await withHistory(database)
        const first = await json(['purge', '--older-than', '7d', '--batch', '2'])
        expect(first).toEqual({
          outbox: { purged: 5, olderThanMs: 7 * 86_400_000, includeDead: false, includePending: false },
          inbox: { purged: 3, olderThanMs: 7 * 86_400_000, consumer: null },
        })
        expect(await types()).toEqual(['pub-new', 'dead-old', 'pending-old'])
        expect(await inbox()).toEqual(['billing/c'])
        const second = await cli(['purge', '--older-than', '7d', '--include-dead'])
        expect(second.code).toBe(0)
        expect(second.stdout).toContain('outbox: purged 1 published and dead rows older than 7d')
        // Not a terminal: no progress bar.
        expect(second.stderr).toBe('')
        expect(await types()).toEqual(['pub-new', 'pending-old'])
        // An outbox read by a log-tailing relay: its rows stay pending, so they go by the horizon too.
        const third = await cli(['purge', '--older-than', '7d', '--include-pending'])
        expect(third.stdout).toContain('outbox: purged 1 published and pending rows older than 7d')
        expect(await types()).toEqual(['pub-new'])
      } finally {
        await database.close()
      }
    })

    test('--consumer and --inbox-older-than narrow the inbox purge; --no-inbox leaves it alone', async () => {
      const { database, json } = await open(backend, url, driverEnv)
      try {
        await json(['migrate'])
        const { inbox } = await withHistory(database)
        const none = await json(['purge', '--older-than', '7d', '--no-inbox'])
        expect(none.inbox).toBeNull()
        expect(await inbox()).toHaveLength(4)
        const longer = await json(['purge', '--older-than', '7d', '--inbox-older-than', '30d'])
        expect(longer.inbox.purged).toBe(0)
        const shipping = await json(['purge', '--older-than', '7d', '--consumer', 'shipping'])
        expect(shipping.inbox).toEqual({ purged: 1, olderThanMs: 7 * 86_400_000, consumer: 'shipping' })
        expect(await inbox()).toEqual(['billing/a', 'billing/b', 'billing/c'])
      } finally {
        await database.close()
      }
    })

    test('on a terminal, a progress bar; a missing or bad horizon is bad usage (exit 2)', async () => {
      const { database, cli, json } = await open(backend, url, driverEnv)
      try {
        await json(['migrate'])
        await withHistory(database)
        const command = ['node', CLI, 'purge', '--older-than', '7d', '--schema', database.schema].join(' ')
        const tty = spawnSync('script', ['-qec', command, '/dev/null'], {
          encoding: 'utf8',
          env: { ...process.env, DATABASE_URL: url },
        })
        expect(tty.status).toBe(0)
        expect(tty.stdout).toMatch(/outbox \[[^\]]*\] 5\/5 rows/)
        expect(tty.stdout).toMatch(/inbox +\[[^\]]*\] 3\/3 rows/)
        const missing = await cli(['purge'])
        expect(missing.code).toBe(2)
        expect(missing.stderr).toContain("required option '--older-than <duration>' not specified")
        const bad = await cli(['purge', '--older-than', 'last week'])
        expect(bad.code).toBe(2)
        expect(bad.stderr).toContain('--older-than must be a duration')
        expect((await cli(['purge', '--older-than', '7d', '--batch', '0'])).code).toBe(2)
      } finally {
        await database.close()
      }
    })
  })

  describe(`outboxkit doctor: ${backend.name}`, () => {
    test('checks the tables and each outbox topic against the relay limits; exit 1 with the fix when a topic is too small', async () => {
      const { database, cli, json } = await open(backend, url, driverEnv)
      try {
        await json(['migrate'])
        const brokers = kafkaBrokers()
        const small = uniqueTopic('cli-small')
        const fine = uniqueTopic('cli-fine')
        const strict = uniqueTopic('cli-isr')
        await createTopic(brokers, small, { configEntries: { 'max.message.bytes': '500000' } })
        await createTopic(brokers, fine)
        await createTopic(brokers, strict, { configEntries: { 'min.insync.replicas': '2' } })
        const store = createKyselyOutboxStore({ db: database.db, schema: database.schema })
        const outbox = new Outbox({ store })
        await database.db.transaction().execute(async (trx) => {
          for (const topic of [small, fine, strict])
            await outbox.add(trx, { topic, key: 'k', type: 'E', payload: {} })
        })
        const run = await cli(['doctor', '--brokers', brokers.join(','), '--json'])
        expect(run.code).toBe(1)
        const report = JSON.parse(run.stdout)
        expect(report.ok).toBe(false)
        const byName = new Map(report.checks.map((c: { name: string }) => [c.name, c]))
        for (const name of ['database', 'tables', 'migrations', 'broker', `topic ${fine}`]) {
          expect({ name, status: (byName.get(name) as { status: string }).status }).toEqual({
            name,
            status: 'ok',
          })
        }
        expect(byName.get(`topic ${small}`)).toMatchObject({
          status: 'fail',
          message: expect.stringContaining('max.message.bytes is 500000'),
          fix: expect.stringContaining(`--entity-name ${small} --add-config max.message.bytes=`),
        })
        expect(byName.get(`topic ${strict}`)).toMatchObject({
          status: 'fail',
          message: expect.stringContaining('min.insync.replicas is 2'),
        })
        // A relay configured for smaller records fits the small topic; --topic narrows the check.
        const fits = await cli([
          'doctor',
          '--brokers',
          brokers.join(','),
          '--topic',
          small,
          '--max-record-bytes',
          '400000',
        ])
        expect(fits.code).toBe(0)
        expect(fits.stdout).toContain('No problem found.')
        const missingTopic = await json([
          'doctor',
          '--brokers',
          brokers.join(','),
          '--topic',
          uniqueTopic('cli-none'),
        ])
        expect(missingTopic.checks.at(-1)).toMatchObject({
          status: 'warn',
          fix: expect.stringContaining('kafka-topics.sh --create'),
        })
      } finally {
        await database.close()
      }
    })

    test('missing tables exit 4; an outdated layout exits 4; an unreachable broker exits 5; each says how to fix it', async () => {
      const { database, cli, json } = await open(backend, url, driverEnv)
      try {
        const empty = await cli(['doctor'], { KAFKA_BROKERS: undefined })
        expect(empty.code).toBe(4)
        expect(empty.stdout).toContain('FAIL  tables: missing')
        expect(empty.stdout).toContain('fix: run outboxkit migrate')
        expect(empty.stdout).toContain('skip  broker: no broker given')
        const old = schemaSql({ dialect: backend.dialect, schema: database.schema }, false).map((s) =>
          s.replaceAll(` ${MYSQL_NO_PAD}`, ''),
        )
        for (const statement of old) await sql.raw(statement).execute(database.db)
        const outdated = await json(['doctor']).catch((e: Error) => e)
        expect(String(outdated)).toContain('exited 4')
        await json(['migrate'])
        expect((await cli(['doctor'], { KAFKA_BROKERS: undefined })).code).toBe(0)
        const noBroker = await cli(['doctor', '--brokers', '127.0.0.1:1'])
        expect(noBroker.code).toBe(5)
        expect(noBroker.stdout).toContain('FAIL  broker: cannot reach the broker at 127.0.0.1:1')
      } finally {
        await database.close()
      }
    })
  })

  describe(`outboxkit relay: ${backend.name}`, () => {
    /** Starts `outboxkit relay --json` on the schema and collects its event lines. */
    function startRelay(schema: string, args: readonly string[]) {
      return startRelayCommand(['--schema', schema, '--poll-interval', '50ms', ...args], {
        DATABASE_URL: url,
        ...driverEnv,
        KAFKA_BROKERS: kafkaBrokers().join(','),
      })
    }

    test('publishes the outbox to Kafka in key order until SIGTERM, then stops cleanly and exits 0', async () => {
      const { database, json } = await open(backend, url, driverEnv)
      try {
        await json(['migrate'])
        const topic = uniqueTopic('cli-relay')
        await createTopic(kafkaBrokers(), topic, { partitions: 2 })
        const store = createKyselyOutboxStore({ db: database.db, schema: database.schema })
        const outbox = new Outbox({ store })
        await database.db.transaction().execute(async (trx) => {
          for (let i = 0; i < 20; i++)
            await outbox.add(trx, { topic, key: `k${i % 3}`, type: 'E', payload: { i } })
        })
        const relay = startRelay(database.schema, [])
        const received = await consumeMessages(kafkaBrokers(), { topic, count: 20 })
        for (const key of ['k0', 'k1', 'k2']) {
          const values = received
            .filter((m) => String(m.key) === key)
            .map((m) => JSON.parse(String(m.value)).i)
          expect(values).toEqual([...values].sort((a, b) => a - b))
        }
        await relay.until('published')
        relay.child.kill('SIGTERM')
        expect(await relay.closed).toBe(0)
        expect(relay.events.map((e) => e.event)).toContain('started')
        expect(relay.events.slice(-2).map((e) => e.event)).toEqual(['stopping', 'stopped'])
        const report = await json(['status'])
        expect(report.outbox).toMatchObject({ pending: 0, claimed: 0, dead: 0 })
      } finally {
        await database.close()
      }
    }, 120_000)

    test('ownership shards: owns every shard while it runs, gives them back on SIGTERM', async () => {
      const { database, json } = await open(backend, url, driverEnv)
      try {
        await json(['migrate'])
        const relay = startRelay(database.schema, ['--ownership', 'shards', '--relay-id', 'cli-relay-1'])
        await relay.until('started')
        let owners: { relayId: string; shards: number; leaseUntil?: string }[] = []
        for (let i = 0; i < 200 && owners[0]?.shards !== 64; i++) {
          owners = (await json(['status'])).shards.owners
          await new Promise((resolve) => setTimeout(resolve, 100))
        }
        expect(owners).toEqual([{ relayId: 'cli-relay-1', shards: 64, leaseUntil: expect.any(String) }])
        relay.child.kill('SIGINT')
        expect(await relay.closed).toBe(0)
        const after = await json(['status'])
        expect(after.shards.owners).toEqual([])
        expect(after.shards.relays).toEqual([])
      } finally {
        await database.close()
      }
    }, 120_000)

    test('SIGTERM mid-backlog: the batch in flight is finished, exit 0, nothing lost; /readyz answers; a second run with --retain drains and purges', async () => {
      const { database, json } = await open(backend, url, driverEnv)
      try {
        await json(['migrate'])
        const topic = uniqueTopic('cli-relay-term')
        await createTopic(kafkaBrokers(), topic, { partitions: 2 })
        const store = createKyselyOutboxStore({ db: database.db, schema: database.schema })
        const outbox = new Outbox({ store })
        const total = 4000
        await database.db.transaction().execute(async (trx) => {
          for (let i = 0; i < total; i++)
            await outbox.add(trx, { topic, key: `k${i % 7}`, type: 'E', payload: { i } })
        })
        const relay = startRelay(database.schema, ['--batch-size', '10', '--health-port', '0'])
        await relay.until('health')
        const port = relay.events.find((e) => e.event === 'health')!['port'] as number
        await relay.until('published')
        const ready = await fetch(`http://127.0.0.1:${port}/readyz`)
        expect(ready.status).toBe(200)
        const body = (await ready.json()) as {
          status: string
          components: Record<string, { running: boolean }>
        }
        expect(body.status).toBe('ready')
        expect(body.components['relay[0]']?.running).toBe(true)
        expect((await fetch(`http://127.0.0.1:${port}/livez`)).status).toBe(200)
        relay.child.kill('SIGTERM')
        expect(await relay.closed).toBe(0)
        // After the signal: the batch in flight (if any) is published, then the clean stop.
        const afterSignal = relay.events.slice(relay.events.findIndex((e) => e.event === 'stopping') + 1)
        expect(afterSignal.at(-1)).toMatchObject({ event: 'stopped', clean: true })
        expect(afterSignal.slice(0, -1).every((e) => e.event === 'published')).toBe(true)
        const { pending, claimed } = (await json(['status'])).outbox
        // Stopped mid-backlog; every row it marked published is in the topic, once; none left claimed.
        expect(pending).toBeGreaterThan(0)
        expect(claimed).toBe(0)
        const firstRun = await consumeMessages(kafkaBrokers(), { topic, count: total - pending })
        expect(new Set(firstRun.map((m) => JSON.parse(String(m.value)).i)).size).toBe(total - pending)

        const again = startRelay(database.schema, ['--retain', '1ms', '--retention-interval', '200ms'])
        const all = await consumeMessages(kafkaBrokers(), { topic, count: total })
        expect(new Set(all.map((m) => JSON.parse(String(m.value)).i)).size).toBe(total)
        await again.until('purged')
        let rows = -1
        for (let i = 0; i < 100 && rows !== 0; i++) {
          const counted = await sql<{
            n: unknown
          }>`SELECT count(*) AS n FROM ${sql.table(`${database.schema}.outbox`)}`.execute(database.db)
          rows = Number(counted.rows[0]!.n)
          if (rows !== 0) await new Promise((resolve) => setTimeout(resolve, 100))
        }
        expect(rows).toBe(0)
        again.child.kill('SIGINT')
        expect(await again.closed).toBe(0)
      } finally {
        await database.close()
      }
    }, 180_000)
  })
}

describe('outboxkit errors', () => {
  test('relay without a broker, or with a bad ownership, is bad usage (exit 2)', async () => {
    const noBroker = await runCli(['relay'], { DATABASE_URL: POSTGRES_URL, KAFKA_BROKERS: undefined })
    expect(noBroker.code).toBe(2)
    expect(noBroker.stderr).toContain('No broker: pass --brokers')
    const bad = await runCli(['relay', '--ownership', 'mine'], { DATABASE_URL: POSTGRES_URL })
    expect(bad.code).toBe(2)
    expect(bad.stderr).toContain('Allowed choices are rows, shards')
  })

  test('relay on a schema without the tables exits 4 and says to run migrate', async () => {
    const database = await postgresJsBackend.open()
    try {
      const run = await runCli(
        ['relay', '--schema', database.schema, '--brokers', kafkaBrokers().join(',')],
        {
          DATABASE_URL: POSTGRES_URL,
        },
      )
      expect(run.code).toBe(4)
      expect(run.stderr).toContain('run outboxkit migrate')
    } finally {
      await database.close()
    }
  })

  test('doctor with the database unreachable exits 3 and still checks the broker', async () => {
    const run = await runCli(['doctor', '--json', '--brokers', kafkaBrokers().join(',')], {
      DATABASE_URL: 'postgres://postgres@127.0.0.1:1/test',
    })
    expect(run.code).toBe(3)
    const report = JSON.parse(run.stdout)
    expect(report.checks.map((c: { name: string; status: string }) => `${c.name}:${c.status}`)).toEqual([
      'database:fail',
      'broker:ok',
      'topics:skip',
    ])
  })

  test('an unreachable database: exit 3, with the URL (password hidden) and what to check', async () => {
    const run = await runCli(['status', '--database-url', 'postgres://postgres:secret@127.0.0.1:1/test'])
    expect(run.code).toBe(3)
    expect(run.stderr).toContain('Cannot reach the database at postgres://postgres:***@127.0.0.1:1/test')
    expect(run.stderr).not.toContain('secret')
    const mysql = await runCli(['migrate', '--json'], { DATABASE_URL: 'mysql://root@127.0.0.1:1/test' })
    expect(mysql.code).toBe(3)
    expect(JSON.parse(mysql.stdout).error.reason).toBe('database_unreachable')
  })

  test('an unknown database or user on a live server is unreachable too (exit 3)', async () => {
    const run = await runCli(['status'], { DATABASE_URL: 'postgres://nobody_here@127.0.0.1:5432/no_such_db' })
    expect(run.code).toBe(3)
    expect(run.stderr).toContain('Cannot reach the database')
  })

  test('bad usage: exit 2 with a message (unknown command, unknown flag, bad values, no URL)', async () => {
    const cases: [string[], Record<string, string | undefined>, string][] = [
      [['frobnicate'], {}, "unknown command 'frobnicate'"],
      [['status', '--bogus'], {}, "unknown option '--bogus'"],
      [['status'], { DATABASE_URL: undefined }, 'No database: pass --database-url'],
      [['status', '--database-url', 'redis://x'], {}, 'scheme "redis:" is not supported'],
      [['status', '--outbox-table', 'x;drop table y'], { DATABASE_URL: POSTGRES_URL }, 'is not allowed'],
      [
        ['status', '--layout', 'mine'],
        { DATABASE_URL: POSTGRES_URL },
        'Allowed choices are outboxkit, debezium',
      ],
      [['status', '--watch', 'soon'], { DATABASE_URL: POSTGRES_URL }, '--watch must be a duration'],
      [['status', '--pg-driver', 'odbc'], { DATABASE_URL: POSTGRES_URL }, 'Allowed choices are postgres, pg'],
      [['status'], { DATABASE_URL: 'mysql://root@127.0.0.1:3306' }, 'The database URL names no database'],
      [['dead', 'list', '--limit', 'many'], { DATABASE_URL: POSTGRES_URL }, '--limit must be an integer'],
    ]
    for (const [args, env, message] of cases) {
      const run = await runCli(args, env)
      expect({ args, code: run.code }).toEqual({ args, code: 2 })
      expect(run.stderr).toContain(message)
    }
  })

  test('with --json, a usage error is also a JSON document on stdout', async () => {
    const run = await runCli(['status', '--bogus', '--json'], { DATABASE_URL: POSTGRES_URL })
    expect(run.code).toBe(2)
    expect(JSON.parse(run.stdout).error).toMatchObject({ reason: 'usage', exitCode: 2 })
    const noUrl = await runCli(['status', '--json'], { DATABASE_URL: undefined })
    expect(noUrl.code).toBe(2)
    expect(JSON.parse(noUrl.stdout).error).toMatchObject({ reason: 'no_database_url', exitCode: 2 })
  })

  test('--help lists the commands and exits 0', async () => {
    const run = await runCli(['--help'])
    expect(run.code).toBe(0)
    for (const command of ['migrate', 'status', 'dead', 'purge', 'doctor', 'relay'])
      expect(run.stdout).toContain(command)
  })
})

function q(backend: Backend, name: string): string {
  return backend.dialect === 'mysql' ? `\`${name}\`` : `"${name}"`
}
