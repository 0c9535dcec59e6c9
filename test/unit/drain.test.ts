/** `drain` from outboxkit/testing: write → relay → handler in a unit test, with the memory adapters. */
import { describe, expect, test } from 'bun:test'
import {
  MemoryDatabase,
  MemoryInboxStore,
  MemoryOutboxStore,
  type MemoryTransaction,
  MemoryTransport,
} from '../../src/adapters/memory/index.js'
import { ErrorCode, IdempotentConsumer, isOutboxKitError, Outbox } from '../../src/index.js'
import { drain } from '../../src/testing/index.js'

function world() {
  const db = new MemoryDatabase()
  const store = new MemoryOutboxStore(db)
  const inbox = new MemoryInboxStore(db)
  const transport = new MemoryTransport()
  const outbox = new Outbox({ store })
  return { db, store, inbox, transport, outbox }
}

describe('drain', () => {
  test('a written event reaches the handler once, decoded, and the outbox is empty afterwards', async () => {
    const w = world()
    const seen: { type: string | undefined; value: unknown }[] = []
    const billing = new IdempotentConsumer<MemoryTransaction>({
      store: w.inbox,
      name: 'billing',
      handler: async (message) => {
        seen.push({ type: message.type, value: message.value })
      },
    })
    const id = await w.store.transaction((tx) =>
      w.outbox.add(tx, { topic: 'orders', key: 'o-1', type: 'OrderPlaced', payload: { total: 3 } }),
    )
    const result = await drain({ store: w.store, transport: w.transport, consumers: [billing] })
    expect(result.published.map((r) => r.id)).toEqual([id])
    expect(result.outcomes).toEqual([[{ id, outcome: 'processed' }]])
    expect([result.pending, result.dead]).toEqual([0, 0])
    expect(seen).toEqual([{ type: 'OrderPlaced', value: { total: 3 } }])
    expect(await w.inbox.isProcessed('billing', id)).toBe(true)
    // A second drain feeds nothing again.
    const again = await drain({ store: w.store, transport: w.transport, consumers: [billing] })
    expect(again.published).toEqual([])
    expect(seen).toHaveLength(1)
  })

  test('events a handler writes in its transaction are relayed and handled in the next round', async () => {
    const w = world()
    const shipped: string[] = []
    const billing = new IdempotentConsumer<MemoryTransaction>({
      store: w.inbox,
      name: 'billing',
      handler: async (message, tx) => {
        await w.outbox.add(tx, { topic: 'invoices', key: message.key!, type: 'Invoiced', payload: {} })
      },
    })
    const shipping = new IdempotentConsumer<MemoryTransaction>({
      store: w.inbox,
      name: 'shipping',
      handler: async (message) => {
        shipped.push(`${message.topic}:${message.type}`)
      },
    })
    await w.store.transaction((tx) =>
      w.outbox.add(tx, { topic: 'orders', key: 'o-1', type: 'OrderPlaced', payload: {} }),
    )
    const result = await drain({
      store: w.store,
      transport: w.transport,
      consumers: [
        { consumer: billing, topics: ['orders'] },
        { consumer: shipping, topics: ['invoices'] },
      ],
    })
    expect(result.published.map((r) => r.topic)).toEqual(['orders', 'invoices'])
    expect(shipped).toEqual(['invoices:Invoiced'])
    expect(result.outcomes.map((o) => o.map((x) => x.outcome))).toEqual([['processed'], ['processed']])
  })

  test('a record the transport keeps failing is left pending, and reported', async () => {
    const w = world()
    w.transport.failWith = (record) =>
      record.key === 'bad' ? { status: 'failed', error: 'broker says no', retriable: true } : undefined
    await w.store.transaction((tx) =>
      w.outbox.add(tx, [
        { topic: 'orders', key: 'bad', type: 'T', payload: {} },
        { topic: 'orders', key: 'good', type: 'T', payload: {} },
      ]),
    )
    const result = await drain({ store: w.store, transport: w.transport })
    expect(result.published.map((r) => r.key)).toEqual(['good'])
    expect(result.pending).toBe(1)
  })

  test('handlers that keep answering each other stop at maxRounds with INVALID_OPTIONS', async () => {
    const w = world()
    const echo = new IdempotentConsumer<MemoryTransaction>({
      store: w.inbox,
      name: 'echo',
      handler: async (message, tx) => {
        await w.outbox.add(tx, { topic: 'ping', key: message.key!, type: 'Ping', payload: {} })
      },
    })
    await w.store.transaction((tx) =>
      w.outbox.add(tx, { topic: 'ping', key: 'k', type: 'Ping', payload: {} }),
    )
    const error = await drain({
      store: w.store,
      transport: w.transport,
      consumers: [echo],
      maxRounds: 3,
    }).catch((e: unknown) => e)
    expect(isOutboxKitError(error, ErrorCode.InvalidOptions)).toBe(true)
    expect(String(error)).toContain('after 3 rounds')
  })
})
