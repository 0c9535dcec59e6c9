/**
 * Typed adds on a real Postgres: the schema runs inside the caller's Kysely transaction, so a
 * payload it refuses rolls back the business rows with it, and a valid one commits with them.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { z } from 'zod'
import { createKyselyOutboxStore, ensureOutboxSchema } from '../../src/adapters/kysely/index.js'
import { defineEvents, ErrorCode, isOutboxKitError, Outbox } from '../../src/index.js'
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
