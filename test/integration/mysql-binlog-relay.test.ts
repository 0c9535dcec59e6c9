/**
 * LogRelay on the MariaDB binlog feed into the real broker: relay processes killed with SIGKILL
 * mid-stream while a standby waits, writes going on meanwhile. Real processes, real services.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { Kysely, MysqlDialect } from 'kysely'
import { createPool } from 'mysql2'
import { type Connection, createConnection } from 'mysql2/promise'
import { createKyselyOutboxStore, ensureOutboxSchema } from '../../src/adapters/kysely/index.js'
import { comparePositions, parsePosition } from '../../src/adapters/mysql-binlog/index.js'
import { Outbox } from '../../src/index.js'
import { type AnyDB, MYSQL_URL, uniqueName } from '../support/databases.js'
import { createTopic, kafkaBrokers, uniqueTopic } from '../support/kafka.js'
import { startWorker, type Worker } from '../support/processes.js'
import {
  consumeAll,
  events,
  expectDuplicatesIdentical,
  messageId,
  orderByKey,
  recordCount,
  waitFor,
} from '../support/relay-world.js'

const schema = uniqueName('binlog')
let admin: Connection
let db: Kysely<AnyDB>

beforeAll(async () => {
  admin = await createConnection({ uri: MYSQL_URL })
  await admin.query(`CREATE DATABASE \`${schema}\``)
  db = new Kysely<AnyDB>({
    dialect: new MysqlDialect({ pool: createPool({ uri: MYSQL_URL, database: schema, connectionLimit: 4 }) }),
  })
  await ensureOutboxSchema(db, { dialect: 'mysql', schema })
})

afterAll(async () => {
  await db?.destroy()
  await admin?.query(`DROP DATABASE IF EXISTS \`${schema}\``)
  await admin?.end()
})

async function storedPosition(): Promise<string | undefined> {
  const [rows] = await admin.query(
    `SELECT CONCAT(binlog_file, ':', binlog_position) AS position FROM \`${schema}\`.\`outbox_feed_position\` WHERE feed = 'default'`,
  )
  return (rows as { position: string }[])[0]?.position
}

describe('LogRelay on the MariaDB binlog', () => {
  test('relay processes killed with SIGKILL mid-stream, a standby taking over each time, lose nothing and keep per-key order', async () => {
    const brokers = kafkaBrokers()
    const topic = uniqueTopic('binlog')
    await createTopic(brokers, topic, { partitions: 3 })
    const store = createKyselyOutboxStore({ db, schema })
    const outbox = new Outbox({ store })
    const write = (tag: string) => store.transaction((trx) => outbox.add(trx, events(topic, 500, 25, tag)))
    const env = {
      SCHEMA: schema,
      BROKERS: brokers.join(','),
      SERVER_ID: '424242',
      BATCH_SIZE: '200',
      ACK_PAUSE_MS: '300',
    }
    const acks = (worker: Worker) =>
      worker
        .output()
        .split('\n')
        .filter((line) => line.startsWith('acked')).length
    const workers: Worker[] = []
    const start = async () => {
      const worker = await startWorker('binlog-relay-worker', env)
      workers.push(worker)
      return worker
    }
    try {
      // The first open stores the binlog's end: records are read from there on.
      let active = await start()
      await waitFor('the first relay reads the feed', () => active.output().includes('opened'), 30_000)
      const ids: string[] = []
      for (let t = 0; t < 4; t++) ids.push(...(await write(`a${t}`)))

      for (let round = 1; round <= 3; round++) {
        const standby = await start()
        await waitFor(`round ${round}: a standby`, () => standby.output().includes('standby'), 30_000)
        await waitFor(
          `round ${round}: progress`,
          async () => (await recordCount(brokers, topic)) >= round * 700,
          60_000,
        )
        // Killed right after the broker acknowledged a batch, before the relay confirms it.
        const acked = acks(active)
        await waitFor(`round ${round}: an acknowledged batch`, () => acks(active) > acked, 30_000)
        await active.kill('SIGKILL')
        // Written while no relay reads the feed: the standby finds them in the binlog.
        ids.push(...(await write(`b${round}`)))
        await waitFor(
          `round ${round}: the standby takes over`,
          () => standby.output().includes('opened'),
          30_000,
        )
        active = standby
      }

      // Everything is settled once the stored position passed the binlog's end after the last write.
      const [status] = await admin.query('SHOW MASTER STATUS')
      const row = (status as { File: string; Position: number }[])[0]!
      const end = { file: row.File, offset: Number(row.Position) }
      await waitFor(
        'the last write confirmed',
        async () => {
          const stored = await storedPosition()
          return stored !== undefined && comparePositions(parsePosition(stored, 'test'), end) >= 0
        },
        90_000,
      )
      await active.kill('SIGTERM')

      const consumed = await consumeAll(brokers, topic)
      expect(new Set(consumed.map(messageId))).toEqual(new Set(ids))
      const duplicates = expectDuplicatesIdentical(consumed)
      expect(consumed.length).toBe(ids.length + duplicates)
      // One writer, one transaction per write: commit order is seq order.
      const [rows] = await admin.query(`SELECT id, \`key\` AS k FROM \`${schema}\`.\`outbox\` ORDER BY seq`)
      const written: Record<string, string[]> = {}
      for (const r of rows as { id: string; k: string }[]) written[r.k] = [...(written[r.k] ?? []), r.id]
      expect(orderByKey(consumed)).toEqual(written)
      // Each kill fell between an ack and its confirm: that batch went out twice, with its ids.
      expect(duplicates).toBeGreaterThan(0)
      console.log(`mariadb binlog: ${duplicates} duplicates after 3 kills of ${ids.length} records`)
    } finally {
      for (const worker of workers) await worker.kill('SIGKILL')
    }
  }, 300_000)
})
