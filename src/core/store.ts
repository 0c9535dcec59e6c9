import type { ClaimedRecord, OutboxRecord } from './message.js'

/**
 * The contracts a storage backend implements. `Tx` is the backend's transaction handle (a Kysely
 * `Transaction`, a driver client, ...): the caller's transaction is passed through unchanged so
 * events are written atomically with the caller's business rows.
 *
 * Run `outboxkit/testing`'s conformance suites against a new implementation.
 */

/** What a backend can do. Capabilities a backend does not declare are treated as `false`. */
export interface StoreCapabilities {
  /** Several relays may claim from one table at once without taking the same rows. */
  readonly concurrentClaims: boolean
  /** `waitForChange` is implemented with push notifications (e.g. Postgres LISTEN/NOTIFY). */
  readonly notify: boolean
  /**
   * The store implements shard ownership (`syncShards`, `claimOwned`, `leaveShards`): relays
   * split the outbox's shards among themselves and each reads only its own.
   */
  readonly shards?: boolean
}

/** Options for {@link OutboxStore.claim}. */
export interface ClaimOptions {
  /** The most records to claim: an integer from 1 to `MAX_CLAIM_LIMIT` (10 000). */
  readonly limit: number
  /** How long the claim holds, measured by the store's (database's) clock: a positive integer. */
  readonly leaseMs: number
}

/**
 * A set of records a relay holds under a lease. Records of one key form a run in the order they
 * were written, and no other claim holds any record of those keys until this one is settled or
 * its lease expires.
 */
export interface Claim {
  /** Fences every later write: a settle call with a token that no longer holds the rows does nothing. */
  readonly token: string
  /** Claimed records, oldest first. Empty when nothing is ready. */
  readonly records: readonly ClaimedRecord[]
  /**
   * On a claim of `claimOwned`: the shard of each record and the epoch the shard had when the
   * claim read it (exactly-once publishes a record only under the epoch its shard was reconciled at).
   */
  readonly shards?: readonly ShardLease[]
}

/** A record that could not be published, and when to try again. */
export interface FailedRecord {
  readonly id: string
  readonly error: string
  /** Delay before the record may be claimed again, measured by the store's clock. */
  readonly retryInMs: number
}

/** A record given up on. */
export interface DeadRecord {
  readonly id: string
  readonly error: string
}

/** The outcome of a fenced write: how many of the given ids this claim still held. */
export interface SettleResult {
  /** Ids that were updated. */
  readonly settled: number
  /** Ids the claim no longer held (its lease expired and another claim took them, or they were settled). */
  readonly lost: readonly string[]
}

export interface OutboxStats {
  /** Rows not yet published nor dead, claimed or not. */
  readonly pending: number
  /** Rows given up on. */
  readonly dead: number
  /** Age of the oldest pending row in milliseconds, by the store's clock; 0 when none. */
  readonly oldestPendingAgeMs: number
}

/** Options for {@link OutboxStore.purge}. */
export interface PurgeOptions {
  /** Delete published rows written more than this long ago, in ms (≥ 0). */
  readonly olderThanMs: number
  /** Also delete dead rows older than `olderThanMs`. Default false: dead rows wait for a person. */
  readonly includeDead?: boolean
  /**
   * Also delete pending rows older than `olderThanMs`. Only for an outbox read by a log-tailing
   * relay (`LogRelay`): it takes each event from the database's log, where the INSERT stays after
   * the row is deleted, and never marks rows published. Never with the polling `Relay`, which
   * publishes from the table: pending rows deleted are events never published. Default false.
   */
  readonly includePending?: boolean
  /** Delete at most this many rows in one call: 1 to `MAX_PURGE_LIMIT` (1 000 000). Default 10 000. */
  readonly limit?: number
}

/** The outcome of {@link OutboxStore.requeue}. */
export interface RequeueResult {
  /** Ids that were dead and are pending again, at the end of their key. */
  readonly requeued: readonly string[]
  /** Ids left untouched: not dead (pending, published) or unknown. */
  readonly skipped: readonly string[]
}

/**
 * Shard ownership. Every record belongs to one of a fixed number of shards, chosen by a hash of its
 * key, so all records of a key share a shard. A relay that owns a shard is the only one reading
 * and settling its records: it needs no per-row lease and no head-of-key lock, and relays never
 * compete for the same rows. Ownership is a lease on the store's clock, renewed by `syncShards`;
 * each change of owner bumps the shard's `epoch`, and every settle call is fenced by the epoch
 * the records were claimed under, so a relay that lost a shard (paused past its lease) can no
 * longer write to its rows.
 */

/** A shard a relay owns, with the fencing epoch it was taken at. */
export interface ShardLease {
  readonly shard: number
  /** Bumped each time the shard changes owner. */
  readonly epoch: number
  /**
   * Set when this call took the shard from another relay whose lease had expired: that relay's id.
   * Absent when the shard was kept, or taken while free (given up or never owned).
   */
  readonly previousOwner?: string
}

/** Options for {@link OutboxStore.syncShards}. */
export interface SyncShardsOptions {
  /** How long the relay's registration and its shard leases hold, by the store's clock: a positive integer. */
  readonly leaseMs: number
  /** Owned shards to give up now (the relay has nothing of them in flight). */
  readonly release?: readonly number[]
  /** Take free or expired shards up to the fair share. Default true; false while stopping. */
  readonly acquire?: boolean
}

/** What {@link OutboxStore.syncShards} found and did. */
export interface ShardState {
  /** Shards in the table: fixed when the schema is created. */
  readonly shardCount: number
  /** Relays whose registration has not expired, this one included. */
  readonly liveRelays: number
  /** `ceil(shardCount / liveRelays)`: the most shards this relay should own. */
  readonly fairShare: number
  /** The shards this relay owns after the call, ascending, each with its current epoch. */
  readonly owned: readonly ShardLease[]
}

/** Options for {@link OutboxStore.claimOwned}. */
export interface ClaimOwnedOptions {
  /** The most records to return: an integer from 1 to `MAX_CLAIM_LIMIT` (10 000). */
  readonly limit: number
  /**
   * Ids of records this relay holds from earlier claims and has not settled yet. None of them is
   * returned. Their keys continue: the store answers as if these records were already settled,
   * so a key's next records come after its last one in flight (or the key is left out, where the
   * store cannot tell cheaply). The relay publishes a continuation only after the records before
   * it were published, and drops it when one of them was not.
   */
  readonly inFlight?: readonly string[]
  /** Owned shards to return nothing from (the relay is giving them up). */
  readonly excludeShards?: readonly number[]
}

/** What {@link ExclusiveRunner.runExclusive} did. */
export type ExclusiveOutcome<T> =
  | { readonly acquired: true; readonly value: T }
  | { readonly acquired: false }

/**
 * A named lock across every process that uses the same database (Postgres advisory lock, MariaDB
 * `GET_LOCK`): jobs that must run on one instance at a time, such as retention, take it.
 */
export interface ExclusiveRunner {
  /**
   * Takes the lock `name` without waiting and runs `fn` while holding it, then releases it. When
   * another session holds it, resolves `{ acquired: false }` at once without running `fn`. A lock
   * whose holder dies (its connection closes) is free again. `fn` may use the store freely; the
   * lock is held by a session of its own.
   */
  runExclusive<T>(name: string, fn: () => Promise<T>): Promise<ExclusiveOutcome<T>>
}

/** Runs a function in a new transaction of the backend, committing if it resolves. */
export interface TransactionRunner<Tx> {
  transaction<T>(fn: (tx: Tx) => Promise<T>): Promise<T>
}

/** The outbox table. */
export interface OutboxStore<Tx> extends TransactionRunner<Tx> {
  /** A short name for error messages and telemetry, e.g. `postgres`. */
  readonly name: string
  readonly capabilities: StoreCapabilities

  /** Inserts records inside the caller's transaction `tx`. They become visible when it commits. */
  add(tx: Tx, records: readonly OutboxRecord[]): Promise<void>

  /**
   * Claims up to `limit` ready records under a lease, in its own short transaction. Throws
   * `INVALID_OPTIONS` for options outside their range (see `checkClaimOptions`), never clamps.
   *
   * Must never hand out a record another live claim holds, nor a record of a key while an
   * earlier record of that key is unsettled (claimed elsewhere or waiting for a retry), and must
   * see records from transactions that committed out of id order. A key takes at most its share
   * of the claim ({@link shareClaim}) while other keys' claimable records are left out, so one
   * key's backlog never holds the others back.
   */
  claim(options: ClaimOptions): Promise<Claim>

  /**
   * Registers relay `relayId` as live for `leaseMs` (a heartbeat), renews the leases of the shards
   * it still owns, gives up those in `release`, and (unless `acquire` is false) takes free or
   * expired shards until it owns `fairShare`, bumping each taken shard's epoch. Concurrent calls
   * of different relays never take the same shard. Only when `capabilities.shards` is true.
   */
  syncShards?(relayId: string, options: SyncShardsOptions): Promise<ShardState>
  /**
   * Reads ready records of the shards `relayId` owns (lease not expired), writing nothing: leaving
   * the records `inFlight` out as if they were settled, for each key whose oldest pending record is
   * ready, the run of that key's ready
   * records from it up to the first one that is not (waiting for a retry), oldest first across
   * keys, at most `limit`, shared between keys like `claim`'s ({@link shareClaim}). A key whose
   * oldest pending record is not ready contributes nothing, and
   * however many records it holds it never hides another key's ready records (the cost stays
   * independent of the backlog). Each record carries `shard`, and `attempts` is the number of
   * failed attempts so far plus one. The token fences the settle calls by the shards' epochs at
   * claim time; `markFailed` and `markDead` on it count the attempt, `release` writes nothing and
   * `extendLease` renews the shards. Only when `capabilities.shards` is true.
   */
  claimOwned?(relayId: string, options: ClaimOwnedOptions): Promise<Claim>
  /** Gives up every shard `relayId` owns and removes its registration (graceful stop). */
  leaveShards?(relayId: string): Promise<void>
  /**
   * Exactly-once reconciliation: marks published the records with these ids that are still
   * pending (ready or waiting for a retry), whatever claim or shard holds them, because the
   * transport's own log proves they were published. Published, dead and unknown ids are left
   * alone. Returns how many rows changed. Needed by `RelayOptions.exactlyOnce`.
   */
  reconcilePublished?(ids: readonly string[]): Promise<number>

  /** Marks records published. Fenced by `token`. */
  markPublished(token: string, ids: readonly string[]): Promise<SettleResult>
  /** Releases records for a later retry and records the error. Fenced by `token`. */
  markFailed(token: string, failures: readonly FailedRecord[]): Promise<SettleResult>
  /** Marks records dead: never published, kept for inspection. Fenced by `token`. */
  markDead(token: string, records: readonly DeadRecord[]): Promise<SettleResult>
  /**
   * Gives records back without counting an attempt (graceful shutdown). Fenced by `token`.
   * Without `ids`, releases every record the claim still holds.
   */
  release(token: string, ids?: readonly string[]): Promise<SettleResult>
  /** Extends the lease of every record the claim still holds. Returns how many it holds. */
  extendLease(token: string, leaseMs: number): Promise<number>

  /**
   * Gives dead records another chance: each goes to the END of its key (after every record of the
   * key that is pending now, as if written now), with attempts reset and ready at once. The
   * message id is kept, so consumers still deduplicate it. Never makes an old record its key's
   * head again while later records of the key are claimed. Ids that are not dead are skipped.
   */
  requeue(ids: readonly string[]): Promise<RequeueResult>

  /**
   * Deletes old settled rows; returns how many. Throws `INVALID_OPTIONS` for options outside
   * their range (see `checkPurgeOptions`), and must never lock pending rows.
   */
  purge(options: PurgeOptions): Promise<number>
  stats(): Promise<OutboxStats>

  /** Optional: a lock across processes, see {@link ExclusiveRunner}. `Retention` needs it (or `lock: false`). */
  runExclusive?: ExclusiveRunner['runExclusive']

  /**
   * Resolves when new records may be ready (a notification arrived), or when `signal` aborts.
   * Only called when `capabilities.notify` is true.
   */
  waitForChange?(signal: AbortSignal): Promise<void>
  /** Releases connections the store opened itself (never the caller's database handle). */
  close?(): Promise<void>
}

/** The inbox table: which messages each consumer has processed. */
export interface InboxStore<Tx> extends TransactionRunner<Tx> {
  readonly name: string

  /**
   * Records that `consumer` processed `messageId`, inside `tx`. Returns `false`, writing nothing,
   * when it was already recorded by a committed transaction. A concurrent transaction recording
   * the same pair waits for the first one to finish, so exactly one of them gets `true`.
   */
  markProcessed(tx: Tx, consumer: string, messageId: string): Promise<boolean>
  /**
   * Called once, right before `tx` commits, after `markProcessed` returned `true` in it: whether
   * `tx` is still the open transaction that recorded the pair. Returns `false` when the database
   * already ended or aborted it behind the caller's back (MariaDB rolls the whole transaction back
   * on a deadlock, and later statements then run outside it; Postgres refuses every statement of
   * an aborted transaction, and its commit only rolls back), so the caller must roll back and try
   * again instead of reporting success.
   */
  confirmProcessed(tx: Tx, consumer: string, messageId: string): Promise<boolean>
  /**
   * Records many message ids of `consumer` inside `tx`, in one statement where the backend can,
   * and answers for each id, in the order given, whether this call recorded it (`true`) or it
   * was already recorded by a committed transaction (`false`, nothing written). An id given
   * twice is recorded once: its first occurrence answers `true` (when new), later ones `false`.
   * A concurrent transaction recording one of the pairs makes this call wait for it, as
   * {@link markProcessed} does. `confirmProcessed` with any id that answered `true` then tells
   * whether `tx` is still the transaction that recorded them. Every id is checked before
   * anything is written: one unstorable id refuses the whole call (`INVALID_MESSAGE_ID`).
   *
   * Optional: without it, `IdempotentConsumer.processBatch` calls `markProcessed` once per id.
   */
  markProcessedMany?(tx: Tx, consumer: string, messageIds: readonly string[]): Promise<boolean[]>
  /** Whether `consumer` has processed `messageId` (committed). */
  isProcessed(consumer: string, messageId: string): Promise<boolean>
  /** Deletes records older than `olderThanMs` (for one consumer, or all); returns how many. */
  purge(options: {
    readonly olderThanMs: number
    readonly consumer?: string
    readonly limit?: number
  }): Promise<number>
  /** Optional: a lock across processes, see {@link ExclusiveRunner}. */
  runExclusive?: ExclusiveRunner['runExclusive']
}
