/**
 * A {@link ChangeFeed} on Postgres logical replication: the outbox table's INSERTs, and the
 * outbox's logical decoding messages (the table-less mode), decoded by pgoutput from a permanent
 * replication slot, through `pg-logical-replication`.
 */
import pg from 'pg'
import { LogicalReplicationService, type Pgoutput, PgoutputPlugin } from 'pg-logical-replication'
import type { ChangeFeed, DeadFeedRecord, FeedBatch, FeedLag, FeedPosition } from '../../core/change-feed.js'
import { describeError, ErrorCode, isOutboxKitError, OutboxKitError } from '../../core/errors.js'
import type { ClaimedRecord } from '../../core/message.js'
import { isRetriableDatabaseError, runStoreOperation } from '../kysely/database-errors.js'
import { decodeLogicalMessage, validateMessagePrefix } from '../kysely/logical-message.js'
import { Status } from '../kysely/schema.js'
import { formatLsn, parseLsn } from './lsn.js'
import {
  type PostgresFeedNames,
  postgresFeedDropSql,
  postgresFeedSetup,
  type ResolvedFeedNames,
  resolveFeedNames,
} from './postgres-feed-setup.js'

const SOURCE = 'postgres-logical'

/** Options of {@link createPostgresChangeFeed}. Give `connectionString` or `clientConfig`. */
export interface PostgresChangeFeedOptions extends PostgresFeedNames {
  /** A Postgres URL, e.g. `postgres://relay@db:5432/app`. */
  connectionString?: string
  /** A `pg` client configuration, for what a URL cannot say (TLS options, a password function). */
  clientConfig?: pg.ClientConfig
  /**
   * Whether `open()` creates the marker table, publication and slot when they are missing (see
   * {@link postgresFeedSetup}). Default `true`. With `false`, create them with the setup SQL first.
   */
  createIfMissing?: boolean
  /**
   * How often the feed reports its confirmed position to the server even when nothing changed, in
   * ms, so `wal_sender_timeout` (default 60 s) never ends a healthy connection. Default 10 000.
   */
  statusIntervalMs?: number
  /**
   * Most records of committed transactions received from the server and not read yet before the
   * feed stops reading the replication stream (it reads on below half of it), so a restart far
   * behind the log does not hold the whole backlog in memory. A transaction is always received
   * whole, however large. Default 10 000.
   */
  maxBufferedRecords?: number
  /**
   * Also reads the outbox's transactional logical decoding messages with this prefix: what a
   * Kysely store created with the same `messagePrefix` writes (the table-less mode). They come in
   * commit order together with the table's INSERTs (with `table: false`, instead of them);
   * messages with other prefixes, and non-transactional ones, are ignored. Needs Postgres 14 or
   * later (pgoutput's `messages` option). Unset by default.
   */
  messagePrefix?: string
}

/** A record received from the log, in commit order. `end` is set on a transaction's last record. */
interface Pending {
  readonly record: ClaimedRecord
  end: bigint | undefined
}

/** A transaction's records received but not confirmed yet: for `lag().ageMs`. */
interface Unconfirmed {
  readonly end: bigint
  readonly createdAt: Date
}

interface Pausable {
  pause?(): void
  resume?(): void
}

/** A logical message with the outbox's prefix that is not an outbox record: kept in the dead table. */
interface Rejected {
  readonly lsn: string
  readonly content: Uint8Array
  readonly error: string
}

/** Connection-level state of one `open()`. */
interface Stream {
  readonly service: LogicalReplicationService
  readonly timer: ReturnType<typeof setInterval>
  /** The walsender serving this stream, to wait for it to leave on close. */
  walsenderPid: number | undefined
  closing: boolean
  paused: boolean
}

/**
 * Creates a {@link ChangeFeed} that reads the outbox table's INSERTs from a Postgres logical
 * replication slot. Needs `wal_level = logical` and a role with `REPLICATION` (see docs/relay.md).
 * Not for PGlite, which has no replication protocol.
 *
 * @example
 * ```ts
 * const feed = createPostgresChangeFeed({
 *   connectionString: 'postgres://relay@db/app',
 *   slot: 'orders_outbox', publication: 'orders_outbox',
 * })
 * const relay = new LogRelay({ feed, transport })
 * ```
 */
export function createPostgresChangeFeed(options: PostgresChangeFeedOptions): PostgresChangeFeed {
  return new PostgresChangeFeed(options)
}

export class PostgresChangeFeed implements ChangeFeed {
  readonly name = SOURCE
  readonly #names: ResolvedFeedNames
  readonly #config: pg.ClientConfig
  readonly #createIfMissing: boolean
  readonly #statusIntervalMs: number
  readonly #maxBuffered: number
  readonly #messagePrefix: string | undefined
  #pool: pg.Pool | undefined
  #stream: Stream | undefined
  #schema = ''
  #failure: OutboxKitError | undefined
  /** The transaction being received (after its BEGIN), or undefined between transactions. */
  #transaction: ClaimedRecord[] | undefined
  /** Unreadable messages of the transaction being received. */
  #transactionRejects: Rejected[] = []
  /** Unreadable messages of committed transactions, not yet kept in the dead table. */
  #rejects: Rejected[] = []
  #ready: Pending[] = []
  #unconfirmed: Unconfirmed[] = []
  /** Latest position with nothing received after it that is not yet in `#ready`. */
  #safe = 0n
  /** Highest position handed out in a batch. */
  #handed = 0n
  /** Highest position confirmed (starts at the slot's confirmed_flush_lsn). */
  #confirmed = 0n
  #wake: (() => void) | undefined

  constructor(options: PostgresChangeFeedOptions) {
    this.#names = resolveFeedNames(options)
    const hasUrl = options.connectionString !== undefined
    const hasConfig = options.clientConfig !== undefined
    if (hasUrl === hasConfig) {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        'Give exactly one of connectionString or clientConfig.',
        {
          source: SOURCE,
        },
      )
    }
    this.#config = hasUrl ? { connectionString: options.connectionString } : { ...options.clientConfig }
    this.#createIfMissing = options.createIfMissing ?? true
    const interval = options.statusIntervalMs ?? 10_000
    if (!Number.isFinite(interval) || interval <= 0) {
      throw new OutboxKitError(ErrorCode.InvalidOptions, 'statusIntervalMs must be a positive number.', {
        source: SOURCE,
        details: { statusIntervalMs: interval },
      })
    }
    this.#statusIntervalMs = interval
    const maxBuffered = options.maxBufferedRecords ?? 10_000
    if (!Number.isSafeInteger(maxBuffered) || maxBuffered < 1) {
      throw new OutboxKitError(ErrorCode.InvalidOptions, 'maxBufferedRecords must be a positive integer.', {
        source: SOURCE,
        details: { maxBufferedRecords: maxBuffered },
      })
    }
    this.#maxBuffered = maxBuffered
    this.#messagePrefix =
      options.messagePrefix === undefined ? undefined : validateMessagePrefix(options.messagePrefix, SOURCE)
    if (!this.#names.table && this.#messagePrefix === undefined) {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        'table: false reads no INSERTs, so the feed needs messagePrefix (the table-less mode) to read anything: set messagePrefix, or leave table out.',
        { source: SOURCE, details: { option: 'table' } },
      )
    }
  }

  /** Records received from the server and not read yet. */
  get bufferedRecords(): number {
    return this.#ready.length + (this.#transaction?.length ?? 0)
  }

  /** The slot this feed reads. */
  get slot(): string {
    return this.#names.slot
  }

  async open(): Promise<void> {
    if (this.#stream) return
    this.#reset()
    if (this.#createIfMissing) {
      for (const statement of postgresFeedSetup(this.#namesWithSchema(await this.#currentSchema()))) {
        await this.#query('open', statement).catch((error: unknown) => {
          // Another relay opening the same feed at the same moment created it first: the slot or
          // publication exists (42710), or the marker table's type was just made (23505).
          const code = codeOf(isOutboxKitError(error) ? error.cause : error)
          if (code !== '42710' && code !== '23505') throw error
        })
      }
    }
    const schema = await this.#currentSchema()
    const slot = await this.#slotState()
    const { slot: slotName, publication, outboxTable } = this.#names
    if (!slot) {
      throw await this.#missingSlot()
    }
    if (slot.slot_type !== 'logical' || slot.plugin !== 'pgoutput' || slot.same_database !== true) {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        `Replication slot ${slotName} is not a pgoutput logical slot of this database (type ${slot.slot_type}, plugin ${slot.plugin}); choose another slot name.`,
        { source: SOURCE, details: { slot: slotName } },
      )
    }
    if (slot.wal_status === 'lost') throw lost(slotName, 'the WAL it needs was removed (wal_status lost)')
    if (slot.active) throw busy(slotName, slot.active_pid)
    if (this.#messagePrefix !== undefined) await this.#checkMessagesSupported()
    const published = this.#names.table
      ? await this.#query(
          'open',
          'SELECT 1 FROM pg_catalog.pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3',
          [publication, schema, outboxTable],
        )
      : await this.#query('open', 'SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1', [publication])
    if (published.rowCount === 0 && !this.#names.table) {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        `Publication ${publication} does not exist: create it (CREATE PUBLICATION ${publication}), or let open() create it (createIfMissing).`,
        { source: SOURCE, details: { publication } },
      )
    }
    if (published.rowCount === 0) {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        `Publication ${publication} does not publish ${schema}.${outboxTable}: add the table to it (ALTER PUBLICATION ${publication} ADD TABLE ...) or use another publication.`,
        { source: SOURCE, details: { publication, table: `${schema}.${outboxTable}` } },
      )
    }
    this.#confirmed = slot.confirmed_flush_lsn === null ? 0n : parseLsn(slot.confirmed_flush_lsn)
    this.#handed = this.#confirmed
    this.#safe = this.#confirmed
    await this.#startStream()
  }

  async read(options: {
    readonly limit: number
    readonly maxWaitMs: number
    readonly signal?: AbortSignal
  }): Promise<FeedBatch> {
    const { limit, maxWaitMs, signal } = options
    if (!Number.isSafeInteger(limit) || limit < 1) {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        `read limit must be a positive integer, got ${limit}.`,
        {
          source: SOURCE,
        },
      )
    }
    const stream = this.#openStream()
    if (this.#ready.length === 0 && !signal?.aborted) {
      // Ask for a keepalive now: it carries the end of what the server decoded, which lets an
      // idle outbox's position move on before the wait ends.
      void stream.service.acknowledge(this.#ackLsn(), true).catch(() => {})
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer)
          signal?.removeEventListener('abort', done)
          this.#wake = undefined
          resolve()
        }
        const timer = setTimeout(done, Math.max(0, maxWaitMs))
        signal?.addEventListener('abort', done, { once: true })
        this.#wake = done
      })
    }
    if (this.#failure) throw this.#failure
    if (this.#stream !== stream) return { records: [] }
    // Unreadable messages are kept before any position past them is handed out. Nothing is awaited
    // between the last check and the take below, so none can arrive unkept in between.
    while (this.#rejects.length > 0) await this.#keepRejects()
    if (this.#failure) throw this.#failure
    if (this.#stream !== stream) return { records: [] }
    if (this.#ready.length === 0) {
      if (this.#transaction === undefined && this.#safe > this.#handed) {
        this.#handed = this.#safe
        return { records: [], position: formatLsn(this.#safe) }
      }
      return { records: [] }
    }
    return this.#take(limit)
  }

  async confirm(position: FeedPosition): Promise<void> {
    const lsn = parseLsn(position)
    if (lsn > this.#handed) {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        `confirm(${position}) is ahead of every position this feed handed out (${formatLsn(this.#handed)}).`,
        { source: SOURCE, details: { position } },
      )
    }
    if (lsn <= this.#confirmed) return
    const stream = this.#openStream()
    this.#confirmed = lsn
    while (this.#unconfirmed.length > 0 && this.#unconfirmed[0]!.end <= lsn) this.#unconfirmed.shift()
    await stream.service.acknowledge(this.#ackLsn())
  }

  /**
   * Marks the outbox rows dead (status and `last_error`); a record with no row (a logical message,
   * a row deleted as it was added) is kept whole in the dead table `<outboxTable>_dead` instead.
   */
  async markDead(records: readonly DeadFeedRecord[]): Promise<void> {
    if (records.length === 0) return
    const { outbox, columns: c } = this.#names
    let rowless: readonly DeadFeedRecord[] = records
    if (this.#names.table) {
      const byError = new Map<string, string[]>()
      // Only ids outbox.add can have written (UUIDs) can have a row: anything else (a foreign
      // message's id) would make the UPDATE fail on a uuid column, and the record never settle.
      for (const r of records) {
        if (UUID.test(r.id)) byError.set(r.error, [...(byError.get(r.error) ?? []), r.id])
      }
      const marked = new Set<string>()
      for (const [error, ids] of byError) {
        const result = await this.#query<{ id: string }>(
          'markDead',
          `UPDATE ${outbox} SET "${c.status}" = $1, "${c.lastError}" = $2 WHERE "${c.id}" = ANY($3) RETURNING "${c.id}"::text AS id`,
          [Status.dead, truncateError(error), ids],
        )
        for (const row of result.rows) marked.add(row.id)
      }
      rowless = records.filter((r) => !marked.has(r.id))
    }
    if (rowless.length === 0) return
    const rows = rowless.map((r) => ({
      id: r.id,
      topic: r.record?.topic ?? null,
      key: r.record?.key ?? null,
      type: r.record?.type ?? null,
      payload: r.record ? base64(r.record.payload) : null,
      headers: r.record ? JSON.stringify(r.record.headers) : null,
      created_at: r.record ? r.record.createdAt.toISOString() : null,
      last_error: truncateError(r.error),
    }))
    await this.#query(
      'markDead',
      `INSERT INTO ${this.#names.dead} ("slot_name", "id", "topic", "key", "type", "payload", "headers", "created_at", "last_error")
       SELECT $1, d.id, d.topic, d.key, d.type, decode(d.payload, 'base64'), d.headers::jsonb, d.created_at::timestamptz, d.last_error
       FROM json_to_recordset($2::json) AS d(id text, topic text, key text, type text, payload text, headers text, created_at text, last_error text)
       ON CONFLICT ("slot_name", "id") DO UPDATE SET "last_error" = EXCLUDED."last_error", "dead_at" = now()`,
      [this.#names.slot, JSON.stringify(rows)],
    )
  }

  async lag(): Promise<FeedLag> {
    const result = await this.#query<{ bytes: string | null; now: Date }>(
      'lag',
      `SELECT pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), confirmed_flush_lsn)::text AS bytes, now() AS now
       FROM pg_catalog.pg_replication_slots WHERE slot_name = $1`,
      [this.#names.slot],
    )
    const row = result.rows[0]
    const oldest = this.#unconfirmed[0]?.createdAt ?? this.#ready[0]?.record.createdAt
    const ageMs = oldest && row ? Math.max(0, new Date(row.now).getTime() - oldest.getTime()) : 0
    if (!row || row.bytes === null) return { ageMs }
    return { bytes: Math.max(0, Number(row.bytes)), ageMs }
  }

  async close(): Promise<void> {
    const stream = this.#stream
    this.#stream = undefined
    if (stream) {
      stream.closing = true
      clearInterval(stream.timer)
      await stream.service.destroy().catch(() => {})
      // The slot stays active until its walsender exits: wait for it, so that a feed opened right
      // after this one (a restart) does not find its own former connection holding the slot.
      if (stream.walsenderPid !== undefined) await this.#waitForExit(stream.walsenderPid)
    }
    this.#wake?.()
    this.#reset()
    const pool = this.#pool
    this.#pool = undefined
    await pool?.end().catch(() => {})
  }

  // ---- Internals ---------------------------------------------------------------------------

  #reset(): void {
    this.#failure = undefined
    this.#transaction = undefined
    this.#transactionRejects = []
    this.#rejects = []
    this.#ready = []
    this.#unconfirmed = []
  }

  #db(): pg.Pool {
    if (!this.#pool) {
      this.#pool = new pg.Pool({ ...this.#config, max: 2 })
      // An idle client's error (the server restarted) must not crash the process.
      this.#pool.on('error', () => {})
    }
    return this.#pool
  }

  #query<R extends pg.QueryResultRow = pg.QueryResultRow>(
    operation: string,
    text: string,
    values?: unknown[],
  ): Promise<pg.QueryResult<R>> {
    return runStoreOperation(SOURCE, this.#names.outbox, operation, () => this.#db().query<R>(text, values))
  }

  async #currentSchema(): Promise<string> {
    if (this.#names.schema !== undefined) return this.#names.schema
    if (this.#schema === '') {
      const result = await this.#query<{ schema: string | null }>('open', 'SELECT current_schema() AS schema')
      const schema = result.rows[0]?.schema
      if (!schema) {
        throw new OutboxKitError(
          ErrorCode.InvalidOptions,
          'The connection has no current schema: set schema.',
          {
            source: SOURCE,
          },
        )
      }
      this.#schema = schema
    }
    return this.#schema
  }

  #namesWithSchema(schema: string): PostgresFeedNames {
    const { slot, publication, outboxTable, layout, table } = this.#names
    return { slot, publication, schema, outboxTable, layout, table }
  }

  async #slotState() {
    const result = await this.#query<{
      slot_type: string
      plugin: string | null
      same_database: boolean
      active: boolean
      active_pid: number | null
      wal_status: string | null
      confirmed_flush_lsn: string | null
    }>(
      'open',
      `SELECT slot_type, plugin, database = current_database() AS same_database, active, active_pid, wal_status,
              confirmed_flush_lsn::text AS confirmed_flush_lsn
       FROM pg_catalog.pg_replication_slots WHERE slot_name = $1`,
      [this.#names.slot],
    )
    return result.rows[0]
  }

  /** The error for a slot that is not there: lost when its marker row says it was made. */
  async #missingSlot(): Promise<OutboxKitError> {
    const feeds = (await this.#feedsTable()) ?? ''
    const marker =
      feeds === ''
        ? { rowCount: 0 }
        : await this.#query('open', `SELECT 1 FROM ${feeds} WHERE "slot_name" = $1`, [this.#names.slot])
    if (marker.rowCount && marker.rowCount > 0) {
      return lost(this.#names.slot, 'the slot was dropped')
    }
    return new OutboxKitError(
      ErrorCode.StoreFailed,
      `Replication slot ${this.#names.slot} does not exist and createIfMissing is false: run the SQL of postgresFeedSetup first.`,
      { source: SOURCE, details: { slot: this.#names.slot } },
    )
  }

  /** The marker table's qualified name when it exists. */
  async #feedsTable(): Promise<string | undefined> {
    const schema = await this.#currentSchema()
    const { feeds } = resolveFeedNames(this.#namesWithSchema(schema))
    const result = await this.#query<{ found: string | null }>(
      'open',
      'SELECT to_regclass($1)::text AS found',
      [feeds],
    )
    return result.rows[0]?.found ? feeds : undefined
  }

  async #startStream(): Promise<void> {
    const service = new LogicalReplicationService(this.#config, {
      // Positions are confirmed only by confirm(): the library would otherwise acknowledge every
      // message as it arrives, and periodically the last one received.
      acknowledge: { auto: false, timeoutSeconds: 0 },
    })
    const plugin = new PgoutputPlugin({
      protoVersion: 1,
      publicationNames: [this.#names.publication],
      messages: this.#messagePrefix !== undefined,
    })
    const stream: Stream = {
      service,
      timer: setInterval(() => {
        void service.acknowledge(this.#ackLsn()).catch(() => {})
      }, this.#statusIntervalMs),
      walsenderPid: undefined,
      closing: false,
      paused: false,
    }
    const fail = (error: unknown) => {
      if (stream.closing || this.#stream !== stream) return
      this.#fail(error)
    }
    service.on('error', fail)
    service.on('data', (_lsn: string, message: Pgoutput.Message) => {
      if (this.#stream === stream) this.#onMessage(message)
    })
    service.on('heartbeat', (lsn: string, _timestamp: number, shouldRespond: boolean) => {
      if (this.#stream !== stream) return
      this.#onKeepalive(parseLsn(lsn))
      if (shouldRespond) void service.acknowledge(this.#ackLsn()).catch(() => {})
    })
    const started = new Promise<void>((resolve) => service.once('start', () => resolve()))
    const streaming = service.subscribe(plugin, this.#names.slot, formatLsn(this.#confirmed))
    this.#stream = stream
    try {
      await Promise.race([
        started,
        streaming.then(() => {
          throw new Error('the server ended replication before it started')
        }),
      ])
    } catch (error) {
      this.#stream = undefined
      stream.closing = true
      clearInterval(stream.timer)
      await service.destroy().catch(() => {})
      throw this.#startError(error)
    }
    streaming.then(
      () => fail(new Error('the server ended replication')),
      (error: unknown) => fail(error),
    )
    const pid = await this.#query<{ pid: number | null }>(
      'open',
      'SELECT active_pid AS pid FROM pg_catalog.pg_replication_slots WHERE slot_name = $1',
      [this.#names.slot],
    ).catch(() => undefined)
    stream.walsenderPid = pid?.rows[0]?.pid ?? undefined
  }

  #startError(error: unknown): OutboxKitError {
    const code = codeOf(error)
    const slot = this.#names.slot
    // 55006: the slot is active for another process (it took the slot since our check).
    if (code === '55006') return busy(slot, null, error)
    // 42704: the slot was dropped since our check; 55000: it was invalidated.
    if (code === '42704') return lost(slot, 'the slot was dropped', error)
    if (code === '55000' && /no longer|invalidated|removed/i.test(describeError(error))) {
      return lost(slot, 'the WAL it needs was removed', error)
    }
    return storeFailed(`Starting replication from slot ${slot} failed`, error)
  }

  #fail(error: unknown): void {
    this.#failure ??= isOutboxKitError(error)
      ? error
      : storeFailed(`Replication from slot ${this.#names.slot} stopped`, error, true)
    this.#wake?.()
  }

  #openStream(): Stream {
    if (this.#failure) throw this.#failure
    const stream = this.#stream
    if (!stream) {
      throw new OutboxKitError(ErrorCode.Closed, 'The change feed is not open: call open() first.', {
        source: SOURCE,
      })
    }
    return stream
  }

  #onMessage(message: Pgoutput.Message): void {
    switch (message.tag) {
      case 'begin':
        this.#transaction = []
        this.#transactionRejects = []
        return
      case 'message': {
        // Only the outbox's own transactional messages: others belong to other log readers, and a
        // non-transactional one is outside any transaction's atomicity (G1).
        if (!message.transactional || message.prefix !== this.#messagePrefix) return
        this.#transaction ??= []
        try {
          this.#transaction.push(decodeLogicalMessage(message.content))
        } catch (error) {
          this.#transactionRejects.push({
            lsn: message.messageLsn ?? '0/0',
            content: new Uint8Array(message.content),
            error: describeError(error),
          })
        }
        return
      }
      case 'insert': {
        const { relation } = message
        if (relation.schema !== this.#schemaName() || relation.name !== this.#names.outboxTable) return
        this.#transaction ??= []
        this.#transaction.push(decodeRecord(message.new, this.#names))
        return
      }
      case 'commit': {
        const end = message.commitEndLsn === null ? undefined : parseLsn(message.commitEndLsn)
        const records = this.#transaction ?? []
        this.#transaction = undefined
        this.#rejects.push(...this.#transactionRejects)
        this.#transactionRejects = []
        if (end === undefined) return
        if (records.length === 0) {
          // Nothing of the outbox in it: its end is a position still, after what is ready.
          const last = this.#ready.at(-1)
          if (last) last.end = end
          else if (end > this.#safe) this.#safe = end
          return
        }
        records.forEach((record, i) => {
          this.#ready.push({ record, end: i === records.length - 1 ? end : undefined })
        })
        this.#unconfirmed.push({ end, createdAt: records[0]!.createdAt })
        if (end > this.#safe) this.#safe = end
        this.#flowControl()
        this.#wake?.()
        return
      }
      default:
        // UPDATE, DELETE, TRUNCATE, relation and type messages: the relay publishes INSERTs only.
        return
    }
  }

  /**
   * A keepalive carries the end of what the server has decoded and sent. Between transactions,
   * with nothing waiting to be read, nothing before it is still to come: it is a safe position.
   */
  #onKeepalive(lsn: bigint): void {
    if (this.#transaction !== undefined) return
    const last = this.#ready.at(-1)
    if (last) {
      if (last.end !== undefined && lsn > last.end) last.end = lsn
    } else if (lsn > this.#safe) {
      this.#safe = lsn
    }
  }

  /** Whole transactions up to `limit` records; a first transaction larger than that is split. */
  #take(limit: number): FeedBatch {
    const records: ClaimedRecord[] = []
    let position: bigint | undefined
    let taken = 0
    while (taken < this.#ready.length) {
      let last = taken
      while (this.#ready[last]!.end === undefined) last++
      const size = last - taken + 1
      if (records.length > 0 && records.length + size > limit) break
      if (size > limit) {
        for (let i = 0; i < limit; i++) records.push(this.#ready[taken + i]!.record)
        taken += limit
        position = undefined
        break
      }
      for (let i = taken; i <= last; i++) records.push(this.#ready[i]!.record)
      position = this.#ready[last]!.end
      taken = last + 1
    }
    this.#ready.splice(0, taken)
    this.#flowControl()
    if (position === undefined) return { records }
    if (position > this.#handed) this.#handed = position
    return { records, position: formatLsn(position) }
  }

  /**
   * Stops reading the socket while `maxBufferedRecords` wait, and reads on below half of it. The
   * library has no public pause (its flow control queues data but not keepalives, see
   * docs/relay.md), so this pauses the `pg` connection's socket, where the library's own flow
   * control does. Standby status updates still go out, so the server does not time the stream
   * out meanwhile.
   */
  #flowControl(): void {
    const stream = this.#stream
    if (!stream) return
    // Committed records only: a transaction still being received cannot be read, so pausing on
    // it would wait forever.
    const buffered = this.#ready.length
    const socket = (stream.service as unknown as { _connection?: { stream?: Pausable } })._connection?.stream
    if (!stream.paused && buffered >= this.#maxBuffered) {
      stream.paused = true
      socket?.pause?.()
    } else if (stream.paused && buffered < this.#maxBuffered / 2) {
      stream.paused = false
      socket?.resume?.()
    }
  }

  /**
   * The LSN to pass to the library's `acknowledge`, which reports one byte past the LSN it is
   * given: report exactly the confirmed position, never past it. Reporting a commit's end plus one
   * would skip a transaction whose commit record starts right at that end on the next start.
   */
  #ackLsn(): string {
    return formatLsn(this.#confirmed > 0n ? this.#confirmed - 1n : 0n)
  }

  /**
   * Keeps the unreadable messages received so far in the dead table (with their raw content, under
   * the id `lsn:<message LSN>`), so the feed goes on past them and an operator finds them.
   */
  async #keepRejects(): Promise<void> {
    const rejects = this.#rejects
    if (rejects.length === 0) return
    await this.#query(
      'read',
      `INSERT INTO ${this.#names.dead} ("slot_name", "id", "content", "last_error")
       SELECT $1, d.id, decode(d.content, 'base64'), d.error
       FROM json_to_recordset($2::json) AS d(id text, content text, error text)
       ON CONFLICT ("slot_name", "id") DO NOTHING`,
      [
        this.#names.slot,
        JSON.stringify(
          rejects.map((r) => ({
            id: `lsn:${r.lsn}`,
            content: base64(r.content),
            error: truncateError(r.error),
          })),
        ),
      ],
    )
    this.#rejects = this.#rejects.slice(rejects.length)
  }

  /** pgoutput's `messages` option came with Postgres 14. */
  async #checkMessagesSupported(): Promise<void> {
    const result = await this.#query<{ version: string }>(
      'open',
      "SELECT current_setting('server_version_num') AS version",
    )
    const version = Number(result.rows[0]?.version ?? 0)
    if (version < 140000) {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        `messagePrefix needs Postgres 14 or later (pgoutput's messages option); this server is ${version}. Upgrade, or write rows (leave messagePrefix out of the store and the feed).`,
        { source: SOURCE, details: { option: 'messagePrefix', serverVersion: version } },
      )
    }
  }

  #schemaName(): string {
    return this.#names.schema ?? this.#schema
  }

  async #waitForExit(pid: number): Promise<void> {
    for (let i = 0; i < 200; i++) {
      const result = await this.#query('close', 'SELECT 1 FROM pg_catalog.pg_stat_activity WHERE pid = $1', [
        pid,
      ]).catch(() => undefined)
      if (!result || result.rowCount === 0) return
      await new Promise((resolve) => setTimeout(resolve, 25))
    }
  }
}

/**
 * Drops a feed's slot, marker row and publication ({@link postgresFeedDropSql}); for tearing a
 * feed down, or starting over after `FEED_LOST`. Stop every relay on the slot first: Postgres
 * refuses to drop a slot in use.
 */
export async function dropPostgresFeed(
  options: Omit<PostgresChangeFeedOptions, 'createIfMissing' | 'statusIntervalMs'>,
): Promise<void> {
  const config =
    options.connectionString !== undefined
      ? { connectionString: options.connectionString }
      : options.clientConfig
  const client = new pg.Client(config)
  await client.connect()
  try {
    let names: PostgresFeedNames = options
    if (options.schema === undefined) {
      const result = await client.query<{ schema: string }>('SELECT current_schema() AS schema')
      names = { ...options, schema: result.rows[0]!.schema }
    }
    for (const statement of postgresFeedDropSql(names)) await client.query(statement)
  } catch (error) {
    throw storeFailed(`Dropping feed ${options.slot} failed`, error)
  } finally {
    await client.end().catch(() => {})
  }
}

function decodeRecord(row: Record<string, unknown>, names: ResolvedFeedNames): ClaimedRecord {
  const c = names.columns
  return {
    id: String(row[c.id]),
    topic: String(row[c.topic]),
    key: String(row[c.key]),
    type: String(row[c.type]),
    payload: bytesOf(row[c.payload]),
    headers: headersOf(row[c.headers]),
    attempts: 1,
    createdAt: dateOf(row[c.createdAt]),
  }
}

const encoder = new TextEncoder()

/** bytea arrives as bytes; a text or json payload column (a table of one's own) as its text. */
function bytesOf(value: unknown): Uint8Array {
  if (value instanceof Uint8Array) return new Uint8Array(value)
  if (value === null || value === undefined) return new Uint8Array(0)
  if (typeof value === 'string') return encoder.encode(value)
  return encoder.encode(JSON.stringify(value))
}

function headersOf(value: unknown): Record<string, string> {
  let parsed = value
  if (typeof value === 'string') {
    try {
      parsed = JSON.parse(value)
    } catch {
      return {}
    }
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return {}
  const headers: Record<string, string> = {}
  for (const [name, v] of Object.entries(parsed)) if (typeof v === 'string') headers[name] = v
  return headers
}

function dateOf(value: unknown): Date {
  if (value instanceof Date) return value
  if (typeof value === 'string' || typeof value === 'number') return new Date(value)
  return new Date(0)
}

/** Base64 of bytes, for passing them inside a JSON parameter. */
function base64(bytes: Uint8Array): string {
  let binary = ''
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000))
  }
  return btoa(binary)
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

const MAX_ERROR_TEXT = 4000

function truncateError(text: string): string {
  return text.length > MAX_ERROR_TEXT ? `${text.slice(0, MAX_ERROR_TEXT - 1)}…` : text
}

function codeOf(error: unknown): string {
  if (typeof error !== 'object' || error === null) return ''
  const code = (error as { code?: unknown }).code
  return typeof code === 'string' ? code : ''
}

function busy(slot: string, pid: number | null, cause?: unknown): OutboxKitError {
  return new OutboxKitError(
    ErrorCode.FeedBusy,
    `Replication slot ${slot} is in use by another connection${pid ? ` (pid ${pid})` : ''}: another relay reads this feed. This one waits as a standby.`,
    { source: SOURCE, retriable: true, cause, details: { slot, pid } },
  )
}

function lost(slot: string, why: string, cause?: unknown): OutboxKitError {
  return new OutboxKitError(
    ErrorCode.FeedLost,
    `Replication slot ${slot} cannot resume: ${why}. Records written since its last confirmed position may not have been published; see "Log-tailing relay" in docs/relay.md to recover (dropPostgresFeed, then republish from the table).`,
    { source: SOURCE, retriable: false, cause, details: { slot } },
  )
}

function storeFailed(what: string, error: unknown, retriable?: boolean): OutboxKitError {
  return new OutboxKitError(ErrorCode.StoreFailed, `${what}: ${describeError(error)}`, {
    source: SOURCE,
    cause: error,
    retriable: retriable ?? isRetriableDatabaseError(error),
  })
}
