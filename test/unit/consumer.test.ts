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
  isDatabaseOutage,
  isOutboxKitError,
  messageIdProblem,
  OutboxKitError,
  uuidv7,
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

  test('a handler that throws INVALID_MESSAGE is dead-lettered at once, without retries, and recorded', async () => {
    let calls = 0
    const { consumer, effects, dlq } = setup(
      async () => {
        calls++
        throw new OutboxKitError(ErrorCode.InvalidMessage, 'Invalid message payload: total is not a number.')
      },
      { maxAttempts: 5 },
    )
    const failures: ConsumerEvents['failed'][] = []
    consumer.on('failed', (e) => failures.push(e))
    expect(await consumer.process(message('m-1'))).toBe('dead')
    expect(calls).toBe(1)
    expect(failures).toHaveLength(0)
    expect(effects).toEqual([])
    expect(dlq.delivered[0]!.headers['outboxkit-dead-reason']).toStartWith('INVALID_MESSAGE: ')
    expect(await consumer.process(message('m-1'))).toBe('duplicate')
  })

  test('an outage the driver reports without a classified error spends no attempt: the message waits, then is processed once', async () => {
    // What pg throws when its connection drops mid-statement: a plain Error, no code.
    let outages = 3
    const { consumer, effects, dlq } = setup(
      async () => {
        if (outages-- > 0) throw new Error('Connection terminated unexpectedly')
      },
      { maxAttempts: 1 },
    )
    const seen: ConsumerEvents['unavailable'][] = []
    consumer.on('unavailable', (e) => seen.push(e))
    const processed: ConsumerEvents['processed'][] = []
    consumer.on('processed', (e) => processed.push(e))
    expect(await consumer.process(message('m-1'))).toBe('processed')
    expect(seen.map((e) => e.outages)).toEqual([1, 2, 3])
    expect(processed.map((e) => e.attempts)).toEqual([1])
    expect(effects).toEqual(['m-1'])
    expect(dlq.delivered).toHaveLength(0)
  })

  test('driver errors of every bundled driver are told apart: outages wait, bad statements are handler failures', async () => {
    const outages: object[] = [
      { code: '53300', message: 'sorry, too many clients already' }, // pg / postgres.js / PGlite
      { code: '55P03', message: 'could not obtain lock on row' },
      { code: '57P01', message: 'terminating connection due to administrator command' },
      { code: '40P01', message: 'deadlock detected' },
      { code: 'ER_CON_COUNT_ERROR', errno: 1040, message: 'Too many connections' }, // mysql2
      { code: 'ER_LOCK_DEADLOCK', errno: 1213, message: 'Deadlock found' },
      { code: 'PROTOCOL_CONNECTION_LOST', fatal: true, message: 'Connection lost' },
      { code: 'CONNECTION_CLOSED', message: 'write CONNECTION_CLOSED 127.0.0.1:5432' }, // postgres.js
      { code: 'ECONNREFUSED', message: 'connect ECONNREFUSED 127.0.0.1:5432' },
      { message: 'timeout exceeded when trying to connect' }, // pg-pool
      { message: "Can't add new command when connection is in closed state" }, // mysql2
      new AggregateError([Object.assign(new Error('connect'), { code: 'ECONNREFUSED' })]),
      new Error('query failed', { cause: Object.assign(new Error('reset'), { code: 'ECONNRESET' }) }),
      // A retriable STORE_FAILED of another bundled copy of outboxkit: the brand, not the class.
      { [Symbol.for('outboxkit.error')]: true, code: 'STORE_FAILED', retriable: true, message: 'lost' },
    ]
    const failures: object[] = [
      { code: '23505', message: 'duplicate key value' },
      { code: '42P01', message: 'relation does not exist' },
      { code: '25P02', message: 'current transaction is aborted' },
      { code: '57014', message: 'canceling statement due to statement timeout' },
      { code: 'ER_DUP_ENTRY', errno: 1062, message: 'Duplicate entry' },
      { [Symbol.for('outboxkit.error')]: true, code: 'STORE_FAILED', retriable: false, message: 'bad' },
      new Error('cannot reserve stock'),
    ]
    for (const error of outages) expect([isDatabaseOutage(error), error]).toEqual([true, error])
    for (const error of failures) expect([isDatabaseOutage(error), error]).toEqual([false, error])
    // And the consumer acts on it: one outage, then one handler failure with maxAttempts 1.
    let calls = 0
    const { consumer, dlq } = setup(
      async () => {
        calls++
        throw calls === 1 ? outages[0] : failures[0]
      },
      { maxAttempts: 1 },
    )
    expect(await consumer.process(message('m-1'))).toBe('dead')
    expect(calls).toBe(2)
    expect(dlq.delivered).toHaveLength(1)
  })

  test('a message waiting for the database stops when the signal aborts, with a retriable CLOSED', async () => {
    const { consumer } = setup(async () => {
      throw Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' })
    })
    const stop = new AbortController()
    consumer.on('unavailable', ({ outages }) => {
      if (outages === 2) stop.abort()
    })
    const error = await consumer.process(message('m-1'), stop.signal).catch((e: unknown) => e)
    expect(isOutboxKitError(error, ErrorCode.Closed)).toBe(true)
    expect((error as OutboxKitError).retriable).toBe(true)
  })

  test('a message id no inbox can store is dead-lettered once, without touching the inbox', async () => {
    const { consumer, effects, dlq, db } = setup(async () => {})
    const reasons: string[] = []
    consumer.on('deadLettered', (e) => reasons.push(e.reason))
    for (const id of ['x'.repeat(256), 'a\u0000b', 'lone \ud800', '']) {
      expect(await consumer.process(message(id))).toBe('dead')
    }
    expect(reasons.map((r) => r.split(':')[0])).toEqual([
      'INVALID_MESSAGE_ID',
      'INVALID_MESSAGE_ID',
      'INVALID_MESSAGE_ID',
      'MISSING_MESSAGE_ID',
    ])
    expect(dlq.delivered).toHaveLength(4)
    expect(effects).toEqual([])
    expect(db.inbox.size).toBe(0)
    // The longest storable id, and every id the outbox generates, are accepted.
    expect(await consumer.process(message('y'.repeat(255)))).toBe('processed')
    expect(messageIdProblem(uuidv7())).toBeUndefined()
  })

  test('a handler whose transaction the database ended is not reported processed: the message is tried again', async () => {
    let calls = 0
    const { consumer, effects } = setup(async (tx) => {
      // What a deadlock does to a MariaDB transaction whose handler caught the error.
      if (++calls === 1) tx.state = 'rolled back'
    })
    const failures: ConsumerEvents['failed'][] = []
    consumer.on('failed', (e) => failures.push(e))
    expect(await consumer.process(message('m-1'))).toBe('processed')
    expect(calls).toBe(2)
    expect(String(failures[0]?.error)).toContain('ended before the handler returned')
    expect(effects).toEqual(['m-1'])
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

describe('IdempotentConsumer.processBatch', () => {
  test('a batch runs in one transaction, in order; duplicates (earlier or within the batch) are skipped', async () => {
    const transactions: string[][] = []
    let current: string[] = []
    const { consumer, effects } = setup(async (_tx, id) => {
      current.push(id)
    })
    expect(await consumer.process(message('m-2'))).toBe('processed')
    current = []
    const onCommit = (ids: string[]) => transactions.push(ids)
    const outcomes = await consumer.processBatch(
      ['m-1', 'm-2', 'm-3', 'm-1', 'm-4'].map((id) => message(id)),
      {
        onDurable: () => {
          onCommit(current)
          current = []
        },
      },
    )
    expect(outcomes).toEqual(['processed', 'duplicate', 'processed', 'duplicate', 'processed'])
    expect(effects).toEqual(['m-2', 'm-1', 'm-3', 'm-4'])
    expect(transactions).toEqual([['m-1', 'm-3', 'm-4']])
  })

  test('a poison message: the messages before it commit once, it is dead-lettered alone, the rest go on; each effect once', async () => {
    const runs: string[] = []
    const { consumer, effects, dlq } = setup(
      async (_tx, id) => {
        runs.push(id)
        if (id === 'm-3') throw new Error('poison')
      },
      { maxAttempts: 2 },
    )
    const durable: number[] = []
    const ids = ['m-1', 'm-2', 'm-3', 'm-4', 'm-5']
    const outcomes = await consumer.processBatch(
      ids.map((id) => message(id)),
      { onDurable: (count) => durable.push(count) },
    )
    expect(outcomes).toEqual(['processed', 'processed', 'dead', 'processed', 'processed'])
    expect(effects).toEqual(['m-1', 'm-2', 'm-4', 'm-5'])
    // The batch, its prefix again (the first try rolled back), the poison alone twice, the rest.
    expect(runs).toEqual(['m-1', 'm-2', 'm-3', 'm-1', 'm-2', 'm-3', 'm-3', 'm-4', 'm-5'])
    expect(durable).toEqual([2, 3, 5])
    expect(dlq.delivered.map((m) => m.id)).toEqual(['m-3'])
    // Redelivered: every message is a duplicate, nothing runs again.
    runs.length = 0
    expect(await consumer.processBatch(ids.map((id) => message(id)))).toEqual(Array(5).fill('duplicate'))
    expect(runs).toEqual([])
  })

  test('a message id no inbox can store is dead-lettered in its place; the messages around it are processed', async () => {
    const { consumer, effects, dlq } = setup(async () => {})
    const outcomes = await consumer.processBatch([message('m-1'), message('x'.repeat(300)), message('m-2')])
    expect(outcomes).toEqual(['processed', 'dead', 'processed'])
    expect(effects).toEqual(['m-1', 'm-2'])
    expect(dlq.delivered).toHaveLength(1)
  })

  test('a batch whose transaction the database ended is processed one message at a time, each once', async () => {
    let ended = false
    const { consumer, effects } = setup(async (tx, id) => {
      // What a deadlock does to a MariaDB transaction whose handler caught the error.
      if (id === 'm-2' && !ended) {
        ended = true
        tx.state = 'rolled back'
      }
    })
    const outcomes = await consumer.processBatch(['m-1', 'm-2', 'm-3'].map((id) => message(id)))
    expect(outcomes).toEqual(['processed', 'processed', 'processed'])
    expect(effects).toEqual(['m-1', 'm-2', 'm-3'])
  })
})

describe('IdempotentConsumer.processBatch with a batchHandler', () => {
  function batchSetup(poison: string | undefined) {
    const db = new MemoryDatabase()
    const effects: string[] = []
    const calls: string[][] = []
    const dlq = new MemoryTransport()
    const consumer = new IdempotentConsumer<MemoryTransaction>({
      store: new MemoryInboxStore(db),
      name: 'inventory',
      maxAttempts: 2,
      backoff: { initialMs: 1, maxMs: 2 },
      deadLetter: { topic: 'orders.dlq', transport: dlq },
      batchHandler: async (messages, tx) => {
        calls.push(messages.map((m) => m.id))
        if (messages.some((m) => m.id === poison)) throw new Error('poison')
        tx.onCommit.push(() => effects.push(...messages.map((m) => m.id)))
      },
    })
    return { consumer, effects, calls, dlq }
  }

  test('the new messages of a batch go to one call, in order, duplicates left out; a message alone is a batch of one', async () => {
    const { consumer, effects, calls } = batchSetup(undefined)
    expect(await consumer.process(message('m-2'))).toBe('processed')
    const outcomes = await consumer.processBatch(['m-1', 'm-2', 'm-3', 'm-1'].map((id) => message(id)))
    expect(outcomes).toEqual(['processed', 'duplicate', 'processed', 'duplicate'])
    expect(calls).toEqual([['m-2'], ['m-1', 'm-3']])
    expect(effects).toEqual(['m-2', 'm-1', 'm-3'])
  })

  test('a batch handler that throws: the batch is halved until the poison message is alone; it is dead-lettered, the others applied once, in order', async () => {
    const ids = ['m-1', 'm-2', 'm-3', 'm-4', 'm-5', 'm-6']
    const { consumer, effects, calls, dlq } = batchSetup('m-5')
    const outcomes = await consumer.processBatch(ids.map((id) => message(id)))
    expect(outcomes).toEqual(['processed', 'processed', 'processed', 'processed', 'dead', 'processed'])
    expect(effects).toEqual(['m-1', 'm-2', 'm-3', 'm-4', 'm-6'])
    expect(calls).toEqual([
      ['m-1', 'm-2', 'm-3', 'm-4', 'm-5', 'm-6'],
      ['m-1', 'm-2', 'm-3'],
      ['m-4', 'm-5', 'm-6'],
      ['m-4', 'm-5'],
      ['m-4'],
      ['m-5'],
      ['m-5'],
      ['m-6'],
    ])
    expect(dlq.delivered.map((m) => m.id)).toEqual(['m-5'])
  })

  test('a consumer needs a handler or a batchHandler', () => {
    const store = new MemoryInboxStore(new MemoryDatabase())
    let error: unknown
    try {
      new IdempotentConsumer<MemoryTransaction>({ store, name: 'inventory' })
    } catch (caught) {
      error = caught
    }
    expect(isOutboxKitError(error) && error.code).toBe(ErrorCode.InvalidOptions)
  })
})
