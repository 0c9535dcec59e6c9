import { ErrorCode, OutboxKitError } from './errors.js'
import type { ClaimedRecord } from './message.js'
import type { Claim, OutboxStore, ShardLease } from './store.js'
import type { ExactlyOnceSession, ExactlyOnceTransport } from './transport.js'

/** What a relay in exactly-once mode reports after reconciling shards. */
export interface ReconciledEvent {
  /** The shards reconciled. */
  readonly shards: readonly number[]
  /** Relays fenced first, because these shards were taken from them. */
  readonly fenced: readonly string[]
  /** Rows the broker already held that were still pending in the database, now marked published. */
  readonly marked: number
  /** Rows the progress topic named for these shards (marked or already published). */
  readonly named: number
  readonly durationMs: number
}

/**
 * The relay's side of exactly-once publishing (`RelayOptions.exactlyOnce`), for ownership
 * `'shards'`:
 *
 * - It publishes only through a session of the transport. A session that failed in any way is
 *   over; before anything else is published a new one is opened, whose open fences the old one
 *   (its undecided transaction is aborted or was committed, never both later).
 * - A shard's records are published only under the shard epoch it was reconciled at, by the
 *   current session: the relay first fences the relay it took the shard from, reads the progress
 *   topic to its end, and marks published every row that the shard's latest progress entry names
 *   (the broker holds them). A record claimed under another epoch, or by an earlier session, is
 *   left for a later claim. A batch committed whose marks then failed sends its shards through
 *   the same reconciliation before the next claim publishes from them.
 * - While a session's outcome is undecided the relay gives up no shard, so a shard taken while free
 *   never needs a fence.
 */
export class ExactlyOnceCoordinator<Tx> {
  readonly #store: OutboxStore<Tx>
  readonly #transport: ExactlyOnceTransport
  readonly #relayId: string
  #session: ExactlyOnceSession | undefined
  /** Shard → the epoch it was reconciled at, under the current session. */
  readonly #reconciled = new Map<number, number>()
  /** Shard → the relay it was last taken from, to fence before reconciling it. */
  readonly #takenFrom = new Map<number, string>()

  constructor(store: OutboxStore<Tx>, transport: ExactlyOnceTransport, relayId: string) {
    this.#store = store
    this.#transport = transport
    this.#relayId = relayId
  }

  /** The current session, while it is active. */
  get session(): ExactlyOnceSession | undefined {
    return this.#session?.active ? this.#session : undefined
  }

  /**
   * Whether no transaction of this relay can be undecided: no session ever published, or the
   * current one is active (every transaction it began was committed or aborted for certain).
   */
  get decided(): boolean {
    return this.#session === undefined || this.#session.active
  }

  /** A sync's leases: remembers whom each taken shard came from. */
  leases(owned: readonly ShardLease[]): void {
    const ownedShards = new Set<number>()
    for (const lease of owned) {
      ownedShards.add(lease.shard)
      if (lease.previousOwner !== undefined && lease.previousOwner !== this.#relayId)
        this.#takenFrom.set(lease.shard, lease.previousOwner)
    }
    for (const shard of this.#reconciled.keys()) if (!ownedShards.has(shard)) this.#reconciled.delete(shard)
  }

  /**
   * Before a claim: opens a session if there is none active, then reconciles every owned shard not
   * reconciled at its current epoch. Returns what it reconciled, or undefined when nothing needed it.
   */
  async prepare(owned: readonly ShardLease[]): Promise<ReconciledEvent | undefined> {
    if (!this.#session?.active) {
      // The new session's open fences the old one; until it succeeds the old one stays current,
      // undecided, so no shard is given up meanwhile.
      const session = await this.#transport.open(this.#relayId)
      await this.#session?.close().catch(() => {})
      this.#session = session
      this.#reconciled.clear()
    }
    const session = this.#session
    const pending = owned.filter((lease) => this.#reconciled.get(lease.shard) !== lease.epoch)
    if (pending.length === 0) return undefined
    const started = Date.now()
    const shards = pending.map((lease) => lease.shard)
    const fenced = [...new Set(shards.map((s) => this.#takenFrom.get(s)).filter((r) => r !== undefined))]
    if (fenced.length > 0) await session.fence(fenced)
    const progress = await session.readProgress(shards)
    const ids = [...new Set([...progress.values()].flat())]
    const marked = ids.length === 0 ? 0 : await this.#store.reconcilePublished!(ids)
    // Every row named is published in the database now: this session need not name it again.
    session.settled(ids)
    for (const lease of pending) {
      this.#reconciled.set(lease.shard, lease.epoch)
      this.#takenFrom.delete(lease.shard)
    }
    return { shards, fenced, marked, named: ids.length, durationMs: Date.now() - started }
  }

  /**
   * The claim's records this session may publish: those of shards reconciled at the epoch the
   * claim read them under. The others stay pending (a claim of owned shards writes nothing).
   */
  publishable(claim: Claim): readonly ClaimedRecord[] {
    if (claim.records.length === 0) return claim.records
    if (!claim.shards) {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        `exactlyOnce needs a store whose claimOwned reports the shards' epochs (Claim.shards); the ${this.#store.name} store does not.`,
      )
    }
    const epochs = new Map(claim.shards.map((lease) => [lease.shard, lease.epoch]))
    return claim.records.filter((record) => {
      const epoch = epochs.get(record.shard!)
      return epoch !== undefined && this.#reconciled.get(record.shard!) === epoch
    })
  }

  /**
   * A batch this session committed whose marks failed (a lost connection, a refused statement:
   * the rows may still be pending). A later claim would hand them out again, and they must not be
   * published again: their shards are reconciled again before anything more is published from
   * them, which marks those rows from the progress topic (it names them, as they were never
   * reported settled).
   */
  marksFailed(records: readonly ClaimedRecord[]): void {
    for (const record of records) if (record.shard !== undefined) this.#reconciled.delete(record.shard)
  }

  /** Ends the session (a graceful stop). */
  async close(): Promise<void> {
    const session = this.#session
    this.#session = undefined
    await session?.close()
  }

  /**
   * At a graceful stop after a failed session: opens and closes a session, which fences whatever
   * the failed one left undecided, so the shards can be given up. Returns whether it could.
   */
  async settleUndecided(): Promise<boolean> {
    if (this.decided) return true
    try {
      const session = await this.#transport.open(this.#relayId)
      await this.#session?.close().catch(() => {})
      this.#session = session
      return true
    } catch {
      return false
    }
  }
}
