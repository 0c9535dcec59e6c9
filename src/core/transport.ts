import type { ClaimedRecord } from './message.js'

/** The outcome of publishing one record. */
export type PublishOutcome =
  | { readonly status: 'published' }
  | {
      readonly status: 'failed'
      /** Why, for logs and the row's `last_error`. */
      readonly error: string
      /**
       * False when publishing this record can never succeed (too large, invalid topic): the relay
       * dead-letters it at once. True when a later attempt may succeed.
       */
      readonly retriable: boolean
    }

export interface TransportCapabilities {
  /** Each `publish` call is atomic: all of its records become visible to read_committed readers, or none. */
  readonly transactions: boolean
  /**
   * The broker drops a record whose message id it already stored (within its dedupe window, e.g.
   * JetStream's `Nats-Msg-Id` duplicate window), so a record the relay publishes again after a
   * crash between the broker's ack and the database mark is stored once. Such a repeat is still
   * reported `published`. Default false: a repeat is stored again, and consumers drop it by id.
   */
  readonly deduplicates?: boolean
}

/**
 * Where a relay publishes records: a broker client behind a small contract. `outboxkit/kafka`
 * provides one on kafkajs.
 */
export interface Transport {
  /** A short name for errors and telemetry, e.g. `kafka`. */
  readonly name: string
  readonly capabilities: TransportCapabilities

  /**
   * Publishes records, in order per key, and reports one outcome per record in input order. A
   * record is reported `published` only once the broker acknowledged it durably. Once a record
   * fails, the later records of its key in the same call must not be published (report them
   * failed), or they would overtake it.
   *
   * Throws (rather than reporting outcomes) when the outcome of the whole call is unknown or the
   * broker cannot be reached: an `OutboxKitError` with code `TRANSPORT_FAILED` (retriable), or
   * `CLOSED` after {@link close}. The relay then treats every record as not published.
   *
   * `transportSuite` from `outboxkit/testing` checks all of this against a real broker.
   */
  publish(records: readonly ClaimedRecord[]): Promise<readonly PublishOutcome[]>
  /** Releases the broker connection; later publishes are refused with `CLOSED`. Safe to call twice. */
  close(): Promise<void>
}
