import { describe, expect, test } from 'bun:test'
import * as v from 'valibot'
import { z } from 'zod'
import {
  MemoryDatabase,
  MemoryInboxStore,
  MemoryOutboxStore,
  type MemoryTransaction,
  MemoryTransport,
} from '../../src/adapters/memory/index.js'
import {
  type CatalogueEvent,
  defineEvents,
  ErrorCode,
  type EventHandlersOptions,
  type EventInput,
  type EventOutput,
  IdempotentConsumer,
  type InboundMessage,
  inboundMessage,
  isOutboxKitError,
  Outbox,
  type OutboxKitError,
  publishedHeaders,
  Relay,
  type StandardSchemaV1,
} from '../../src/index.js'

/** True only when A and B are the same type. */
type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false
function assertType<_T extends true>(): void {}

// The same two events written with zod and with valibot.
const zodEvents = defineEvents({
  OrderCreated: {
    topic: 'orders',
    schema: z.object({
      id: z.string(),
      total: z.number().nonnegative(),
      currency: z.string().default('EUR'),
    }),
  },
  OrderCancelled: { topic: 'orders', schema: z.object({ id: z.string(), reason: z.string().min(1) }) },
})

const valibotEvents = defineEvents({
  OrderCreated: {
    topic: 'orders',
    schema: v.object({
      id: v.string(),
      total: v.pipe(v.number(), v.minValue(0)),
      currency: v.optional(v.string(), 'EUR'),
    }),
  },
  OrderCancelled: {
    topic: 'orders',
    schema: v.object({ id: v.string(), reason: v.pipe(v.string(), v.minLength(1)) }),
  },
})

/** A memory outbox, relay, transport and inbox, with the relay's records turned into inbound messages. */
function world() {
  const db = new MemoryDatabase()
  const store = new MemoryOutboxStore(db)
  const inbox = new MemoryInboxStore(db)
  const transport = new MemoryTransport()
  const dlq = new MemoryTransport()
  const outbox = new Outbox({ store })
  const relay = new Relay({ store, transport, pollIntervalMs: 5 })
  /** Drains the outbox and returns what a broker consumer would receive. */
  const relayed = async (): Promise<InboundMessage[]> => {
    while ((await relay.runOnce()) > 0) {}
    return transport.delivered.map((record) =>
      inboundMessage({ ...record, headers: publishedHeaders(record) }),
    )
  }
  const consumer = (
    handler: (message: InboundMessage, tx: MemoryTransaction) => Promise<void>,
    maxAttempts = 3,
  ) =>
    new IdempotentConsumer<MemoryTransaction>({
      store: inbox,
      name: 'billing',
      handler,
      maxAttempts,
      backoff: { initialMs: 1, maxMs: 2 },
      deadLetter: { topic: 'orders.dlq', transport: dlq },
    })
  return { db, store, inbox, transport, dlq, outbox, relay, relayed, consumer }
}

async function rejection(promise: Promise<unknown>): Promise<OutboxKitError> {
  try {
    await promise
  } catch (error) {
    if (isOutboxKitError(error)) return error
    throw error
  }
  throw new Error('expected a rejection')
}

const decoder = new TextDecoder()

for (const [library, events] of [
  ['zod', zodEvents],
  ['valibot', valibotEvents],
] as const) {
  describe(`event catalogue with ${library}`, () => {
    test('a typed add is relayed and reaches its typed handler with the schema output', async () => {
      const w = world()
      const orders = events.outbox(w.outbox)
      await w.store.transaction(async (tx) => {
        await orders.add(
          tx,
          'OrderCreated',
          { id: 'o-1', total: 42 },
          { key: 'o-1', headers: { tenant: 't1' } },
        )
        await orders.add(tx, 'OrderCancelled', { id: 'o-1', reason: 'changed mind' }, { key: 'o-1' })
      })
      const stored = w.store.rows.map((r) => [
        r.record.topic,
        r.record.type,
        JSON.parse(decoder.decode(r.record.payload)),
      ])
      // The schema's output is stored: the default currency is filled in.
      expect(stored).toEqual([
        ['orders', 'OrderCreated', { id: 'o-1', total: 42, currency: 'EUR' }],
        ['orders', 'OrderCancelled', { id: 'o-1', reason: 'changed mind' }],
      ])
      const seen: string[] = []
      const consumer = w.consumer(
        events.handlers<MemoryTransaction>({
          OrderCreated: async (event) => {
            seen.push(
              `${event.type} ${event.value.id} ${event.value.total} ${event.value.currency} ${event.headers['tenant']}`,
            )
          },
          OrderCancelled: async (event) => {
            seen.push(`${event.type} ${event.value.reason}`)
          },
        }),
      )
      const outcomes = []
      for (const message of await w.relayed()) outcomes.push(await consumer.process(message))
      expect(outcomes).toEqual(['processed', 'processed'])
      expect(seen).toEqual(['OrderCreated o-1 42 EUR t1', 'OrderCancelled changed mind'])
    })

    test('an invalid payload is refused with the validator issues before anything is written; the transaction rolls back', async () => {
      const w = world()
      const orders = events.outbox(w.outbox)
      const committed: string[] = []
      const error = await rejection(
        w.store.transaction(async (tx) => {
          tx.onCommit.push(() => committed.push('business row'))
          await orders.add(tx, 'OrderCreated', { id: 'o-1', total: 1 }, { key: 'o-1' })
          await orders.add(tx, 'OrderCreated', { id: 'o-2', total: -5 }, { key: 'o-2' })
        }),
      )
      expect(error.code).toBe(ErrorCode.InvalidMessage)
      expect(error.retriable).toBe(false)
      expect(error.details['field']).toBe('payload')
      expect(error.details['type']).toBe('OrderCreated')
      const issues = error.details['issues'] as StandardSchemaV1.Issue[]
      expect(issues).toHaveLength(1)
      expect(issues[0]!.path?.map((s) => (typeof s === 'object' ? s.key : s))).toEqual(['total'])
      expect(error.message).toContain('$.total: ')
      expect(w.store.rows).toHaveLength(0)
      expect(committed).toEqual([])
    })

    test('a consumed payload that fails its schema is a poison message: dead-lettered at once, handler not run', async () => {
      const w = world()
      // Written by a producer that does not use the catalogue.
      await w.store.transaction((tx) =>
        w.outbox.add(tx, {
          topic: 'orders',
          key: 'o-1',
          type: 'OrderCreated',
          payload: { id: 'o-1', total: 'lots' },
        }),
      )
      let calls = 0
      const consumer = w.consumer(
        events.handlers<MemoryTransaction>({
          OrderCreated: async () => {
            calls++
          },
        }),
        5,
      )
      const reasons: string[] = []
      consumer.on('deadLettered', (e) => reasons.push(e.reason))
      const [message] = await w.relayed()
      expect(await consumer.process(message!)).toBe('dead')
      expect(calls).toBe(0)
      expect(reasons).toHaveLength(1)
      expect(reasons[0]).toStartWith('INVALID_MESSAGE: ')
      expect(reasons[0]).toContain('"OrderCreated" payload does not match its schema')
      expect(w.dlq.delivered.map((d) => d.id)).toEqual([message!.id])
      expect(await consumer.process(message!)).toBe('duplicate')
    })
  })
}

describe('typed handlers in batches', () => {
  test('a poison message in a batch is dead-lettered alone at once; the others are handled once, in order', async () => {
    const w = world()
    await w.store.transaction(async (tx) => {
      const orders = zodEvents.outbox(w.outbox)
      await orders.add(tx, 'OrderCreated', { id: 'o-1', total: 1 }, { key: 'o-1' })
      await w.outbox.add(tx, { topic: 'orders', key: 'o-2', type: 'OrderCreated', payload: { id: 'o-2' } })
      await orders.add(tx, 'OrderCreated', { id: 'o-3', total: 3 }, { key: 'o-3' })
    })
    const applied: string[] = []
    const consumer = w.consumer(
      zodEvents.handlers<MemoryTransaction>({
        OrderCreated: async (event, tx) => {
          tx.onCommit.push(() => applied.push(event.value.id))
        },
      }),
      5,
    )
    const failures: unknown[] = []
    consumer.on('failed', (e) => failures.push(e))
    expect(await consumer.processBatch(await w.relayed())).toEqual(['processed', 'dead', 'processed'])
    expect(applied).toEqual(['o-1', 'o-3'])
    expect(failures).toHaveLength(0)
    expect(w.dlq.delivered.map((d) => d.key)).toEqual(['o-2'])
  })
})

describe('unknown types', () => {
  async function unknownTypeWorld(options: EventHandlersOptions | undefined) {
    const w = world()
    await w.store.transaction(async (tx) => {
      await w.outbox.add(tx, { topic: 'orders', key: 'o-1', type: 'OrderRefunded', payload: { id: 'o-1' } })
      await zodEvents
        .outbox(w.outbox)
        .add(tx, 'OrderCancelled', { id: 'o-1', reason: 'late' }, { key: 'o-1' })
    })
    const handled: string[] = []
    const consumer = w.consumer(
      zodEvents.handlers<MemoryTransaction>(
        {
          OrderCreated: async (event) => {
            handled.push(event.type)
          },
        },
        options,
      ),
    )
    const reasons: string[] = []
    consumer.on('deadLettered', (e) => reasons.push(e.reason))
    const messages = await w.relayed()
    const outcomes = []
    for (const message of messages) outcomes.push(await consumer.process(message))
    return { w, consumer, messages, outcomes, handled, reasons }
  }

  test('by default a type with no handler (outside the catalogue, or left out) goes to the dead letter at once', async () => {
    const { w, outcomes, handled, reasons } = await unknownTypeWorld(undefined)
    expect(outcomes).toEqual(['dead', 'dead'])
    expect(handled).toEqual([])
    expect(reasons[0]).toContain('no handler for "OrderRefunded"')
    expect(reasons[1]).toContain('no handler for "OrderCancelled"')
    expect(w.dlq.delivered).toHaveLength(2)
  })

  test("unknown: 'skip' records such messages as processed without handling them", async () => {
    const { w, consumer, messages, outcomes, handled } = await unknownTypeWorld({ unknown: 'skip' })
    expect(outcomes).toEqual(['processed', 'processed'])
    expect(handled).toEqual([])
    expect(w.dlq.delivered).toHaveLength(0)
    expect(w.db.inbox.size).toBe(2)
    expect(await consumer.process(messages[0]!)).toBe('duplicate')
  })

  test('a message without a type header follows the same policy', async () => {
    const message = inboundMessage({
      id: '0190f2c4-8b7a-7cc2-9a4e-1f2d3c4b5a69',
      topic: 'orders',
      key: 'o-1',
      payload: new TextEncoder().encode('{}'),
      headers: { 'content-type': 'application/json' },
    })
    const w = world()
    const dead = w.consumer(zodEvents.handlers<MemoryTransaction>({}))
    const reasons: string[] = []
    dead.on('deadLettered', (e) => reasons.push(e.reason))
    expect(await dead.process(message)).toBe('dead')
    expect(reasons[0]).toContain('has no outboxkit-type header')
    const skip = world().consumer(zodEvents.handlers<MemoryTransaction>({}, { unknown: 'skip' }))
    expect(await skip.process(message)).toBe('processed')
  })
})

describe('async validators', () => {
  const taken = new Set(['o-taken'])
  const lookup = async (id: string) => {
    await new Promise((resolve) => setTimeout(resolve, 1))
    return !taken.has(id)
  }
  const asyncZod = defineEvents({
    OrderCreated: { topic: 'orders', schema: z.object({ id: z.string().refine(lookup, 'id is taken') }) },
  })
  const asyncValibot = defineEvents({
    OrderCreated: {
      topic: 'orders',
      schema: v.objectAsync({ id: v.pipeAsync(v.string(), v.checkAsync(lookup, 'id is taken')) }),
    },
  })

  for (const [library, events] of [
    ['zod', asyncZod],
    ['valibot', asyncValibot],
  ] as const) {
    test(`${library}: an async schema validates on add and on consume`, async () => {
      // The validator really answers with a promise.
      expect(events.definitions.OrderCreated.schema['~standard'].validate({ id: 'o-1' })).toBeInstanceOf(
        Promise,
      )
      const w = world()
      const orders = events.outbox(w.outbox)
      await w.store.transaction((tx) => orders.add(tx, 'OrderCreated', { id: 'o-1' }, { key: 'o-1' }))
      const error = await rejection(
        w.store.transaction((tx) => orders.add(tx, 'OrderCreated', { id: 'o-taken' }, { key: 'o-taken' })),
      )
      expect(error.code).toBe(ErrorCode.InvalidMessage)
      expect((error.details['issues'] as StandardSchemaV1.Issue[])[0]!.message).toBe('id is taken')
      expect(w.store.rows).toHaveLength(1)

      const seen: string[] = []
      const consumer = w.consumer(
        events.handlers<MemoryTransaction>({
          OrderCreated: async (event) => {
            seen.push(event.value.id)
          },
        }),
      )
      const [message] = await w.relayed()
      expect(await consumer.process(message!)).toBe('processed')
      expect(seen).toEqual(['o-1'])
    })
  }
})

describe('Standard Schema only', () => {
  test('a schema that exposes nothing but ~standard works: the catalogue uses only that interface', async () => {
    const zodSchema = z.object({ id: z.string() })
    const valibotSchema = v.object({ id: v.string() })
    const bare = defineEvents({
      FromZod: { topic: 'a', schema: { '~standard': zodSchema['~standard'] } },
      FromValibot: { topic: 'a', schema: { '~standard': valibotSchema['~standard'] } },
    })
    expect(await bare.parse('FromZod', { id: 'x' })).toEqual({ id: 'x' })
    expect(await bare.parse('FromValibot', { id: 'x' })).toEqual({ id: 'x' })
    expect((await rejection(bare.parse('FromValibot', { id: 1 }))).code).toBe(ErrorCode.InvalidMessage)
  })

  test('a hand-written Standard Schema, with no library, works', async () => {
    const positive: StandardSchemaV1<number> = {
      '~standard': {
        version: 1,
        vendor: 'hand-written',
        validate: (value) =>
          typeof value === 'number' && value > 0
            ? { value }
            : { issues: [{ message: 'not a positive number' }] },
      },
    }
    const events = defineEvents({ Counted: { topic: 'counts', schema: positive } })
    expect(await events.parse('Counted', 3)).toBe(3)
    const error = await rejection(events.parse('Counted', -1))
    expect(error.details['issues']).toEqual([{ message: 'not a positive number' }])
    expect(error.message).toContain('not a positive number')
  })

  test('the schema output is what is stored: keys the schema strips never reach the outbox', async () => {
    const w = world()
    const row = { id: 'o-1', total: 3, cardNumber: '4111 1111 1111 1111' }
    await w.store.transaction((tx) =>
      zodEvents.outbox(w.outbox).add(tx, 'OrderCreated', row, { key: row.id }),
    )
    expect(JSON.parse(decoder.decode(w.store.rows[0]!.record.payload))).toEqual({
      id: 'o-1',
      total: 3,
      currency: 'EUR',
    })
  })

  test('message() builds validated input for one outbox.add of several events', async () => {
    const w = world()
    await w.store.transaction(async (tx) =>
      w.outbox.add(
        tx,
        await Promise.all([
          zodEvents.message('OrderCreated', { id: 'o-1', total: 1 }, { key: 'o-1' }),
          zodEvents.message('OrderCancelled', { id: 'o-1', reason: 'x' }, { key: 'o-1' }),
        ]),
      ),
    )
    expect(w.store.rows.map((r) => r.record.type)).toEqual(['OrderCreated', 'OrderCancelled'])
  })
})

describe('catalogue definitions and handler maps are checked', () => {
  test('a schema that is not a Standard Schema, a missing topic or an empty catalogue is refused', () => {
    const refuse = (fn: () => unknown) => {
      let error: unknown
      try {
        fn()
      } catch (e) {
        error = e
      }
      expect(isOutboxKitError(error, ErrorCode.InvalidOptions)).toBe(true)
      return (error as Error).message
    }
    expect(refuse(() => defineEvents({ A: { topic: 't', schema: { parse: () => 1 } as never } }))).toContain(
      'is not a Standard Schema',
    )
    expect(refuse(() => defineEvents({ A: { topic: '', schema: z.string() } }))).toContain('needs a `topic`')
    expect(refuse(() => defineEvents({}))).toContain('at least one event type')
    expect(
      refuse(() =>
        zodEvents.handlers({
          OrderShipped: async () => {},
        } as never),
      ),
    ).toContain('"OrderShipped", which the catalogue does not define')
    expect(refuse(() => zodEvents.handlers({}, { unknown: 'ignore' as never }))).toContain(
      "'dead-letter' or 'skip'",
    )
  })

  test('an add of a type outside the catalogue is refused at run time too', async () => {
    const w = world()
    const orders = zodEvents.outbox(w.outbox)
    const error = await rejection(
      w.store.transaction((tx) =>
        orders.add(tx, 'OrderShipped' as never, { id: 'x' } as never, { key: 'x' }),
      ),
    )
    expect(error.code).toBe(ErrorCode.InvalidMessage)
    expect(error.details['field']).toBe('type')
    expect(w.store.rows).toHaveLength(0)
  })
})

/** Compile-time checks of what a catalogue accepts as schemas: never called. */
function definitionChecks(): void {
  // Outputs that are JSON and valid inputs again: defaults, refinements, same-type transforms, brands.
  defineEvents({
    A: {
      topic: 't',
      schema: z.object({ name: z.string().transform((s) => s.trim()), n: z.number().default(1) }),
    },
    B: { topic: 't', schema: z.object({ id: z.string().brand<'OrderId'>() }) },
    C: { topic: 't', schema: v.object({ tags: v.array(v.string()), note: v.nullable(v.string()) }) },
    D: {
      topic: 't',
      schema: z.union([z.object({ kind: z.literal('a') }), z.object({ kind: z.literal('b') })]),
    },
  })
  defineEvents({
    // @ts-expect-error a Date output cannot be stored as JSON
    A: { topic: 't', schema: z.object({ at: z.date() }) },
  })
  defineEvents({
    // @ts-expect-error a bigint output cannot be stored as JSON
    A: { topic: 't', schema: v.object({ amount: v.bigint() }) },
  })
  defineEvents({
    // @ts-expect-error the stored output (a number) would fail the consumer's validation (a string)
    A: { topic: 't', schema: z.object({ n: z.string().transform((s) => Number(s)) }) },
  })
}
void definitionChecks

/** Compile-time checks only: never called. */
function compileChecks(outbox: Outbox<MemoryTransaction>, tx: MemoryTransaction): void {
  const orders = zodEvents.outbox(outbox)
  // The payload type is the schema's input: a defaulted field may be left out...
  void orders.add(tx, 'OrderCreated', { id: 'o-1', total: 1 }, { key: 'o-1' })
  // ...and the handler sees the output, where it is always there.
  assertType<
    Equal<
      EventInput<typeof zodEvents.definitions, 'OrderCreated'>,
      { id: string; total: number; currency?: string | undefined }
    >
  >()
  assertType<
    Equal<
      EventOutput<typeof zodEvents.definitions, 'OrderCreated'>,
      { id: string; total: number; currency: string }
    >
  >()
  assertType<
    Equal<EventOutput<typeof valibotEvents.definitions, 'OrderCancelled'>, { id: string; reason: string }>
  >()

  // @ts-expect-error total must be a number
  void orders.add(tx, 'OrderCreated', { id: 'o-1', total: '1' }, { key: 'o-1' })
  // @ts-expect-error OrderCancelled needs a reason
  void orders.add(tx, 'OrderCancelled', { id: 'o-1' }, { key: 'o-1' })
  // @ts-expect-error not a type of the catalogue
  void orders.add(tx, 'OrderShipped', { id: 'o-1' }, { key: 'o-1' })
  // @ts-expect-error the key is required
  void orders.add(tx, 'OrderCreated', { id: 'o-1', total: 1 }, {})

  zodEvents.handlers<MemoryTransaction>({
    OrderCreated: async (event, trx) => {
      assertType<Equal<typeof event.type, 'OrderCreated'>>()
      assertType<Equal<typeof event.value, { id: string; total: number; currency: string }>>()
      assertType<Equal<typeof trx, MemoryTransaction>>()
      // @ts-expect-error OrderCreated has no reason
      void event.value.reason
    },
    // @ts-expect-error not a type of the catalogue
    OrderShipped: async () => {},
  })

  // The transaction type can come from the handler's annotation instead of a type argument.
  const inferred = zodEvents.handlers({ OrderCancelled: async (_event, _trx: MemoryTransaction) => {} })
  assertType<Equal<typeof inferred, (message: InboundMessage, tx: MemoryTransaction) => Promise<void>>>()

  // Any event of the catalogue, as a union discriminated by type.
  const describe = (event: CatalogueEvent<typeof zodEvents.definitions>): string =>
    event.type === 'OrderCreated' ? `${event.value.total} ${event.value.currency}` : event.value.reason
  void describe
}
void compileChecks
