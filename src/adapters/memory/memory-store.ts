/**
 * The reference implementation of {@link OutboxStore} and {@link InboxStore}, in memory.
 *
 * It is deliberately small and follows the contracts to the letter, so it is the place to read
 * when writing an adapter for another database. It is not durable: use it for unit tests and
 * examples, never in production.
 */
import { shareClaim } from '../../core/claim-share.js'
import { ErrorCode, OutboxKitError } from '../../core/errors.js'
import type { ClaimedRecord, OutboxRecord } from '../../core/message.js'
import { messageIdProblem } from '../../core/message-id.js'
import {
  checkClaimOptions,
  checkClaimOwnedOptions,
  checkPurgeOptions,
  checkRelayId,
  checkSyncShardsOptions,
} from '../../core/options.js'
import type {
  Claim,
  ClaimOptions,
  ClaimOwnedOptions,
  DeadRecord,
  ExclusiveOutcome,
  FailedRecord,
  InboxStore,
  OutboxStats,
  OutboxStore,
  PurgeOptions,
  RequeueResult,
  SettleResult,
  ShardLease,
  ShardState,
  StoreCapabilities,
  SyncShardsOptions,
} from '../../core/store.js'

/** Shards of a memory database (the SQL stores have the same number). */
export const MEMORY_SHARD_COUNT = 64

/** The shard of a key: FNV-1a of its UTF-16 code units. Any stable hash serves; SQL stores use md5. */
export function memoryShardOf(key: string, shardCount: number = MEMORY_SHARD_COUNT): number {
  let hash = 0x811c9dc5
  for (let i = 0; i < key.length; i++) {
    hash ^= key.charCodeAt(i)
    hash = Math.imul(hash, 0x01000193) >>> 0
  }
  return hash % shardCount
}

/** One row of the shard table: who owns the shard, since which epoch, until when. */
export interface MemoryShard {
  owner: string | null
  epoch: number
  leaseUntil: number
}

export type OutboxRowStatus = 'pending' | 'published' | 'dead'

/** One outbox row, as a SQL store would keep it. */
export interface MemoryOutboxRow {
  /** Insertion order; the order a key's records are published in. */
  readonly seq: number
  readonly record: OutboxRecord
  readonly createdAt: number
  status: OutboxRowStatus
  attempts: number
  availableAt: number
  leaseUntil: number | null
  claimToken: string | null
  publishedAt: number | null
  lastError: string | null
}

export interface MemoryInboxRow {
  readonly consumer: string
  readonly messageId: string
  readonly processedAt: number
}

/** A transaction of the memory store. Writes become visible when it commits. */
export class MemoryTransaction {
  readonly outbox: OutboxRecord[] = []
  readonly inbox: MemoryInboxRow[] = []
  /** Callbacks run after commit (the memory store's stand-in for business rows). */
  readonly onCommit: (() => void)[] = []
  state: 'open' | 'committed' | 'rolled back' = 'open'
}

export interface MemoryDatabaseOptions {
  /** The store's clock, in Unix milliseconds. Tests replace it to move time. */
  now?: () => number
}

/**
 * The memory "database": both tables and the transactions over them. Create the stores from it,
 * `new MemoryOutboxStore(db)` and `new MemoryInboxStore(db)`, so they share transactions.
 */
export class MemoryDatabase {
  /** All outbox rows in insertion order. Tests read it directly. */
  readonly rows: MemoryOutboxRow[] = []
  /** Committed inbox rows by `consumer \u0000 messageId`. */
  readonly inbox = new Map<string, MemoryInboxRow>()
  /** The shard table, indexed by shard number. */
  readonly shards: MemoryShard[] = Array.from({ length: MEMORY_SHARD_COUNT }, () => ({
    owner: null,
    epoch: 0,
    leaseUntil: 0,
  }))
  /** Registered relays and when their registration expires. */
  readonly relays = new Map<string, number>()
  /** Names of the locks `runExclusive` holds now. */
  readonly locks = new Set<string>()

  readonly now: () => number
  #seq = 0
  /** Inbox keys written by open transactions, with a promise that settles when each ends. */
  readonly #inboxInFlight = new Map<string, Promise<void>>()
  /** For each transaction, a promise that settles when it commits or rolls back. */
  readonly #finished = new WeakMap<MemoryTransaction, Promise<void>>()
  #waiters: (() => void)[] = []

  constructor(options: MemoryDatabaseOptions = {}) {
    this.now = options.now ?? Date.now
  }

  async transaction<T>(fn: (tx: MemoryTransaction) => Promise<T>): Promise<T> {
    const tx = new MemoryTransaction()
    let finish!: () => void
    this.#finished.set(
      tx,
      new Promise<void>((resolve) => {
        finish = resolve
      }),
    )
    try {
      const result = await fn(tx)
      if (tx.state !== 'open') throw new OutboxKitError(ErrorCode.Closed, 'The transaction already ended.')
      this.#commit(tx)
      return result
    } catch (error) {
      tx.state = 'rolled back'
      throw error
    } finally {
      // The inbox pairs this transaction held are free again for other writers.
      for (const row of tx.inbox) {
        const key = inboxKey(row.consumer, row.messageId)
        if (this.#inboxInFlight.get(key) === this.#finished.get(tx)) this.#inboxInFlight.delete(key)
      }
      finish()
    }
  }

  /** Moves a dead row to the end of the table, as a new pending row with the same record. */
  requeueRow(row: MemoryOutboxRow): void {
    this.rows.splice(this.rows.indexOf(row), 1)
    this.rows.push({
      ...row,
      seq: ++this.#seq,
      status: 'pending',
      attempts: 0,
      availableAt: this.now(),
      leaseUntil: null,
      claimToken: null,
    })
    this.wake()
  }

  #commit(tx: MemoryTransaction): void {
    const now = this.now()
    for (const record of tx.outbox) {
      this.rows.push({
        seq: ++this.#seq,
        record,
        createdAt: now,
        status: 'pending',
        attempts: 0,
        availableAt: now,
        leaseUntil: null,
        claimToken: null,
        publishedAt: null,
        lastError: null,
      })
    }
    for (const row of tx.inbox) this.inbox.set(inboxKey(row.consumer, row.messageId), row)
    tx.state = 'committed'
    for (const callback of tx.onCommit) callback()
    if (tx.outbox.length > 0) this.wake()
  }

  /** `runExclusive` of both stores: one holder per name among the stores of this database. */
  async runExclusive<T>(name: string, fn: () => Promise<T>): Promise<ExclusiveOutcome<T>> {
    if (this.locks.has(name)) return { acquired: false }
    this.locks.add(name)
    try {
      return { acquired: true, value: await fn() }
    } finally {
      this.locks.delete(name)
    }
  }

  waitForChange(signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      if (signal.aborted) return resolve()
      const done = () => {
        signal.removeEventListener('abort', done)
        this.#waiters = this.#waiters.filter((w) => w !== done)
        resolve()
      }
      this.#waiters.push(done)
      signal.addEventListener('abort', done, { once: true })
    })
  }

  wake(): void {
    for (const waiter of this.#waiters) waiter()
  }

  /** Inserts rows into the open transaction (what the outbox store's `add` does). */
  insertOutbox(tx: MemoryTransaction, records: readonly OutboxRecord[]): void {
    assertOpen(tx)
    for (const record of records) {
      const duplicate =
        this.rows.some((row) => row.record.id === record.id) || tx.outbox.some((r) => r.id === record.id)
      if (duplicate) {
        throw new OutboxKitError(ErrorCode.StoreFailed, `A message with id ${record.id} already exists.`, {
          source: 'memory',
        })
      }
      tx.outbox.push(record)
    }
  }

  /**
   * Records an inbox pair in `tx` like a unique index would: waits while another open transaction
   * holds the pair, then checks and writes with no await in between, so exactly one writer wins.
   */
  async recordInbox(tx: MemoryTransaction, consumer: string, messageId: string): Promise<boolean> {
    assertOpen(tx)
    const key = inboxKey(consumer, messageId)
    if (tx.inbox.some((row) => inboxKey(row.consumer, row.messageId) === key)) return false
    for (let inFlight = this.#inboxInFlight.get(key); inFlight; inFlight = this.#inboxInFlight.get(key)) {
      await inFlight
    }
    if (this.inbox.has(key)) return false
    tx.inbox.push({ consumer, messageId, processedAt: this.now() })
    this.#inboxInFlight.set(key, this.#finished.get(tx)!)
    return true
  }
}

/** The outbox table of a {@link MemoryDatabase}. */
export class MemoryOutboxStore implements OutboxStore<MemoryTransaction> {
  readonly name = 'memory'
  readonly capabilities: StoreCapabilities = { concurrentClaims: true, notify: true, shards: true }
  readonly db: MemoryDatabase
  /** Claims made by `claimOwned`, by token: the epochs they were made under and the ids they hold. */
  readonly #ownedClaims = new Map<string, OwnedClaim>()

  constructor(db: MemoryDatabase = new MemoryDatabase()) {
    this.db = db
  }

  transaction<T>(fn: (tx: MemoryTransaction) => Promise<T>): Promise<T> {
    return this.db.transaction(fn)
  }

  get rows(): MemoryOutboxRow[] {
    return this.db.rows
  }

  async add(tx: MemoryTransaction, records: readonly OutboxRecord[]): Promise<void> {
    this.db.insertOutbox(tx, records)
  }

  async claim(options: ClaimOptions): Promise<Claim> {
    checkClaimOptions(options, undefined, this.name)
    const now = this.db.now()
    const token = crypto.randomUUID()
    const records: ClaimedRecord[] = []
    // A key is blocked once one of its pending rows cannot be claimed: later rows must wait.
    const blockedKeys = new Set<string>()
    const claimable: { key: string; row: MemoryOutboxRow }[] = []
    for (const row of this.db.rows) {
      if (row.status !== 'pending') continue
      const key = row.record.key
      if (blockedKeys.has(key)) continue
      const leased = row.leaseUntil !== null && row.leaseUntil > now
      if (leased || row.availableAt > now) {
        blockedKeys.add(key)
        continue
      }
      claimable.push({ key, row })
    }
    for (const { row } of shareClaim(claimable, options.limit)) {
      row.attempts++
      row.leaseUntil = now + options.leaseMs
      row.claimToken = token
      records.push({ ...row.record, attempts: row.attempts, createdAt: new Date(row.createdAt) })
    }
    return { token, records }
  }

  #settle(token: string, ids: readonly string[], apply: (row: MemoryOutboxRow) => void): SettleResult {
    const owned = this.#ownedClaims.get(token)
    if (owned || token.startsWith(SHARD_TOKEN_PREFIX)) return this.#settleOwned(token, owned, ids, apply)
    const lost: string[] = []
    let settled = 0
    for (const id of ids) {
      const row = this.db.rows.find((r) => r.record.id === id)
      if (!row || row.claimToken !== token || row.status !== 'pending') {
        lost.push(id)
        continue
      }
      apply(row)
      row.claimToken = null
      row.leaseUntil = null
      settled++
    }
    return { settled, lost }
  }

  /**
   * A settle of a `claimOwned` claim: only rows of shards whose owner and epoch are still those of
   * the claim are written, so a relay that lost a shard cannot touch its rows.
   */
  #settleOwned(
    token: string,
    claim: OwnedClaim | undefined,
    ids: readonly string[],
    apply: ((row: MemoryOutboxRow) => void) | undefined,
  ): SettleResult {
    const lost: string[] = []
    let settled = 0
    for (const id of new Set(ids)) {
      const row = claim?.ids.has(id) ? this.db.rows.find((r) => r.record.id === id) : undefined
      if (
        !claim ||
        !row ||
        row.status !== 'pending' ||
        !this.#stillOwns(claim, memoryShardOf(row.record.key))
      ) {
        lost.push(id)
        continue
      }
      // A release (no `apply`) writes nothing and leaves the claim as it was.
      if (apply) {
        apply(row)
        claim.ids.delete(id)
      }
      settled++
    }
    if (claim?.ids.size === 0) this.#ownedClaims.delete(token)
    return { settled, lost }
  }

  #stillOwns(claim: OwnedClaim, shard: number): boolean {
    const row = this.db.shards[shard]
    return row !== undefined && row.owner === claim.relayId && row.epoch === claim.epochs.get(shard)
  }

  async markPublished(token: string, ids: readonly string[]): Promise<SettleResult> {
    const now = this.db.now()
    const owned = this.#ownedClaims.has(token)
    return this.#settle(token, ids, (row) => {
      // A claimOwned claim counted nothing when it was made: the attempt counts now.
      if (owned) row.attempts++
      row.status = 'published'
      row.publishedAt = now
    })
  }

  async markFailed(token: string, failures: readonly FailedRecord[]): Promise<SettleResult> {
    const now = this.db.now()
    const owned = this.#ownedClaims.has(token)
    const byId = new Map(failures.map((f) => [f.id, f]))
    return this.#settle(token, [...byId.keys()], (row) => {
      const failure = byId.get(row.record.id)!
      if (owned) row.attempts++
      row.availableAt = now + failure.retryInMs
      row.lastError = failure.error
    })
  }

  async markDead(token: string, records: readonly DeadRecord[]): Promise<SettleResult> {
    const owned = this.#ownedClaims.has(token)
    const byId = new Map(records.map((r) => [r.id, r]))
    return this.#settle(token, [...byId.keys()], (row) => {
      if (owned) row.attempts++
      row.status = 'dead'
      row.lastError = byId.get(row.record.id)!.error
    })
  }

  async release(token: string, ids?: readonly string[]): Promise<SettleResult> {
    const owned = this.#ownedClaims.get(token)
    if (owned) {
      // Nothing was written at claim time, so there is nothing to give back: only the fence is read.
      return this.#settleOwned(token, owned, ids ?? [...owned.ids], undefined)
    }
    const targets = ids ?? this.db.rows.filter((r) => r.claimToken === token).map((r) => r.record.id)
    return this.#settle(token, targets, (row) => {
      // A release is not a delivery attempt.
      row.attempts = Math.max(0, row.attempts - 1)
    })
  }

  async extendLease(token: string, leaseMs: number): Promise<number> {
    const until = this.db.now() + leaseMs
    const owned = this.#ownedClaims.get(token)
    if (owned) {
      // Renews the claim's shards that it still owns; returns how many of its records they hold.
      let held = 0
      for (const id of owned.ids) {
        const row = this.db.rows.find((r) => r.record.id === id)
        if (row?.status === 'pending' && this.#stillOwns(owned, memoryShardOf(row.record.key))) held++
      }
      for (const shard of owned.epochs.keys()) {
        if (this.#stillOwns(owned, shard)) this.db.shards[shard]!.leaseUntil = until
      }
      return held
    }
    let held = 0
    for (const row of this.db.rows) {
      if (row.claimToken === token && row.status === 'pending') {
        row.leaseUntil = until
        held++
      }
    }
    return held
  }

  async syncShards(relayId: string, options: SyncShardsOptions): Promise<ShardState> {
    checkRelayId(relayId, this.name)
    const {
      leaseMs,
      release: released,
      acquire,
    } = checkSyncShardsOptions(options, MEMORY_SHARD_COUNT, this.name)
    const now = this.db.now()
    const until = now + leaseMs
    this.db.relays.set(relayId, until)
    for (const [relay, expires] of this.db.relays) if (expires <= now) this.db.relays.delete(relay)
    const shards = this.db.shards
    const release = new Set(released)
    let owned = 0
    for (const [number, shard] of shards.entries()) {
      if (shard.owner !== relayId) continue
      if (release.has(number)) {
        shard.owner = null
        shard.leaseUntil = 0
      } else {
        // Still ours even if the lease ran out: its epoch is unchanged, so nobody owned it since.
        shard.leaseUntil = until
        owned++
      }
    }
    const fairShare = Math.ceil(shards.length / this.db.relays.size)
    const takenFrom = new Map<number, string>()
    if (acquire) {
      // Free shards first, then expired ones; never a live shard of another relay.
      for (const takeExpired of [false, true]) {
        for (const shard of shards) {
          if (owned >= fairShare) break
          if (shard.owner === relayId) continue
          const free = shard.owner === null
          if (free === takeExpired || (!free && shard.leaseUntil > now)) continue
          if (shard.owner !== null) takenFrom.set(shards.indexOf(shard), shard.owner)
          shard.owner = relayId
          shard.epoch++
          shard.leaseUntil = until
          owned++
        }
      }
    }
    return {
      shardCount: shards.length,
      liveRelays: this.db.relays.size,
      fairShare,
      owned: this.#owned(relayId).map((lease) => {
        const previousOwner = takenFrom.get(lease.shard)
        return previousOwner === undefined ? lease : { ...lease, previousOwner }
      }),
    }
  }

  #owned(relayId: string): ShardLease[] {
    const owned: ShardLease[] = []
    for (const [shard, row] of this.db.shards.entries()) {
      if (row.owner === relayId) owned.push({ shard, epoch: row.epoch })
    }
    return owned
  }

  async reconcilePublished(ids: readonly string[]): Promise<number> {
    const wanted = new Set(ids)
    const now = this.db.now()
    let changed = 0
    for (const row of this.db.rows) {
      if (row.status !== 'pending' || !wanted.has(row.record.id)) continue
      row.status = 'published'
      row.publishedAt = now
      row.claimToken = null
      row.leaseUntil = null
      changed++
    }
    return changed
  }

  async claimOwned(relayId: string, options: ClaimOwnedOptions): Promise<Claim> {
    checkRelayId(relayId, this.name)
    const {
      limit,
      inFlight,
      excludeShards: excludedShards,
    } = checkClaimOwnedOptions(options, MEMORY_SHARD_COUNT, undefined, this.name)
    const now = this.db.now()
    const readable = new Map<number, number>()
    for (const [shard, row] of this.db.shards.entries()) {
      if (row.owner === relayId && row.leaseUntil > now && !excludedShards.has(shard))
        readable.set(shard, row.epoch)
    }
    const token = `${SHARD_TOKEN_PREFIX}${crypto.randomUUID()}`
    const records: ClaimedRecord[] = []
    const claim: OwnedClaim = { relayId, epochs: new Map(), ids: new Set() }
    // A key is closed once one of its pending rows is not ready: later rows must wait for it.
    const closedKeys = new Set<string>()
    const claimable: { key: string; row: MemoryOutboxRow; shard: number; epoch: number }[] = []
    for (const row of this.db.rows) {
      // Records in flight count as settled: their keys go on after them.
      if (row.status !== 'pending' || inFlight.has(row.record.id)) continue
      const key = row.record.key
      if (closedKeys.has(key)) continue
      const shard = memoryShardOf(key)
      const epoch = readable.get(shard)
      if (epoch === undefined) continue
      // A row still leased by a row-mode claim is in flight elsewhere.
      const leased = row.leaseUntil !== null && row.leaseUntil > now
      if (leased || row.availableAt > now) {
        closedKeys.add(key)
        continue
      }
      claimable.push({ key, row, shard, epoch })
    }
    for (const { row, shard, epoch } of shareClaim(claimable, limit)) {
      claim.epochs.set(shard, epoch)
      claim.ids.add(row.record.id)
      records.push({
        ...row.record,
        attempts: row.attempts + 1,
        createdAt: new Date(row.createdAt),
        shard,
      })
    }
    if (records.length > 0) this.#ownedClaims.set(token, claim)
    return { token, records, shards: [...claim.epochs].map(([shard, epoch]) => ({ shard, epoch })) }
  }

  async leaveShards(relayId: string): Promise<void> {
    checkRelayId(relayId, this.name)
    for (const shard of this.db.shards) {
      if (shard.owner === relayId) {
        shard.owner = null
        shard.leaseUntil = 0
      }
    }
    this.db.relays.delete(relayId)
  }

  async requeue(ids: readonly string[]): Promise<RequeueResult> {
    const requeued: string[] = []
    const skipped: string[] = []
    for (const id of new Set(ids)) {
      const row = this.db.rows.find((r) => r.record.id === id)
      if (row?.status === 'dead') {
        this.db.requeueRow(row)
        requeued.push(id)
      } else {
        skipped.push(id)
      }
    }
    return { requeued, skipped }
  }

  async purge(options: PurgeOptions): Promise<number> {
    checkPurgeOptions(options, this.name)
    const horizon = this.db.now() - options.olderThanMs
    const limit = options.limit ?? 10_000
    let removed = 0
    for (let i = 0; i < this.db.rows.length && removed < limit; ) {
      const row = this.db.rows[i]!
      const settled =
        row.status === 'published' ||
        (options.includeDead === true && row.status === 'dead') ||
        (options.includePending === true && row.status === 'pending')
      if (settled && row.createdAt < horizon) {
        this.db.rows.splice(i, 1)
        removed++
      } else {
        i++
      }
    }
    return removed
  }

  runExclusive<T>(name: string, fn: () => Promise<T>): Promise<ExclusiveOutcome<T>> {
    return this.db.runExclusive(name, fn)
  }

  async stats(): Promise<OutboxStats> {
    const now = this.db.now()
    let pending = 0
    let dead = 0
    let oldest = now
    for (const row of this.db.rows) {
      if (row.status === 'pending') {
        pending++
        oldest = Math.min(oldest, row.createdAt)
      } else if (row.status === 'dead') {
        dead++
      }
    }
    return { pending, dead, oldestPendingAgeMs: now - oldest }
  }

  waitForChange(signal: AbortSignal): Promise<void> {
    return this.db.waitForChange(signal)
  }
}

/** The inbox table of a {@link MemoryDatabase}. */
export class MemoryInboxStore implements InboxStore<MemoryTransaction> {
  readonly name = 'memory'
  readonly db: MemoryDatabase

  constructor(db: MemoryDatabase = new MemoryDatabase()) {
    this.db = db
  }

  transaction<T>(fn: (tx: MemoryTransaction) => Promise<T>): Promise<T> {
    return this.db.transaction(fn)
  }

  async markProcessed(tx: MemoryTransaction, consumer: string, messageId: string): Promise<boolean> {
    // Only what a SQL inbox can store, so code tested here behaves the same on a database.
    const problem = messageIdProblem(messageId) ?? messageIdProblem(consumer)
    if (problem !== undefined) {
      throw new OutboxKitError(ErrorCode.InvalidMessageId, `The inbox cannot store this pair: ${problem}.`, {
        source: 'memory',
      })
    }
    return this.db.recordInbox(tx, consumer, messageId)
  }

  async markProcessedMany(
    tx: MemoryTransaction,
    consumer: string,
    messageIds: readonly string[],
  ): Promise<boolean[]> {
    for (const messageId of messageIds) {
      const problem = messageIdProblem(messageId) ?? messageIdProblem(consumer)
      if (problem !== undefined) {
        throw new OutboxKitError(
          ErrorCode.InvalidMessageId,
          `The inbox cannot store this pair: ${problem}.`,
          {
            source: 'memory',
          },
        )
      }
    }
    // In sorted order, as the SQL store takes its row locks: two lists never wait on each other in a cycle.
    const recorded = new Set<string>()
    for (const messageId of [...new Set(messageIds)].sort()) {
      if (await this.db.recordInbox(tx, consumer, messageId)) recorded.add(messageId)
    }
    const answered = new Set<string>()
    return messageIds.map((id) => {
      if (answered.has(id)) return false
      answered.add(id)
      return recorded.has(id)
    })
  }

  /** The transaction is still open and holds the pair. */
  async confirmProcessed(tx: MemoryTransaction, consumer: string, messageId: string): Promise<boolean> {
    const key = inboxKey(consumer, messageId)
    return tx.state === 'open' && tx.inbox.some((row) => inboxKey(row.consumer, row.messageId) === key)
  }

  async isProcessed(consumer: string, messageId: string): Promise<boolean> {
    return this.db.inbox.has(inboxKey(consumer, messageId))
  }

  runExclusive<T>(name: string, fn: () => Promise<T>): Promise<ExclusiveOutcome<T>> {
    return this.db.runExclusive(name, fn)
  }

  async purge(options: { olderThanMs: number; consumer?: string; limit?: number }): Promise<number> {
    checkPurgeOptions(options, this.name)
    const horizon = this.db.now() - options.olderThanMs
    let removed = 0
    for (const [key, row] of this.db.inbox) {
      if (removed >= (options.limit ?? 10_000)) break
      if (
        row.processedAt < horizon &&
        (options.consumer === undefined || row.consumer === options.consumer)
      ) {
        this.db.inbox.delete(key)
        removed++
      }
    }
    return removed
  }
}

/** Tokens of `claimOwned` claims start with this, so a settle can tell them from row leases. */
const SHARD_TOKEN_PREFIX = 'shards:'

interface OwnedClaim {
  readonly relayId: string
  /** The epoch of each shard the claim read records from, at claim time. */
  readonly epochs: Map<number, number>
  /** The claim's records not settled yet. */
  readonly ids: Set<string>
}

function inboxKey(consumer: string, messageId: string): string {
  return `${consumer}\u0000${messageId}`
}

function assertOpen(tx: MemoryTransaction): void {
  if (!(tx instanceof MemoryTransaction) || tx.state !== 'open') {
    throw new OutboxKitError(ErrorCode.Closed, 'Pass an open transaction from memoryStore.transaction().', {
      source: 'memory',
    })
  }
}
