import { ErrorCode, OutboxKitError } from '../../core/errors.js'
import type { ClaimedRecord } from '../../core/message.js'
import { positiveInteger } from '../../core/options.js'
import type { PublishOutcome, Transport, TransportCapabilities } from '../../core/transport.js'

/** A record as the memory transport received it. */
export interface DeliveredRecord {
  readonly topic: string
  readonly key: string
  readonly id: string
  readonly type: string
  readonly payload: Uint8Array
  readonly headers: Readonly<Record<string, string>>
}

export interface MemoryTransportOptions {
  /**
   * Largest payload accepted, in bytes; a larger record fails at once, not retriable, as a
   * broker's record limit makes it. Default 1 000 000.
   */
  maxPayloadBytes?: number
}

/**
 * The reference {@link Transport}: keeps published records in memory, in order. `failWith` lets
 * tests make chosen records fail; `throwWith` makes a whole publish throw (broker unreachable).
 */
export class MemoryTransport implements Transport {
  readonly name = 'memory'
  readonly capabilities: TransportCapabilities = { transactions: true, deduplicates: false }
  readonly delivered: DeliveredRecord[] = []
  readonly #maxPayloadBytes: number
  /** Return an outcome to fail a record, or undefined to publish it. */
  failWith: ((record: ClaimedRecord) => PublishOutcome | undefined) | undefined
  /** Return an error to make the whole publish call throw it. */
  throwWith: ((records: readonly ClaimedRecord[]) => Error | undefined) | undefined
  closed = false

  constructor(options: MemoryTransportOptions = {}) {
    this.#maxPayloadBytes = positiveInteger(
      'maxPayloadBytes',
      options.maxPayloadBytes ?? 1_000_000,
      undefined,
      'memory',
    )
  }

  async publish(records: readonly ClaimedRecord[]): Promise<readonly PublishOutcome[]> {
    if (this.closed)
      throw new OutboxKitError(ErrorCode.Closed, 'The memory transport is closed.', { source: 'memory' })
    const thrown = this.throwWith?.(records)
    if (thrown) throw thrown
    // Like a Kafka partition batch: once a key's record fails, its later records are not sent.
    const failedKeys = new Set<string>()
    return records.map((record): PublishOutcome => {
      if (failedKeys.has(record.key)) {
        return { status: 'failed', error: 'Not sent: an earlier record of its key failed.', retriable: true }
      }
      const failure =
        record.payload.byteLength > this.#maxPayloadBytes
          ? {
              status: 'failed' as const,
              error: `The payload is ${record.payload.byteLength} bytes; the limit (maxPayloadBytes) is ${this.#maxPayloadBytes}.`,
              retriable: false,
            }
          : this.failWith?.(record)
      if (failure) {
        failedKeys.add(record.key)
        return failure
      }
      this.delivered.push({
        topic: record.topic,
        key: record.key,
        id: record.id,
        type: record.type,
        payload: record.payload,
        headers: record.headers,
      })
      return { status: 'published' }
    })
  }

  async close(): Promise<void> {
    this.closed = true
  }
}
