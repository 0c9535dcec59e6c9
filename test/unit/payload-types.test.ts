/**
 * What `outbox.add` accepts as a payload, at compile time (tsc checks the `@ts-expect-error`
 * lines: each must be an error) and at run time.
 */
import { describe, expect, test } from 'bun:test'
import { MemoryDatabase, MemoryOutboxStore, type MemoryTransaction } from '../../src/adapters/memory/index.js'
import { ErrorCode, isOutboxKitError, Outbox, type OutboxMessageInput } from '../../src/index.js'

interface Address {
  street: string
  city: string
}

interface Order {
  id: string
  total: number
  paid: boolean
  note?: string
  lines: { sku: string; quantity: number }[]
  address: Address
  tags: readonly string[]
  coupon: string | null
}

interface WithDate {
  id: string
  at: Date
}

interface WithFunction {
  id: string
  compute: () => number
}

interface WithBigint {
  id: string
  amount: bigint
}

interface WithMap {
  id: string
  lines: Map<string, number>
}

const order: Order = {
  id: 'o-1',
  total: 42,
  paid: false,
  lines: [{ sku: 'A', quantity: 2 }],
  address: { street: 'Main St 1', city: 'Ghent' },
  tags: ['new'],
  coupon: null,
}

function setup() {
  const store = new MemoryOutboxStore(new MemoryDatabase())
  return { store, outbox: new Outbox({ store }) }
}

/** Compile-time checks only: never called. */
function compileChecks(outbox: Outbox<MemoryTransaction>, tx: MemoryTransaction): void {
  const base = { topic: 'orders', key: 'o-1', type: 'OrderCreated' }
  void outbox.add(tx, { ...base, payload: order })
  void outbox.add(tx, [
    { ...base, payload: order },
    { ...base, payload: { id: 'o-2' } },
  ])
  void outbox.add(tx, { ...base, payload: new Uint8Array([1, 2]) })
  void outbox.add(tx, { ...base, payload: [order, order] })
  void outbox.add(tx, { ...base, payload: null })
  const typed: OutboxMessageInput<Order> = { ...base, payload: order }
  void outbox.add(tx, typed)
  const loose: OutboxMessageInput = { ...base, payload: { a: [1, 'b', null] } }
  void outbox.add(tx, [loose, typed])

  const withDate: WithDate = { id: 'x', at: new Date() }
  // @ts-expect-error a Date is not JSON: convert it to an ISO string
  void outbox.add(tx, { ...base, payload: withDate })
  // @ts-expect-error a function is not JSON
  void outbox.add(tx, { ...base, payload: { id: 'x', compute: () => 1 } as WithFunction })
  // @ts-expect-error a bigint is not JSON
  void outbox.add(tx, { ...base, payload: { id: 'x', amount: 1n } as WithBigint })
  // @ts-expect-error a Map is not JSON
  void outbox.add(tx, { ...base, payload: { id: 'x', lines: new Map() } as WithMap })
  // @ts-expect-error undefined is not JSON: pass null
  void outbox.add(tx, { ...base, payload: undefined })
  // @ts-expect-error a Date nested in an array is refused too
  void outbox.add(tx, [
    { ...base, payload: order },
    { ...base, payload: [new Date()] },
  ])
}
void compileChecks

describe('payload types', () => {
  test('a payload declared as an interface is stored as its JSON', async () => {
    const { store, outbox } = setup()
    await store.transaction((tx) =>
      outbox.add(tx, { topic: 'orders', key: order.id, type: 'OrderCreated', payload: order }),
    )
    expect(JSON.parse(new TextDecoder().decode(store.rows[0]!.record.payload))).toEqual(order)
  })

  test('a value that is not JSON is still refused at run time, whatever its static type', async () => {
    const { store, outbox } = setup()
    const sneaky = { id: 'x', at: new Date() } as unknown as Order
    let error: unknown
    await store
      .transaction((tx) =>
        outbox.add(tx, { topic: 'orders', key: 'x', type: 'OrderCreated', payload: sneaky }),
      )
      .catch((e) => {
        error = e
      })
    expect(isOutboxKitError(error, ErrorCode.InvalidMessage)).toBe(true)
    expect(store.rows).toHaveLength(0)
  })
})
