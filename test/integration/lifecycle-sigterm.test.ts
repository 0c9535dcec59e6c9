/**
 * A service run by `runUntilSignal` (a relay and a Kafka consumer runner in one OS process) gets
 * SIGTERM while events stream through it. It must exit 0 within its timeout (the worker exits 1
 * when the lifecycle reports a stop that was not clean) having lost nothing: no outbox row is left
 * claimed, and the consumer group's committed offsets cover exactly the records the inbox recorded
 * as processed. A second run then finishes the stream.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { createKyselyOutboxStore, ensureOutboxSchema } from '../../src/adapters/kysely/index.js'
import { Outbox } from '../../src/index.js'
import { sleep } from '../../src/testing/test-api.js'
import { assertReachable, postgresJsBackend, type TestDatabase } from '../support/databases.js'
import {
  consumeMessages,
  createTopic,
  headerValues,
  kafkaBrokers,
  testKafka,
  uniqueName,
  uniqueTopic,
} from '../support/kafka.js'
import { startWorker } from '../support/processes.js'

const EVENTS = 600
const PARTITIONS = 3
const brokers = kafkaBrokers()
let database: TestDatabase

beforeAll(async () => {
  await assertReachable(postgresJsBackend)
  database = await postgresJsBackend.open()
  await ensureOutboxSchema(database.db, { dialect: 'postgres', schema: database.schema })
})

afterAll(async () => {
  await database?.close()
})

async function count(sqlText: string): Promise<number> {
  return Number((await database.query<{ n: unknown }>(sqlText))[0]!.n)
}

async function committedOffsets(groupId: string, topic: string): Promise<Map<number, number>> {
  const admin = testKafka(brokers).admin()
  await admin.connect()
  try {
    const [offsets] = await admin.fetchOffsets({ groupId, topics: [topic] })
    return new Map(offsets!.partitions.map((p) => [p.partition, Math.max(0, Number(p.offset))]))
  } finally {
    await admin.disconnect()
  }
}

describe('runUntilSignal in a service process', () => {
  test('SIGTERM mid-stream: exit 0, no row left claimed, offsets committed for exactly what was processed', async () => {
    const { schema } = database
    const topic = uniqueTopic('lifecycle')
    const group = uniqueName('lifecycle-group')
    await createTopic(brokers, topic, { partitions: PARTITIONS })
    const store = createKyselyOutboxStore({ db: database.db, schema })
    const outbox = new Outbox({ store })
    await database.db.transaction().execute((trx) =>
      outbox.add(
        trx,
        Array.from({ length: EVENTS }, (_, i) => ({ topic, key: `k${i % 30}`, type: 'E', payload: { i } })),
      ),
    )
    const outboxTable = `"${schema}"."outbox"`
    const inboxTable = `"${schema}"."outbox_inbox"`
    const env = { SCHEMA: schema, BROKERS: brokers.join(','), TOPIC: topic, GROUP: group, HANDLER_MS: '10' }

    const first = await startWorker('lifecycle-worker', env)
    while ((await count(`SELECT count(*) AS n FROM ${inboxTable}`)) < 60) await sleep(20)
    await first.kill('SIGTERM')
    expect(first.process.exitCode).toBe(0)
    expect(first.output()).toContain('stopped clean=true')
    const processed = await count(`SELECT count(*) AS n FROM ${inboxTable}`)
    // Mid-stream: the shutdown came before the end of the stream.
    expect(processed).toBeLessThan(EVENTS)

    // No row left claimed: every pending row was released.
    expect(
      await count(`SELECT count(*) AS n FROM ${outboxTable} WHERE status = 0 AND claim_token IS NOT NULL`),
    ).toBe(0)
    // The committed offsets of the group cover exactly the processed records.
    const published = await count(`SELECT count(*) AS n FROM ${outboxTable} WHERE status = 1`)
    const records = await consumeMessages(brokers, { topic, count: published })
    const committed = await committedOffsets(group, topic)
    const inbox = new Set(
      (await database.query<{ id: string }>(`SELECT message_id AS id FROM ${inboxTable}`)).map((r) => r.id),
    )
    const belowCommitted = new Set(
      records
        .filter((r) => Number(r.offset) < (committed.get(r.partition) ?? 0))
        .map((r) => headerValues(r.headers, 'outboxkit-id')[0]!),
    )
    expect(belowCommitted.size).toBe(inbox.size)
    expect([...inbox].filter((id) => !belowCommitted.has(id))).toEqual([])

    // A second run finishes the stream: nothing was lost.
    const second = await startWorker('lifecycle-worker', env)
    while ((await count(`SELECT count(*) AS n FROM ${inboxTable}`)) < EVENTS) await sleep(50)
    await second.kill('SIGTERM')
    expect(second.process.exitCode).toBe(0)
    expect(await count(`SELECT count(*) AS n FROM ${outboxTable} WHERE status = 1`)).toBe(EVENTS)
    const final = await committedOffsets(group, topic)
    expect([...final.values()].reduce((a, b) => a + b, 0)).toBe(EVENTS)
  }, 180_000)
})
