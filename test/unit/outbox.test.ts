import { describe, expect, test } from 'bun:test'
import { MemoryDatabase, MemoryOutboxStore } from '../../src/adapters/memory/index.js'
import { ErrorCode, isOutboxKitError, Outbox } from '../../src/index.js'

describe('Outbox', () => {
  test('add returns one id for one message and an array for an array', async () => {
    const store = new MemoryOutboxStore(new MemoryDatabase())
    const outbox = new Outbox({ store })
    const [one, many] = await store.transaction(async (tx) => [
      await outbox.add(tx, { topic: 't', key: 'k', type: 'A', payload: null }),
      await outbox.add(tx, [{ topic: 't', key: 'k', type: 'B', payload: 1 }]),
    ])
    expect(typeof one).toBe('string')
    expect(Array.isArray(many)).toBe(true)
    expect(store.rows.map((r) => r.record.type)).toEqual(['A', 'B'])
  })

  test('the trace-context seam adds captured headers to every message', async () => {
    const store = new MemoryOutboxStore(new MemoryDatabase())
    const outbox = new Outbox({ store, tracing: { capture: () => ({ traceparent: '00-abc-def-01' }) } })
    await store.transaction((tx) => outbox.add(tx, { topic: 't', key: 'k', type: 'A', payload: {} }))
    expect(store.rows[0]!.record.headers['traceparent']).toBe('00-abc-def-01')
  })

  test('the same id twice in one add is refused with details.field naming the id, and nothing is written', async () => {
    const store = new MemoryOutboxStore(new MemoryDatabase())
    const outbox = new Outbox({ store })
    const id = '018f3a2e-7b1c-7d2e-8f00-000000000001'
    let error: unknown
    await store
      .transaction((tx) =>
        outbox.add(tx, [
          { id, topic: 't', key: 'k', type: 'A', payload: 1 },
          { id, topic: 't', key: 'k', type: 'B', payload: 2 },
        ]),
      )
      .catch((e) => {
        error = e
      })
    expect(isOutboxKitError(error, ErrorCode.InvalidMessage)).toBe(true)
    expect((error as { details: Record<string, unknown> }).details).toEqual({ field: 'id', id })
    expect(store.rows).toEqual([])
  })

  test('one invalid message in a batch writes nothing and names its position', async () => {
    const store = new MemoryOutboxStore(new MemoryDatabase())
    const outbox = new Outbox({ store })
    let error: unknown
    await store
      .transaction((tx) =>
        outbox.add(tx, [
          { topic: 't', key: 'k', type: 'A', payload: 1 },
          { topic: 't', key: '', type: 'B', payload: 1 },
        ]),
      )
      .catch((e) => {
        error = e
      })
    expect(isOutboxKitError(error, ErrorCode.InvalidMessage)).toBe(true)
    expect((error as Error).message).toContain('message 1 of 2')
    expect(store.rows).toHaveLength(0)
  })

  test('bad options fail at construction with INVALID_OPTIONS', () => {
    const store = new MemoryOutboxStore(new MemoryDatabase())
    for (const options of [{}, { store, maxPayloadBytes: 0 }, { store, maxPayloadBytes: 1.5 }]) {
      let error: unknown
      try {
        new Outbox(options as never)
      } catch (e) {
        error = e
      }
      expect(isOutboxKitError(error, ErrorCode.InvalidOptions)).toBe(true)
    }
  })
})
