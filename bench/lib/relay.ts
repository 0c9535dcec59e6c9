/**
 * Relays as the measurements run them: each with its own Kysely pool and Kafka transport, and
 * optionally wrapped to time the claim / publish / mark phases and count the statements of each.
 */
import type { Kysely, LogEvent } from 'kysely'
import { createKafkaTransport, type KafkaTransport } from '../../src/adapters/kafka/index.js'
import { createKyselyOutboxStore, type KyselyOutboxStore } from '../../src/adapters/kysely/index.js'
import {
  type Claim,
  type ClaimedRecord,
  type ClaimOptions,
  type ClaimOwnedOptions,
  type DeadRecord,
  type FailedRecord,
  Outbox,
  type OutboxMessageInput,
  type OutboxRecord,
  type OutboxStats,
  type OutboxStore,
  type PublishOutcome,
  type PurgeOptions,
  Relay,
  type RequeueResult,
  type SettleResult,
  type ShardState,
  type SyncShardsOptions,
  type Transport,
} from '../../src/index.js'
import type { BenchDatabase, BenchTables } from './db.js'
import { outboxMessage, testKafka } from './kafka.js'
import { statementKind } from './statements.js'
import { now, sleep } from './stats.js'

type Tx = Kysely<BenchTables>

export interface RelayHandle {
  readonly store: OutboxStore<Tx>
  readonly transport: KafkaTransport
  /** A relay on this handle's store and transport. */
  relay(batchSize: number): Relay<Tx>
}

export interface RelayHandleOptions {
  transactionalId?: string
  /** Statement log of this handle's pool. */
  log?: (event: LogEvent) => void
  /** Wraps the store and transport (phase timing). */
  profile?: PhaseProfile
}

export function openRelayHandle(database: BenchDatabase, options: RelayHandleOptions = {}): RelayHandle {
  const db = database.pool({ max: 4, ...(options.log ? { log: options.log } : {}) })
  const kyselyStore = createKyselyOutboxStore({ db, schema: database.schema })
  const transport = createKafkaTransport({
    kafka: testKafka(),
    ...(options.transactionalId === undefined ? {} : { transactionalId: options.transactionalId }),
  })
  const store: OutboxStore<Tx> = options.profile
    ? new ProfiledStore(kyselyStore, options.profile)
    : kyselyStore
  const published: Transport = options.profile ? new ProfiledTransport(transport, options.profile) : transport
  return {
    store,
    transport,
    relay: (batchSize) => new Relay({ store, transport: published, batchSize }),
  }
}

/** Writes events [0, count) into the outbox, 1 000 per transaction (not timed). */
export async function fillOutbox(
  database: BenchDatabase,
  topic: string,
  count: number,
  keys: number,
): Promise<void> {
  const store: KyselyOutboxStore<BenchTables> = createKyselyOutboxStore({
    db: database.db,
    schema: database.schema,
  })
  const outbox = new Outbox({ store })
  for (let start = 0; start < count; start += 1000) {
    const messages: OutboxMessageInput[] = []
    for (let i = start; i < Math.min(start + 1000, count); i++) messages.push(outboxMessage(topic, i, keys))
    await store.transaction((trx) => outbox.add(trx, messages))
  }
  await database.analyze('outbox')
}

/**
 * Drains `count` events with the relays running side by side; returns events per second. A relay
 * whose claim comes back empty (the other relays hold every ready key) tries again after 2 ms.
 */
export async function drain(relays: readonly Relay<Tx>[], count: number): Promise<number> {
  let published = 0
  const unsubscribe = relays.map((relay) =>
    relay.on('published', (event) => {
      published += event.count
    }),
  )
  const started = now()
  try {
    await Promise.all(
      relays.map(async (relay) => {
        while (published < count) {
          if ((await relay.runOnce()) === 0) await sleep(2)
        }
      }),
    )
  } finally {
    for (const off of unsubscribe) off()
  }
  return count / ((now() - started) / 1000)
}

export type Phase = 'claim' | 'publish' | 'mark' | 'other'

/** Wall time and statements per relay phase, and database time per statement kind. */
export class PhaseProfile {
  phase: Phase = 'other'
  batches = 0
  records = 0
  readonly wallMs: Record<Phase, number> = { claim: 0, publish: 0, mark: 0, other: 0 }
  readonly statements: Record<Phase, number> = { claim: 0, publish: 0, mark: 0, other: 0 }
  /** Time the driver took per statement kind (as Kysely measured it), and how many ran. */
  readonly byKind = new Map<string, { count: number; ms: number }>()
  /** Called after each non-empty claim, with when it started and ended. */
  onClaimed: ((records: readonly ClaimedRecord[], startedAt: number, endedAt: number) => void) | undefined
  /** Called after each publish, with when it started and ended. */
  onPublished: ((records: readonly ClaimedRecord[], startedAt: number, endedAt: number) => void) | undefined

  reset(): void {
    this.batches = 0
    this.records = 0
    for (const phase of Object.keys(this.wallMs) as Phase[]) {
      this.wallMs[phase] = 0
      this.statements[phase] = 0
    }
    this.byKind.clear()
  }

  readonly log = (event: LogEvent): void => {
    this.statements[this.phase]++
    const kind = `${this.phase}: ${statementKind(event.query.sql)}`
    const entry = this.byKind.get(kind) ?? { count: 0, ms: 0 }
    entry.count++
    entry.ms += event.queryDurationMillis
    this.byKind.set(kind, entry)
  }

  async time<T>(phase: Phase, fn: () => Promise<T>): Promise<T> {
    const previous = this.phase
    this.phase = phase
    const started = now()
    try {
      return await fn()
    } finally {
      this.wallMs[phase] += now() - started
      this.phase = previous
    }
  }

  summary(): Record<string, unknown> {
    const per = (value: number) => (this.batches === 0 ? 0 : value / this.batches)
    return {
      batches: this.batches,
      records: this.records,
      msPerBatch: Object.fromEntries(Object.entries(this.wallMs).map(([k, v]) => [k, per(v)])),
      statementsPerBatch: Object.fromEntries(Object.entries(this.statements).map(([k, v]) => [k, per(v)])),
      statements: Object.fromEntries(
        [...this.byKind].map(([kind, { count, ms }]) => [
          kind,
          { perBatch: per(count), msEach: count === 0 ? 0 : ms / count },
        ]),
      ),
    }
  }
}

/** A store that reports its claims and marks to a {@link PhaseProfile}. */
export class ProfiledStore implements OutboxStore<Tx> {
  readonly #inner: OutboxStore<Tx>
  readonly #profile: PhaseProfile

  constructor(inner: OutboxStore<Tx>, profile: PhaseProfile) {
    this.#inner = inner
    this.#profile = profile
    // Only a store that can wait for notifications gets the method: the relay checks for it.
    const wait = inner.waitForChange?.bind(inner)
    if (wait) this.waitForChange = wait
    const close = inner.close?.bind(inner)
    if (close) this.close = close
    // Shard ownership: forwarded only when the inner store has it (the relay checks for it too).
    const sync = inner.syncShards?.bind(inner)
    const claimOwned = inner.claimOwned?.bind(inner)
    const leave = inner.leaveShards?.bind(inner)
    if (sync && claimOwned && leave) {
      this.syncShards = sync
      this.leaveShards = leave
      this.claimOwned = async (relayId, options) => {
        const started = now()
        const claim = await this.#profile.time('claim', () => claimOwned(relayId, options))
        this.#counted(claim, started)
        return claim
      }
    }
  }

  waitForChange?: (signal: AbortSignal) => Promise<void>
  close?: () => Promise<void>
  syncShards?: (relayId: string, options: SyncShardsOptions) => Promise<ShardState>
  claimOwned?: (relayId: string, options: ClaimOwnedOptions) => Promise<Claim>
  leaveShards?: (relayId: string) => Promise<void>

  #counted(claim: Claim, started: number): void {
    if (claim.records.length === 0) return
    this.#profile.batches++
    this.#profile.records += claim.records.length
    this.#profile.onClaimed?.(claim.records, started, now())
  }

  get name() {
    return this.#inner.name
  }

  get capabilities() {
    return this.#inner.capabilities
  }

  transaction<T>(fn: (tx: Tx) => Promise<T>): Promise<T> {
    return this.#inner.transaction(fn)
  }

  add(tx: Tx, records: readonly OutboxRecord[]): Promise<void> {
    return this.#inner.add(tx, records)
  }

  async claim(options: ClaimOptions): Promise<Claim> {
    const started = now()
    const claim = await this.#profile.time('claim', () => this.#inner.claim(options))
    this.#counted(claim, started)
    return claim
  }

  markPublished(token: string, ids: readonly string[]): Promise<SettleResult> {
    return this.#profile.time('mark', () => this.#inner.markPublished(token, ids))
  }

  markFailed(token: string, failures: readonly FailedRecord[]): Promise<SettleResult> {
    return this.#profile.time('mark', () => this.#inner.markFailed(token, failures))
  }

  markDead(token: string, records: readonly DeadRecord[]): Promise<SettleResult> {
    return this.#profile.time('mark', () => this.#inner.markDead(token, records))
  }

  release(token: string, ids?: readonly string[]): Promise<SettleResult> {
    return this.#inner.release(token, ids)
  }

  extendLease(token: string, leaseMs: number): Promise<number> {
    return this.#inner.extendLease(token, leaseMs)
  }

  requeue(ids: readonly string[]): Promise<RequeueResult> {
    return this.#inner.requeue(ids)
  }

  purge(options: PurgeOptions): Promise<number> {
    return this.#inner.purge(options)
  }

  stats(): Promise<OutboxStats> {
    return this.#inner.stats()
  }
}

/** A transport that reports its publishes to a {@link PhaseProfile}. */
export class ProfiledTransport implements Transport {
  readonly #inner: Transport
  readonly #profile: PhaseProfile

  constructor(inner: Transport, profile: PhaseProfile) {
    this.#inner = inner
    this.#profile = profile
  }

  get name() {
    return this.#inner.name
  }

  get capabilities() {
    return this.#inner.capabilities
  }

  async publish(records: readonly ClaimedRecord[]): Promise<readonly PublishOutcome[]> {
    const started = now()
    const outcomes = await this.#profile.time('publish', () => this.#inner.publish(records))
    this.#profile.onPublished?.(records, started, now())
    return outcomes
  }

  close(): Promise<void> {
    return this.#inner.close()
  }
}
