/**
 * Typed events on a real Postgres: the schema runs inside the caller's Kysely transaction, so a
 * payload it refuses rolls back the business rows with it, and a valid one commits with them;
 * typed handlers write through the inbox's transaction.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { z } from 'zod'
import {
  createKyselyInboxStore,
  createKyselyOutboxStore,
  ensureOutboxSchema,
} from '../../src/adapters/kysely/index.js'
import {
  defineEvents,
  ErrorCode,
  IdempotentConsumer,
  type InboundMessage,
  inboundMessage,
  isOutboxKitError,
  Outbox,
  publishedHeaders,
} from '../../src/index.js'
import { assertReachable, pgBackend, type TestDatabase } from '../support/databases.js'

const orderEvents = defineEvents({
  OrderCreated: {
    topic: 'orders',
    schema: z.object({
      id: z.string(),
      total: z.number().positive(),
      // An async rule: the outbox awaits it in the middle of the open transaction.
      coupon: z
        .string()
        .optional()
        .refine(async (code) => {
          await new Promise((resolve) => setTimeout(resolve, 5))
          return code !== 'EXPIRED'
        }, 'the coupon has expired'),
    }),
  },
})

let database: TestDatabase
let outbox: Outbox<unknown>

beforeAll(async () => {
  await assertReachable(pgBackend)
  database = await pgBackend.open()
  await ensureOutboxSchema(database.db, { dialect: 'postgres', schema: database.schema })
  await database.query(
    `CREATE TABLE "${database.schema}".orders (id text PRIMARY KEY, total numeric NOT NULL)`,
  )
  await database.query(
    `CREATE TABLE "${database.schema}".invoices (order_id text PRIMARY KEY, total numeric NOT NULL)`,
  )
  outbox = new Outbox({ store: createKyselyOutboxStore({ db: database.db, schema: database.schema }) })
})

afterAll(async () => {
  await database?.close()
})

async function placeOrder(order: { id: string; total: number; coupon?: string }): Promise<void> {
  const orders = orderEvents.outbox(outbox)
  await database.db.transaction().execute(async (trx) => {
    await trx
      .withSchema(database.schema)
      .insertInto('orders')
      .values({ id: order.id, total: order.total })
      .execute()
    await orders.add(trx, 'OrderCreated', order, { key: order.id })
  })
}

async function rows() {
  const orders = await database.query<{ id: string }>(
    `SELECT id FROM "${database.schema}".orders ORDER BY id`,
  )
  const events = await database.query<{ type: string; payload: Uint8Array }>(
    `SELECT type, payload FROM "${database.schema}".outbox ORDER BY seq`,
  )
  return {
    orders: orders.map((r) => r.id),
    events: events.map((r) => [r.type, JSON.parse(new TextDecoder().decode(r.payload))]),
  }
}

describe('typed events on postgres (pg)', () => {
  test('a payload the schema refuses rolls back the transaction: neither the order nor the event is written', async () => {
    let error: unknown
    await placeOrder({ id: 'o-bad', total: 10, coupon: 'EXPIRED' }).catch((e) => {
      error = e
    })
    expect(isOutboxKitError(error, ErrorCode.InvalidMessage)).toBe(true)
    const issues = (error as { details: { issues: { message: string; path: unknown[] }[] } }).details.issues
    expect(issues.map((i) => [i.path, i.message])).toEqual([[['coupon'], 'the coupon has expired']])
    expect(await rows()).toEqual({ orders: [], events: [] })
  })

  test('a valid payload commits with the order, stored as the schema output', async () => {
    await placeOrder({ id: 'o-1', total: 12.5 })
    expect(await rows()).toEqual({ orders: ['o-1'], events: [['OrderCreated', { id: 'o-1', total: 12.5 }]] })
  })
})

/** The outbox rows as the relay publishes them, as a broker consumer receives them. */
async function published(): Promise<InboundMessage[]> {
  const records = await database.query<{
    id: string
    topic: string
    key: string
    type: string
    payload: Uint8Array
    headers: Record<string, string>
  }>(`SELECT id, topic, key, type, payload, headers FROM "${database.schema}".outbox ORDER BY seq`)
  return records.map((r) =>
    inboundMessage({ ...r, payload: new Uint8Array(r.payload), headers: publishedHeaders(r) }),
  )
}

describe('typed handlers on postgres (pg)', () => {
  test('a valid event is handled in the inbox transaction; a poison one is dead-lettered once and writes nothing', async () => {
    await placeOrder({ id: 'o-10', total: 7 })
    // A producer without the catalogue wrote an OrderCreated the schema refuses.
    await database.db.transaction().execute((trx) =>
      outbox.add(trx, {
        topic: 'orders',
        key: 'o-11',
        type: 'OrderCreated',
        payload: { id: 'o-11', total: -1 },
      }),
    )
    const consumer = new IdempotentConsumer({
      store: createKyselyInboxStore({ db: database.db, schema: database.schema }),
      name: 'invoicing',
      maxAttempts: 5,
      backoff: { initialMs: 1, maxMs: 2 },
      handler: orderEvents.handlers({
        OrderCreated: async (event, trx) => {
          await trx
            .withSchema(database.schema)
            .insertInto('invoices')
            .values({ order_id: event.value.id, total: event.value.total })
            .execute()
        },
      }),
    })
    const reasons: string[] = []
    consumer.on('deadLettered', (e) => reasons.push(e.reason))
    const messages = (await published()).filter((m) => m.key === 'o-10' || m.key === 'o-11')
    expect(messages.map((m) => m.key)).toEqual(['o-10', 'o-11'])
    const outcomes = []
    for (const message of messages) outcomes.push(await consumer.process(message))
    expect(outcomes).toEqual(['processed', 'dead'])
    expect(reasons).toHaveLength(1)
    expect(reasons[0]).toStartWith('INVALID_MESSAGE: ')
    expect(await database.query(`SELECT order_id FROM "${database.schema}".invoices`)).toEqual([
      { order_id: 'o-10' },
    ])
    const inbox = await database.query<{ message_id: string }>(
      `SELECT message_id FROM "${database.schema}".outbox_inbox WHERE consumer = 'invoicing' ORDER BY message_id`,
    )
    expect(inbox.map((r) => r.message_id).sort()).toEqual(messages.map((m) => m.id).sort())
    for (const message of messages) expect(await consumer.process(message)).toBe('duplicate')
  })
})
