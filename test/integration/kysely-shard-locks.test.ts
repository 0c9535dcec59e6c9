/**
 * A relay that stops inside a transaction holding shard locks (SIGSTOP, a frozen host) must not
 * keep the other relays from the shards: the database ends its idle session and frees the locks.
 */
import { beforeAll, describe, expect, test } from 'bun:test'
import { type KyselyPlugin, sql } from 'kysely'
import { createKyselyOutboxStore, ensureOutboxSchema } from '../../src/adapters/kysely/index.js'
import { resolveTables } from '../../src/adapters/kysely/schema.js'
import { Outbox } from '../../src/index.js'
import { assertReachable, mysqlBackend, postgresJsBackend } from '../support/databases.js'

const BACKENDS = [postgresJsBackend, mysqlBackend]

beforeAll(async () => {
  for (const backend of BACKENDS) await assertReachable(backend)
})

for (const backend of BACKENDS) {
  describe(`shard locks on ${backend.name}`, () => {
    test('a sync frozen after locking the shard table is ended by the database; another relay then takes the shards', async () => {
      const database = await backend.open()
      try {
        const { schema, dialect } = database
        await ensureOutboxSchema(database.db, { dialect, schema })
        // Relay A's process freezes right after its sync locked every shard row.
        let frozen = false
        const freeze: KyselyPlugin = {
          transformQuery: (args) => args.node,
          async transformResult(args) {
            if (args.result.rows.length === 64 && !frozen) {
              frozen = true
              await new Promise(() => {})
            }
            return args.result
          },
        }
        const a = createKyselyOutboxStore({ db: (await database.openPeer()).withPlugin(freeze), schema })
        void a.syncShards('relay-a', { leaseMs: 30_000 }).catch(() => {})
        while (!frozen) await new Promise((r) => setTimeout(r, 10))

        const b = createKyselyOutboxStore({ db: await database.openPeer(), schema })
        // Without the idle timeout this waits for A's locks for good (Postgres) or fails with a
        // lock wait timeout (MariaDB, after 50 s).
        const state = await b.syncShards('relay-b', { leaseMs: 30_000 })
        expect(state.owned.length).toBe(64)
      } finally {
        await database.close()
      }
    }, 40_000)

    test('a mark that waits behind a take of its shard is fenced by the epoch the take commits', async () => {
      const database = await backend.open()
      try {
        const { schema, dialect } = database
        await ensureOutboxSchema(database.db, { dialect, schema })
        const a = createKyselyOutboxStore({ db: await database.openPeer(), schema })
        const outbox = new Outbox({ store: a })
        await a.transaction((tx) =>
          outbox.add(
            tx,
            Array.from({ length: 40 }, (_, i) => ({ topic: 't', key: `k${i}`, type: 'e', payload: { i } })),
          ),
        )
        await a.syncShards('relay-a', { leaseMs: 30_000 })
        const claim = await a.claimOwned('relay-a', { limit: 100 })
        expect(claim.records.length).toBe(40)
        const taken = claim.records[0]!.shard!
        const ofTaken = claim.records.filter((r) => r.shard === taken).map((r) => r.id)

        // Relay B is in the middle of taking one of A's shards: it holds the shard row and has
        // bumped its epoch, not committed yet. A's mark starts meanwhile and must wait for it.
        const { shards } = resolveTables({ dialect, schema })
        const peer = await database.openPeer()
        let commitTake!: () => void
        const takeMayCommit = new Promise<void>((resolve) => {
          commitTake = resolve
        })
        let takeLocked!: () => void
        const locked = new Promise<void>((resolve) => {
          takeLocked = resolve
        })
        const take = peer.transaction().execute(async (trx) => {
          await sql`SELECT shard FROM ${sql.raw(shards)} WHERE shard = ${taken} FOR UPDATE`.execute(trx)
          await sql`UPDATE ${sql.raw(shards)} SET owner = 'relay-b', epoch = epoch + 1 WHERE shard = ${taken}`.execute(
            trx,
          )
          takeLocked()
          await takeMayCommit
        })
        await locked
        const mark = a.markPublished(
          claim.token,
          claim.records.map((r) => r.id),
        )
        // Give the mark time to reach the database and queue behind the take, then commit it.
        await new Promise((r) => setTimeout(r, 500))
        commitTake()
        await take
        const result = await mark
        expect([...result.lost].sort()).toEqual([...ofTaken].sort())
        expect(result.settled).toBe(40 - ofTaken.length)
        const { outbox: table, columns: c } = resolveTables({ dialect, schema })
        const pending = await database.query<{ n: unknown }>(
          `SELECT count(*) AS n FROM ${table} WHERE ${c.status} = 0`,
        )
        expect(Number(pending[0]!.n)).toBe(ofTaken.length)
      } finally {
        await database.close()
      }
    }, 40_000)
  })
}

test('mariadb: a relay frozen at the very end of a sync, when its session settings are put back, holds no lock', async () => {
  const database = await mysqlBackend.open()
  try {
    const { schema, dialect } = database
    await ensureOutboxSchema(database.db, { dialect, schema })
    // Freezes on the answer to the statement that puts the session's idle timeout back.
    const restoring = new Set<unknown>()
    let frozen = false
    const freeze: KyselyPlugin = {
      transformQuery(args) {
        const text = JSON.stringify(args.node)
        if (text.includes('idle_transaction_timeout = @outboxkit_idle')) restoring.add(args.queryId)
        return args.node
      },
      async transformResult(args) {
        if (restoring.has(args.queryId) && !frozen) {
          frozen = true
          await new Promise(() => {})
        }
        return args.result
      },
    }
    const a = createKyselyOutboxStore({ db: (await database.openPeer()).withPlugin(freeze), schema })
    void a.syncShards('relay-a', { leaseMs: 30_000 }).catch(() => {})
    while (!frozen) await new Promise((r) => setTimeout(r, 10))
    const b = createKyselyOutboxStore({ db: await database.openPeer(), schema })
    // A's sync committed before it froze: B sees A live and takes its share of what is free.
    const state = await b.syncShards('relay-b', { leaseMs: 30_000 })
    expect(state.liveRelays).toBe(2)
    expect(state.owned.length).toBe(0)
  } finally {
    await database.close()
  }
}, 40_000)
