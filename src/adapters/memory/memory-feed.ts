import type { ChangeFeed, FeedBatch, FeedLag, FeedPosition } from '../../core/change-feed.js'
import { ErrorCode, OutboxKitError } from '../../core/errors.js'
import type { ClaimedRecord, OutboxRecord } from '../../core/message.js'
import type { DeadRecord } from '../../core/store.js'

/** One committed transaction in a {@link MemoryChangeLog}. */
interface LoggedTransaction {
  readonly records: readonly ClaimedRecord[]
  readonly committedAt: number
}

/**
 * An in-memory database log for {@link MemoryChangeFeed}: transactions of outbox records in
 * commit order, the confirmed position, and the records marked dead. The reference
 * implementation of the `ChangeFeed` contract, for unit tests of code built on it.
 */
export class MemoryChangeLog {
  readonly transactions: LoggedTransaction[] = []
  /** Transactions before this index are confirmed. */
  confirmed = 0
  /** Dead records, by id, with their error. */
  readonly dead = new Map<string, string>()
  /** The feed reading this log now, if any. */
  reader: MemoryChangeFeed | undefined
  /** Set by {@link lose}: the position cannot be resumed any more. */
  lost = false
  readonly #waiters = new Set<() => void>()

  /** Commits one transaction of records. */
  commit(records: readonly OutboxRecord[]): void {
    const committedAt = Date.now()
    this.transactions.push({
      records: records.map((r) => ({ ...r, attempts: 1, createdAt: new Date(committedAt) })),
      committedAt,
    })
    for (const wake of this.#waiters) wake()
  }

  /** The reading relay's connection died without closing (a killed process): the feed is free again. */
  dropReader(): void {
    this.reader = undefined
  }

  /** Drops the log the feed needs (like a dropped slot or purged binlog): the next read or open fails. */
  lose(): void {
    this.lost = true
    for (const wake of this.#waiters) wake()
  }

  /** @internal Resolves at the next commit, or after `ms`. */
  wait(ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer)
        this.#waiters.delete(done)
        signal?.removeEventListener('abort', done)
        resolve()
      }
      const timer = setTimeout(done, ms)
      this.#waiters.add(done)
      signal?.addEventListener('abort', done, { once: true })
    })
  }
}

export interface MemoryChangeFeedOptions {
  /** Makes `markDead` throw (a database outage) while it returns true. */
  failMarkDead?: () => boolean
  /** Makes `confirm` throw (the log connection lost) while it returns true. */
  failConfirm?: () => boolean
}

/**
 * A {@link ChangeFeed} over a {@link MemoryChangeLog}. Positions are transaction counts. One
 * reader at a time (`FEED_BUSY`); a lost log is `FEED_LOST`.
 */
export class MemoryChangeFeed implements ChangeFeed {
  readonly name = 'memory'
  readonly #log: MemoryChangeLog
  readonly #options: MemoryChangeFeedOptions
  /** The next transaction to read, and how far into it. */
  #next = 0
  #offset = 0
  #open = false

  constructor(log: MemoryChangeLog, options: MemoryChangeFeedOptions = {}) {
    this.#log = log
    this.#options = options
  }

  async open(): Promise<void> {
    if (this.#log.lost) throw lostError()
    if (this.#log.reader && this.#log.reader !== this) {
      throw new OutboxKitError(ErrorCode.FeedBusy, 'Another relay reads this memory feed.', {
        retriable: true,
      })
    }
    this.#log.reader = this
    this.#open = true
    this.#next = this.#log.confirmed
    this.#offset = 0
  }

  async read(options: { limit: number; maxWaitMs: number; signal?: AbortSignal }): Promise<FeedBatch> {
    this.#check()
    if (this.#next >= this.#log.transactions.length && options.maxWaitMs > 0 && !options.signal?.aborted)
      await this.#log.wait(options.maxWaitMs, options.signal)
    this.#check()
    const records: ClaimedRecord[] = []
    let position: FeedPosition | undefined
    while (records.length < options.limit && this.#next < this.#log.transactions.length) {
      const transaction = this.#log.transactions[this.#next]!
      const take = transaction.records.slice(this.#offset, this.#offset + options.limit - records.length)
      records.push(...take)
      this.#offset += take.length
      if (this.#offset >= transaction.records.length) {
        this.#next++
        this.#offset = 0
        position = String(this.#next)
      } else {
        position = undefined
      }
    }
    return position === undefined ? { records } : { records, position }
  }

  async confirm(position: FeedPosition): Promise<void> {
    this.#check()
    if (this.#options.failConfirm?.()) {
      throw new OutboxKitError(ErrorCode.StoreFailed, 'memory feed: confirm failed (simulated outage)', {
        retriable: true,
      })
    }
    const next = Number(position)
    if (next > this.#log.confirmed) this.#log.confirmed = next
  }

  async markDead(records: readonly DeadRecord[]): Promise<void> {
    this.#check()
    if (this.#options.failMarkDead?.()) {
      throw new OutboxKitError(ErrorCode.StoreFailed, 'memory feed: markDead failed (simulated outage)', {
        retriable: true,
      })
    }
    for (const record of records) this.#log.dead.set(record.id, record.error)
  }

  /** `bytes`: the payload bytes of the transactions after the confirmed position, as a log keeps them. */
  async lag(): Promise<FeedLag> {
    const oldest = this.#log.transactions[this.#log.confirmed]
    let bytes = 0
    for (const transaction of this.#log.transactions.slice(this.#log.confirmed)) {
      for (const record of transaction.records) bytes += record.payload.byteLength
    }
    return {
      bytes,
      ageMs: oldest && this.#log.confirmed < this.#next ? Date.now() - oldest.committedAt : 0,
    }
  }

  async close(): Promise<void> {
    this.#open = false
    if (this.#log.reader === this) this.#log.reader = undefined
  }

  #check(): void {
    if (this.#log.lost) throw lostError()
    if (!this.#open) throw new OutboxKitError(ErrorCode.Closed, 'This memory feed is not open.')
  }
}

function lostError(): OutboxKitError {
  return new OutboxKitError(ErrorCode.FeedLost, 'The memory change log was lost (simulated dropped slot).')
}
