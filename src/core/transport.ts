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
  /**
   * Exactly-once publishing (see `RelayOptions.exactlyOnce`): each publish commits, in the same
   * broker transaction as its records, which outbox rows it published, so a relay can learn after
   * a crash what the broker already holds. Absent on transports that cannot do it.
   */
  readonly exactlyOnce?: ExactlyOnceTransport
}

/**
 * The broker side of exactly-once publishing. A relay works in sessions: it opens one under its
 * own relay id, and publishes only through it. The session writes, with each transaction's
 * records, one progress entry per shard the transaction touched, naming every row of that shard
 * the session has committed and the relay has not yet reported settled in the database. The
 * latest committed entry of a shard therefore names every row of it that the broker holds and the
 * database may not show published yet.
 */
export interface ExactlyOnceTransport {
  /**
   * Opens a session for relay `relayId`. Fences every earlier session of the same relay id (in
   * any process): its open transaction is aborted and it can never commit again. Checks the
   * progress topic (creating it where the transport does so). Throws `PROGRESS_UNAVAILABLE` when
   * progress cannot be kept or read.
   */
  open(relayId: string): Promise<ExactlyOnceSession>
}

export interface ExactlyOnceSession {
  /** False once the session ended (after a failure, or closed): open a new one. */
  readonly active: boolean
  /**
   * Publishes records like {@link Transport.publish}, with the progress entries of their shards
   * in the same transaction. Every record must carry its `shard`. After any failure the session is
   * over: this and every later call throw, and the relay opens a new session (whose open fences
   * whatever this one left undecided) and reconciles before publishing again.
   */
  publish(records: readonly ClaimedRecord[]): Promise<readonly PublishOutcome[]>
  /**
   * The relay marked these rows published in the database: later entries need not name them. Ids
   * whose mark was fenced (another relay owns their shard now) must not be reported: they stay
   * named until the session ends, since this session may still commit records of that shard.
   */
  settled(ids: readonly string[]): void
  /**
   * Fences the sessions of other relays (each as if it opened again), so that nothing they left
   * open can commit after this returns. Called before reading the progress of shards taken from them.
   */
  fence(relayIds: readonly string[]): Promise<void>
  /**
   * Reads the progress topic with `read_committed` up to a point written after this session
   * opened and after every fence, and returns, for each of `shards` that has an entry, the row ids
   * its latest entry names. Throws `PROGRESS_UNAVAILABLE` when the topic cannot be read or is not
   * the one the session opened on.
   */
  readProgress(shards: readonly number[]): Promise<ReadonlyMap<number, readonly string[]>>
  /** Ends the session (its producer disconnects); an open transaction is aborted. */
  close(): Promise<void>
}
