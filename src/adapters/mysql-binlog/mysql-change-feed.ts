/**
 * A {@link ChangeFeed} that reads outbox rows from the MariaDB/MySQL row-based binlog, through
 * `@vlasky/zongji` (a replication client: it registers as a replica with `serverId` and streams
 * the binlog). The stored position, the reader lock and `markDead` use one ordinary mysql2
 * connection, so they live and die together.
 */
import type { ConnectionOptions } from 'mysql2'
import type { Connection } from 'mysql2/promise'
import type { ChangeFeed, FeedBatch, FeedLag, FeedPosition } from '../../core/change-feed.js'
import { loadDriver } from '../../core/driver.js'
import { describeError, ErrorCode, isOutboxKitError, OutboxKitError } from '../../core/errors.js'
import type { ClaimedRecord } from '../../core/message.js'
import { nonNegativeNumber, positiveInteger } from '../../core/options.js'
import type { DeadRecord } from '../../core/store.js'
import { runStoreOperation } from '../kysely/database-errors.js'
import {
  DEFAULT_OUTBOX_TABLE,
  LAYOUTS,
  MYSQL_NO_PAD,
  type OutboxColumns,
  type OutboxLayout,
  quote,
  Status,
  validateIdentifier,
} from '../kysely/schema.js'
import { type BinlogPosition, comparePositions, formatPosition, parsePosition } from './binlog-position.js'

type ZongJiModule = typeof import('@vlasky/zongji')
type ZongJi = InstanceType<ZongJiModule['default']>
type BinlogEvent = import('@vlasky/zongji').AnyBinlogEvent

const SOURCE = 'mysql-binlog'

/** The feed name used when none is given. */
export const DEFAULT_FEED_NAME = 'default'
/** Least time between two positions returned without records, ms. */
export const DEFAULT_IDLE_POSITION_INTERVAL_MS = 1_000
/** Records read ahead of the relay before the binlog stream is paused. */
export const DEFAULT_MAX_BUFFERED_RECORDS = 10_000
/** Longest `last_error` text, as the polling store writes it. */
const MAX_ERROR_TEXT = 4000
/** Ids per `markDead` statement. */
const DEAD_CHUNK = 500
/** ER_MASTER_FATAL_ERROR_READING_BINLOG: the server cannot send the binlog from the asked position. */
const ER_BINLOG_UNREADABLE = 1236

export interface MysqlChangeFeedOptions {
  /**
   * How to reach the server: a `mysql://user:password@host:port` URL or mysql2 connection options.
   * The user needs `REPLICATION SLAVE` and `REPLICATION CLIENT`, `SELECT` on the outbox table and
   * on `information_schema`, `UPDATE` on the outbox table, and `CREATE`, `SELECT`, `INSERT`,
   * `UPDATE` on the position table.
   */
  readonly connection: string | ConnectionOptions
  /** The database (schema) holding the outbox table. */
  readonly schema: string
  /** Outbox table name. Default `outbox`. */
  readonly outboxTable?: string
  /** Column layout of the outbox table. Default `outboxkit`. */
  readonly layout?: OutboxLayout
  /**
   * The replica id this reader announces to the server: unique among the server's replicas and
   * binlog readers (two readers with one id disconnect each other). 1 to 4294967295.
   */
  readonly serverId: number
  /**
   * Names this feed's stored position and its reader lock, so several feeds can read one outbox
   * (each publishes every record). Default `default`.
   */
  readonly feedName?: string
  /** Table holding the confirmed positions, in `schema`. Default `<outboxTable>_feed_position`. */
  readonly positionTable?: string
  /**
   * Records read from the binlog but not yet returned by `read` before the stream is paused
   * (memory bound while the relay is slower than the writers). Default 10 000.
   */
  readonly maxBufferedRecords?: number
  /**
   * Where a feed with no stored position (its first open) starts:
   * - `pending-rows` (default, MariaDB only): reads the outbox's pending rows (`status` 0, in
   *   `seq` order) in a consistent snapshot, then the binlog from the snapshot's position, so no
   *   row written before the first open is left out (rows the polling relay has not published,
   *   say). The rows are held in memory until read.
   * - `log-end`: the binlog's current end; rows written before the first open are not read.
   */
  readonly firstOpen?: 'pending-rows' | 'log-end'
  /**
   * Least time between two positions returned without records (the binlog moved on through other
   * tables' changes), in ms: each one is a write when the relay confirms it, so a busy server with
   * an idle outbox is not written to on every read. Default 1 000.
   */
  readonly idlePositionIntervalMs?: number
}

export function createMysqlChangeFeed(options: MysqlChangeFeedOptions): MysqlChangeFeed {
  return new MysqlChangeFeed(options)
}

/**
 * The DDL of the position table (idempotent), for migration tools. `open()` runs it too, so a
 * user who may create tables needs nothing else.
 */
export function feedPositionTableSql(options: {
  readonly schema: string
  readonly outboxTable?: string
  readonly positionTable?: string
}): string {
  return positionTableSql(qualified(options.schema, positionTableName(options)))
}

/** One committed transaction as read from the binlog. */
interface CommittedTransaction {
  records: ClaimedRecord[]
  readonly end: BinlogPosition
  /** When it committed (the binlog event's time, to the second), ms since the epoch. */
  readonly committedAt: number
}

/** The transaction whose events are being read. */
interface OpenTransaction {
  /**
   * Rows it inserted into the outbox, in order, as they stand so far (undefined once deleted):
   * a later statement of the same transaction may still change them.
   */
  readonly rows: (InsertedRow | undefined)[]
  /** Index in `rows` by message id. */
  readonly byId: Map<string, number>
  /** It wrote the position table: possibly the feed's own confirm. */
  touchedPositions: boolean
  /** It changed something else the feed sees (outbox updates, deletes). */
  touchedOther: boolean
}

export class MysqlChangeFeed implements ChangeFeed {
  readonly name = SOURCE
  readonly #connection: string | ConnectionOptions
  readonly #schema: string
  readonly #outboxName: string
  readonly #positionName: string
  readonly #outbox: string
  readonly #positions: string
  readonly #columns: OutboxColumns
  readonly #serverId: number
  readonly #feedName: string
  readonly #maxBuffered: number
  readonly #firstOpen: 'pending-rows' | 'log-end'
  readonly #idlePositionIntervalMs: number
  /** When read() last returned a position without records. */
  #lastIdlePosition = 0

  #db: Connection | undefined
  #zongji: ZongJi | undefined
  /** The stream whose events count: events a stopped stream still delivers are dropped. */
  #current: ZongJi | undefined
  /** What read() throws: the stream or the lock connection failed. */
  #failure: OutboxKitError | undefined
  #file = ''
  #open: OpenTransaction | undefined
  /** Committed transactions not yet returned by read(), in commit order. */
  #queue: CommittedTransaction[] = []
  #buffered = 0
  #paused = false
  #wake: (() => void) | undefined
  /** The stored position (absent until the first confirm after a `pending-rows` first open). */
  #confirmed: BinlogPosition | undefined
  /** Where this open started reading. */
  #start: BinlogPosition | undefined
  /** Commit times of the positions read() returned, stored with them on confirm. */
  #commitTimes = new Map<FeedPosition, number>()
  /** The oldest record of each transaction returned by read() and not confirmed yet. */
  #unconfirmed: { end: BinlogPosition; createdAt: Date }[] = []

  constructor(options: MysqlChangeFeedOptions) {
    if (typeof options !== 'object' || options === null) {
      throw new OutboxKitError(ErrorCode.InvalidOptions, 'createMysqlChangeFeed needs an options object.', {
        source: SOURCE,
      })
    }
    if (
      typeof options.connection !== 'string' &&
      (typeof options.connection !== 'object' || options.connection === null)
    ) {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        'connection must be a mysql:// URL or mysql2 connection options.',
        { source: SOURCE },
      )
    }
    this.#connection = options.connection
    this.#schema = validateIdentifier('schema', options.schema)
    this.#outboxName = validateIdentifier('outbox table', options.outboxTable ?? DEFAULT_OUTBOX_TABLE)
    this.#positionName = positionTableName(options)
    const layout = options.layout ?? 'outboxkit'
    const columns = LAYOUTS[layout]
    if (!columns) {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        `layout must be 'outboxkit' or 'debezium', got ${String(layout)}.`,
        { source: SOURCE },
      )
    }
    this.#columns = columns
    this.#outbox = qualified(this.#schema, this.#outboxName)
    this.#positions = qualified(this.#schema, this.#positionName)
    this.#serverId = positiveInteger('serverId', options.serverId, 4_294_967_295, SOURCE)
    this.#feedName = feedName(options.feedName)
    this.#maxBuffered = positiveInteger(
      'maxBufferedRecords',
      options.maxBufferedRecords ?? DEFAULT_MAX_BUFFERED_RECORDS,
      undefined,
      SOURCE,
    )
    const firstOpen = options.firstOpen ?? 'pending-rows'
    if (firstOpen !== 'pending-rows' && firstOpen !== 'log-end') {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        `firstOpen must be 'pending-rows' or 'log-end', got ${String(firstOpen)}.`,
        { source: SOURCE, details: { option: 'firstOpen', value: firstOpen } },
      )
    }
    this.#firstOpen = firstOpen
    this.#idlePositionIntervalMs = nonNegativeNumber(
      'idlePositionIntervalMs',
      options.idlePositionIntervalMs ?? DEFAULT_IDLE_POSITION_INTERVAL_MS,
      SOURCE,
    )
  }

  async open(): Promise<void> {
    if (this.#db) {
      throw new OutboxKitError(ErrorCode.AlreadyStarted, 'The feed is open already; close it first.', {
        source: SOURCE,
      })
    }
    const zongjiModule = await loadZongJi()
    const mysql = await loadMysql2()
    const db = await this.#run('connect', () => mysql.createConnection(connectionConfig(this.#connection)))
    this.#db = db
    try {
      db.on('error', (error: unknown) =>
        this.#fail('the feed connection (which holds the reader lock)', error),
      )
      await this.#checkServer(db)
      await this.#lock(db)
      await this.#run('create the position table', () => db.query(positionTableSql(this.#positions)))
      const stored = await this.#storedPosition(db)
      let start: BinlogPosition
      if (stored) {
        start = stored
        await this.#checkAvailable(db, start)
        this.#confirmed = stored
      } else if (this.#firstOpen === 'log-end') {
        start = await this.#startAtEnd(db)
        this.#confirmed = start
      } else {
        const snapshot = await this.#snapshot(mysql)
        start = snapshot.end
        if (snapshot.records.length > 0) {
          this.#queue.push(snapshot)
          this.#buffered = snapshot.records.length
        }
      }
      this.#start = start
      this.#file = start.file
      this.#zongji = await this.#stream(zongjiModule, start)
      this.#pauseIfFull()
    } catch (error) {
      await this.close()
      throw error
    }
  }

  async read(options: {
    readonly limit: number
    readonly maxWaitMs: number
    readonly signal?: AbortSignal
  }): Promise<FeedBatch> {
    const limit = positiveInteger('limit', options.limit, undefined, SOURCE)
    const maxWaitMs = nonNegativeNumber('maxWaitMs', options.maxWaitMs, SOURCE)
    const { signal } = options
    this.#assertOpen()
    const deadline = Date.now() + maxWaitMs
    for (;;) {
      if (this.#failure) throw this.#failure
      if (signal?.aborted || !this.#db) return { records: [] }
      if (this.#buffered > 0) break
      const remaining = deadline - Date.now()
      if (remaining <= 0) break
      await this.#waitForChange(remaining, signal)
    }
    if (this.#buffered === 0) {
      // Only other tables' changes: their position now and then, not on every read.
      const now = Date.now()
      if (now - this.#lastIdlePosition < this.#idlePositionIntervalMs) return { records: [] }
      this.#lastIdlePosition = now
    }
    return this.#take(limit)
  }

  async confirm(position: FeedPosition): Promise<void> {
    const target = parsePosition(position, SOURCE)
    const db = this.#assertOpen()
    if (this.#confirmed && comparePositions(target, this.#confirmed) <= 0) return
    const committedAt = this.#commitTimes.get(position)
    await this.#run('confirm', () =>
      // An upsert: a position row deleted by hand is written again, never silently left out.
      db.query(
        `INSERT INTO ${this.#positions} (feed, binlog_file, binlog_position, committed_at) VALUES (?, ?, ?, FROM_UNIXTIME(?))
         ON DUPLICATE KEY UPDATE binlog_file = VALUES(binlog_file), binlog_position = VALUES(binlog_position),
           committed_at = VALUES(committed_at), updated_at = CURRENT_TIMESTAMP(6)`,
        [this.#feedName, target.file, target.offset, committedAt === undefined ? null : committedAt / 1000],
      ),
    )
    this.#confirmed = target
    for (const known of this.#commitTimes.keys()) {
      if (comparePositions(parsePosition(known, SOURCE), target) <= 0) this.#commitTimes.delete(known)
    }
    this.#unconfirmed = this.#unconfirmed.filter((entry) => comparePositions(entry.end, target) > 0)
  }

  async markDead(records: readonly DeadRecord[]): Promise<void> {
    const db = this.#assertOpen()
    const errors = new Map(records.map((r) => [r.id, truncateError(r.error)]))
    const ids = [...errors.keys()]
    const c = this.#columns
    const [id, status, lastError] = [c.id, c.status, c.lastError].map((name) => quote('mysql', name))
    for (let i = 0; i < ids.length; i += DEAD_CHUNK) {
      const chunk = ids.slice(i, i + DEAD_CHUNK)
      const cases = chunk.map(() => 'WHEN ? THEN ?').join(' ')
      const parameters = [...chunk.flatMap((each) => [each, errors.get(each)!]), ...chunk]
      await this.#run('markDead', () =>
        db.query(
          `UPDATE ${this.#outbox} SET ${status} = ${Status.dead}, ${lastError} = CASE ${id} ${cases} END
           WHERE ${id} IN (${chunk.map(() => '?').join(', ')})`,
          parameters,
        ),
      )
    }
  }

  async lag(): Promise<FeedLag> {
    const db = this.#assertOpen()
    const logs = await this.#binaryLogs(db)
    const oldest = this.#unconfirmed.reduce<number | undefined>(
      (min, entry) =>
        min === undefined ? entry.createdAt.getTime() : Math.min(min, entry.createdAt.getTime()),
      undefined,
    )
    const ageMs = oldest === undefined ? 0 : Math.max(0, Date.now() - oldest)
    const from = this.#confirmed ?? this.#start
    const bytes = from ? bytesBehind(logs, from) : undefined
    return bytes === undefined ? { ageMs } : { bytes, ageMs }
  }

  async close(): Promise<void> {
    const zongji = this.#zongji
    const db = this.#db
    this.#zongji = undefined
    this.#current = undefined
    this.#db = undefined
    if (zongji) await stopStream(zongji)
    if (db) {
      // Released before the session ends: the server drops a closed session's locks only after
      // the client has gone, so an open right after this close could still find the lock taken.
      await db.query(`DO RELEASE_LOCK(CONCAT('outboxkit_feed_', MD5(?)))`, [this.#lockKey()]).catch(() => {})
      await db.end().catch(() => db.destroy())
    }
    this.#failure = undefined
    this.#open = undefined
    this.#queue = []
    this.#buffered = 0
    this.#paused = false
    this.#confirmed = undefined
    this.#start = undefined
    this.#commitTimes.clear()
    this.#unconfirmed = []
    this.#notify()
  }

  // ---- Opening --------------------------------------------------------------------------------

  async #checkServer(db: Connection): Promise<void> {
    const [rows] = await this.#run('read the binlog settings', () =>
      db.query('SELECT @@log_bin AS log_bin, @@binlog_format AS format, @@binlog_row_image AS image'),
    )
    const row = (rows as Record<string, unknown>[])[0] ?? {}
    const logBin = String(row['log_bin'])
    const format = String(row['format']).toUpperCase()
    const image = String(row['image']).toUpperCase()
    if ((logBin !== '1' && logBin.toUpperCase() !== 'ON') || format !== 'ROW' || image !== 'FULL') {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        `The server's binlog cannot feed the outbox (log_bin=${logBin}, binlog_format=${format}, binlog_row_image=${image}): set log_bin, binlog_format=ROW and binlog_row_image=FULL in the server's configuration and restart it.`,
        { source: SOURCE, details: { logBin, format, image } },
      )
    }
  }

  /** One reader per feed: a named lock held by this session, released when it ends. */
  async #lock(db: Connection): Promise<void> {
    const [rows] = await this.#run('take the reader lock', () =>
      db.query(`SELECT GET_LOCK(CONCAT('outboxkit_feed_', MD5(?)), 0) AS locked`, [this.#lockKey()]),
    )
    const locked = (rows as Record<string, unknown>[])[0]?.['locked']
    if (Number(locked) === 1) return
    if (locked === null || locked === undefined) {
      throw new OutboxKitError(
        ErrorCode.StoreFailed,
        'The server refused the reader lock (GET_LOCK returned NULL).',
        {
          source: SOURCE,
          retriable: true,
        },
      )
    }
    throw new OutboxKitError(
      ErrorCode.FeedBusy,
      `Another process reads the feed ${JSON.stringify(this.#feedName)} of ${this.#schema}.${this.#outboxName}; this one waits as a standby and takes over when that reader's session ends.`,
      { source: SOURCE, retriable: true, details: { feed: this.#feedName } },
    )
  }

  #lockKey(): string {
    return `${this.#schema}.${this.#outboxName}.${this.#feedName}`
  }

  async #storedPosition(db: Connection): Promise<BinlogPosition | undefined> {
    const [rows] = await this.#run('read the stored position', () =>
      db.query(`SELECT binlog_file, binlog_position FROM ${this.#positions} WHERE feed = ?`, [
        this.#feedName,
      ]),
    )
    const row = (rows as Record<string, unknown>[])[0]
    return row ? { file: String(row['binlog_file']), offset: Number(row['binlog_position']) } : undefined
  }

  /**
   * First use: the current end of the binlog, stored at once so that a restart before the first
   * confirm still resumes here (records written before this moment are not read).
   */
  async #startAtEnd(db: Connection): Promise<BinlogPosition> {
    const [rows] = await this.#run('read the binlog end', () => db.query('SHOW MASTER STATUS'))
    const row = (rows as Record<string, unknown>[])[0]
    if (!row) {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        'The server writes no binlog (SHOW MASTER STATUS is empty): enable log_bin and restart it.',
        { source: SOURCE },
      )
    }
    const end = { file: String(row['File']), offset: Number(row['Position']) }
    await this.#run('store the first position', () =>
      db.query(`INSERT INTO ${this.#positions} (feed, binlog_file, binlog_position) VALUES (?, ?, ?)`, [
        this.#feedName,
        end.file,
        end.offset,
      ]),
    )
    return end
  }

  /**
   * First use with `pending-rows`: the pending rows and the binlog position of one consistent
   * snapshot (MariaDB's `binlog_snapshot_file`/`_position`), so every row is read exactly once
   * from the table or from the log. Nothing is stored: until the first confirm, an open takes a
   * new snapshot (reading the same rows again, with the same ids).
   */
  async #snapshot(
    mysql: Pick<typeof import('mysql2/promise'), 'createConnection'>,
  ): Promise<CommittedTransaction> {
    const connection = await this.#run('connect for the first snapshot', () =>
      mysql.createConnection(connectionConfig(this.#connection)),
    )
    try {
      return await this.#run('read the pending rows', async () => {
        await connection.query('SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ')
        await connection.query('START TRANSACTION WITH CONSISTENT SNAPSHOT')
        const [status] = await connection.query("SHOW STATUS LIKE 'binlog_snapshot_%'")
        const values = new Map(
          (status as Record<string, unknown>[]).map((row) => [
            String(row['Variable_name']).toLowerCase(),
            row['Value'],
          ]),
        )
        const file = values.get('binlog_snapshot_file')
        const offset = Number(values.get('binlog_snapshot_position'))
        if (typeof file !== 'string' || file === '' || !(offset > 0)) {
          throw new OutboxKitError(
            ErrorCode.InvalidOptions,
            "The server gives no binlog position for a consistent snapshot (MariaDB's binlog_snapshot_file): on MySQL, open the feed with firstOpen: 'log-end'.",
            { source: SOURCE },
          )
        }
        const c = this.#columns
        const select = [c.id, c.topic, c.key, c.type, c.payload, c.headers, c.createdAt]
          .map((name) => quote('mysql', name))
          .join(', ')
        const [rows] = await connection.query(
          `SELECT ${select} FROM ${this.#outbox}
           WHERE ${quote('mysql', c.status)} = ${Status.pending} ORDER BY ${quote('mysql', c.seq)}`,
        )
        await connection.query('COMMIT')
        const pending = rows as Record<string, unknown>[]
        return {
          records: pending.map((row) => decodeRow(row, c)),
          end: { file, offset },
          committedAt: Date.now(),
        }
      })
    } finally {
      await connection.end().catch(() => connection.destroy())
    }
  }

  /** The stored position's file must still exist, or the records after it would be skipped. */
  async #checkAvailable(db: Connection, start: BinlogPosition): Promise<void> {
    const logs = await this.#binaryLogs(db)
    const file = logs.find((log) => log.name === start.file)
    if (!file || start.offset > file.size) {
      throw this.#lost(
        `the binlog file ${start.file} holding the stored position ${formatPosition(start)} ${file ? 'is shorter than that position' : 'was purged'} (the server has ${logs.map((l) => l.name).join(', ') || 'no binlog files'})`,
        start,
      )
    }
  }

  #lost(what: string, position: BinlogPosition | undefined, cause?: unknown): OutboxKitError {
    return new OutboxKitError(
      ErrorCode.FeedLost,
      `The feed ${JSON.stringify(this.#feedName)} cannot resume: ${what}. Records committed in the missing part of the binlog would be skipped, so it stops. See "Log-tailing relay (MariaDB/MySQL binlog)" in docs/relay.md to recover.`,
      {
        source: SOURCE,
        cause,
        details: { feed: this.#feedName, ...(position ? { position: formatPosition(position) } : {}) },
      },
    )
  }

  async #binaryLogs(db: Connection): Promise<{ name: string; size: number }[]> {
    const [rows] = await this.#run('list the binlog files', () => db.query('SHOW BINARY LOGS'))
    return (rows as Record<string, unknown>[]).map((row) => ({
      name: String(row['Log_name']),
      size: Number(row['File_size']),
    }))
  }

  async #stream(module: ZongJiModule, start: BinlogPosition): Promise<ZongJi> {
    const zongji = new module.default(connectionConfig(this.#connection))
    this.#current = zongji
    zongji.on('binlog', (event: BinlogEvent) => {
      try {
        this.#onEvent(zongji, event)
      } catch (error) {
        this.#fail('decoding the binlog', error)
      }
    })
    const ready = new Promise<void>((resolve, reject) => {
      zongji.once('ready', () => resolve())
      zongji.once('error', (error: Error) => reject(error))
    })
    zongji.on('error', (error: Error) => this.#fail('the binlog stream', error))
    zongji.start({
      serverId: this.#serverId,
      filename: start.file,
      position: start.offset,
      includeEvents: [
        'rotate',
        'gtid',
        'anonymousgtid',
        'mariadbgtid',
        'query',
        'xid',
        'xaprepare',
        'tablemap',
        'writerows',
        'updaterows',
        'deleterows',
      ],
      includeSchema: { [this.#schema]: [this.#outboxName, this.#positionName] },
    })
    try {
      await ready
    } catch (error) {
      await stopStream(zongji)
      throw this.#streamError('start the binlog stream', error)
    }
    return zongji
  }

  // ---- Reading --------------------------------------------------------------------------------

  /**
   * Events arrive in commit order. A transaction's rows are kept until its commit (an XID event,
   * or a COMMIT query for non-transactional tables); InnoDB writes rolled-back transactions to no
   * binlog at all, and a ROLLBACK query drops what was kept.
   */
  #onEvent(zongji: ZongJi, event: BinlogEvent): void {
    if (zongji !== this.#current) return
    switch (event.getEventName()) {
      case 'rotate': {
        this.#file = (event as import('@vlasky/zongji').RotateEvent).binlogName
        return
      }
      case 'mariadbgtid': {
        const gtid = event as import('@vlasky/zongji').MariadbGtidEvent
        this.#open = gtid.standalone ? undefined : newTransaction()
        return
      }
      case 'gtid':
      case 'anonymousgtid':
        this.#open = newTransaction()
        return
      case 'query': {
        const statement = (event as import('@vlasky/zongji').QueryEvent).query.trim().toUpperCase()
        if (statement === 'BEGIN') {
          this.#open ??= newTransaction()
        } else if (statement === 'COMMIT') {
          this.#commit(event.nextPosition, event.timestamp)
        } else if (statement === 'ROLLBACK') {
          this.#open = undefined
          this.#commit(event.nextPosition, event.timestamp)
        } else if (!this.#open) {
          // A statement outside a transaction (DDL): the log moved on.
          this.#commit(event.nextPosition, event.timestamp)
        }
        return
      }
      case 'xid':
      case 'xaprepare':
        this.#commit(event.nextPosition, event.timestamp)
        return
      case 'writerows': {
        const rows = event as import('@vlasky/zongji').WriteRowsEvent
        const table = rows.tableMap[rows.tableId]?.tableName
        const open = this.#transaction()
        if (table === this.#outboxName) {
          for (const row of rows.rows) {
            open.byId.set(String(row[this.#columns.id]), open.rows.length)
            open.rows.push(this.#inserted(row))
          }
        } else if (table === this.#positionName) {
          open.touchedPositions = true
        }
        return
      }
      case 'updaterows': {
        const rows = event as import('@vlasky/zongji').UpdateRowsEvent
        const table = rows.tableMap[rows.tableId]?.tableName
        const open = this.#transaction()
        if (table === this.#positionName) {
          open.touchedPositions = true
          return
        }
        open.touchedOther = true
        if (table !== this.#outboxName) return
        // Rows written before this transaction are not read again; rows it inserted are read as
        // they stand at its commit (a requeue on MySQL inserts a copy, then gives it its id).
        for (const { before, after } of rows.rows) {
          const index = open.byId.get(String(before[this.#columns.id]))
          if (index === undefined) continue
          open.byId.delete(String(before[this.#columns.id]))
          open.byId.set(String(after[this.#columns.id]), index)
          open.rows[index] = this.#inserted(after)
        }
        return
      }
      case 'deleterows': {
        const rows = event as import('@vlasky/zongji').DeleteRowsEvent
        const table = rows.tableMap[rows.tableId]?.tableName
        const open = this.#transaction()
        if (table === this.#positionName) {
          open.touchedPositions = true
          return
        }
        open.touchedOther = true
        if (table !== this.#outboxName) return
        for (const row of rows.rows) {
          const index = open.byId.get(String(row[this.#columns.id]))
          if (index === undefined) continue
          open.byId.delete(String(row[this.#columns.id]))
          open.rows[index] = undefined
        }
        return
      }
      default:
        return
    }
  }

  /** An inserted outbox row; only pending ones (status 0, as the polling relay claims) are published. */
  #inserted(row: Record<string, unknown>): InsertedRow {
    return {
      record: decodeRow(row, this.#columns),
      pending: Number(row[this.#columns.status]) === Status.pending,
    }
  }

  /** The open transaction; rows outside one (a non-transactional engine) open one. */
  #transaction(): OpenTransaction {
    this.#open ??= newTransaction()
    return this.#open
  }

  #commit(nextPosition: number, committedAt: number): void {
    const open = this.#open
    this.#open = undefined
    // MariaDB writes 0 as the next position of events it cannot place; never store one.
    if (!(nextPosition > 0)) return
    // The feed's own confirm: reporting it would make an idle relay confirm its own confirms.
    if (open && open.rows.length === 0 && open.touchedPositions && !open.touchedOther) return
    const end = { file: this.#file, offset: nextPosition }
    const records: ClaimedRecord[] = []
    for (const row of open?.rows ?? []) if (row?.pending) records.push(row.record)
    const last = this.#queue[this.#queue.length - 1]
    if (records.length === 0 && last && last.records.length === 0) {
      // Runs of transactions outside the outbox collapse into their last position.
      this.#queue[this.#queue.length - 1] = { records, end, committedAt }
      return
    }
    this.#queue.push({ records, end, committedAt })
    if (records.length === 0) return
    this.#buffered += records.length
    this.#pauseIfFull()
    this.#notify()
  }

  #pauseIfFull(): void {
    if (this.#buffered >= this.#maxBuffered && !this.#paused) {
      this.#paused = true
      this.#zongji?.connection?.pause()
    }
  }

  #take(limit: number): FeedBatch {
    const records: ClaimedRecord[] = []
    let position: FeedPosition | undefined
    while (this.#queue.length > 0) {
      const next = this.#queue[0]!
      const room = limit - records.length
      if (next.records.length <= room) {
        this.#queue.shift()
        this.#track(next.records, next.end)
        for (const record of next.records) records.push(record)
        position = formatPosition(next.end)
        this.#commitTimes.set(position, next.committedAt)
        continue
      }
      if (records.length === 0) {
        // A transaction larger than the limit: its first part, with no position.
        const part = next.records.slice(0, room)
        next.records = next.records.slice(room)
        this.#track(part, next.end)
        records.push(...part)
        position = undefined
      }
      break
    }
    this.#buffered -= records.length
    if (this.#paused && this.#buffered < this.#maxBuffered / 2) {
      this.#paused = false
      this.#zongji?.connection?.resume()
    }
    return position === undefined ? { records } : { records, position }
  }

  #track(records: readonly ClaimedRecord[], end: BinlogPosition): void {
    if (records.length === 0) return
    let oldest = records[0]!.createdAt
    for (const record of records) if (record.createdAt < oldest) oldest = record.createdAt
    this.#unconfirmed.push({ end, createdAt: oldest })
  }

  #waitForChange(ms: number, signal: AbortSignal | undefined): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer)
        signal?.removeEventListener('abort', done)
        if (this.#wake === done) this.#wake = undefined
        resolve()
      }
      const timer = setTimeout(done, ms)
      signal?.addEventListener('abort', done, { once: true })
      this.#wake = done
    })
  }

  #notify(): void {
    this.#wake?.()
  }

  #fail(what: string, error: unknown): void {
    if (this.#failure || !this.#db) return
    this.#failure = isOutboxKitError(error) ? error : this.#streamError(what, error)
    this.#notify()
  }

  #streamError(what: string, error: unknown): OutboxKitError {
    if (isOutboxKitError(error)) return error
    if ((error as { errno?: unknown } | null)?.errno === ER_BINLOG_UNREADABLE) {
      return this.#lost(
        `the server cannot send the binlog from there (${describeError(error)})`,
        this.#confirmed,
        error,
      )
    }
    return new OutboxKitError(
      ErrorCode.StoreFailed,
      `${what} failed: ${describeError(error)}. Close the feed and open it again; it resumes after the last confirmed position.`,
      { source: SOURCE, cause: error, retriable: true },
    )
  }

  #assertOpen(): Connection {
    if (!this.#db) {
      throw new OutboxKitError(ErrorCode.Closed, 'The feed is not open; call open() first.', {
        source: SOURCE,
      })
    }
    return this.#db
  }

  #run<T>(operation: string, fn: () => Promise<T>): Promise<T> {
    return runStoreOperation(SOURCE, `${this.#schema}.${this.#outboxName}`, operation, fn)
  }
}

// ---- Helpers ----------------------------------------------------------------------------------

interface InsertedRow {
  readonly record: ClaimedRecord
  readonly pending: boolean
}

function newTransaction(): OpenTransaction {
  return { rows: [], byId: new Map(), touchedPositions: false, touchedOther: false }
}

function qualified(schema: string, table: string): string {
  return `${quote('mysql', validateIdentifier('schema', schema))}.${quote('mysql', table)}`
}

/** The position table's name: `positionTable`, or `<outboxTable>_feed_position`. */
export function positionTableName(options: {
  readonly outboxTable?: string
  readonly positionTable?: string
}): string {
  if (options.positionTable !== undefined) return validateIdentifier('position table', options.positionTable)
  const outbox = validateIdentifier('outbox table', options.outboxTable ?? DEFAULT_OUTBOX_TABLE)
  return `${outbox}_feed_position`
}

function feedName(value: unknown): string {
  if (value === undefined) return DEFAULT_FEED_NAME
  if (typeof value !== 'string' || value.length === 0 || value.length > 255) {
    throw new OutboxKitError(
      ErrorCode.InvalidOptions,
      `feedName must be 1–255 characters, got ${String(value)}.`,
      {
        source: SOURCE,
        details: { option: 'feedName', value },
      },
    )
  }
  return value
}

function positionTableSql(table: string): string {
  return `CREATE TABLE IF NOT EXISTS ${table} (
  \`feed\` VARCHAR(255) ${MYSQL_NO_PAD} NOT NULL PRIMARY KEY,
  \`binlog_file\` VARCHAR(512) NOT NULL,
  \`binlog_position\` BIGINT NOT NULL,
  \`committed_at\` DATETIME(6) NULL,
  \`updated_at\` DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin`
}

/** A copy, so neither driver sees (or changes) the caller's object. */
function connectionConfig(connection: string | ConnectionOptions): ConnectionOptions {
  return typeof connection === 'string' ? { uri: connection } : { ...connection }
}

/** Binlog bytes from `from` to the end of the log, or undefined when its file is no longer listed. */
export function bytesBehind(
  logs: readonly { name: string; size: number }[],
  from: BinlogPosition,
): number | undefined {
  const index = logs.findIndex((log) => log.name === from.file)
  if (index < 0) return undefined
  let bytes = Math.max(0, logs[index]!.size - from.offset)
  for (const log of logs.slice(index + 1)) bytes += log.size
  return bytes
}

/** A row as the polling store reads it: bytes as written, headers parsed from their JSON text. */
function decodeRow(row: Record<string, unknown>, c: OutboxColumns): ClaimedRecord {
  return {
    id: String(row[c.id]),
    topic: String(row[c.topic]),
    key: String(row[c.key]),
    type: String(row[c.type]),
    payload: copyBytes(row[c.payload]),
    headers: decodeHeaders(row[c.headers]),
    attempts: 1,
    createdAt: toDate(row[c.createdAt]),
  }
}

function copyBytes(value: unknown): Uint8Array {
  // The decoder's buffers may share memory with the packet it read: copy.
  if (value instanceof Uint8Array) return new Uint8Array(value)
  if (typeof value === 'string') return new TextEncoder().encode(value)
  throw new OutboxKitError(
    ErrorCode.StoreFailed,
    `Expected the payload column as bytes, got ${typeof value}.`,
    {
      source: SOURCE,
    },
  )
}

function decodeHeaders(value: unknown): Record<string, string> {
  const text = value instanceof Uint8Array ? new TextDecoder().decode(value) : value
  const parsed: unknown = typeof text === 'string' ? JSON.parse(text) : text
  if (typeof parsed !== 'object' || parsed === null) return {}
  const headers: Record<string, string> = {}
  for (const [name, v] of Object.entries(parsed)) if (typeof v === 'string') headers[name] = v
  return headers
}

function toDate(value: unknown): Date {
  if (value instanceof Date) return value
  if (typeof value === 'string' || typeof value === 'number') return new Date(value)
  return new Date(Number.NaN)
}

function truncateError(text: string): string {
  return text.length > MAX_ERROR_TEXT ? `${text.slice(0, MAX_ERROR_TEXT - 1)}…` : text
}

function stopStream(zongji: ZongJi): Promise<void> {
  return new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, 2_000)
    zongji.once('stopped', () => {
      clearTimeout(timer)
      resolve()
    })
    zongji.stop()
  })
}

/** Loads @vlasky/zongji; `load` is the seam tests replace. */
export function loadZongJi(
  load: () => Promise<ZongJiModule> = () => import('@vlasky/zongji'),
): Promise<ZongJiModule> {
  return loadDriver('@vlasky/zongji', 'The binlog feed', load, {
    install: '@vlasky/zongji mysql2',
    source: SOURCE,
  })
}

type Mysql2 = Pick<typeof import('mysql2/promise'), 'createConnection'>

/** Loads mysql2; `load` is the seam tests replace. */
export async function loadMysql2(
  load: () => Promise<Mysql2 & { default?: Mysql2 }> = () => import('mysql2/promise'),
): Promise<Mysql2> {
  const module = await loadDriver('mysql2', 'The binlog feed', load, { source: SOURCE })
  // CommonJS seen from ESM: the functions may sit on the default export only.
  return typeof module.createConnection === 'function' ? module : module.default!
}
