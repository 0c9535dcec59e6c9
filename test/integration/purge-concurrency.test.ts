/**
 * A purge over a large table never holds up writers or claims: it locks only the settled rows it
 * deletes, never pending rows nor the end of the table (on MariaDB a single DELETE under
 * REPEATABLE READ locks every row it scans).
 *
 * To observe "while the purge runs" without relying on timing, another transaction holds one
 * settled row locked: the purge cannot finish until it is released, and the test waits until the
 * purge's DELETE is running before writing and claiming.
 */
import { beforeAll, describe, expect, test } from 'bun:test'
import { sql, type Transaction } from 'kysely'
import { createKyselyOutboxStore, ensureOutboxSchema } from '../../src/adapters/kysely/index.js'
import { Outbox } from '../../src/index.js'
import { sleep } from '../../src/testing/test-api.js'
import {
  type AnyDB,
  assertReachable,
  type Backend,
  mysqlBackend,
  postgresJsBackend,
} from '../support/databases.js'

const SETTLED = 100_000
const PENDING_KEYS = 20
const BACKENDS: readonly Backend[] = [postgresJsBackend, mysqlBackend]

beforeAll(async () => {
  for (const backend of BACKENDS) await assertReachable(backend)
})

for (const backend of BACKENDS) {
  describe(`purge under load: ${backend.name}`, () => {
    test(`writes and claims go on while a purge deletes ${SETTLED} settled rows`, async () => {
      const database = await backend.open()
      const { schema, dialect } = database
      const mysql = dialect === 'mysql'
      const q = (name: string) => (mysql ? `\`${name}\`` : `"${name}"`)
      const table = `${q(schema)}.${q('outbox')}`
      try {
        await ensureOutboxSchema(database.db, { dialect, schema })
        const settledRows = (from: number, to: number) =>
          mysql
            ? `INSERT INTO ${table} (id, topic, \`key\`, type, payload, headers, status, created_at)
               SELECT UUID(), 'old.events', CONCAT('old-', seq), 'Old', x'00', '{}', 1, NOW(6) - INTERVAL 1 DAY
               FROM seq_${from}_to_${to}`
            : `INSERT INTO ${table} (id, topic, "key", type, payload, headers, status, created_at)
               SELECT gen_random_uuid(), 'old.events', 'old-' || g, 'Old', '\\x00'::bytea, '{}', 1, now() - interval '1 day'
               FROM generate_series(${from}, ${to}) g`
        const store = createKyselyOutboxStore({ db: database.db, schema })
        const outbox = new Outbox({ store })
        const pendingIds = await database.db.transaction().execute((trx) =>
          outbox.add(
            trx,
            Array.from({ length: PENDING_KEYS }, (_, i) => ({
              topic: 'new.events',
              key: `pending-${i}`,
              type: 'Pending',
              payload: { i },
            })),
          ),
        )
        // Pending rows first: a DELETE scanning in seq order reaches them at once.
        await database.query(settledRows(1, SETTLED))

        // Hold the last settled row: the purge must delete it, so it cannot finish before release.
        const peer = await database.openPeer()
        let release!: () => void
        const released = new Promise<void>((resolve) => {
          release = resolve
        })
        let locked!: () => void
        const isLocked = new Promise<void>((resolve) => {
          locked = resolve
        })
        const holder = peer.transaction().execute(async (trx) => {
          await sql
            .raw(`SELECT seq FROM ${table} WHERE status = 1 ORDER BY seq DESC LIMIT 1 FOR UPDATE`)
            .execute(trx)
          locked()
          await released
        })
        await isLocked

        let purgeDone = false
        const purging = store.purge({ olderThanMs: 60_000, limit: 2 * SETTLED }).finally(() => {
          purgeDone = true
        })
        // MariaDB reports a DELETE waiting for a row lock as "Updating", so look for the statement.
        const purgeRunning = mysql
          ? `SELECT count(*) AS n FROM information_schema.processlist
             WHERE command = 'Query' AND info LIKE 'DELETE FROM \`${schema}\`%'`
          : `SELECT count(*) AS n FROM pg_stat_activity
             WHERE wait_event_type = 'Lock' AND query LIKE '%${schema}%' AND pid <> pg_backend_pid()`
        while (Number((await database.query<{ n: unknown }>(purgeRunning))[0]!.n) === 0) await sleep(20)
        expect(purgeDone).toBe(false)

        // The purge is running (and cannot finish). A writer that had to wait for its locks would fail
        // after 5 s instead of waiting for the purge.
        const lockTimeout = mysql ? 'SET SESSION innodb_lock_wait_timeout = 5' : "SET lock_timeout = '5s'"
        const written: string[] = []
        for (let i = 0; i < 5; i++) {
          const id = await database.db.connection().execute(async (connection) => {
            await sql.raw(lockTimeout).execute(connection)
            return connection.transaction().execute((trx: Transaction<AnyDB>) =>
              outbox.add(trx, {
                topic: 'new.events',
                key: `written-${i}`,
                type: 'Written',
                payload: { i },
              }),
            )
          })
          written.push(id)
        }
        const claim = await store.claim({ limit: 100, leaseMs: 30_000 })
        expect(purgeDone).toBe(false)
        expect(claim.records.map((r) => r.id).sort()).toEqual([...pendingIds, ...written].sort())

        release()
        await holder
        expect(await purging).toBe(SETTLED)
        const left = await database.query<{ n: unknown }>(`SELECT count(*) AS n FROM ${table}`)
        expect(Number(left[0]!.n)).toBe(PENDING_KEYS + written.length)
      } finally {
        await database.close()
      }
    }, 180_000)
  })
}
