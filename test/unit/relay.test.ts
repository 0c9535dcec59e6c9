import { describe, expect, test } from 'bun:test'
import { RECORD_OVERHEAD_BYTES } from '../../src/adapters/kafka/kafka-transport.js'
import { MemoryDatabase, MemoryOutboxStore, MemoryTransport } from '../../src/adapters/memory/index.js'
import { DEAD_REASON_MAX_LENGTH } from '../../src/core/relay.js'
import {
  backoffDelay,
  DEAD_REASON_HEADER,
  DEFAULT_MAX_HEADER_BYTES,
  DEFAULT_MAX_PAYLOAD_BYTES,
  ErrorCode,
  Headers,
  isOutboxKitError,
  MAX_KEY_LENGTH,
  MAX_TOPIC_LENGTH,
  MAX_TYPE_LENGTH,
  ORIGINAL_TOPIC_HEADER,
  Outbox,
  Relay,
  type RelayEvents,
} from '../../src/index.js'

function setup(options: Partial<ConstructorParameters<typeof Relay>[0]> = {}) {
  const store = new MemoryOutboxStore(new MemoryDatabase())
  const transport = new MemoryTransport()
  const outbox = new Outbox({ store })
  const relay = new Relay({
    store,
    transport,
    pollIntervalMs: 5,
    backoff: { initialMs: 1, maxMs: 5 },
    ...options,
  })
  const add = (key: string, type: string) =>
    store.transaction((tx) => outbox.add(tx, { topic: 'orders', key, type, payload: { type } }))
  return { store, transport, outbox, relay, add }
}

async function until(condition: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time')
    await new Promise((r) => setTimeout(r, 2))
  }
}

/** The Kafka transport's default `maxRecordBytes`. */
const KAFKA_DEFAULT_MAX_RECORD_BYTES = 1_000_000
/** Most UTF-8 bytes one UTF-16 code unit (what `.length` counts) can take. */
const UTF8_PER_UNIT = 3

describe('default limits', () => {
  test('the largest record add accepts by default, and its dead letter, fit the Kafka transport default', () => {
    const header = (name: string, maxValueBytes: number) => name.length + maxValueBytes
    const worstCase =
      DEFAULT_MAX_PAYLOAD_BYTES +
      DEFAULT_MAX_HEADER_BYTES +
      MAX_KEY_LENGTH * UTF8_PER_UNIT +
      header(Headers.contentType, 255) +
      header(Headers.messageId, 36) +
      header(Headers.messageType, MAX_TYPE_LENGTH * UTF8_PER_UNIT) +
      header(DEAD_REASON_HEADER, DEAD_REASON_MAX_LENGTH * UTF8_PER_UNIT) +
      header(ORIGINAL_TOPIC_HEADER, MAX_TOPIC_LENGTH) +
      RECORD_OVERHEAD_BYTES
    expect(worstCase).toBe(992_417)
    expect(worstCase).toBeLessThanOrEqual(KAFKA_DEFAULT_MAX_RECORD_BYTES)
  })

  test('a record built by add at every default limit, with its dead-letter headers, is within that budget', async () => {
    const store = new MemoryOutboxStore(new MemoryDatabase())
    const outbox = new Outbox({ store })
    const bytes = (text: string) => new TextEncoder().encode(text).byteLength
    // Header bytes are counted as name length + UTF-8 value bytes: fill them to the limit.
    const name = 'x-fill'
    const headers = { [name]: '€'.repeat(Math.floor((DEFAULT_MAX_HEADER_BYTES - name.length) / 3)) }
    await store.transaction((tx) =>
      outbox.add(tx, {
        topic: 't'.repeat(MAX_TOPIC_LENGTH),
        key: '€'.repeat(MAX_KEY_LENGTH),
        type: '€'.repeat(MAX_TYPE_LENGTH),
        payload: new Uint8Array(DEFAULT_MAX_PAYLOAD_BYTES),
        contentType: `application/${'x'.repeat(255 - 'application/'.length)}`,
        headers,
      }),
    )
    const record = store.rows[0]!.record
    const letterHeaders = {
      ...record.headers,
      [Headers.messageId]: record.id,
      [Headers.messageType]: record.type,
      [DEAD_REASON_HEADER]: '€'.repeat(DEAD_REASON_MAX_LENGTH),
      [ORIGINAL_TOPIC_HEADER]: record.topic,
    }
    // Counted as the Kafka transport counts a record.
    let size = RECORD_OVERHEAD_BYTES + bytes(record.key) + record.payload.byteLength
    for (const [n, v] of Object.entries(letterHeaders)) size += bytes(n) + bytes(v)
    expect(size).toBeLessThanOrEqual(KAFKA_DEFAULT_MAX_RECORD_BYTES)
  })
})

describe('Relay', () => {
  test('runOnce publishes a batch in order and marks it published', async () => {
    const { store, transport, relay, add } = setup()
    await add('a', 'a1')
    await add('b', 'b1')
    await add('a', 'a2')
    expect(await relay.runOnce()).toBe(3)
    expect(transport.delivered.map((d) => d.type)).toEqual(['a1', 'b1', 'a2'])
    expect(store.rows.map((r) => r.status)).toEqual(['published', 'published', 'published'])
    expect(await relay.runOnce()).toBe(0)
  })

  test('the loop publishes what is written while it runs, and stop() ends it', async () => {
    const { transport, relay, add } = setup()
    await relay.start()
    for (let i = 0; i < 20; i++) await add(`k${i % 3}`, `e${i}`)
    await until(() => transport.delivered.length === 20)
    await relay.stop()
    expect(relay.running).toBe(false)
    await add('k0', 'after-stop')
    await new Promise((r) => setTimeout(r, 30))
    expect(transport.delivered).toHaveLength(20)
  })

  test('a non-retriable failure dead-letters the record at once; its key then flows on', async () => {
    const { store, transport, relay, add } = setup()
    transport.failWith = (r) =>
      r.type === 'poison' ? { status: 'failed', error: 'MESSAGE_TOO_LARGE', retriable: false } : undefined
    const dead: RelayEvents['deadLettered'][] = []
    relay.on('deadLettered', (e) => dead.push(e))
    await add('a', 'poison')
    await add('a', 'a2')
    await add('b', 'b1')
    await relay.runOnce()
    await relay.runOnce()
    expect(transport.delivered.map((d) => d.type)).toEqual(['b1', 'a2'])
    expect(store.rows.map((r) => [r.status, r.lastError])).toEqual([
      ['dead', 'MESSAGE_TOO_LARGE'],
      ['published', null],
      ['published', null],
    ])
    expect(dead).toHaveLength(1)
  })

  test('a retriable failure is retried with backoff, holding back only its key, then dead after maxAttempts', async () => {
    const { store, transport, relay, add } = setup({ maxAttempts: 3 })
    transport.failWith = (r) =>
      r.type === 'flaky' ? { status: 'failed', error: 'timeout', retriable: true } : undefined
    await add('a', 'flaky')
    await add('a', 'a2')
    await add('b', 'b1')
    await relay.start()
    await until(() => store.rows[0]!.status === 'dead')
    await until(() => transport.delivered.length === 2)
    await relay.stop()
    expect(transport.delivered.map((d) => d.type)).toEqual(['b1', 'a2'])
    expect(store.rows[0]!.attempts).toBe(3)
    // The follower's attempts were not used up by its head's failures.
    expect(store.rows[1]!.attempts).toBe(1)
  })

  test('a transport that throws releases the batch without counting an attempt, and the loop recovers', async () => {
    const { store, transport, relay, add } = setup({ maxAttempts: 1 })
    let outage = 5
    transport.throwWith = () => (outage-- > 0 ? new Error('broker unreachable') : undefined)
    const errors: unknown[] = []
    relay.on('error', (e) => errors.push(e.error))
    await add('a', 'a1')
    await relay.start()
    await until(() => transport.delivered.length === 1)
    await relay.stop()
    expect(errors.length).toBeGreaterThanOrEqual(5)
    expect(store.rows.map((r) => [r.status, r.attempts])).toEqual([['published', 1]])
  })

  test('dead records go to the dead-letter topic with the reason and original topic', async () => {
    const { transport, relay, add } = setup({ deadLetter: { topic: 'orders.dlq' } })
    transport.failWith = (r) =>
      r.topic === 'orders' && r.type === 'bad'
        ? { status: 'failed', error: 'INVALID_RECORD', retriable: false }
        : undefined
    await add('a', 'bad')
    await relay.runOnce()
    expect(transport.delivered).toHaveLength(1)
    const letter = transport.delivered[0]!
    expect([letter.topic, letter.headers[DEAD_REASON_HEADER], letter.headers[ORIGINAL_TOPIC_HEADER]]).toEqual(
      ['orders.dlq', 'INVALID_RECORD', 'orders'],
    )
  })

  for (const mode of ['refuses', 'throws'] as const) {
    test(`a dead-letter transport that ${mode} still settles every dead row once, reports it, and re-sends nothing`, async () => {
      const letters = new MemoryTransport()
      const { store, transport, relay, add } = setup({
        deadLetter: { topic: 'orders.dlq', transport: letters },
      })
      transport.failWith = (r) =>
        r.type.startsWith('bad') ? { status: 'failed', error: 'INVALID_RECORD', retriable: false } : undefined
      if (mode === 'refuses') {
        letters.failWith = (r) =>
          r.type === 'bad-a' ? { status: 'failed', error: 'MESSAGE_TOO_LARGE', retriable: false } : undefined
      } else {
        letters.throwWith = () => new Error('dead-letter broker unreachable')
      }
      const failedLetters: RelayEvents['deadLetterFailed'][] = []
      const errors: RelayEvents['error'][] = []
      relay.on('deadLetterFailed', (e) => failedLetters.push(e))
      relay.on('error', (e) => errors.push(e))
      await add('a', 'bad-a')
      await add('a', 'a2')
      await add('b', 'bad-b')
      await add('c', 'c1')
      expect(await relay.runOnce()).toBe(4)
      expect(store.rows.map((r) => r.status)).toEqual(['dead', 'pending', 'dead', 'published'])
      const idA = store.rows[0]!.record.id
      const idB = store.rows[2]!.record.id
      if (mode === 'refuses') {
        expect(failedLetters).toEqual([{ ids: [idA], error: 'MESSAGE_TOO_LARGE' }])
        // The other key's letter went out despite the refusal.
        expect(letters.delivered.map((l) => l.id)).toEqual([idB])
      } else {
        expect(failedLetters).toEqual([{ ids: [idA, idB], error: 'dead-letter broker unreachable' }])
        expect(letters.delivered).toEqual([])
      }
      expect(errors).toHaveLength(1)
      expect(isOutboxKitError(errors[0]!.error, ErrorCode.TransportFailed)).toBe(true)
      // Later cycles publish the dead key's follower and send no letter again.
      letters.failWith = undefined
      letters.throwWith = undefined
      expect(await relay.runOnce()).toBe(1)
      expect(await relay.runOnce()).toBe(0)
      expect(store.rows.map((r) => [r.status, r.attempts])).toEqual([
        ['dead', 1],
        ['published', 1],
        ['dead', 1],
        ['published', 1],
      ])
      expect(letters.delivered.map((l) => l.id)).toEqual(mode === 'refuses' ? [idB] : [])
      expect(failedLetters).toHaveLength(1)
    })
  }

  test('a signal already aborted when the relay is created keeps start() from running it: CLOSED', async () => {
    const { relay, transport, add } = setup({ signal: AbortSignal.abort() })
    await add('a', 'a1')
    const error = await relay.start().catch((e) => e)
    expect(isOutboxKitError(error, ErrorCode.Closed)).toBe(true)
    expect((error as Error).message).toContain('signal was already aborted')
    expect(relay.running).toBe(false)
    await new Promise((r) => setTimeout(r, 30))
    expect(transport.delivered).toEqual([])
  })

  /** A claimer standing for another relay, taking whatever it can while `during` runs. */
  async function otherRelayClaims(store: MemoryOutboxStore, during: Promise<unknown>): Promise<string[]> {
    const taken: string[] = []
    let done = false
    void during.finally(() => {
      done = true
    })
    while (!done) {
      const claim = await store.claim({ limit: 100, leaseMs: 60_000 })
      taken.push(...claim.records.map((r) => r.id))
      await new Promise((r) => setTimeout(r, 20))
    }
    return taken
  }

  test('with a lease under a second, a slow publish keeps its lease (renewed every leaseMs / 3)', async () => {
    const { store, transport, relay, add } = setup({ leaseMs: 300 })
    const publish = transport.publish.bind(transport)
    transport.publish = async (records) => {
      await new Promise((r) => setTimeout(r, 1_200))
      return publish(records)
    }
    const lost: RelayEvents['leaseLost'][] = []
    relay.on('leaseLost', (e) => lost.push(e))
    await add('a', 'a1')
    await add('b', 'b1')
    const cycle = relay.runOnce()
    expect(await otherRelayClaims(store, cycle)).toEqual([])
    expect(await cycle).toBe(2)
    expect(lost).toEqual([])
    expect(store.rows.map((r) => r.status)).toEqual(['published', 'published'])
  })

  test('the lease is renewed during a slow dead-letter publish too', async () => {
    const letters = new MemoryTransport()
    const { store, transport, relay, add } = setup({
      leaseMs: 300,
      deadLetter: { topic: 'orders.dlq', transport: letters },
    })
    transport.failWith = () => ({ status: 'failed', error: 'INVALID_RECORD', retriable: false })
    const publishLetters = letters.publish.bind(letters)
    letters.publish = async (records) => {
      await new Promise((r) => setTimeout(r, 1_200))
      return publishLetters(records)
    }
    const lost: RelayEvents['leaseLost'][] = []
    relay.on('leaseLost', (e) => lost.push(e))
    await add('a', 'bad')
    const cycle = relay.runOnce()
    expect(await otherRelayClaims(store, cycle)).toEqual([])
    await cycle
    expect(lost).toEqual([])
    expect(store.rows.map((r) => r.status)).toEqual(['dead'])
    expect(letters.delivered).toHaveLength(1)
  })

  test('an AbortSignal stops the relay', async () => {
    const controller = new AbortController()
    const { relay } = setup({ signal: controller.signal })
    await relay.start()
    controller.abort()
    await until(() => !relay.running)
  })

  test('starting twice is ALREADY_STARTED; bad options are INVALID_OPTIONS', async () => {
    const { relay, store, transport } = setup()
    await relay.start()
    const error = await relay.start().catch((e) => e)
    expect(isOutboxKitError(error, ErrorCode.AlreadyStarted)).toBe(true)
    await relay.stop()
    for (const bad of [{ store, transport, batchSize: 0 }, { store }, { transport }]) {
      let thrown: unknown
      try {
        new Relay(bad as never)
      } catch (e) {
        thrown = e
      }
      expect(isOutboxKitError(thrown, ErrorCode.InvalidOptions)).toBe(true)
    }
  })

  test('lag is reported while pending records wait', async () => {
    const { relay, transport, add } = setup({ lagIntervalMs: 1 })
    transport.throwWith = () => new Error('down')
    const lags: RelayEvents['lag'][] = []
    relay.on('lag', (e) => lags.push(e))
    await add('a', 'a1')
    await relay.start()
    await until(() => lags.length > 0)
    await relay.stop()
    expect(lags[0]!.pending).toBe(1)
  })

  test('backoff grows exponentially, is capped, and is jittered within [d/2, d]', () => {
    const options = { initialMs: 100, maxMs: 1_000, multiplier: 2 }
    expect(backoffDelay(1, options, () => 0)).toBe(50)
    expect(backoffDelay(1, options, () => 1)).toBe(100)
    expect(backoffDelay(3, options, () => 1)).toBe(400)
    expect(backoffDelay(10, options, () => 1)).toBe(1_000)
    expect(backoffDelay(10, options, () => 0)).toBe(500)
  })
})
