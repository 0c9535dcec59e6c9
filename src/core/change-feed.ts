import type { ClaimedRecord } from './message.js'
import type { DeadRecord } from './store.js'

/**
 * A position in a database's log, opaque to the core: a Postgres LSN (`0/16B3748`), a binlog file
 * and offset (`mysql-bin.000003:1234`), a GTID set. A feed compares and persists its own positions.
 */
export type FeedPosition = string

/** What {@link ChangeFeed.read} returns: records in commit order, and where they end. */
export interface FeedBatch {
  /**
   * Outbox records of whole committed transactions, in commit order (a transaction larger than
   * the limit may be split over several batches). `attempts` is 1 and `shard` is absent: the
   * log-tailing relay counts attempts itself.
   */
  readonly records: readonly ClaimedRecord[]
  /**
   * The log position once every record of this batch and of the batches before it is settled
   * (published, or dead): {@link ChangeFeed.confirm} is called with it then. Absent when the batch
   * ends inside a transaction. A batch with no records may carry one (the log moved on through
   * changes outside the outbox), so that an idle outbox does not hold the log back.
   */
  readonly position?: FeedPosition
}

/**
 * A record a log-tailing relay gave up on, as {@link ChangeFeed.markDead} receives it: its id and
 * error, and the record as the feed handed it out, for a feed that has no row to mark (a table-less
 * mode, rows deleted as they were added) and keeps the whole record instead.
 */
export interface DeadFeedRecord extends DeadRecord {
  readonly record?: ClaimedRecord
}

/** How far a feed's confirmed position is behind the end of the log. */
export interface FeedLag {
  /** Bytes of log between the confirmed position and the log's end, where the database tells it. */
  readonly bytes?: number
  /** Age of the oldest record read but not confirmed, in ms (0 when none). */
  readonly ageMs?: number
}

/**
 * Outbox records read from the database's log (change data capture) instead of claimed from the
 * table: Postgres logical replication, the MySQL/MariaDB binlog. A {@link LogRelay} reads a feed,
 * publishes each batch through the same transport, dead-letter and instrumentation path as the
 * polling relay, and confirms the feed's position only once the broker acknowledged (or the relay
 * dead-lettered) every record before it. A restarted feed resumes after its last confirmed
 * position, so at most the records read since are published again, with the same message ids.
 *
 * Adapters implement it; `outboxkit/memory` has the reference implementation.
 */
export interface ChangeFeed {
  /** A short name for errors and telemetry, e.g. `postgres-logical`. */
  readonly name: string
  /**
   * Starts reading after the last confirmed position (creating what the feed needs on first use
   * where it does so). One reader per feed at a time: while another process reads it, throws an
   * `OutboxKitError` with code `FEED_BUSY` (retriable), and the relay tries again later, which
   * makes a second relay a standby.
   */
  open(): Promise<void>
  /**
   * The next records: resolves once at least one record arrived and either `limit` records are
   * read or no more are ready, or after `maxWaitMs` with what there is (possibly none), or at
   * once with none when `signal` aborts. Throws `STORE_FAILED` (retriable) when the connection
   * to the log is lost; the relay then closes the feed and opens it again, which resumes after
   * the last confirmed position.
   */
  read(options: {
    readonly limit: number
    readonly maxWaitMs: number
    readonly signal?: AbortSignal
  }): Promise<FeedBatch>
  /**
   * Every record up to `position` is settled: persist it (a replication slot's confirmed flush
   * position, a stored binlog position), so that a restart resumes after it and the database may
   * discard the log before it.
   */
  confirm(position: FeedPosition): Promise<void>
  /**
   * Records the relay gave up on (after `maxAttempts`, or refused by the broker): keeps them where
   * an operator can find and requeue them (the outbox row marked dead with its error, or a dead
   * table in a table-less mode, which `record` fills). Called before their position is confirmed.
   */
  markDead(records: readonly DeadFeedRecord[]): Promise<void>
  /** How far behind the feed is; optional. */
  lag?(): Promise<FeedLag>
  /** Stops reading and releases the connection; `open` may be called again afterwards. Safe to call twice. */
  close(): Promise<void>
}
