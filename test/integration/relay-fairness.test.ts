/**
 * One key with a huge backlog must not hold back the others: their events are published while
 * the hot key's backlog is still draining, in both ownership modes, on Postgres and MariaDB.
 */
import { describe, expect, test } from 'bun:test'
import { Relay, type RelayOwnership } from '../../src/index.js'
import { mysqlBackend, postgresJsBackend } from '../support/databases.js'
import { events, openRelayWorld, waitFor } from '../support/relay-world.js'

const HOT = 20_000

for (const backend of [postgresJsBackend, mysqlBackend]) {
  for (const ownership of ['rows', 'shards'] as const satisfies readonly RelayOwnership[]) {
    describe(`relay fairness on ${backend.name}, ownership '${ownership}'`, () => {
      test('events of other keys written after a huge backlog on one key go out before that backlog has drained', async () => {
        const world = await openRelayWorld(backend, { partitions: 3 })
        const relay = new Relay({
          store: world.store,
          transport: world.transport(),
          ownership,
          batchSize: 100,
          pollIntervalMs: 20,
        })
        try {
          for (let i = 0; i < HOT; i += 5_000) {
            await world.write(
              Array.from({ length: 5_000 }, (_, n) => ({
                topic: world.topic,
                key: 'hot',
                type: 'E',
                payload: { n: i + n },
              })),
            )
          }
          const others = await world.write(events(world.topic, 50, 25, 'others'))
          await relay.start()
          const quote = (name: string) => (world.database.dialect === 'mysql' ? `\`${name}\`` : `"${name}"`)
          const table = `${quote(world.database.schema)}.${quote('outbox')}`
          const published = async (key: 'hot' | 'others') => {
            const rows = await world.database.query<{ n: unknown }>(
              `SELECT count(*) AS n FROM ${table} WHERE status = 1 AND ${quote('key')} ${key === 'hot' ? '=' : '<>'} 'hot'`,
            )
            return Number(rows[0]!.n)
          }
          await waitFor(
            'the other keys published',
            async () => (await published('others')) === others.length,
            120_000,
          )
          const hotDone = await published('hot')
          console.log(`  ${backend.name} ${ownership}: others out after ${hotDone} of ${HOT} hot rows`)
          expect(hotDone).toBeLessThan(HOT / 2)
        } finally {
          await relay.stop()
          await world.close()
        }
      }, 180_000)
    })
  }
}
