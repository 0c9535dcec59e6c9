import { type Kysely, type RawBuilder, sql, type Transaction } from 'kysely'
import { shareClaim, withinShares } from '../../core/claim-share.js'
import { ErrorCode, OutboxKitError } from '../../core/errors.js'
import type { ClaimedRecord, OutboxRecord } from '../../core/message.js'
import {
  checkClaimOptions,
  checkClaimOwnedOptions,
  checkPurgeOptions,
  checkRelayId,
  checkSyncShardsOptions,
  MAX_CLAIM_LIMIT,
  positiveInteger,
} from '../../core/options.js'
import type {
  Claim,
  ClaimOptions,
  ClaimOwnedOptions,
  DeadRecord,
  ExclusiveOutcome,
  FailedRecord,
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
import { retryOnDeadlock, runStoreOperation } from './database-errors.js'
import {
  DIALECT_SQL,
  type DialectSql,
  resolveStoreSetup,
  toBytes,
  toDate,
  toHeaders,
  toNumber,
} from './dialect.js'
import { runExclusive, singleSession } from './exclusive-lock.js'
import { encodeLogicalMessage, validateMessagePrefix } from './logical-message.js'
import { ChangeSignal, type PostgresListener } from './notify.js'
import {
  type ResolvedTables,
  SHARD_COUNT,
  type SqlDialect,
  Status,
  type TableOptions,
  validateIdentifier,
} from './schema.js'

export interface KyselyStoreOptions<DB> extends Partial<TableOptions> {
  /** The application's Kysely instance. The store never closes it. */
  db: Kysely<DB>
  /** Inferred from `db` when omitted (Postgres, PGlite, MySQL and MariaDB dialects are recognised). */
  dialect?: SqlDialect
  /** Rows per INSERT statement when adding many records: 1 to 10 000. Default 500. */
  insertChunkSize?: number
  /**
   * Postgres only: every `add` also sends a notification on `notifyChannel`, delivered when the
   * writer's transaction commits, so listening relays wake at once. Default false.
   */
  notify?: boolean
  /** Postgres only: lets relays wait for notifications instead of only polling. See `postgresJsListener`, `pgListener`, `pgliteListener`. */
  listener?: PostgresListener
  /** The notification channel. Default `outboxkit_<outboxTable>`. */
  notifyChannel?: string
  /**
   * Deletes each row in the same transaction that added it, right after the INSERT: the table
   * stays empty, and the database's log (which a log-tailing relay reads, e.g. `outboxkit/postgres-log`)
   * still carries the INSERT. Only for a `LogRelay`: a polling relay would find nothing, so
   * `claim` and `claimOwned` refuse to run; and a dead record has no row to be marked in (it still
   * goes to the dead-letter topic when one is configured). Default false.
   */
  deleteAfterAdd?: boolean
  /**
   * Postgres only (not PGlite): the table-less mode. Each `add` writes every record as a
   * transactional logical decoding message, `pg_logical_emit_message(true, messagePrefix, <record>)`,
   * instead of a row: nothing is written to the outbox table, so it never bloats. The message is
   * in the database's log if and only if the transaction commits, and a `LogRelay` on
   * `createPostgresChangeFeed({ ..., messagePrefix })` (the same prefix) publishes it; the content
   * is the record encoded as `encodeLogicalMessage` describes (binary, versioned). Like
   * `deleteAfterAdd`, `claim` and `claimOwned` refuse to run. 1–255 characters, no control
   * characters; every reader of the log sees every prefix, so make it name this outbox, e.g.
   * `outboxkit:app.outbox`. Needs `wal_level = logical` to reach a feed. Unset by default.
   */
  messagePrefix?: string
}

export { MAX_CLAIM_LIMIT }

/** Default and batch size of `purge`: each batch is one short transaction. */
const DEFAULT_PURGE_LIMIT = 10_000
export const PURGE_BATCH_SIZE = 1_000

/** Largest `insertChunkSize`: six parameters a row stays under the drivers' 65 535-parameter limit. */
const MAX_INSERT_CHUNK_SIZE = 10_000

/**
 * How long a transaction holding shard locks may sit idle (its relay paused) before the database
 * ends its session and frees the locks.
 */
export const SHARD_TRANSACTION_IDLE_TIMEOUT_MS = 5_000

/** A claim reads the oldest `limit × CLAIM_WINDOW_FACTOR` pending rows (within these bounds). */
const CLAIM_WINDOW_FACTOR = 4
const MIN_CLAIM_WINDOW = 1_000
const MAX_CLAIM_WINDOW = 40_000

/**
 * An {@link OutboxStore} on Kysely for Postgres (postgres.js or pg), PGlite and MySQL/MariaDB (mysql2).
 *
 * Claiming takes the head (oldest unsettled row) of each ready key with `FOR UPDATE SKIP LOCKED`,
 * then the run of that key's ready rows behind it, so several relays never hold rows of the same
 * key at once and one batch can carry many events of a busy key. Leases use the database clock.
 *
 * @example
 * ```ts
 * const store = createKyselyOutboxStore({ db })
 * const outbox = new Outbox({ store })
 * ```
 */
export function createKyselyOutboxStore<DB>(options: KyselyStoreOptions<DB>): KyselyOutboxStore<DB> {
  return new KyselyOutboxStore(options)
}

interface ClaimCandidate {
  seq: unknown
  key: string
  ready: unknown
}

/**
 * Writes go through the caller's transaction: its type is Kysely's `Transaction<DB>`, so passing
 * the root `db` (which would write outside the caller's transaction) does not compile.
 */
/** Ids per reconciliation UPDATE. */
const RECONCILE_CHUNK = 1_000

export class KyselyOutboxStore<DB> implements OutboxStore<Transaction<DB>> {
  readonly name: string
  readonly capabilities: StoreCapabilities
  readonly tables: ResolvedTables
  /** The notification channel, when `notify` or `listener` is set. */
  readonly notifyChannel: string | undefined
  readonly #db: Kysely<DB>
  readonly #sql: DialectSql
  readonly #insertChunkSize: number
  readonly #notifyOnAdd: boolean
  readonly #deleteAfterAdd: boolean
  readonly #messagePrefix: string | undefined
  readonly #changes: ChangeSignal | undefined

  constructor(options: KyselyStoreOptions<DB>) {
    const { dialect, tables } = resolveStoreSetup(options, 'createKyselyOutboxStore')
    this.tables = tables
    this.name = dialect
    this.#db = options.db
    this.#sql = DIALECT_SQL[dialect]
    this.#insertChunkSize = positiveInteger(
      'insertChunkSize',
      options.insertChunkSize ?? 500,
      MAX_INSERT_CHUNK_SIZE,
      dialect,
    )
    if ((options.notify || options.listener) && dialect !== 'postgres') {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        'notify and listener need Postgres (LISTEN/NOTIFY); MySQL relays poll.',
        {
          source: this.name,
        },
      )
    }
    this.notifyChannel =
      options.notify || options.listener
        ? validateIdentifier('notify channel', options.notifyChannel ?? `outboxkit_${this.tables.outboxName}`)
        : undefined
    this.#notifyOnAdd = options.notify === true
    this.#deleteAfterAdd = options.deleteAfterAdd === true
    this.#messagePrefix = this.#checkMessageMode(options)
    this.#changes = options.listener ? new ChangeSignal(options.listener, this.notifyChannel!) : undefined
    this.capabilities = { concurrentClaims: true, notify: this.#changes !== undefined, shards: true }
  }

  /** Resolves on the next notification (or one that arrived since the last wait), or when `signal` aborts. */
  async waitForChange(signal: AbortSignal): Promise<void> {
    if (!this.#changes)
      return new Promise((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }))
    return this.#run('listen', () => this.#changes!.wait(signal))
  }

  /** Stops listening. The Kysely instance stays open: it is the application's. */
  async close(): Promise<void> {
    await this.#changes?.close()
  }

  get #mysql(): boolean {
    return this.tables.dialect === 'mysql'
  }

  transaction<T>(fn: (tx: Transaction<DB>) => Promise<T>): Promise<T> {
    return this.#db.transaction().execute(fn)
  }

  async add(tx: Transaction<DB>, records: readonly OutboxRecord[]): Promise<void> {
    // For JavaScript callers and casts: the root instance would run each INSERT on its own pooled
    // connection, outside the caller's transaction (and on PGlite wait behind it forever).
    if (!isKyselyTransaction(tx)) {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        'outbox.add needs the transaction your business rows are written in, not the Kysely instance: call it as db.transaction().execute(async (trx) => { ...; await outbox.add(trx, message) }).',
        { source: this.name, details: { option: 'tx' } },
      )
    }
    if (this.#messagePrefix !== undefined) return this.#emitMessages(tx, records, this.#messagePrefix)
    const { outbox, columns: c } = this.tables
    for (let start = 0; start < records.length; start += this.#insertChunkSize) {
      const chunk = records.slice(start, start + this.#insertChunkSize)
      const rows = chunk.map(
        (r) =>
          sql`(${r.id}, ${r.topic}, ${r.key}, ${r.type}, ${bytesParameter(r.payload)}, ${this.#headersParameter(r.headers)})`,
      )
      const insert = sql`INSERT INTO ${sql.raw(outbox)} (${sql.raw(
        [c.id, c.topic, c.key, c.type, c.payload, c.headers].join(', '),
      )}) VALUES ${sql.join(rows)}`
      await this.#run('add', () =>
        this.#notifyOnAdd
          ? // One round trip: the notification rides on the insert and is delivered at commit.
            sql`WITH inserted AS (${insert} RETURNING 1)
              SELECT pg_notify(${this.notifyChannel}, '') FROM (SELECT 1 FROM inserted LIMIT 1) AS one`.execute(
              tx,
            )
          : insert.execute(tx),
      )
      if (this.#deleteAfterAdd) {
        // A separate statement: a DELETE in the same statement as the INSERT would not see its rows.
        await this.#run('add', () =>
          sql`DELETE FROM ${sql.raw(outbox)} WHERE ${sql.raw(c.id)} IN (${sql.join(chunk.map((r) => r.id))})`.execute(
            tx,
          ),
        )
      }
    }
  }

  /**
   * The table-less mode: one logical decoding message per record, in the caller's transaction, in
   * the order given (the VALUES list is scanned in order). Transactional, so a rollback takes the
   * messages with it.
   */
  async #emitMessages(tx: Transaction<DB>, records: readonly OutboxRecord[], prefix: string): Promise<void> {
    for (let start = 0; start < records.length; start += this.#insertChunkSize) {
      const chunk = records.slice(start, start + this.#insertChunkSize)
      const contents = chunk.map((r) => sql`(CAST(${bytesParameter(encodeLogicalMessage(r))} AS bytea))`)
      await this.#run('add', () =>
        sql`SELECT pg_catalog.pg_logical_emit_message(true, CAST(${prefix} AS text), m.content)
          FROM (VALUES ${sql.join(contents)}) AS m(content)`.execute(tx),
      )
    }
  }

  /** `messagePrefix`: Postgres servers only, and nothing that would write or read the table. */
  #checkMessageMode(options: KyselyStoreOptions<DB>): string | undefined {
    if (options.messagePrefix === undefined) return undefined
    const refuse = (message: string) =>
      new OutboxKitError(ErrorCode.InvalidOptions, message, {
        source: this.name,
        details: { option: 'messagePrefix' },
      })
    if (this.tables.dialect !== 'postgres') {
      throw refuse(
        'messagePrefix (the table-less mode) needs Postgres logical decoding messages, which MySQL and MariaDB do not have: leave messagePrefix out and write rows (a LogRelay on outboxkit/mysql-binlog reads them from the binlog; deleteAfterAdd keeps the table empty).',
      )
    }
    if (singleSession(options.db as Kysely<unknown>)) {
      throw refuse(
        'messagePrefix (the table-less mode) needs a Postgres server with logical replication; PGlite has none, so nothing could ever read the messages: leave messagePrefix out and publish the rows with the polling Relay.',
      )
    }
    if (this.#deleteAfterAdd) {
      throw refuse(
        'messagePrefix and deleteAfterAdd do not go together: with messagePrefix nothing is written to the table at all. Keep one of them.',
      )
    }
    if (options.notify || options.listener) {
      throw refuse(
        'messagePrefix writes no rows for a polling relay to wake for, so notify and listener have nothing to do: leave them out (the LogRelay reads the log as it is written).',
      )
    }
    return validateMessagePrefix(options.messagePrefix, this.name)
  }

  /** Claims read the table, which `deleteAfterAdd` keeps empty: refuse rather than find nothing forever. */
  #checkClaimable(): void {
    if (this.#messagePrefix !== undefined) {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        'This store writes records as logical decoding messages (messagePrefix), not rows, so there is nothing to claim: publish with a LogRelay on createPostgresChangeFeed({ ..., messagePrefix }), or create the store without messagePrefix.',
        { source: this.name, details: { option: 'messagePrefix' } },
      )
    }
    if (!this.#deleteAfterAdd) return
    throw new OutboxKitError(
      ErrorCode.InvalidOptions,
      'This store deletes each row as it is added (deleteAfterAdd), so there is nothing to claim: publish with a LogRelay on a change feed, or create the store without deleteAfterAdd.',
      { source: this.name, details: { option: 'deleteAfterAdd' } },
    )
  }

  /**
   * The headers as JSON text. On Postgres the parameter is typed text and cast, because
   * postgres.js serializes a parameter it infers as jsonb once more, storing a JSON string.
   */
  #headersParameter(headers: Readonly<Record<string, string>>): RawBuilder<unknown> {
    const json = JSON.stringify(headers)
    return this.#mysql ? sql`${json}` : sql`CAST(CAST(${json} AS text) AS jsonb)`
  }

  async claim(options: ClaimOptions): Promise<Claim> {
    this.#checkClaimable()
    checkClaimOptions(options, MAX_CLAIM_LIMIT, this.name)
    const limit = options.limit
    const token = crypto.randomUUID()
    const records = await this.#run('claim', () =>
      this.#db
        .transaction()
        // MySQL: READ COMMITTED keeps InnoDB from locking every row the head scan reads.
        .setIsolationLevel('read committed')
        .execute((trx) => this.#claimIn(trx, limit, token, options.leaseMs)),
    )
    return { token, records }
  }

  async #claimIn(
    trx: Transaction<DB>,
    limit: number,
    token: string,
    leaseMs: number,
  ): Promise<ClaimedRecord[]> {
    const { outbox, columns: c } = this.tables
    const now = this.#sql.now
    // 1. The window, and the ready heads beyond it when blocked keys crowd it (see #windowRuns).
    const { candidates, heads } = await this.#windowRuns(trx, limit, sql``, (afterSeq, n) =>
      this.#headsBeyond(trx, afterSeq, n),
    )
    if (heads.length === 0) return []
    // Heads come in seq order and each contributes at least its own row, so heads past the first
    // `limit` could never make it into this claim: do not lock them.
    heads.length = Math.min(heads.length, limit)

    // 2. Lock the ready heads. A head locked by another claimer is skipped; one it claimed, or
    //    settled, since the window was read no longer passes the conditions. Holding a key's head
    //    keeps every other claimer away from the whole key.
    const locked = await sql<{ seq: unknown }>`
      SELECT o.${sql.raw(c.seq)} AS seq FROM ${sql.raw(outbox)} o
      WHERE o.${sql.raw(c.seq)} IN (${sql.join(heads)})
        AND o.${sql.raw(c.status)} = ${Status.pending}
        AND o.${sql.raw(c.availableAt)} <= ${now}
        AND (o.${sql.raw(c.leaseUntil)} IS NULL OR o.${sql.raw(c.leaseUntil)} <= ${now})
      FOR UPDATE SKIP LOCKED`.execute(trx)
    const lockedHeads = new Set(locked.rows.map((r) => String(r.seq)))
    if (lockedHeads.size === 0) return []

    // 3. Runs: oldest first across keys, each held key contributing the ready rows that follow its
    //    head, up to the first row that is not ready (waiting for a retry).
    const chosen = sharedRuns(candidates, lockedHeads, limit)
    // A head found beyond the window can belong to a key whose older row the window saw before
    // another relay settled it: that key contributes nothing this time (its stale row comes first).
    if (chosen.length === 0) return []

    // 4. Lease them, counting the attempt, and read them back (Postgres in the same statement).
    const lease = sql`
      UPDATE ${sql.raw(outbox)}
      SET ${sql.raw(c.attempts)} = ${sql.raw(c.attempts)} + 1,
          ${sql.raw(c.leaseUntil)} = ${this.#sql.plusMs(leaseMs)},
          ${sql.raw(c.claimToken)} = ${token}
      WHERE ${sql.raw(c.seq)} IN (${sql.join(chosen)}) AND ${sql.raw(c.status)} = ${Status.pending}`
    const columns = sql`${sql.raw(c.seq)} AS seq, ${sql.raw(c.id)} AS id, ${sql.raw(c.topic)} AS topic,
        ${sql.raw(c.key)} AS ${sql.raw(this.#q('key'))}, ${sql.raw(c.type)} AS ${sql.raw(this.#q('type'))},
        ${sql.raw(c.payload)} AS payload, ${sql.raw(c.headers)} AS headers,
        ${sql.raw(c.attempts)} AS attempts, ${sql.raw(c.createdAt)} AS created_at`
    let rows: Record<string, unknown>[]
    if (this.#mysql) {
      await lease.execute(trx)
      rows = (
        await sql<Record<string, unknown>>`SELECT ${columns} FROM ${sql.raw(outbox)}
          WHERE ${sql.raw(c.seq)} IN (${sql.join(chosen)}) AND ${sql.raw(c.claimToken)} = ${token}`.execute(
          trx,
        )
      ).rows
    } else {
      rows = (await sql<Record<string, unknown>>`${lease} RETURNING ${columns}`.execute(trx)).rows
    }
    rows.sort((a, b) => toNumber(a['seq']) - toNumber(b['seq']))

    return rows.map((row) => claimedRecord(row, toNumber(row['attempts'])))
  }

  // ---- Shard ownership --------------------------------------------------------------------

  /**
   * One transaction: lock every shard row (syncs, leaves and takes run one at a time, and a take
   * waits for settles holding the shard FOR SHARE), heartbeat the relay, count the live relays,
   * then give up `release`, renew the shards still owned and take free or expired ones up to the
   * fair share, bumping their epochs. A live shard of another relay is never taken.
   */
  async syncShards(relayId: string, options: SyncShardsOptions): Promise<ShardState> {
    checkRelayId(relayId, this.name)
    const { leaseMs, release: released, acquire } = checkSyncShardsOptions(options, SHARD_COUNT, this.name)
    const release = new Set(released)
    const { shards, relays } = this.tables
    const now = this.#sql.now
    const until = this.#sql.plusMs(leaseMs)
    return this.#run('syncShards', () =>
      this.#shardTransaction(async (trx) => {
        // Locked first, before the relays table is touched: every sync and leave takes the
        // locks in the same order, so they never deadlock.
        const locked = await sql<{ shard: unknown; owner: unknown; epoch: unknown; live: unknown }>`
            SELECT shard, owner, epoch, CASE WHEN lease_until > ${now} THEN 1 ELSE 0 END AS live
            FROM ${sql.raw(shards)} ORDER BY shard FOR UPDATE`.execute(trx)
        await (this.#mysql
          ? sql`INSERT INTO ${sql.raw(relays)} (relay_id, lease_until) VALUES (${relayId}, ${until})
                ON DUPLICATE KEY UPDATE lease_until = VALUES(lease_until)`
          : sql`INSERT INTO ${sql.raw(relays)} (relay_id, lease_until) VALUES (${relayId}, ${until})
                ON CONFLICT (relay_id) DO UPDATE SET lease_until = EXCLUDED.lease_until`
        ).execute(trx)
        // Expired registrations only count as gone; deleting them keeps the table small.
        await sql`DELETE FROM ${sql.raw(relays)} WHERE lease_until <= ${now}`.execute(trx)
        const counted = await sql<{ n: unknown }>`
            SELECT count(*) AS n FROM ${sql.raw(relays)} WHERE lease_until > ${now}`.execute(trx)
        const liveRelays = Math.max(1, toNumber(counted.rows[0]?.n))
        const fairShare = Math.ceil(SHARD_COUNT / liveRelays)

        const rows = locked.rows.map((r) => ({
          shard: toNumber(r.shard),
          owner: r.owner === null ? null : String(r.owner),
          epoch: toNumber(r.epoch),
          live: toNumber(r.live) === 1,
        }))
        const given = rows.filter((r) => r.owner === relayId && release.has(r.shard))
        const kept = rows.filter((r) => r.owner === relayId && !release.has(r.shard))
        const taken = acquire
          ? rows
              .filter((r) => r.owner !== relayId && (r.owner === null || !r.live))
              .slice(0, Math.max(0, fairShare - kept.length))
          : []
        const touched = [...given, ...kept, ...taken].map((r) => r.shard)
        if (touched.length > 0) {
          const givenUp = inList(
            sql`shard`,
            given.map((r) => r.shard),
          )
          await sql`UPDATE ${sql.raw(shards)} SET
                owner = CASE WHEN ${givenUp} THEN NULL ELSE ${relayId} END,
                lease_until = CASE WHEN ${givenUp} THEN NULL ELSE ${until} END,
                epoch = CASE WHEN ${inList(
                  sql`shard`,
                  taken.map((r) => r.shard),
                )} THEN epoch + 1 ELSE epoch END
              WHERE ${inList(sql`shard`, touched)}`.execute(trx)
        }
        const owned: ShardLease[] = [
          ...kept.map((r) => ({ shard: r.shard, epoch: r.epoch })),
          ...taken.map((r) => ({
            shard: r.shard,
            epoch: r.epoch + 1,
            ...(r.owner === null ? {} : { previousOwner: r.owner }),
          })),
        ].sort((a, b) => a.shard - b.shard)
        return { shardCount: SHARD_COUNT, liveRelays, fairShare, owned }
      }),
    )
  }

  /** Frees every shard of `relayId` at once and removes its registration. */
  async leaveShards(relayId: string): Promise<void> {
    checkRelayId(relayId, this.name)
    const { shards, relays } = this.tables
    await this.#run('leaveShards', () =>
      this.#shardTransaction(async (trx) => {
        // The same lock order as syncShards.
        await sql`SELECT shard FROM ${sql.raw(shards)} ORDER BY shard FOR UPDATE`.execute(trx)
        await sql`UPDATE ${sql.raw(shards)} SET owner = NULL, lease_until = NULL
            WHERE owner = ${relayId}`.execute(trx)
        await sql`DELETE FROM ${sql.raw(relays)} WHERE relay_id = ${relayId}`.execute(trx)
      }),
    )
  }

  /**
   * Marks pending rows published by id, in chunks, whatever holds them: their publication is proven
   * by the transport's log (exactly-once reconciliation).
   */
  async reconcilePublished(ids: readonly string[]): Promise<number> {
    const { outbox, columns: c } = this.tables
    const unique = [...new Set(ids)]
    let changed = 0
    for (let i = 0; i < unique.length; i += RECONCILE_CHUNK) {
      const chunk = unique.slice(i, i + RECONCILE_CHUNK)
      const result = await this.#run('reconcilePublished', () =>
        sql`UPDATE ${sql.raw(outbox)} SET ${sql.raw(c.status)} = ${Status.published},
            ${sql.raw(c.publishedAt)} = ${this.#sql.now}, ${sql.raw(c.leaseUntil)} = NULL,
            ${sql.raw(c.claimToken)} = NULL
          WHERE ${sql.raw(c.id)} IN (${sql.join(chunk)}) AND ${sql.raw(c.status)} = ${Status.pending}`.execute(
          this.#db,
        ),
      )
      changed += toNumber(result.numAffectedRows)
    }
    return changed
  }

  /**
   * Reads, writing nothing: the shards `relayId` owns with a live lease, then the same window,
   * ready heads and runs as `claim`, restricted to those shards, with the records `inFlight` left
   * out. No row is locked or leased: ownership of the shard is what keeps other relays away, and
   * the token's epochs fence the settle calls.
   */
  async claimOwned(relayId: string, options: ClaimOwnedOptions): Promise<Claim> {
    this.#checkClaimable()
    checkRelayId(relayId, this.name)
    const { limit, inFlight, excludeShards } = checkClaimOwnedOptions(
      options,
      SHARD_COUNT,
      MAX_CLAIM_LIMIT,
      this.name,
    )
    const { outbox, shards: shardTable, columns: c } = this.tables
    const db = this.#db
    return this.#run('claimOwned', async () => {
      const ownedRows = await sql<{ shard: unknown; epoch: unknown }>`
        SELECT shard, epoch FROM ${sql.raw(shardTable)}
        WHERE owner = ${relayId} AND lease_until > ${this.#sql.now} ORDER BY shard`.execute(db)
      const epochs = new Map<number, number>()
      for (const r of ownedRows.rows) {
        const shard = toNumber(r.shard)
        if (!excludeShards.has(shard)) epochs.set(shard, toNumber(r.epoch))
      }
      if (epochs.size === 0) return { token: shardToken(relayId, []), records: [] }
      const owned = [...epochs.keys()]
      const fullColumns = sql`o.${sql.raw(c.seq)} AS seq, o.${sql.raw(c.id)} AS id,
            o.${sql.raw(c.topic)} AS topic, o.${sql.raw(c.key)} AS ${sql.raw(this.#q('key'))},
            o.${sql.raw(c.type)} AS ${sql.raw(this.#q('type'))}, o.${sql.raw(c.payload)} AS payload,
            o.${sql.raw(c.headers)} AS headers, o.${sql.raw(c.attempts)} AS attempts,
            o.${sql.raw(c.createdAt)} AS created_at, o.${sql.raw(c.shard)} AS shard`

      // Fast path: the oldest `limit` pending rows of the owned shards that are not in flight,
      // whole. A key with records in flight goes on after them (the relay publishes in claim
      // order). When the keys' runs fill the claim, or they are all there is, they are the claim:
      // one read, no second look-up by seq. Only keys that cannot progress (a head waiting for
      // its retry) crowding them send the claim to the window below.
      const oldest = (
        await sql<Record<string, unknown> & ClaimCandidate>`
          SELECT ${fullColumns}, ${this.#readyColumn('o')} AS ready
          FROM ${sql.raw(outbox)} o ${this.#pendingIndex}
          WHERE o.${sql.raw(c.status)} = ${Status.pending} AND ${inList(sql`o.${sql.raw(c.shard)}`, owned)}
            ${this.#notIds(sql`o.${sql.raw(c.id)}`, inFlight)}
          ORDER BY o.${sql.raw(c.seq)}
          LIMIT ${limit}`.execute(db)
      ).rows
      const oldestHeads = new Set(readyHeads(oldest).map(String))
      const claimable = claimableRuns(oldest, oldestHeads)
      const fromOldest = new Set(shareClaim(claimable, limit).map((row) => String(row.seq)))
      let rows: Record<string, unknown>[]
      // Everything pending is here, or the keys' shares alone fill the claim: no key beyond
      // these rows could have a place in it.
      if (oldest.length < limit || withinShares(claimable, limit) === limit) {
        rows = oldest.filter((row) => fromOldest.has(String(row.seq)))
      } else {
        // The window's look-up of heads cannot see past records in flight: their keys wait.
        const excludeKeys = await this.#keysOf(inFlight)
        const keyFilter = this.#notKeys(sql`o.${sql.raw(c.key)}`, excludeKeys)
        const { candidates, heads } = await this.#windowRuns(
          db,
          limit,
          sql`AND ${inList(sql`o.${sql.raw(c.shard)}`, owned)} ${keyFilter}`,
          (afterSeq, n) => this.#ownedHeadsBeyond(afterSeq, n, owned, excludeKeys),
        )
        const chosen = heads.length === 0 ? [] : sharedRuns(candidates, new Set(heads.map(String)), limit)
        if (chosen.length === 0) return { token: shardToken(relayId, []), records: [] }
        rows = (
          await sql<Record<string, unknown>>`SELECT ${fullColumns}
            FROM ${sql.raw(outbox)} o
            WHERE o.${sql.raw(c.seq)} IN (${sql.join(chosen)}) AND o.${sql.raw(c.status)} = ${Status.pending}`.execute(
            db,
          )
        ).rows
      }
      if (rows.length === 0) return { token: shardToken(relayId, []), records: [] }
      rows.sort((a, b) => toNumber(a['seq']) - toNumber(b['seq']))
      const records: ClaimedRecord[] = rows.map((row) => ({
        // Nothing is written at claim time: the attempt is counted when it is settled.
        ...claimedRecord(row, toNumber(row['attempts']) + 1),
        shard: toNumber(row['shard']),
      }))
      const counts = new Map<number, number>()
      for (const r of records) counts.set(r.shard!, (counts.get(r.shard!) ?? 0) + 1)
      const contributing = [...counts].map(([shard, count]) => ({ shard, epoch: epochs.get(shard)!, count }))
      return {
        token: shardToken(relayId, contributing),
        records,
        shards: contributing.map(({ shard, epoch }) => ({ shard, epoch })),
      }
    })
  }

  /** The keys of the pending records among `ids`. */
  async #keysOf(ids: ReadonlySet<string>): Promise<string[]> {
    if (ids.size === 0) return []
    const { outbox, columns: c } = this.tables
    const result = await sql<{ key: string }>`
      SELECT DISTINCT o.${sql.raw(c.key)} AS ${sql.raw(this.#q('key'))} FROM ${sql.raw(outbox)} o ${this.#byIdIndex}
      WHERE ${this.#inIds(sql`o.${sql.raw(c.id)}`, ids)}`.execute(this.#db)
    return result.rows.map((r) => String(r.key))
  }

  /** `AND expression NOT IN ids`, or nothing when `ids` is empty. */
  #notIds(expression: RawBuilder<unknown>, ids: ReadonlySet<string>): RawBuilder<unknown> {
    return ids.size === 0 ? sql`` : sql`AND NOT (${this.#inIds(expression, ids)})`
  }

  /**
   * `expression` (the id column) is one of `ids`. Postgres: one JSON parameter, read once by a
   * subquery (hashed, or probing the id index), never parsed again per row; ids that are not
   * UUIDs cannot match the uuid column and are left out.
   */
  #inIds(expression: RawBuilder<unknown>, ids: ReadonlySet<string>): RawBuilder<unknown> {
    if (this.#mysql) return sql`${expression} IN (${sql.join([...ids])})`
    const uuids = [...ids].filter((id) => UUID.test(id))
    if (uuids.length === 0) return sql`1 = 0`
    return sql`${expression} IN (SELECT CAST(jsonb_array_elements_text(CAST(CAST(${JSON.stringify(uuids)} AS text) AS jsonb)) AS uuid))`
  }

  /** `expression` is not one of `keys` (Postgres: one array parameter). */
  #notKeys(expression: RawBuilder<unknown>, keys: readonly string[]): RawBuilder<unknown> {
    if (keys.length === 0) return sql``
    return this.#mysql
      ? sql`AND ${expression} NOT IN (${sql.join(keys)})`
      : // One JSON text parameter, whatever the list's length, the same on every driver.
        sql`AND NOT (${expression} = ANY(ARRAY(SELECT jsonb_array_elements_text(CAST(CAST(${JSON.stringify(keys)} AS text) AS jsonb)))))`
  }

  /**
   * The ready heads of keys of `shards` whose head lies after `afterSeq`, oldest first, at most
   * `limit`: `#headsBeyond` restricted to owned shards, one index dive per pending key.
   */
  async #ownedHeadsBeyond(
    afterSeq: unknown,
    limit: number,
    shards: readonly number[],
    excludeKeys: readonly string[],
  ): Promise<{ seq: unknown; key: string }[]> {
    const { outbox, columns: c } = this.tables
    const { pending, ready, columns } = this.#headBeyond(afterSeq)
    if (this.#mysql) {
      // A loose index scan of (status, shard, key, seq): MIN(seq) per key of the owned shards.
      const index = sql.raw(`FORCE INDEX (\`${this.tables.outboxName}_status_shard_key_seq\`)`)
      const result = await sql<{ seq: unknown; key: string }>`
        SELECT ${columns} FROM (
          SELECT MIN(${sql.raw(c.seq)}) AS head FROM ${sql.raw(outbox)} ${index}
          WHERE ${pending} AND ${inList(sql.raw(c.shard), shards)}
          GROUP BY ${sql.raw(c.status)}, ${sql.raw(c.shard)}, ${sql.raw(c.key)}) g
        JOIN ${sql.raw(outbox)} h ON h.${sql.raw(c.seq)} = g.head
        WHERE g.head > ${afterSeq} AND ${ready} ${this.#notKeys(sql`h.${sql.raw(c.key)}`, excludeKeys)}
        ORDER BY h.${sql.raw(c.seq)} LIMIT ${limit}`.execute(this.#db)
      return result.rows
    }
    // Per owned shard, a recursive CTE hops from key to key on the partial (shard, key, seq) index.
    const result = await sql<{ seq: unknown; key: string }>`
      WITH RECURSIVE pending_keys (s, k) AS (
        SELECT u.s, CAST((SELECT MIN(n.${sql.raw(c.key)}) FROM ${sql.raw(outbox)} n
          WHERE n.${pending} AND n.${sql.raw(c.shard)} = u.s) AS text)
        FROM unnest(ARRAY[${sql.join(shards)}]::smallint[]) AS u(s)
        UNION ALL
        SELECT p.s, CAST((SELECT MIN(n.${sql.raw(c.key)}) FROM ${sql.raw(outbox)} n
          WHERE n.${pending} AND n.${sql.raw(c.shard)} = p.s AND n.${sql.raw(c.key)} > p.k) AS text)
        FROM pending_keys p WHERE p.k IS NOT NULL
      )
      SELECT ${columns}
      FROM pending_keys p JOIN ${sql.raw(outbox)} h ON h.${sql.raw(c.seq)} = (
        SELECT MIN(m.${sql.raw(c.seq)}) FROM ${sql.raw(outbox)} m
        WHERE m.${pending} AND m.${sql.raw(c.shard)} = p.s AND m.${sql.raw(c.key)} = p.k)
      WHERE p.k IS NOT NULL AND ${ready} ${this.#notKeys(sql`p.k`, excludeKeys)}
      ORDER BY h.${sql.raw(c.seq)}
      LIMIT ${limit}`.execute(this.#db)
    return result.rows
  }

  /**
   * Runs `write` in one transaction after locking the token's shard rows FOR SHARE and keeping
   * those `token` still owns at its epoch: a relay that took a shard over bumped its epoch, so a
   * settle of the previous owner touches nothing. The share lock makes a take (FOR UPDATE) wait
   * until this settle commits, so the new owner reads its marks. Lease expiry alone does not
   * fence: until another relay takes the shard, nobody else has read its rows.
   */
  /**
   * A READ COMMITTED transaction for statements that lock shard rows. It must not outlive a relay
   * that stopped in the middle of it (SIGSTOP, a long pause, a frozen host): its locks would keep
   * every other relay from taking the shards after their lease. The database ends such a session
   * once it sits idle inside the transaction for {@link SHARD_TRANSACTION_IDLE_TIMEOUT_MS}
   * (Postgres `idle_in_transaction_session_timeout`, for this transaction only; MariaDB ≥ 10.3
   * `idle_transaction_timeout`, set for the transaction and put back; MySQL has neither), which
   * frees the locks; the paused relay finds its connection gone when it resumes, its writes undone.
   */
  #shardTransaction<T>(fn: (trx: Transaction<DB>) => Promise<T>): Promise<T> {
    const inTransaction = (db: Kysely<DB>) => db.transaction().setIsolationLevel('read committed')
    if (!this.#mysql) {
      return inTransaction(this.#db).execute(async (trx) => {
        await sql
          .raw(`SET LOCAL idle_in_transaction_session_timeout = ${SHARD_TRANSACTION_IDLE_TIMEOUT_MS}`)
          .execute(trx)
        return fn(trx)
      })
    }
    // MariaDB has no per-transaction setting: on one connection, set it before BEGIN and put it
    // back after COMMIT, so it covers the whole transaction and the application's pool finds the
    // session as it was. The executable comment runs on MariaDB ≥ 10.3 only.
    const seconds = Math.ceil(SHARD_TRANSACTION_IDLE_TIMEOUT_MS / 1000)
    return this.#db.connection().execute(async (connection) => {
      await sql
        .raw(
          `SET @outboxkit_idle = NULL /*M!100300 , @outboxkit_idle = @@SESSION.idle_transaction_timeout, SESSION idle_transaction_timeout = ${seconds} */`,
        )
        .execute(connection)
      try {
        return await inTransaction(connection).execute(fn)
      } finally {
        await sql
          .raw(
            'SET @outboxkit_idle = @outboxkit_idle /*M!100300 , SESSION idle_transaction_timeout = @outboxkit_idle */',
          )
          .execute(connection)
          .catch(() => {})
      }
    })
  }

  #withFence<T>(
    operation: string,
    token: ShardToken,
    lock: 'share' | 'update',
    write: (trx: Transaction<DB>, fenced: readonly number[]) => Promise<T>,
    none: T,
  ): Promise<T> {
    if (token.shards.length === 0) return Promise.resolve(none)
    const { shards } = this.tables
    const mode = lock === 'update' ? sql`FOR UPDATE` : this.#mysql ? sql`LOCK IN SHARE MODE` : sql`FOR SHARE`
    // A deadlock rolled the whole transaction back, nothing of it was written: run it again.
    return this.#run(operation, () =>
      retryOnDeadlock(() =>
        this.#shardTransaction(async (trx) => {
          const rows = await sql<{ shard: unknown; owner: unknown; epoch: unknown }>`
            SELECT shard, owner, epoch FROM ${sql.raw(shards)}
            WHERE ${inList(
              sql`shard`,
              token.shards.map((s) => s.shard),
            )} ORDER BY shard ${mode}`.execute(trx)
          const current = new Map(rows.rows.map((r) => [toNumber(r.shard), r]))
          const fenced = token.shards
            .filter((s) => {
              const row = current.get(s.shard)
              return row !== undefined && row.owner === token.relayId && toNumber(row.epoch) === s.epoch
            })
            .map((s) => s.shard)
          if (fenced.length === 0) return none
          return write(trx, fenced)
        }),
      ),
    )
  }

  /**
   * A fenced settle of a `shards:` token: one UPDATE per group of ids sharing the same
   * assignments (a failed batch usually shares one error and one delay).
   */
  async #settleOwned(
    operation: string,
    token: ShardToken,
    groups: readonly { ids: readonly string[]; assignments: RawBuilder<unknown> }[],
  ): Promise<SettleResult> {
    const all = [...new Set(groups.flatMap((g) => g.ids))]
    if (all.length === 0) return { settled: 0, lost: [] }
    if (!this.#mysql) return this.#settleOwnedInOneStatement(operation, token, groups, all)
    return this.#settleOwnedInOneMysqlStatement(operation, token, groups, all)
  }

  /**
   * MySQL/MariaDB: each group is one multi-table UPDATE that joins the outbox rows (found by id,
   * first: STRAIGHT_JOIN) to their shard rows at the token's owner and epoch. InnoDB share-locks
   * the shard rows such an UPDATE reads, even at READ COMMITTED, and reads them as last
   * committed: a take (FOR UPDATE) that comes after waits for the settle, so the new owner sees
   * its marks; one that commits first (the settle was still waiting for a row lock) makes it read
   * the new epoch and update nothing of that shard, whose rows the new owner then publishes again. As a single statement it cannot
   * sit idle holding locks (MySQL has no idle-transaction timeout at all), and one round trip
   * replaces seven. MySQL has no UPDATE … RETURNING: when fewer rows changed than were asked
   * for, the ids the statement updated are read back from a session variable it appended them
   * to, on the same connection.
   */
  async #settleOwnedInOneMysqlStatement(
    operation: string,
    token: ShardToken,
    groups: readonly { ids: readonly string[]; assignments: RawBuilder<unknown> }[],
    all: readonly string[],
  ): Promise<SettleResult> {
    if (token.shards.length === 0) return { settled: 0, lost: [...all] }
    const { outbox, shards, columns: c } = this.tables
    const owned = sql.join(token.shards.map((s) => sql`(${s.shard}, ${s.epoch})`))
    const settled = new Set<string>()
    await this.#run(operation, () =>
      this.#db.connection().execute(async (connection) => {
        for (const group of groups) {
          const ids = [...new Set(group.ids)]
          if (ids.length === 0) continue
          const result = await retryOnDeadlock(() =>
            sql`UPDATE ${sql.raw(outbox)} o ${this.#byIdIndex}
              STRAIGHT_JOIN ${sql.raw(shards)} s ON s.shard = o.${sql.raw(c.shard)}
              CROSS JOIN (SELECT @outboxkit_settled := NULL) AS reset
              SET ${group.assignments},
                o.${sql.raw(c.id)} = IF((@outboxkit_settled := CONCAT_WS(',', @outboxkit_settled, o.${sql.raw(c.id)})) IS NULL, o.${sql.raw(c.id)}, o.${sql.raw(c.id)})
              WHERE o.${sql.raw(c.id)} IN (${sql.join(ids)}) AND o.${sql.raw(c.status)} = ${Status.pending}
                AND s.owner = ${token.relayId} AND (s.shard, s.epoch) IN (${owned})`.execute(connection),
          )
          const changed = Number(result.numAffectedRows ?? 0n)
          if (changed === ids.length) {
            for (const id of ids) settled.add(id)
          } else if (changed > 0) {
            const read = await sql<{ ids: unknown }>`SELECT @outboxkit_settled AS ids`.execute(connection)
            for (const id of String(read.rows[0]?.ids ?? '').split(',')) if (id !== '') settled.add(id)
          }
        }
      }),
    )
    return { settled: settled.size, lost: all.filter((id) => !settled.has(id)) }
  }

  /**
   * Postgres: each group is one statement, fence and update together, outside any explicit
   * transaction. The CTE locks the token's shard rows FOR SHARE, in shard order like every
   * other locker, and keeps those still at the token's owner and epoch (a take that commits
   * first makes it re-read the row and drop the shard); the UPDATE touches only rows of those
   * shards. A statement cannot sit idle inside a transaction, so a relay frozen mid-settle holds
   * no lock once the statement ends, and one round trip replaces five.
   *
   * The plan must look the rows up by id whatever the statistics say (a fresh backlog has none):
   * the id list is an InitPlan (computed once, not per row), and status is compared through a
   * cast so that the partial pending indexes, which the planner then believes tiny, are not
   * chosen instead of the id index (seen at seconds per mark on a 20 000-row backlog).
   */
  async #settleOwnedInOneStatement(
    operation: string,
    token: ShardToken,
    groups: readonly { ids: readonly string[]; assignments: RawBuilder<unknown> }[],
    all: readonly string[],
  ): Promise<SettleResult> {
    const { outbox, shards, columns: c } = this.tables
    const pairs = JSON.stringify(token.shards.map((s) => [s.shard, s.epoch]))
    const settled = new Set<string>()
    for (const group of groups) {
      const ids = group.ids.filter((id) => UUID.test(id))
      if (ids.length === 0) continue
      const updated = await this.#run(operation, () =>
        retryOnDeadlock(() =>
          sql<{ id: unknown }>`
            WITH fence AS MATERIALIZED (
              SELECT s.shard FROM ${sql.raw(shards)} s
              JOIN jsonb_array_elements(CAST(CAST(${pairs} AS text) AS jsonb)) AS t(pair)
                ON s.shard = CAST(t.pair->>0 AS integer) AND s.epoch = CAST(t.pair->>1 AS bigint)
              WHERE s.owner = ${token.relayId}
              ORDER BY s.shard FOR SHARE OF s)
            UPDATE ${sql.raw(outbox)} SET ${group.assignments}
            WHERE ${sql.raw(c.id)} = ANY(ARRAY(
                SELECT CAST(jsonb_array_elements_text(CAST(CAST(${JSON.stringify(ids)} AS text) AS jsonb)) AS uuid)))
              AND CAST(${sql.raw(c.status)} AS integer) = ${Status.pending}
              AND ${sql.raw(c.shard)} IN (SELECT shard FROM fence)
            RETURNING ${sql.raw(c.id)} AS id`.execute(this.#db),
        ),
      )
      for (const row of updated.rows) settled.add(String(row.id))
    }
    return { settled: settled.size, lost: all.filter((id) => !settled.has(id)) }
  }

  /**
   * How settles of a `shards:` token name the outbox's columns: MySQL's multi-table UPDATE
   * qualifies them (`o.`); Postgres's single-table UPDATE must not (SET takes bare names).
   */
  get #ownedAlias(): string | undefined {
    return this.#mysql ? 'o' : undefined
  }

  /** The outbox's column names, qualified by the table alias `on` when given (a multi-table UPDATE). */
  #columnsOn(on: string | undefined): ResolvedTables['columns'] {
    const c = this.tables.columns
    if (on === undefined) return c
    return Object.fromEntries(
      Object.entries(c).map(([k, v]) => [k, `${on}.${v}`]),
    ) as ResolvedTables['columns']
  }

  #publishedAssignments(on?: string): RawBuilder<unknown> {
    const c = this.#columnsOn(on)
    return sql`${sql.raw(c.status)} = ${Status.published}, ${sql.raw(c.publishedAt)} = ${this.#sql.now},
      ${sql.raw(c.attempts)} = ${sql.raw(c.attempts)} + 1`
  }

  #failedGroups(failures: readonly FailedRecord[], on?: string) {
    const c = this.#columnsOn(on)
    const byId = new Map(failures.map((f) => [f.id, f]))
    const groups = new Map<string, { ids: string[]; failure: FailedRecord }>()
    for (const f of byId.values()) {
      const retryInMs = Math.max(0, f.retryInMs)
      const key = JSON.stringify([retryInMs, f.error])
      const group = groups.get(key) ?? { ids: [], failure: { ...f, retryInMs } }
      group.ids.push(f.id)
      groups.set(key, group)
    }
    return [...groups.values()].map(({ ids, failure }) => ({
      ids,
      assignments: sql`${sql.raw(c.attempts)} = ${sql.raw(c.attempts)} + 1,
        ${sql.raw(c.availableAt)} = ${this.#sql.plusMs(failure.retryInMs)},
        ${sql.raw(c.lastError)} = ${truncateError(failure.error)}`,
    }))
  }

  #deadGroups(records: readonly DeadRecord[], on?: string) {
    const c = this.#columnsOn(on)
    const byError = new Map<string, Set<string>>()
    for (const r of records) {
      const ids = byError.get(r.error) ?? new Set<string>()
      ids.add(r.id)
      byError.set(r.error, ids)
    }
    return [...byError].map(([error, ids]) => ({
      ids: [...ids],
      assignments: sql`${sql.raw(c.status)} = ${Status.dead}, ${sql.raw(c.attempts)} = ${sql.raw(c.attempts)} + 1,
        ${sql.raw(c.lastError)} = ${truncateError(error)}`,
    }))
  }

  /** `release` of a `shards:` token: writes nothing (nothing was written at claim time). */
  async #releaseOwned(token: ShardToken, ids: readonly string[] | undefined): Promise<SettleResult> {
    const { outbox, columns: c } = this.tables
    if (ids === undefined) {
      const settled = await this.#withFence(
        'release',
        token,
        'share',
        async (_trx, fenced) =>
          token.shards.filter((s) => fenced.includes(s.shard)).reduce((n, s) => n + s.count, 0),
        0,
      )
      return { settled, lost: [] }
    }
    const unique = [...new Set(ids)]
    if (unique.length === 0) return { settled: 0, lost: [] }
    const held = await this.#withFence(
      'release',
      token,
      'share',
      async (trx, fenced) => {
        const candidates = this.#mysql ? unique : unique.filter((id) => UUID.test(id))
        if (candidates.length === 0) return new Set<string>()
        const rows = await sql<{
          id: unknown
        }>`SELECT ${sql.raw(c.id)} AS id FROM ${sql.raw(outbox)} ${this.#byIdIndex}
          WHERE ${sql.raw(c.id)} IN (${sql.join(candidates)}) AND ${sql.raw(c.status)} = ${Status.pending}
            AND ${inList(sql.raw(c.shard), fenced)}`.execute(trx)
        return new Set(rows.rows.map((r) => String(r.id)))
      },
      new Set<string>(),
    )
    return { settled: held.size, lost: unique.filter((id) => !held.has(id)) }
  }

  /** `extendLease` of a `shards:` token: renews the shards it still owns at its epochs. */
  #extendOwned(token: ShardToken, leaseMs: number): Promise<number> {
    positiveInteger('leaseMs', leaseMs, undefined, this.name)
    return this.#withFence(
      'extendLease',
      token,
      'update',
      async (trx, fenced) => {
        await sql`UPDATE ${sql.raw(this.tables.shards)} SET lease_until = ${this.#sql.plusMs(leaseMs)}
          WHERE ${inList(sql`shard`, fenced)}`.execute(trx)
        return token.shards.filter((s) => fenced.includes(s.shard)).reduce((n, s) => n + s.count, 0)
      },
      0,
    )
  }

  /**
   * The window: the oldest pending rows (among those `filter` keeps), ready or not. Every pending
   * row with a smaller seq is in it too, so the first row of a key here is that key's head (its
   * oldest unsettled row); reading a bounded window keeps the cost independent of the backlog.
   * When the window is full yet its ready heads cannot fill `limit` (keys that cannot progress, a
   * head waiting for its retry or leased, crowd it), `beyond` finds the ready heads of the keys
   * that start after it by hopping over keys through an index, and their runs are added, so the
   * cost depends on how many keys are pending, never on how many rows one key holds.
   * Returns the candidates (seq order) and the heads' seqs (seq order).
   */
  async #windowRuns(
    db: Kysely<DB>,
    limit: number,
    filter: RawBuilder<unknown>,
    beyond: (afterSeq: unknown, limit: number) => Promise<{ seq: unknown; key: string }[]>,
  ): Promise<{ candidates: ClaimCandidate[]; heads: unknown[] }> {
    const { outbox, columns: c } = this.tables
    const window = Math.min(Math.max(MIN_CLAIM_WINDOW, limit * CLAIM_WINDOW_FACTOR), MAX_CLAIM_WINDOW)
    const pending = await sql<ClaimCandidate>`
      SELECT o.${sql.raw(c.seq)} AS seq, o.${sql.raw(c.key)} AS ${sql.raw(this.#q('key'))},
        ${this.#readyColumn('o')} AS ready
      FROM ${sql.raw(outbox)} o ${this.#pendingIndex}
      WHERE o.${sql.raw(c.status)} = ${Status.pending} ${filter}
      ORDER BY o.${sql.raw(c.seq)}
      LIMIT ${window}`.execute(db)
    let candidates = pending.rows
    const heads = readyHeads(candidates)
    // Counted within the keys' shares: a window crowded by one key's backlog looks beyond it
    // for other keys, as does one crowded by keys that cannot progress.
    const fromWindow = withinShares(claimableRuns(candidates, new Set(heads.map(String))), limit)
    if (candidates.length === window && fromWindow < limit) {
      const found = await beyond(candidates[candidates.length - 1]!.seq, limit - fromWindow)
      if (found.length > 0) {
        heads.push(...found.map((h) => h.seq))
        candidates = [...candidates, ...(await this.#runsOf(db, found, limit - fromWindow))]
      }
    }
    return { candidates, heads }
  }

  /** Whether a row may be claimed now, as a 1/0 column. */
  #readyColumn(alias: string): RawBuilder<unknown> {
    const c = this.tables.columns
    const now = this.#sql.now
    return sql`CASE WHEN ${sql.raw(alias)}.${sql.raw(c.availableAt)} <= ${now}
      AND (${sql.raw(alias)}.${sql.raw(c.leaseUntil)} IS NULL OR ${sql.raw(alias)}.${sql.raw(c.leaseUntil)} <= ${now})
      THEN 1 ELSE 0 END`
  }

  /**
   * The ready heads of keys whose head lies after `afterSeq`, oldest first, at most `limit`.
   * A loose index scan: one index dive per pending key, so a key with a large backlog costs as
   * much as a key with one row.
   */
  /**
   * The parts of a look-up of ready heads beyond `afterSeq` (alias `h`): the pending condition,
   * the readiness condition of a head, and the columns read.
   */
  #headBeyond(afterSeq: unknown): {
    pending: RawBuilder<unknown>
    ready: RawBuilder<unknown>
    columns: RawBuilder<unknown>
  } {
    const c = this.tables.columns
    const now = this.#sql.now
    const pending = sql`${sql.raw(c.status)} = ${Status.pending}`
    const ready = sql`h.${sql.raw(c.seq)} > ${afterSeq} AND h.${pending}
        AND h.${sql.raw(c.availableAt)} <= ${now}
        AND (h.${sql.raw(c.leaseUntil)} IS NULL OR h.${sql.raw(c.leaseUntil)} <= ${now})`
    const columns = sql`h.${sql.raw(c.seq)} AS seq, h.${sql.raw(c.key)} AS ${sql.raw(this.#q('key'))}`
    return { pending, ready, columns }
  }

  async #headsBeyond(
    trx: Transaction<DB>,
    afterSeq: unknown,
    limit: number,
  ): Promise<{ seq: unknown; key: string }[]> {
    const { outbox, columns: c } = this.tables
    const { pending, ready, columns } = this.#headBeyond(afterSeq)
    if (this.#mysql) {
      // InnoDB reads MIN(seq) per (status, key) group as a loose index scan of the
      // (status, key, seq) index ("Using index for group-by"): one index dive per key.
      const result = await sql<{ seq: unknown; key: string }>`
        SELECT ${columns} FROM (
          SELECT MIN(${sql.raw(c.seq)}) AS head FROM ${sql.raw(outbox)} WHERE ${pending}
          GROUP BY ${sql.raw(c.status)}, ${sql.raw(c.key)}) g
        JOIN ${sql.raw(outbox)} h ON h.${sql.raw(c.seq)} = g.head
        WHERE g.head > ${afterSeq} AND ${ready}
        ORDER BY h.${sql.raw(c.seq)} LIMIT ${limit}`.execute(trx)
      return result.rows
    }
    // Postgres has no loose index scan: a recursive CTE hops from key to key on the partial
    // (key, seq) index. MIN(varchar) is typed varchar without length: both terms are cast alike.
    const result = await sql<{ seq: unknown; key: string }>`
      WITH RECURSIVE pending_keys (k) AS (
        SELECT CAST(MIN(${sql.raw(c.key)}) AS text) FROM ${sql.raw(outbox)} WHERE ${pending}
        UNION ALL
        SELECT CAST((SELECT MIN(n.${sql.raw(c.key)}) FROM ${sql.raw(outbox)} n
          WHERE n.${pending} AND n.${sql.raw(c.key)} > p.k) AS text)
        FROM pending_keys p WHERE p.k IS NOT NULL
      )
      SELECT ${columns}
      FROM pending_keys p JOIN ${sql.raw(outbox)} h ON h.${sql.raw(c.seq)} = (
        SELECT MIN(m.${sql.raw(c.seq)}) FROM ${sql.raw(outbox)} m WHERE m.${pending} AND m.${sql.raw(c.key)} = p.k)
      WHERE p.k IS NOT NULL AND ${ready}
      ORDER BY h.${sql.raw(c.seq)}
      LIMIT ${limit}`.execute(trx)
    return result.rows
  }

  /** The oldest `limit` pending rows of each of `heads`' keys, through the per-key index. */
  async #runsOf(
    trx: Kysely<DB>,
    heads: readonly { key: string }[],
    limit: number,
  ): Promise<ClaimCandidate[]> {
    const { outbox, columns: c } = this.tables
    const run = (match: RawBuilder<unknown>) => sql`SELECT o.${sql.raw(c.seq)} AS seq,
        o.${sql.raw(c.key)} AS ${sql.raw(this.#q('key'))}, ${this.#readyColumn('o')} AS ready
        FROM ${sql.raw(outbox)} o
        WHERE o.${sql.raw(c.status)} = ${Status.pending} AND o.${sql.raw(c.key)} = ${match}
        ORDER BY o.${sql.raw(c.seq)} LIMIT ${limit}`
    // Postgres plans one lateral subquery for all keys; MariaDB has no LATERAL.
    const result = await (this.#mysql
      ? sql<ClaimCandidate>`${sql.join(
          heads.map((h) => sql`(${run(sql`${h.key}`)})`),
          sql` UNION ALL `,
        )}`
      : sql<ClaimCandidate>`SELECT r.* FROM unnest(ARRAY[${sql.join(heads.map((h) => h.key))}]::text[]) AS u(k)
          CROSS JOIN LATERAL (${run(sql`u.k`)}) r`
    ).execute(trx)
    return result.rows.sort((a, b) => toNumber(a.seq) - toNumber(b.seq))
  }

  /**
   * MySQL may answer a long `id IN (...)` with a table scan, and a locking scan waits on every
   * row a writer has not committed yet; the unique id index touches only the rows asked for.
   */
  get #byIdIndex(): RawBuilder<unknown> {
    return this.#mysql ? sql.raw(`FORCE INDEX (\`${this.tables.outboxName}_id_key\`)`) : sql``
  }

  /** MySQL: find settled rows through the (status, created_at) index, never by scanning PRIMARY. */
  get #settledIndex(): RawBuilder<unknown> {
    return this.#mysql ? sql.raw(`FORCE INDEX (\`${this.tables.outboxName}_status_created\`)`) : sql``
  }

  /** MySQL: read pending rows through the (status, seq) index, in seq order. */
  get #pendingIndex(): RawBuilder<unknown> {
    return this.#mysql ? sql.raw(`FORCE INDEX (\`${this.tables.outboxName}_status_seq\`)`) : sql``
  }

  /** Quotes an output alias in the store's dialect. */
  #q(alias: string): string {
    return this.#mysql ? `\`${alias}\`` : `"${alias}"`
  }

  /**
   * Applies `assignments` to the rows among `ids` that `token` still holds, and reports the rest
   * as lost. Runs in one transaction so the report matches what was written.
   */
  async #settle(
    operation: string,
    token: string,
    ids: readonly string[],
    assignments: (id: string | undefined) => RawBuilder<unknown>,
    perRow = false,
  ): Promise<SettleResult> {
    if (ids.length === 0) return { settled: 0, lost: [] }
    const { outbox, columns: c } = this.tables
    const unique = [...new Set(ids)]
    if (!this.#mysql && !perRow) {
      // Postgres: one statement; the token check fences it and RETURNING says which rows it held.
      const clear = sql`${sql.raw(c.leaseUntil)} = NULL, ${sql.raw(c.claimToken)} = NULL`
      const updated = await this.#run(operation, () =>
        sql<{ id: unknown }>`UPDATE ${sql.raw(outbox)} SET ${assignments(undefined)}, ${clear}
          WHERE ${sql.raw(c.id)} IN (${sql.join(unique)}) AND ${sql.raw(c.claimToken)} = ${token}
          RETURNING ${sql.raw(c.id)} AS id`.execute(this.#db),
      )
      const settled = new Set(updated.rows.map((r) => String(r.id)))
      return { settled: settled.size, lost: unique.filter((id) => !settled.has(id)) }
    }
    return this.#run(operation, () =>
      this.#db
        .transaction()
        .setIsolationLevel('read committed')
        .execute(async (trx) => {
          // Lock by the unique id alone, so MySQL walks the id index and never waits on rows of
          // writers' open transactions; the token is checked on the locked rows.
          const rows = await sql<{ id: unknown; token: unknown; status: unknown }>`
            SELECT ${sql.raw(c.id)} AS id, ${sql.raw(c.claimToken)} AS token, ${sql.raw(c.status)} AS status
            FROM ${sql.raw(outbox)} ${this.#byIdIndex} WHERE ${sql.raw(c.id)} IN (${sql.join(unique)})
            FOR UPDATE`.execute(trx)
          const heldIds = new Set(
            rows.rows
              .filter(
                (r) => r.token !== null && String(r.token) === token && toNumber(r.status) === Status.pending,
              )
              .map((r) => String(r.id)),
          )
          const lost = unique.filter((id) => !heldIds.has(id))
          if (heldIds.size === 0) return { settled: 0, lost }
          const clear = sql`${sql.raw(c.leaseUntil)} = NULL, ${sql.raw(c.claimToken)} = NULL`
          if (perRow) {
            for (const id of heldIds) {
              await sql`UPDATE ${sql.raw(outbox)} SET ${assignments(id)}, ${clear}
                WHERE ${sql.raw(c.id)} = ${id}`.execute(trx)
            }
          } else {
            await sql`UPDATE ${sql.raw(outbox)} SET ${assignments(undefined)}, ${clear}
              WHERE ${sql.raw(c.id)} IN (${sql.join([...heldIds])})`.execute(trx)
          }
          return { settled: heldIds.size, lost }
        }),
    )
  }

  markPublished(token: string, ids: readonly string[]): Promise<SettleResult> {
    const c = this.tables.columns
    const owned = parseShardToken(token)
    if (owned)
      return this.#settleOwned('markPublished', owned, [
        { ids, assignments: this.#publishedAssignments(this.#ownedAlias) },
      ])
    return this.#settle(
      'markPublished',
      token,
      ids,
      () => sql`${sql.raw(c.status)} = ${Status.published}, ${sql.raw(c.publishedAt)} = ${this.#sql.now}`,
    )
  }

  markFailed(token: string, failures: readonly FailedRecord[]): Promise<SettleResult> {
    const c = this.tables.columns
    const owned = parseShardToken(token)
    if (owned) return this.#settleOwned('markFailed', owned, this.#failedGroups(failures, this.#ownedAlias))
    const byId = new Map(failures.map((f) => [f.id, f]))
    return this.#settle(
      'markFailed',
      token,
      [...byId.keys()],
      (id) => {
        const failure = byId.get(id!)!
        return sql`${sql.raw(c.availableAt)} = ${this.#sql.plusMs(Math.max(0, failure.retryInMs))},
          ${sql.raw(c.lastError)} = ${truncateError(failure.error)}`
      },
      true,
    )
  }

  markDead(token: string, records: readonly DeadRecord[]): Promise<SettleResult> {
    const c = this.tables.columns
    const owned = parseShardToken(token)
    if (owned) return this.#settleOwned('markDead', owned, this.#deadGroups(records, this.#ownedAlias))
    const byId = new Map(records.map((r) => [r.id, r]))
    return this.#settle(
      'markDead',
      token,
      [...byId.keys()],
      (id) =>
        sql`${sql.raw(c.status)} = ${Status.dead}, ${sql.raw(c.lastError)} = ${truncateError(byId.get(id!)!.error)}`,
      true,
    )
  }

  async release(token: string, ids?: readonly string[]): Promise<SettleResult> {
    const owned = parseShardToken(token)
    if (owned) return this.#releaseOwned(owned, ids)
    const { outbox, columns: c } = this.tables
    const decrement = sql`${sql.raw(c.attempts)} = CASE WHEN ${sql.raw(c.attempts)} > 0 THEN ${sql.raw(c.attempts)} - 1 ELSE 0 END`
    if (ids !== undefined) return this.#settle('release', token, ids, () => decrement)
    const result = await this.#run('release', () =>
      sql`UPDATE ${sql.raw(outbox)} SET ${decrement}, ${sql.raw(c.leaseUntil)} = NULL, ${sql.raw(c.claimToken)} = NULL
        WHERE ${sql.raw(c.claimToken)} = ${token} AND ${sql.raw(c.status)} = ${Status.pending}`.execute(
        this.#db,
      ),
    )
    return { settled: toNumber(result.numAffectedRows), lost: [] }
  }

  async extendLease(token: string, leaseMs: number): Promise<number> {
    const owned = parseShardToken(token)
    if (owned) return this.#extendOwned(owned, leaseMs)
    const { outbox, columns: c } = this.tables
    const result = await this.#run('extendLease', () =>
      sql`UPDATE ${sql.raw(outbox)} SET ${sql.raw(c.leaseUntil)} = ${this.#sql.plusMs(leaseMs)}
        WHERE ${sql.raw(c.claimToken)} = ${token} AND ${sql.raw(c.status)} = ${Status.pending}`.execute(
        this.#db,
      ),
    )
    return toNumber(result.numAffectedRows)
  }

  async requeue(ids: readonly string[]): Promise<RequeueResult> {
    const { outbox, columns: c } = this.tables
    const unique = [...new Set(ids)]
    // Postgres ids are uuids: anything else cannot name a row.
    const candidates = this.#mysql ? unique : unique.filter((id) => UUID.test(id))
    if (candidates.length === 0) return { requeued: [], skipped: unique }
    const requeued = await this.#run('requeue', () =>
      this.#db
        .transaction()
        .setIsolationLevel('read committed')
        .execute(async (trx) => {
          const dead = await sql<{ seq: unknown; id: unknown }>`
            SELECT ${sql.raw(c.seq)} AS seq, ${sql.raw(c.id)} AS id FROM ${sql.raw(outbox)} ${this.#byIdIndex}
            WHERE ${sql.raw(c.id)} IN (${sql.join(candidates)}) AND ${sql.raw(c.status)} = ${Status.dead}
            ORDER BY ${sql.raw(c.seq)} FOR UPDATE`.execute(trx)
          const reset = sql`${sql.raw(c.status)} = ${Status.pending}, ${sql.raw(c.attempts)} = 0,
            ${sql.raw(c.availableAt)} = ${this.#sql.now}, ${sql.raw(c.leaseUntil)} = NULL,
            ${sql.raw(c.claimToken)} = NULL`
          // One at a time, oldest first, so requeued rows of one key keep their order. A new seq
          // puts each behind every row of its key that is pending now.
          for (const row of dead.rows) {
            if (!this.#mysql) {
              await sql`UPDATE ${sql.raw(outbox)} SET ${sql.raw(c.seq)} = DEFAULT, ${reset}
                WHERE ${sql.raw(c.seq)} = ${row.seq}`.execute(trx)
              continue
            }
            // MySQL cannot give an existing row a new AUTO_INCREMENT value: copy it, then delete
            // the old row (the copy takes a temporary id, as ids are unique).
            const columns = [c.topic, c.key, c.type, c.payload, c.headers, c.createdAt, c.lastError]
            const temporary = crypto.randomUUID()
            await sql`INSERT INTO ${sql.raw(outbox)} (${sql.raw([c.id, ...columns].join(', '))})
              SELECT ${temporary}, ${sql.raw(columns.join(', '))} FROM ${sql.raw(outbox)}
              WHERE ${sql.raw(c.seq)} = ${row.seq}`.execute(trx)
            await sql`DELETE FROM ${sql.raw(outbox)} WHERE ${sql.raw(c.seq)} = ${row.seq}`.execute(trx)
            await sql`UPDATE ${sql.raw(outbox)} SET ${sql.raw(c.id)} = ${String(row.id)}, ${reset}
              WHERE ${sql.raw(c.id)} = ${temporary}`.execute(trx)
          }
          return new Set(dead.rows.map((r) => String(r.id)))
        }),
    )
    return {
      requeued: unique.filter((id) => requeued.has(id)),
      skipped: unique.filter((id) => !requeued.has(id)),
    }
  }

  /**
   * Deletes settled rows in batches of {@link PURGE_BATCH_SIZE}, each in its own short READ
   * COMMITTED transaction: the batch is found through the index on settled rows (a plain read,
   * no locks), then deleted by primary key, re-checking the status. Pending rows and the end of
   * the table are never locked, so writers and claims go on while a large purge runs.
   */
  async purge(options: PurgeOptions): Promise<number> {
    checkPurgeOptions(options, this.name)
    const { outbox, columns: c } = this.tables
    const statuses = [
      Status.published,
      ...(options.includeDead ? [Status.dead] : []),
      ...(options.includePending ? [Status.pending] : []),
    ]
    const limit = options.limit ?? DEFAULT_PURGE_LIMIT
    const settled = sql`${sql.raw(c.status)} IN (${sql.join(statuses)})`
    let purged = 0
    while (purged < limit) {
      const batch = Math.min(PURGE_BATCH_SIZE, limit - purged)
      const horizon = this.#sql.minusMs(options.olderThanMs)
      const deleted = await this.#run('purge', () =>
        this.#db
          .transaction()
          .setIsolationLevel('read committed')
          .execute(async (trx) => {
            const found = await sql<{ seq: unknown }>`
              SELECT ${sql.raw(c.seq)} AS seq FROM ${sql.raw(outbox)} ${this.#settledIndex}
              WHERE ${settled} AND ${sql.raw(c.createdAt)} < ${horizon}
              LIMIT ${batch}`.execute(trx)
            if (found.rows.length === 0) return { found: 0, deleted: 0 }
            const result = await sql`DELETE FROM ${sql.raw(outbox)}
              WHERE ${sql.raw(c.seq)} IN (${sql.join(found.rows.map((r) => r.seq))}) AND ${settled}`.execute(
              trx,
            )
            return { found: found.rows.length, deleted: toNumber(result.numAffectedRows) }
          }),
      )
      purged += deleted.deleted
      if (deleted.found < batch) break
    }
    return purged
  }

  /**
   * A lock across processes: Postgres `pg_try_advisory_lock` (a session lock on a key hashed from
   * the name), MariaDB `GET_LOCK(name, 0)`, each on a pooled connection reserved while `fn` runs.
   * On PGlite (one process, one session) a lock within the process.
   */
  runExclusive<T>(name: string, fn: () => Promise<T>): Promise<ExclusiveOutcome<T>> {
    return runExclusive(
      this.#db as Kysely<unknown>,
      this.tables.dialect,
      { name: this.name, table: this.tables.outboxName, scope: this.tables.outbox },
      name,
      fn,
    )
  }

  async stats(): Promise<OutboxStats> {
    const { outbox, columns: c } = this.tables
    const result = await this.#run('stats', () =>
      sql<{ pending: unknown; dead: unknown; age: unknown }>`
        SELECT count(*) AS pending,
          ${this.#sql.ageMs(sql`min(${sql.raw(c.createdAt)})`)} AS age,
          (SELECT count(*) FROM ${sql.raw(outbox)} WHERE ${sql.raw(c.status)} = ${Status.dead}) AS dead
        FROM ${sql.raw(outbox)} WHERE ${sql.raw(c.status)} = ${Status.pending}`.execute(this.#db),
    )
    const row = result.rows[0]
    return {
      pending: toNumber(row?.pending),
      dead: toNumber(row?.dead),
      oldestPendingAgeMs: Math.max(0, Math.round(toNumber(row?.age ?? 0))),
    }
  }

  /** Runs a database call, turning driver errors into typed, retriable store errors. */
  #run<T>(operation: string, fn: () => Promise<T>): Promise<T> {
    return runStoreOperation(this.name, this.tables.outboxName, operation, fn)
  }
}

/** A claimed row, read with the column aliases of the claim statements. */
function claimedRecord(row: Record<string, unknown>, attempts: number): ClaimedRecord {
  return {
    id: String(row['id']),
    topic: String(row['topic']),
    key: String(row['key']),
    type: String(row['type']),
    payload: toBytes(row['payload']),
    headers: toHeaders(row['headers']),
    attempts,
    createdAt: toDate(row['created_at']),
  }
}

/** The seq of each key's first row in `rows` (seq order) when that row is ready. */
function readyHeads(rows: readonly ClaimCandidate[]): unknown[] {
  const heads: unknown[] = []
  const seen = new Set<string>()
  for (const row of rows) {
    if (seen.has(row.key)) continue
    seen.add(row.key)
    if (toNumber(row.ready) === 1) heads.push(row.seq)
  }
  return heads
}

/**
 * Oldest first across keys, at most `limit` rows: each key whose first row in `rows` is one of
 * `heads` contributes the ready rows from it up to its first row that is not ready.
 */
function runs(rows: readonly ClaimCandidate[], heads: ReadonlySet<string>, limit: number): unknown[] {
  const chosen: unknown[] = []
  const open = new Set<string>()
  const closed = new Set<string>()
  for (const row of rows) {
    if (chosen.length >= limit) break
    if (closed.has(row.key)) continue
    if (!open.has(row.key)) {
      if (!heads.has(String(row.seq))) {
        closed.add(row.key)
        continue
      }
      open.add(row.key)
    } else if (toNumber(row.ready) !== 1) {
      closed.add(row.key)
      continue
    }
    chosen.push(row.seq)
  }
  return chosen
}

/**
 * {@link runs}, shared between keys ({@link shareClaim}): a key with a long run takes at most its
 * share of the claim while other keys' runs are left out, and more only when they cannot fill it.
 */
function sharedRuns(rows: readonly ClaimCandidate[], heads: ReadonlySet<string>, limit: number): unknown[] {
  return shareClaim(claimableRuns(rows, heads), limit).map((row) => row.seq)
}

/** The claimable records of `rows` ({@link runs} without a limit), with their keys. */
function claimableRuns(
  rows: readonly ClaimCandidate[],
  heads: ReadonlySet<string>,
): { seq: unknown; key: string }[] {
  const keyOf = new Map(rows.map((row) => [String(row.seq), row.key]))
  return runs(rows, heads, Number.POSITIVE_INFINITY).map((seq) => ({ seq, key: keyOf.get(String(seq))! }))
}

/** `column IN (...)`, or false for an empty list (SQL has no empty IN list). */
function inList(column: RawBuilder<unknown>, values: readonly (number | string)[]): RawBuilder<unknown> {
  return values.length === 0 ? sql`1 = 0` : sql`${column} IN (${sql.join(values)})`
}

/** A `claimOwned` token: the relay, and each contributing shard's epoch and record count. */
interface ShardToken {
  readonly relayId: string
  readonly shards: readonly { readonly shard: number; readonly epoch: number; readonly count: number }[]
}

const SHARD_TOKEN_PREFIX = 'shards:'

function shardToken(relayId: string, shards: ShardToken['shards']): string {
  return `${SHARD_TOKEN_PREFIX}${JSON.stringify({ relayId, shards: shards.map((s) => [s.shard, s.epoch, s.count]) })}`
}

/**
 * The shard token in `token`, or undefined for a row-lease token. A `shards:` token that does not
 * parse holds nothing (every id is lost).
 */
function parseShardToken(token: string): ShardToken | undefined {
  if (typeof token !== 'string' || !token.startsWith(SHARD_TOKEN_PREFIX)) return undefined
  try {
    const parsed: unknown = JSON.parse(token.slice(SHARD_TOKEN_PREFIX.length))
    const { relayId, shards } = parsed as { relayId: unknown; shards: unknown }
    if (typeof relayId !== 'string' || !Array.isArray(shards)) return { relayId: '', shards: [] }
    const valid = shards.filter(
      (s): s is [number, number, number] =>
        Array.isArray(s) &&
        s.length === 3 &&
        s.every((n) => Number.isSafeInteger(n)) &&
        s[0] >= 0 &&
        s[0] < SHARD_COUNT,
    )
    return { relayId, shards: valid.map(([shard, epoch, count]) => ({ shard, epoch, count })) }
  } catch {
    return { relayId: '', shards: [] }
  }
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

const MAX_ERROR_TEXT = 4000

function truncateError(text: string): string {
  return text.length > MAX_ERROR_TEXT ? `${text.slice(0, MAX_ERROR_TEXT - 1)}…` : text
}

/** Whether `value` is a Kysely transaction (`trx` inside `db.transaction().execute(...)`). */
export function isKyselyTransaction(value: unknown): boolean {
  return (
    typeof value === 'object' &&
    value !== null &&
    (value as { isTransaction?: unknown }).isTransaction === true &&
    typeof (value as { selectFrom?: unknown }).selectFrom === 'function'
  )
}

/**
 * Drivers take bytes as Buffer where it exists (pg and mysql2 treat a bare Uint8Array as an
 * array); PGlite and edge runtimes take Uint8Array.
 */
export function bytesParameter(bytes: Uint8Array): Uint8Array {
  const NodeBuffer = (globalThis as { Buffer?: { from(b: ArrayBuffer, o: number, l: number): Uint8Array } })
    .Buffer
  return NodeBuffer ? NodeBuffer.from(bytes.buffer as ArrayBuffer, bytes.byteOffset, bytes.byteLength) : bytes
}
