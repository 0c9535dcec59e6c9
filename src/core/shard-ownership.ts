import type { ClaimedRecord } from './message.js'
import type { OutboxStore, ShardLease, ShardState } from './store.js'

/** What the relay learns from each ownership change. */
export interface ShardOwnershipChange {
  /** The shards this relay owns now, ascending. */
  readonly owned: readonly number[]
  /** Owned shards it is giving up (it claims nothing new from them), ascending. */
  readonly draining: readonly number[]
  readonly liveRelays: number
  readonly fairShare: number
}

export interface ShardOwnershipOptions<Tx> {
  readonly store: OutboxStore<Tx>
  readonly relayId: string
  /** How long the registration and the shard leases hold without a renewal. */
  readonly leaseMs: number
  /** A background sync failed; the next one is tried after `retryInMs`. */
  readonly onError: (error: unknown, retryInMs: number) => void
  readonly onChange: (change: ShardOwnershipChange) => void
  /** Every sync's leases, changed or not (exactly-once learns which shards were taken from whom). */
  readonly onLeases?: (owned: readonly ShardLease[]) => void
  /**
   * Whether shards may be given up now. While false, drained shards are kept and `stop()` does not
   * leave (the leases expire instead, so whoever takes the shards fences this relay first).
   */
  readonly mayRelease?: () => boolean
}

/** Ownership is synced at least this often, so a new relay gets its share within about a second. */
const MAX_SYNC_INTERVAL_MS = 1_000

/**
 * A relay's share of the outbox's shards. It heartbeats through `syncShards` every
 * `min(leaseMs / 3, 1 s)`, which renews the shards it owns and takes free or expired ones up to
 * its fair share. When more relays join, it owns more than its share: it stops claiming from the
 * surplus shards (`draining`) and gives each up once none of its records is in flight, so the
 * next owner never reads a record this relay may still mark. Syncs run one at a time.
 */
export class ShardOwnership<Tx> {
  readonly #options: ShardOwnershipOptions<Tx>
  readonly #intervalMs: number
  /** Owned shard → records of it claimed and not yet settled. */
  readonly #inFlight = new Map<number, number>()
  #owned: readonly number[] = []
  #leases: readonly ShardLease[] = []
  #draining = new Set<number>()
  #timer: ReturnType<typeof setTimeout> | undefined
  #syncing: Promise<void> | undefined
  #again = false
  #stopped = false

  constructor(options: ShardOwnershipOptions<Tx>) {
    this.#options = options
    this.#intervalMs = Math.max(1, Math.min(MAX_SYNC_INTERVAL_MS, Math.floor(options.leaseMs / 3)))
  }

  /** The shards owned after the last sync. */
  get owned(): readonly number[] {
    return this.#owned
  }

  /** The owned shards' leases after the last sync, with their epochs. */
  get leases(): readonly ShardLease[] {
    return this.#leases
  }

  /** Owned shards to claim nothing from: the relay is giving them up. */
  get draining(): readonly number[] {
    return [...this.#draining].sort((a, b) => a - b)
  }

  /** The first sync: registers the relay and takes its share. Throws if the store fails. */
  async start(): Promise<void> {
    this.#stopped = false
    await this.sync()
    this.#schedule()
  }

  /** Syncs now (after any sync in flight). Throws if the store fails. */
  sync(): Promise<void> {
    if (this.#syncing) {
      // One more sync after the current one, so what changed since it started is seen.
      this.#again = true
      return this.#syncing
    }
    this.#syncing = this.#syncOnce().finally(() => {
      this.#syncing = undefined
      if (this.#again && !this.#stopped) {
        this.#again = false
        this.sync().catch((error) => this.#options.onError(error, this.#intervalMs))
      }
    })
    return this.#syncing
  }

  /** Counts records as in flight until {@link settled} is called for them. */
  claimed(records: readonly ClaimedRecord[]): void {
    for (const record of records) {
      if (record.shard === undefined) continue
      this.#inFlight.set(record.shard, (this.#inFlight.get(record.shard) ?? 0) + 1)
    }
  }

  /** The records are settled (or given back); a draining shard left with none is given up at once. */
  settled(records: readonly ClaimedRecord[]): void {
    let releasable = false
    for (const record of records) {
      if (record.shard === undefined) continue
      const left = (this.#inFlight.get(record.shard) ?? 1) - 1
      if (left > 0) {
        this.#inFlight.set(record.shard, left)
      } else {
        this.#inFlight.delete(record.shard)
        if (this.#draining.has(record.shard)) releasable = true
      }
    }
    if (releasable && !this.#stopped)
      this.sync().catch((error) => this.#options.onError(error, this.#intervalMs))
  }

  /** Ends the heartbeats and gives every shard up, so other relays take them at once. */
  async stop(): Promise<void> {
    this.#stopped = true
    clearTimeout(this.#timer)
    await this.#syncing?.catch(() => {})
    this.#owned = []
    this.#leases = []
    this.#draining.clear()
    if (this.#options.mayRelease?.() === false) return
    await this.#options.store.leaveShards!(this.#options.relayId)
  }

  #schedule(): void {
    if (this.#stopped) return
    this.#timer = setTimeout(() => {
      this.sync()
        .catch((error) => this.#options.onError(error, this.#intervalMs))
        .finally(() => this.#schedule())
    }, this.#intervalMs)
  }

  async #syncOnce(): Promise<void> {
    const release =
      this.#options.mayRelease?.() === false
        ? []
        : [...this.#draining].filter((shard) => !this.#inFlight.has(shard))
    const state = await this.#options.store.syncShards!(this.#options.relayId, {
      leaseMs: this.#options.leaseMs,
      release,
      acquire: !this.#stopped,
    })
    this.#apply(state)
  }

  #apply(state: ShardState): void {
    this.#leases = state.owned
    this.#options.onLeases?.(state.owned)
    const owned = state.owned.map((lease) => lease.shard)
    const ownedSet = new Set(owned)
    const draining = new Set([...this.#draining].filter((shard) => ownedSet.has(shard)))
    const surplus = owned.length - state.fairShare
    if (surplus <= 0) {
      draining.clear()
    } else {
      // Drain the highest-numbered shards, keeping those already draining.
      for (let i = owned.length - 1; i >= 0 && draining.size < surplus; i--) draining.add(owned[i]!)
      // Fewer relays than before: keep draining only as many as are still surplus.
      for (const shard of [...draining].sort((a, b) => a - b)) {
        if (draining.size <= surplus) break
        draining.delete(shard)
      }
    }
    const changed =
      owned.length !== this.#owned.length ||
      owned.some((shard, i) => shard !== this.#owned[i]) ||
      draining.size !== this.#draining.size ||
      [...draining].some((shard) => !this.#draining.has(shard))
    this.#owned = owned
    this.#draining = draining
    if (changed) {
      this.#options.onChange({
        owned,
        draining: this.draining,
        liveRelays: state.liveRelays,
        fairShare: state.fairShare,
      })
    }
  }
}
