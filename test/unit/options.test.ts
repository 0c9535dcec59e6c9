/**
 * Every numeric or naming option is checked where it is given: a bad value is an INVALID_OPTIONS
 * error naming the option, never a silent clamp or a failure later in SQL or on the broker.
 */
import { describe, expect, test } from 'bun:test'
import { Kafka } from 'kafkajs'
import { createKafkaTransport } from '../../src/adapters/kafka/index.js'
import {
  MemoryInboxStore,
  MemoryOutboxStore,
  type MemoryTransaction,
  MemoryTransport,
} from '../../src/adapters/memory/index.js'
import { createKafkaConsumerRunner } from '../../src/consumers/index.js'
import {
  ErrorCode,
  IdempotentConsumer,
  isOutboxKitError,
  MAX_CLAIM_LIMIT,
  MAX_PURGE_LIMIT,
  Outbox,
  type OutboxKitError,
  Relay,
} from '../../src/index.js'

function refused(make: () => unknown): OutboxKitError {
  let error: unknown
  try {
    make()
  } catch (e) {
    error = e
  }
  if (!isOutboxKitError(error, ErrorCode.InvalidOptions)) {
    throw new Error(`expected INVALID_OPTIONS, got ${String(error)}`)
  }
  return error
}

async function refusedAsync(make: () => Promise<unknown>): Promise<OutboxKitError> {
  let error: unknown
  try {
    await make()
  } catch (e) {
    error = e
  }
  if (!isOutboxKitError(error, ErrorCode.InvalidOptions)) {
    throw new Error(`expected INVALID_OPTIONS, got ${String(error)}`)
  }
  return error
}

const notPositive: unknown[] = [0, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, '5']
const negative: unknown[] = [-1, -0.5, Number.NaN, Number.NEGATIVE_INFINITY, '0']

function relay(options: Record<string, unknown>): Relay<MemoryTransaction> {
  return new Relay({ store: new MemoryOutboxStore(), transport: new MemoryTransport(), ...options })
}

function consumer(options: Record<string, unknown>): IdempotentConsumer<MemoryTransaction> {
  return new IdempotentConsumer({
    store: new MemoryInboxStore(),
    name: 'billing',
    handler: async () => {},
    ...options,
  })
}

describe('option validation', () => {
  describe.each(['maxPayloadBytes', 'maxHeaderBytes'])('Outbox %s', (option) => {
    test.each(notPositive)('%p is refused, naming the option', (value) => {
      const error = refused(() => new Outbox({ store: new MemoryOutboxStore(), [option]: value }))
      expect(error.details['option']).toBe(option)
      expect(error.message).toContain(option)
    })
  })

  describe.each(['batchSize', 'pollIntervalMs', 'leaseMs', 'maxAttempts'])('Relay %s', (option) => {
    test.each(notPositive)('%p is refused, naming the option', (value) => {
      expect(refused(() => relay({ [option]: value })).details['option']).toBe(option)
    })
  })

  test('Relay batchSize above the largest claim is refused, the largest is accepted', () => {
    expect(refused(() => relay({ batchSize: MAX_CLAIM_LIMIT + 1 })).message).toContain(
      String(MAX_CLAIM_LIMIT),
    )
    expect(() => relay({ batchSize: MAX_CLAIM_LIMIT })).not.toThrow()
  })

  test.each(negative)('Relay lagIntervalMs %p is refused; 0 (off) is accepted', (value) => {
    expect(refused(() => relay({ lagIntervalMs: value })).details['option']).toBe('lagIntervalMs')
    expect(() => relay({ lagIntervalMs: 0 })).not.toThrow()
  })

  describe.each([
    ['Relay', (backoff: unknown) => relay({ backoff })],
    ['IdempotentConsumer', (backoff: unknown) => consumer({ backoff })],
  ] as const)('%s backoff', (_name, make) => {
    test.each([
      [{ initialMs: -1 }, 'backoff.initialMs'],
      [{ initialMs: Number.NaN }, 'backoff.initialMs'],
      [{ maxMs: -5 }, 'backoff.maxMs'],
      [{ initialMs: 1_000, maxMs: 10 }, 'backoff.maxMs'],
      [{ multiplier: 0.5 }, 'backoff.multiplier'],
      [{ multiplier: Number.POSITIVE_INFINITY }, 'backoff.multiplier'],
      ['fast', 'backoff'],
    ])('%p is refused as %s', (backoff, option) => {
      expect(refused(() => make(backoff)).details['option']).toBe(option)
    })

    test('a partial backoff is accepted', () => {
      expect(() => make({ initialMs: 0 })).not.toThrow()
      expect(() => make({ multiplier: 1.5 })).not.toThrow()
    })
  })

  test.each(['', 42, undefined])('Relay deadLetter.topic %p is refused', (topic) => {
    expect(refused(() => relay({ deadLetter: { topic } })).details['option']).toBe('deadLetter.topic')
  })

  test.each(notPositive)('IdempotentConsumer maxAttempts %p is refused', (value) => {
    expect(refused(() => consumer({ maxAttempts: value })).details['option']).toBe('maxAttempts')
  })

  test('IdempotentConsumer deadLetter needs a topic and a transport', () => {
    const transport = new MemoryTransport()
    expect(refused(() => consumer({ deadLetter: { topic: '', transport } })).details['option']).toBe(
      'deadLetter.topic',
    )
    expect(refused(() => consumer({ deadLetter: { topic: 'dlq' } })).details['option']).toBe(
      'deadLetter.transport',
    )
    expect(() => consumer({ deadLetter: { topic: 'dlq', transport } })).not.toThrow()
  })

  test.each(notPositive)('Kafka consumer runner partitionsConcurrently %p is refused', (value) => {
    const error = refused(() =>
      createKafkaConsumerRunner({
        kafka: new Kafka({ brokers: ['127.0.0.1:1'] }),
        groupId: 'g',
        topics: ['t'],
        consumer: consumer({}),
        partitionsConcurrently: value as number,
      }),
    )
    expect(error.details['option']).toBe('partitionsConcurrently')
  })

  describe.each(['maxRecordBytes', 'maxRequestBytes', 'requestTimeoutMs'])('Kafka transport %s', (option) => {
    test.each(notPositive)('%p is refused, naming the option', (value) => {
      const error = refused(() => createKafkaTransport({ brokers: ['127.0.0.1:1'], [option]: value }))
      expect(error.details['option']).toBe(option)
      expect(error.message).toStartWith('[outboxkit] [kafka]')
    })
  })

  describe('per-call options of the reference stores', () => {
    const outbox = new MemoryOutboxStore()
    const inbox = new MemoryInboxStore()

    test.each([0, -1, 2.5, MAX_CLAIM_LIMIT + 1, Number.NaN])(
      'claim limit %p is a typed error',
      async (limit) => {
        const error = await refusedAsync(() => outbox.claim({ limit, leaseMs: 1_000 }))
        expect(error.details['option']).toBe('claim limit')
      },
    )

    test.each([0, -1, Number.NaN])('claim leaseMs %p is a typed error', async (leaseMs) => {
      const error = await refusedAsync(() => outbox.claim({ limit: 1, leaseMs }))
      expect(error.details['option']).toBe('claim leaseMs')
    })

    test.each([0, -1, 0.5, MAX_PURGE_LIMIT + 1])('purge limit %p is a typed error', async (limit) => {
      expect((await refusedAsync(() => outbox.purge({ olderThanMs: 0, limit }))).details['option']).toBe(
        'purge limit',
      )
      expect((await refusedAsync(() => inbox.purge({ olderThanMs: 0, limit }))).details['option']).toBe(
        'purge limit',
      )
    })

    test.each([-1, Number.NaN, undefined])('purge olderThanMs %p is a typed error', async (olderThanMs) => {
      const options = { olderThanMs: olderThanMs as number }
      expect((await refusedAsync(() => outbox.purge(options))).details['option']).toBe('purge olderThanMs')
      expect((await refusedAsync(() => inbox.purge(options))).details['option']).toBe('purge olderThanMs')
    })

    test('the bounds themselves are accepted', async () => {
      expect((await outbox.claim({ limit: MAX_CLAIM_LIMIT, leaseMs: 1 })).records).toEqual([])
      expect(await outbox.purge({ olderThanMs: 0, limit: MAX_PURGE_LIMIT })).toBe(0)
      expect(await inbox.purge({ olderThanMs: 0, limit: 1 })).toBe(0)
    })
  })
})
