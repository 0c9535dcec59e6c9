/**
 * The relay while the database kills its connections under it. A killer ends, at seeded random
 * moments, the relay's connections (Postgres `pg_terminate_backend`, MariaDB `KILL`): in the
 * middle of a claim, a mark, a shard sync, or idle in the pool. Meanwhile a writer keeps adding
 * events on a connection of its own. Checked once the killing stops: every row in the table
 * reaches the topic (nothing lost), any copy is identical to the first (same message id), each
 * key's records appear in write order, and the relay drains by itself.
 *
 * The seed is printed; OUTBOXKIT_FAULT_SEED=<seed> runs the same sequence of kill intervals again.
 */
import { describe, expect, test } from 'bun:test'
import { Kysely, MysqlDialect, PostgresDialect, sql } from 'kysely'
import { createPool } from 'mysql2'
import pg from 'pg'
import { createKyselyOutboxStore } from '../../src/adapters/kysely/index.js'
import { Relay, type RelayOwnership } from '../../src/index.js'
import {
  type AnyDB,
  type Backend,
  MYSQL_URL,
  mysqlBackend,
  POSTGRES_URL,
  pgBackend,
} from '../support/databases.js'
import {
  consumeAll,
  events,
  expectDuplicatesIdentical,
  messageId,
  openRelayWorld,
  orderByKey,
  waitFor,
  writeOrderByKey,
} from '../support/relay-world.js'

const KILLING_MS = 6_000
const BACKLOG = 1_500
const KEYS = 30

/** A small seeded generator (mulberry32), so a failing run's kill intervals can be replayed. */
function seeded(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** The relay's own connection pool, and a way to end every connection of it from outside. */
interface RelayConnections {
  readonly db: Kysely<AnyDB>
  /** Ends the relay's connections; returns how many were ended. */
  kill(admin: Kysely<AnyDB>): Promise<number>
  close(): Promise<void>
}

function relayConnections(backend: Backend, schema: string): RelayConnections {
  if (backend.dialect === 'postgres') {
    // Tagged by application_name, so the killer ends the relay's connections and no other.
    const applicationName = `relay_${schema}`.slice(0, 63)
    const pool = new pg.Pool({ connectionString: POSTGRES_URL, max: 6, application_name: applicationName })
    // pg reports a lost connection as an 'error' event on the pool and on a checked-out client
    // too (docs/relay.md, driver notes); the failed query carries it as well.
    pool.on('error', () => {})
    pool.on('connect', (client) => client.on('error', () => {}))
    const db = new Kysely<AnyDB>({ dialect: new PostgresDialect({ pool }) })
    return {
      db,
      async kill(admin) {
        // OFFSET 0 keeps the filter inside: the planner may otherwise call pg_terminate_backend
        // before it checks application_name, on every backend of the server.
        const ended = await sql<{ ended: unknown }>`
          SELECT pg_terminate_backend(pid) AS ended FROM (
            SELECT pid FROM pg_stat_activity
            WHERE application_name = ${applicationName} AND pid <> pg_backend_pid() OFFSET 0) AS relay`.execute(
          admin,
        )
        return ended.rows.filter((r) => r.ended === true).length
      },
      close: () => db.destroy(),
    }
  }
  // MariaDB: the relay's pool uses the test's database as its default, which nothing else does.
  const db = new Kysely<AnyDB>({
    dialect: new MysqlDialect({ pool: createPool({ uri: MYSQL_URL, connectionLimit: 6, database: schema }) }),
  })
  return {
    db,
    async kill(admin) {
      const ids = await sql<{ id: unknown }>`
        SELECT id FROM information_schema.processlist WHERE db = ${schema}`.execute(admin)
      let ended = 0
      for (const { id } of ids.rows) {
        // A connection may have ended by itself meanwhile.
        await sql
          .raw(`KILL CONNECTION ${Number(id)}`)
          .execute(admin)
          .then(
            () => ended++,
            () => {},
          )
      }
      return ended
    },
    close: () => db.destroy(),
  }
}

const seed = Number(process.env['OUTBOXKIT_FAULT_SEED'] ?? Math.floor(Math.random() * 2 ** 31))

for (const backend of [pgBackend, mysqlBackend]) {
  for (const ownership of ['rows', 'shards'] as const satisfies readonly RelayOwnership[]) {
    describe(`relay on ${backend.name}, ownership '${ownership}', its database connections killed`, () => {
      test('every committed row reaches the topic, copies are identical, each key keeps its order', async () => {
        const random = seeded(seed)
        console.log(`relay database faults (${backend.name}, ${ownership}): OUTBOXKIT_FAULT_SEED=${seed}`)
        const world = await openRelayWorld(backend, { partitions: 3 })
        const connections = relayConnections(backend, world.database.schema)
        const relay = new Relay({
          store: createKyselyOutboxStore({ db: connections.db, schema: world.database.schema }),
          transport: world.transport(),
          ownership,
          batchSize: 100,
          pollIntervalMs: 50,
          leaseMs: 2_000,
          backoff: { initialMs: 20, maxMs: 300 },
        })
        let relayErrors = 0
        relay.on('error', () => {
          relayErrors++
        })
        try {
          await world.write(events(world.topic, BACKLOG, KEYS, 'backlog'))
          await relay.start()

          // Kill while the relay drains the backlog and the writer adds more.
          let killing = true
          let kills = 0
          let ended = 0
          const killer = (async () => {
            while (killing) {
              await new Promise((r) => setTimeout(r, 20 + random() * 180))
              if (!killing) break
              kills++
              ended += await connections.kill(world.database.db)
            }
          })()
          let written = 0
          const writer = (async () => {
            while (killing) {
              await world.write(events(world.topic, 20, KEYS, `live${written}`))
              written += 20
              await new Promise((r) => setTimeout(r, 30))
            }
          })()
          await new Promise((r) => setTimeout(r, KILLING_MS))
          killing = false
          await Promise.all([killer, writer])

          const total = BACKLOG + written
          await waitFor(
            'the relay to drain after the kills',
            async () => (await world.counts()).published === total,
            90_000,
          )
          await relay.stop()

          const consumed = await consumeAll(world.brokers, world.topic)
          const duplicates = expectDuplicatesIdentical(consumed)
          expect(consumed.length).toBe(total + duplicates)
          const inTable = Object.values(await writeOrderByKey(world)).flat()
          expect(inTable.length).toBe(total)
          expect(new Set(consumed.map(messageId))).toEqual(new Set(inTable))
          expect(orderByKey(consumed)).toEqual(await writeOrderByKey(world))
          // The kills reached the relay: connections were ended and its loop saw errors.
          expect(ended).toBeGreaterThan(5)
          expect(relayErrors).toBeGreaterThan(0)
          console.log(
            `  ${kills} kill rounds ended ${ended} connections; ${relayErrors} relay errors; ${duplicates} duplicates of ${total} events`,
          )
        } finally {
          await relay.stop().catch(() => {})
          await connections.close().catch(() => {})
          await world.close()
        }
      }, 180_000)
    })
  }
}
