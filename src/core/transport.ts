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
   * broker cannot be reached; the relay then treats every record as not published.
   */
  publish(records: readonly ClaimedRecord[]): Promise<readonly PublishOutcome[]>
  /** Releases the broker connection. */
  close(): Promise<void>
}
