/**
 * The writer's unit of work, shared by the Worker and the runtime checks: one order and its
 * `OrderCreated` event in one transaction. Imports nothing, so the Worker bundle stays small.
 */

/** Writes the order and adds its event; throws after the add when `failAfterAdd`. Returns the event id. */
export async function writeOrder(db, outbox, { schema, topic, orderId, amount, failAfterAdd = false }) {
  return db.transaction().execute(async (trx) => {
    await trx.withSchema(schema).insertInto('orders').values({ id: orderId, amount }).execute()
    const id = await outbox.add(trx, {
      topic,
      key: orderId,
      type: 'OrderCreated',
      payload: { orderId, amount },
    })
    if (failAfterAdd) throw new Error('payment declined')
    return id
  })
}
