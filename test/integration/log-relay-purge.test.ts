/**
 * Purging pending rows under a log-tailing relay (`includePending`): the rows are deleted before
 * the relay ever read them, and every event still reaches the topic from the database's log, in
 * key order, on Postgres logical replication and on the MariaDB binlog.
 */
import { describe, expect, test } from 'bun:test'
import { createKafkaTransport } from '../../src/adapters/kafka/index.js'
import { createMysqlChangeFeed } from '../../src/adapters/mysql-binlog/index.js'
import { createPostgresChangeFeed, dropPostgresFeed } from '../../src/adapters/postgres-log/index.js'
import { type ChangeFeed, LogRelay } from '../../src/index.js'
import { MYSQL_URL, mysqlBackend, POSTGRES_URL, postgresJsBackend } from '../support/databases.js'
import { testKafka } from '../support/kafka.js'
import {
  consumeAll,
  events,
  messageId,
  openRelayWorld,
  orderByKey,
  recordCount,
  waitFor,
} from '../support/relay-world.js'

for (const backend of [postgresJsBackend, mysqlBackend]) {
  describe(`purge includePending under a log-tailing relay: ${backend.name}`, () => {
    test('rows purged before the relay read them are still published from the log, in key order', async () => {
      const world = await openRelayWorld(backend, { partitions: 2 })
      const { database } = world
      const slot = `${database.schema.toLowerCase()}_purge`.slice(0, 63)
      const makeFeed = (): ChangeFeed =>
        database.dialect === 'postgres'
          ? createPostgresChangeFeed({
              connectionString: POSTGRES_URL,
              slot,
              publication: slot,
              schema: database.schema,
            })
          : createMysqlChangeFeed({
              connection: MYSQL_URL,
              schema: database.schema,
              serverId: 30_000 + Math.floor(Math.random() * 10_000),
              // Stored at the first open: until a first confirm, 'pending-rows' reads the table.
              firstOpen: 'log-end',
            })
      const transport = createKafkaTransport({ kafka: testKafka(world.brokers) })
      try {
        // The feed exists (slot, or stored position) before the writes.
        const setup = makeFeed()
        await setup.open()
        await setup.close()
        const ids = [
          ...(await world.write(events(world.topic, 30, 5, 'a'))),
          ...(await world.write(events(world.topic, 30, 5, 'b'))),
        ]
        const q = (name: string) => (database.dialect === 'mysql' ? `\`${name}\`` : `"${name}"`)
        const table = `${q(database.schema)}.${q('outbox')}`
        // Each key's ids in write order, read before the rows go.
        const written: Record<string, string[]> = {}
        const rows = await database.query<{ id: unknown; k: unknown }>(
          `SELECT id, ${q('key')} AS k FROM ${table} ORDER BY seq`,
        )
        for (const row of rows) written[String(row.k)] = [...(written[String(row.k)] ?? []), String(row.id)]
        await database.query(
          `UPDATE ${table} SET created_at = created_at - INTERVAL ${database.dialect === 'mysql' ? '2 HOUR' : "'2 hours'"}`,
        )
        expect(await world.store.purge({ olderThanMs: 3_600_000, includePending: true })).toBe(60)
        expect(await database.query(`SELECT id FROM ${table}`)).toEqual([])

        const relay = new LogRelay({ feed: makeFeed(), transport, batchSize: 25, logger: false })
        await relay.start()
        try {
          await waitFor(
            'every event published',
            async () => (await recordCount(world.brokers, world.topic)) >= 60,
            60_000,
          )
        } finally {
          await relay.stop()
        }
        const consumed = await consumeAll(world.brokers, world.topic)
        expect(new Set(consumed.map(messageId))).toEqual(new Set(ids))
        expect(orderByKey(consumed)).toEqual(written)
      } finally {
        await transport.close()
        if (database.dialect === 'postgres') {
          await dropPostgresFeed({
            connectionString: POSTGRES_URL,
            slot,
            publication: slot,
            schema: database.schema,
          }).catch(() => {})
        }
        await world.close()
      }
    }, 120_000)
  })
}
