/**
 * The conformance suite every {@link Transport} must pass. Assertions read what reached the broker
 * through the harness's `read`, which must consume from the broker directly (not through the
 * transport under test), so a buggy transport cannot vouch for itself.
 */
import { ErrorCode, isOutboxKitError } from '../core/errors.js'
import { type ClaimedRecord, Headers } from '../core/message.js'
import type { PublishOutcome, Transport } from '../core/transport.js'
import { uuidv7 } from '../core/uuid.js'
import { captureError, skipTest, type TestApi } from './test-api.js'

/** A record as the broker holds it, read back by the harness. */
export interface TransportReadRecord {
  /** The message id, from the `outboxkit-id` header (or the broker's own id field). */
  readonly id: string
  /** The topic (or destination) it was read from. */
  readonly topic: string
  /** The record key (for brokers without keys, wherever the transport carries it, e.g. a header). */
  readonly key: string
  /** The payload bytes as stored by the broker. */
  readonly payload: Uint8Array
  /** Every header on the record, names and values as stored. */
  readonly headers: Readonly<Record<string, string>>
}

export interface TransportHarness {
  /** The transport under test, connected to a reachable broker. */
  readonly transport: Transport
  /**
   * A topic no other test uses, ready to receive records (created if the broker needs it). Names
   * are 1–249 characters of `[a-zA-Z0-9._-]`, as outbox topics are.
   */
  topic(): Promise<string>
  /**
   * Reads `topic` from the broker directly until every id in `ids` has been seen (at most 60 s),
   * and returns every record read by then: in broker order within each key. Records of a key
   * published before one of `ids` in broker order are therefore always among them.
   */
  read(topic: string, ids: readonly string[]): Promise<TransportReadRecord[]>
  /**
   * A transport of the same kind configured for a broker that cannot be reached (a closed port),
   * with timeouts short enough that a publish gives up within a few seconds.
   */
  unreachable(): Promise<Transport>
  /** Closes the transports the harness made and anything else it opened. */
  close(): Promise<void>
}

export interface TransportSuiteOptions {
  /**
   * A payload size, in bytes, the transport refuses as too large (reported failed, not
   * retriable, without affecting other keys). Omit when the transport has no record limit: the
   * tests of fatal failures are then skipped.
   */
  readonly oversizePayloadBytes?: number
  /** Timeout per test, ms. Default 90 000. */
  readonly timeoutMs?: number
}

const encoder = new TextEncoder()

/** A record as a relay hands it to a transport. */
function record(topic: string, key: string, n: number, extra: Partial<ClaimedRecord> = {}): ClaimedRecord {
  return {
    id: uuidv7(),
    topic,
    key,
    type: 'Step',
    payload: encoder.encode(JSON.stringify({ key, n })),
    headers: { [Headers.contentType]: 'application/json' },
    attempts: 1,
    createdAt: new Date(),
    ...extra,
  }
}

function statuses(outcomes: readonly PublishOutcome[]): string[] {
  return outcomes.map((o) => (o.status === 'published' ? 'ok' : o.retriable ? 'retry' : 'fatal'))
}

/** The ids of `records` with key `key`, in the order read. */
function idsOfKey(records: readonly TransportReadRecord[], key: string): string[] {
  return records.filter((r) => r.key === key).map((r) => r.id)
}

/**
 * Registers the transport conformance tests. `open` makes a fresh harness per test.
 *
 * @example
 * ```ts
 * import { describe, expect, test } from 'bun:test'
 * import { transportSuite } from 'outboxkit/testing'
 *
 * transportSuite({ describe, test, expect }, 'my-broker', openMyHarness, { oversizePayloadBytes: 2_000_000 })
 * ```
 */
export function transportSuite(
  api: TestApi,
  name: string,
  open: () => Promise<TransportHarness>,
  options: TransportSuiteOptions = {},
): void {
  const { describe, expect } = api
  const timeout = options.timeoutMs ?? 90_000
  const test = (title: string, fn: (h: TransportHarness, topic: string) => Promise<void>) =>
    api.test(
      title,
      async () => {
        const harness = await open()
        try {
          await fn(harness, await harness.topic())
        } finally {
          await harness.close()
        }
      },
      timeout,
    )
  const oversize = options.oversizePayloadBytes
  const fatalTest =
    oversize === undefined
      ? (title: string, _fn: unknown) => skipTest(api, title, 'this transport has no record limit')
      : test

  describe(`Transport conformance: ${name}`, () => {
    test('publishing nothing reports nothing', async (h) => {
      expect(await h.transport.publish([])).toEqual([])
    })

    test('every record is acknowledged, one outcome per record in input order, each key in order', async (h, topic) => {
      const keys = ['k-a', 'k-b', 'k-c', 'k-d', 'k-e']
      const batch: ClaimedRecord[] = []
      for (let n = 0; n < 40; n++) batch.push(record(topic, keys[n % keys.length]!, n))
      const outcomes = await h.transport.publish(batch)
      expect(outcomes).toHaveLength(batch.length)
      expect(statuses(outcomes)).toEqual(batch.map(() => 'ok'))
      const read = await h.read(
        topic,
        batch.map((r) => r.id),
      )
      for (const key of keys) {
        expect(idsOfKey(read, key)).toEqual(batch.filter((r) => r.key === key).map((r) => r.id))
      }
      expect(read).toHaveLength(batch.length)
    })

    test('records of one key published in successive calls stay in order', async (h, topic) => {
      const sent: ClaimedRecord[] = []
      for (let call = 0; call < 5; call++) {
        const batch = [0, 1, 2].map((i) => record(topic, 'k-seq', call * 3 + i))
        expect(statuses(await h.transport.publish(batch))).toEqual(['ok', 'ok', 'ok'])
        sent.push(...batch)
      }
      const read = await h.read(
        topic,
        sent.map((r) => r.id),
      )
      expect(idsOfKey(read, 'k-seq')).toEqual(sent.map((r) => r.id))
    })

    test('one call may carry records of several topics', async (h, topic) => {
      const other = await h.topic()
      const batch = [
        record(topic, 'k-1', 0),
        record(other, 'k-1', 1),
        record(topic, 'k-2', 2),
        record(other, 'k-2', 3),
      ]
      expect(statuses(await h.transport.publish(batch))).toEqual(['ok', 'ok', 'ok', 'ok'])
      const first = await h.read(topic, [batch[0]!.id, batch[2]!.id])
      const second = await h.read(other, [batch[1]!.id, batch[3]!.id])
      expect(first.map((r) => r.id).sort()).toEqual([batch[0]!.id, batch[2]!.id].sort())
      expect(second.map((r) => r.id).sort()).toEqual([batch[1]!.id, batch[3]!.id].sort())
    })

    test('payload bytes, key and headers arrive byte-exact, with the message id and type headers', async (h, topic) => {
      const bytes = new Uint8Array(256)
      for (let i = 0; i < 256; i++) bytes[i] = i
      const headers = {
        'content-type': 'application/x-custom',
        'x-tenant': 'acme',
        'x-unicode': 'crème brûlée ✓ 日本',
        'x-empty': '',
        traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
      }
      const binary = record(topic, 'clé-✓', 0, { type: 'Binary.Event', payload: bytes, headers })
      const empty = record(topic, 'k-empty', 1, { payload: new Uint8Array(0) })
      expect(statuses(await h.transport.publish([binary, empty]))).toEqual(['ok', 'ok'])
      const read = await h.read(topic, [binary.id, empty.id])
      const got = read.find((r) => r.id === binary.id)!
      expect(got.topic).toBe(topic)
      expect(got.key).toBe('clé-✓')
      expect(got.payload).toEqual(bytes)
      const expected: Record<string, string> = {
        ...headers,
        [Headers.messageId]: binary.id,
        [Headers.messageType]: 'Binary.Event',
      }
      for (const [header, value] of Object.entries(expected)) {
        expect([header, got.headers[header]]).toEqual([header, value])
      }
      expect(read.find((r) => r.id === empty.id)!.payload).toEqual(new Uint8Array(0))
    })

    fatalTest(
      'a record too large fails at once, not retriable; its key stops there, other keys and its earlier records go out',
      async (h, topic) => {
        const big = new Uint8Array(oversize ?? 0)
        const batch = [
          record(topic, 'k-big', 0),
          record(topic, 'k-other', 1),
          record(topic, 'k-big', 2, { payload: big }),
          record(topic, 'k-other', 3),
          record(topic, 'k-big', 4),
          record(topic, 'k-third', 5),
        ]
        const outcomes = await h.transport.publish(batch)
        expect(statuses(outcomes)).toEqual(['ok', 'ok', 'fatal', 'ok', 'retry', 'ok'])
        const failure = outcomes[2]!
        expect(failure.status === 'failed' && failure.error.length > 0).toBe(true)
        // A later record of the same key marks where the held-back one would have landed.
        const after = record(topic, 'k-big', 6)
        expect(statuses(await h.transport.publish([after]))).toEqual(['ok'])
        const read = await h.read(topic, [batch[0]!.id, batch[1]!.id, batch[3]!.id, batch[5]!.id, after.id])
        expect(idsOfKey(read, 'k-big')).toEqual([batch[0]!.id, after.id])
        expect(idsOfKey(read, 'k-other')).toEqual([batch[1]!.id, batch[3]!.id])
        expect(idsOfKey(read, 'k-third')).toEqual([batch[5]!.id])
      },
    )

    fatalTest('a call whose only record is too large reports it rather than throwing', async (h, topic) => {
      const outcomes = await h.transport.publish([
        record(topic, 'k-big', 0, { payload: new Uint8Array(oversize ?? 0) }),
      ])
      expect(statuses(outcomes)).toEqual(['fatal'])
    })

    test('an unreachable broker makes publish throw a retriable TRANSPORT_FAILED', async (h, topic) => {
      const transport = await h.unreachable()
      try {
        const error = await captureError(() => transport.publish([record(topic, 'k-1', 0)]))
        expect(isOutboxKitError(error, ErrorCode.TransportFailed)).toBe(true)
        expect((error as { retriable?: unknown }).retriable).toBe(true)
        expect(String((error as Error).message)).toContain('[outboxkit]')
      } finally {
        await transport.close()
      }
    })

    test('publish after close is refused with CLOSED', async (h, topic) => {
      expect(statuses(await h.transport.publish([record(topic, 'k-1', 0)]))).toEqual(['ok'])
      await h.transport.close()
      const error = await captureError(() => h.transport.publish([record(topic, 'k-1', 1)]))
      expect(isOutboxKitError(error, ErrorCode.Closed)).toBe(true)
      // Closing twice is harmless.
      await h.transport.close()
    })

    test('concurrent publish calls each get their own outcomes', async (h, topic) => {
      const a = [0, 1, 2].map((n) => record(topic, 'k-a', n))
      const b = [0, 1, 2].map((n) => record(topic, 'k-b', n))
      const [outA, outB] = await Promise.all([h.transport.publish(a), h.transport.publish(b)])
      expect(statuses(outA!)).toEqual(['ok', 'ok', 'ok'])
      expect(statuses(outB!)).toEqual(['ok', 'ok', 'ok'])
      const read = await h.read(
        topic,
        [...a, ...b].map((r) => r.id),
      )
      expect(idsOfKey(read, 'k-a')).toEqual(a.map((r) => r.id))
      expect(idsOfKey(read, 'k-b')).toEqual(b.map((r) => r.id))
    })

    // The relay publishes a record again when it died between the ack and the mark. A transport
    // that claims `deduplicates` must store it once (and still report it published); any other
    // must report both publishes published, so the consumer's inbox can drop the copy.
    test('a record published again with the same id is acknowledged again; stored once where the transport deduplicates', async (h, topic) => {
      const first = record(topic, 'k-dup', 0)
      expect(statuses(await h.transport.publish([first]))).toEqual(['ok'])
      expect(statuses(await h.transport.publish([{ ...first, attempts: 2 }]))).toEqual(['ok'])
      const after = record(topic, 'k-dup', 1)
      expect(statuses(await h.transport.publish([after]))).toEqual(['ok'])
      const read = await h.read(topic, [first.id, after.id])
      expect(idsOfKey(read, 'k-dup')).toEqual(
        h.transport.capabilities.deduplicates ? [first.id, after.id] : [first.id, first.id, after.id],
      )
    })
  })
}
