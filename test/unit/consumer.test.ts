import { describe, expect, test } from 'bun:test'
import {
  MemoryDatabase,
  MemoryInboxStore,
  type MemoryTransaction,
  MemoryTransport,
} from '../../src/adapters/memory/index.js'
import {
  type ConsumerEvents,
  ErrorCode,
  IdempotentConsumer,
  inboundMessage,
  isOutboxKitError,
  OutboxKitError,
} from '../../src/index.js'

const encoder = new TextEncoder()

function message(id: string, type = 'OrderCreated') {
  return inboundMessage({
    id,
    topic: 'orders',
    key: 'order-1',
    payload: encoder.encode(JSON.stringify({ id })),
    headers: { 'content-type': 'application/json', 'outboxkit-type': type, 'outboxkit-id': id },
  })
}

function setup(
  handler: (tx: MemoryTransaction, id: string) => Promise<void>,
  options: { maxAttempts?: number } = {},
) {
  const db = new MemoryDatabase()
  const effects: string[] = []
  const dlq = new MemoryTransport()
  const consumer = new IdempotentConsumer<MemoryTransaction>({
    store: new MemoryInboxStore(db),
    name: 'inventory',
    handler: async (m, tx) => {
      await handler(tx, m.id)
      tx.onCommit.push(() => effects.push(m.id))
    },
    backoff: { initialMs: 1, maxMs: 2 },
    deadLetter: { topic: 'orders.dlq', transport: dlq },
    ...options,
  })
  return { db, effects, dlq, consumer }
}

describe('IdempotentConsumer', () => {
  test('a message is processed once; a redelivery is a duplicate and the handler does not run', async () => {
    const { consumer, effects } = setup(async () => {})
    expect(await consumer.process(message('m-1'))).toBe('processed')
    expect(await consumer.process(message('m-1'))).toBe('duplicate')
    expect(await consumer.process(message('m-2'))).toBe('processed')
    expect(effects).toEqual(['m-1', 'm-2'])
  })

  test('the same message delivered concurrently has one side effect', async () => {
    const { consumer, effects } = setup(async () => {
      await new Promise((r) => setTimeout(r, 5))
    })
    const outcomes = await Promise.all([1, 2, 3].map(() => consumer.process(message('m-1'))))
    expect(outcomes.sort()).toEqual(['duplicate', 'duplicate', 'processed'])
    expect(effects).toEqual(['m-1'])
  })

  test('a failing handler is retried, and its failed attempts leave no side effect', async () => {
    let calls = 0
    const { consumer, effects } = setup(async () => {
      if (++calls < 3) throw new Error('transient')
    })
    const failures: ConsumerEvents['failed'][] = []
    consumer.on('failed', (e) => failures.push(e))
    expect(await consumer.process(message('m-1'))).toBe('processed')
    expect(failures.map((f) => f.attempt)).toEqual([1, 2])
    expect(effects).toEqual(['m-1'])
  })

  test('a handler that always throws is dead-lettered after maxAttempts with the reason, and recorded', async () => {
    const { consumer, effects, dlq } = setup(
      async () => {
        throw new Error('poison')
      },
      { maxAttempts: 3 },
    )
    expect(await consumer.process(message('m-1', 'Poison'))).toBe('dead')
    expect(effects).toEqual([])
    expect(dlq.delivered).toHaveLength(1)
    expect(dlq.delivered[0]!.headers['outboxkit-dead-reason']).toContain('HANDLER_FAILED')
    expect(dlq.delivered[0]!.headers['outboxkit-dead-reason']).toContain('poison')
    expect(dlq.delivered[0]!.headers['outboxkit-original-topic']).toBe('orders')
    // A redelivery of the dead message does not run the handler again.
    expect(await consumer.process(message('m-1', 'Poison'))).toBe('duplicate')
  })

  test('an unreachable database is not a handler failure: process rejects so the message is redelivered', async () => {
    const { consumer, dlq } = setup(async () => {
      throw new OutboxKitError(ErrorCode.StoreFailed, 'connection refused', { retriable: true })
    })
    const error = await consumer.process(message('m-1')).catch((e) => e)
    expect(isOutboxKitError(error, ErrorCode.StoreFailed)).toBe(true)
    expect(dlq.delivered).toHaveLength(0)
  })

  test('JSON payloads are decoded for the handler; invalid JSON stays bytes', () => {
    expect(message('m-1').value).toEqual({ id: 'm-1' })
    const broken = inboundMessage({
      id: 'x',
      topic: 't',
      key: null,
      payload: encoder.encode('{not json'),
      headers: { 'content-type': 'application/json' },
    })
    expect(broken.value instanceof Uint8Array).toBe(true)
  })

  test('bad options are INVALID_OPTIONS', () => {
    const store = new MemoryInboxStore(new MemoryDatabase())
    for (const options of [
      { store, name: '', handler: async () => {} },
      { store, name: 'x' },
      { name: 'x', handler: async () => {} },
    ]) {
      let error: unknown
      try {
        new IdempotentConsumer(options as never)
      } catch (e) {
        error = e
      }
      expect(isOutboxKitError(error, ErrorCode.InvalidOptions)).toBe(true)
    }
  })
})
