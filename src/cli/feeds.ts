/**
 * `outboxkit feed create|drop` and the feeds part of `outboxkit status`: the database objects of
 * the log-tailing relays (docs/relay.md). Postgres: a publication of the outbox table, a logical
 * replication slot and its marker row in `<outbox>_feeds`. MySQL/MariaDB: the position table
 * `<outbox>_feed_position`, one row per feed. Read-only here except for create and drop.
 */
import { sql } from 'kysely'
import { toNumber } from '../adapters/kysely/dialect.js'
import {
  bytesBehind,
  DEFAULT_FEED_NAME,
  feedPositionTableSql,
  positionTableName,
} from '../adapters/mysql-binlog/mysql-change-feed.js'
import {
  postgresFeedDropSql,
  postgresFeedSetup,
  resolveFeedNames,
} from '../adapters/postgres-log/postgres-feed-setup.js'
import { describeError } from '../core/errors.js'
import type { Database } from './connection.js'
import { CliError, ExitCode } from './exit-codes.js'
import { formatBytes, table } from './output.js'
import { existingTables } from './schema-state.js'

/** One log-tailing feed as the database sees it. */
export interface FeedStatus {
  /** `postgres-logical` (a replication slot) or `mysql-binlog` (a stored position). */
  readonly kind: 'postgres-logical' | 'mysql-binlog'
  /** The slot name (Postgres) or the feed name (MySQL). */
  readonly name: string
  /**
   * `streaming`: a relay reads it now (Postgres; MySQL cannot tell). `idle`: nobody reads it.
   * `lost`: the slot was dropped or its WAL removed; the feed's `open()` fails with FEED_LOST
   * (docs/relay.md, A dropped slot).
   */
  readonly state: 'streaming' | 'idle' | 'lost' | 'unknown'
  /** The publication (Postgres). */
  readonly publication?: string
  /** The confirmed position: an LSN, or `file:offset`. */
  readonly confirmedPosition: string | null
  /** Log bytes between the confirmed position and the end of the log: what it keeps from being recycled. */
  readonly lagBytes: number | null
  /** Age of the confirmed position's commit (MySQL), ms. */
  readonly confirmedAgeMs?: number | null
  /** Postgres `wal_status`: reserved, extended, unreserved or lost. */
  readonly walStatus?: string | null
}

export interface FeedNames {
  /** Postgres: the slot; MySQL: the feed name (default `default`). */
  readonly name?: string
  /** Postgres: the publication (default: the slot's name). */
  readonly publication?: string
  /**
   * Postgres: false for a feed of logical decoding messages only (the store's `messagePrefix`):
   * the publication covers no table and the outbox table need not exist. Default true.
   */
  readonly table?: boolean
}

export interface FeedChange {
  readonly dryRun: boolean
  readonly kind: FeedStatus['kind']
  readonly name: string
  readonly statements: readonly string[]
}

function markerTable(database: Database): string {
  return `${database.tables.outboxName}_feeds`
}

function positionTable(database: Database): string {
  return positionTableName({ outboxTable: database.tables.outboxName })
}

function postgresNames(database: Database, names: FeedNames) {
  if (names.name === undefined) {
    throw new CliError(
      ExitCode.usage,
      'bad_flag',
      'feed: Postgres needs --slot <name> (the replication slot).',
    )
  }
  const feed = {
    slot: names.name,
    publication: names.publication ?? names.name,
    schema: database.schemaName,
    outboxTable: database.tables.outboxName,
    layout: database.tables.layout,
    table: names.table !== false,
  }
  try {
    resolveFeedNames(feed)
  } catch (error) {
    throw new CliError(ExitCode.usage, 'bad_flag', `feed: ${describeError(error)}`)
  }
  return feed
}

/** The statements that create a feed's objects, each idempotent and run on its own (autocommit). */
function createStatements(database: Database, names: FeedNames): { name: string; statements: string[] } {
  if (database.dialect === 'postgres') {
    const n = postgresNames(database, names)
    return { name: n.slot, statements: postgresFeedSetup(n) }
  }
  if (names.publication !== undefined || names.table === false) {
    throw new CliError(
      ExitCode.usage,
      'bad_flag',
      'feed: --publication and --no-table are for Postgres only.',
    )
  }
  // The row is written by the feed's first open, at the position `firstOpen` says.
  return {
    name: names.name ?? DEFAULT_FEED_NAME,
    statements: [
      feedPositionTableSql({ schema: database.schemaName, outboxTable: database.tables.outboxName }),
    ],
  }
}

async function runStatements(database: Database, statements: readonly string[], what: string): Promise<void> {
  for (const statement of statements) {
    try {
      await sql.raw(statement).execute(database.db)
    } catch (error) {
      const text = describeError(error)
      const hint = /permission denied|must be superuser|replication role/i.test(text)
        ? ' The role needs the REPLICATION attribute (ALTER ROLE … REPLICATION) to create or drop a slot, and CREATE on the database for the publication.'
        : /wal_level/i.test(text)
          ? ' Set wal_level = logical in postgresql.conf and restart Postgres.'
          : ''
      throw new CliError(ExitCode.failed, 'feed_failed', `Could not ${what}: ${text}.${hint}`)
    }
  }
}

async function requireOutboxTable(database: Database): Promise<void> {
  if (!(await existingTables(database)).has(database.tables.outboxName)) {
    throw new CliError(
      ExitCode.tablesMissing,
      'tables_missing',
      `The outbox table ${database.schemaName}.${database.tables.outboxName} does not exist: run outboxkit migrate first (with the same --schema and --outbox-table).`,
    )
  }
}

/** Creates what a log-tailing relay reads from; `dryRun` prints the statements instead. */
export async function createFeed(database: Database, names: FeedNames, dryRun: boolean): Promise<FeedChange> {
  const { name, statements } = createStatements(database, names)
  const kind = database.dialect === 'postgres' ? 'postgres-logical' : 'mysql-binlog'
  if (!dryRun) {
    if (names.table !== false) await requireOutboxTable(database)
    await runStatements(database, statements, `create the feed ${name}`)
    if (database.dialect === 'postgres') {
      // The slot statement does nothing when the marker says the slot was made and dropped since.
      const [feed] = (await postgresFeeds(database)).filter((f) => f.name === name)
      if (feed?.state === 'lost') {
        throw new CliError(
          ExitCode.problems,
          'feed_lost',
          `The slot ${name} was created before and is gone (dropped, or its WAL removed): creating it again would skip every event written since. Follow docs/relay.md (A dropped slot): outboxkit feed drop --slot ${name}, then create it again and republish the pending rows with the polling relay.`,
        )
      }
    }
  }
  return { dryRun, kind, name, statements }
}

/** Removes a feed: the slot (which must not be in use), its marker row and publication; MySQL: its stored position. */
export async function dropFeed(database: Database, names: FeedNames, dryRun: boolean): Promise<FeedChange> {
  if (database.dialect === 'postgres') {
    const n = postgresNames(database, names)
    const statements = postgresFeedDropSql(n)
    if (!dryRun) {
      const [active] = (await postgresFeeds(database)).filter(
        (f) => f.name === n.slot && f.state === 'streaming',
      )
      if (active) {
        throw new CliError(
          ExitCode.problems,
          'feed_busy',
          `The slot ${n.slot} is in use by a running relay: stop it first (a relay holds its slot until it stops).`,
        )
      }
      await runStatements(database, statements, `drop the feed ${n.slot}`)
    }
    return { dryRun, kind: 'postgres-logical', name: n.slot, statements }
  }
  const name = names.name ?? DEFAULT_FEED_NAME
  const positions = sql.raw(`\`${database.schemaName}\`.\`${positionTable(database)}\``)
  const statement = sql`DELETE FROM ${positions} WHERE feed = ${name}`
  if (!dryRun && (await existingTables(database)).has(positionTable(database))) {
    try {
      await statement.execute(database.db)
    } catch (error) {
      throw new CliError(
        ExitCode.failed,
        'feed_failed',
        `Could not drop the feed ${name}: ${describeError(error)}.`,
      )
    }
  }
  const compiled = statement.compile(database.db)
  return {
    dryRun,
    kind: 'mysql-binlog',
    name,
    statements: [`${compiled.sql} -- ${JSON.stringify(compiled.parameters)}`],
  }
}

async function postgresFeeds(database: Database): Promise<FeedStatus[]> {
  const feeds = `"${database.schemaName}"."${markerTable(database)}"`
  const rows = await sql<Record<string, unknown>>`
    SELECT f.slot_name, f.publication, s.slot_name IS NOT NULL AS present, s.active, s.wal_status,
      s.confirmed_flush_lsn::text AS confirmed,
      pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), s.confirmed_flush_lsn)::text AS lag
    FROM ${sql.raw(feeds)} f LEFT JOIN pg_catalog.pg_replication_slots s ON s.slot_name = f.slot_name
    ORDER BY f.slot_name`.execute(database.db)
  return rows.rows.map((r) => {
    const lost = r['present'] !== true || r['wal_status'] === 'lost'
    return {
      kind: 'postgres-logical',
      name: String(r['slot_name']),
      publication: String(r['publication']),
      state: lost ? 'lost' : r['active'] === true ? 'streaming' : 'idle',
      confirmedPosition: r['confirmed'] === null ? null : String(r['confirmed']),
      lagBytes: r['lag'] === null || r['lag'] === undefined ? null : toNumber(r['lag']),
      walStatus: r['wal_status'] === null || r['wal_status'] === undefined ? null : String(r['wal_status']),
    }
  })
}

async function mysqlFeeds(database: Database): Promise<FeedStatus[]> {
  const rows = await sql<Record<string, unknown>>`
    SELECT feed, binlog_file, binlog_position,
      TIMESTAMPDIFF(MICROSECOND, committed_at, CURRENT_TIMESTAMP(6)) AS age_us
    FROM ${sql.raw(`\`${database.schemaName}\`.\`${positionTable(database)}\``)} ORDER BY feed`.execute(
    database.db,
  )
  // The log's files and sizes, for the bytes behind; needs the BINLOG MONITOR / REPLICATION CLIENT privilege.
  let logs: { name: string; size: number }[] | undefined
  try {
    const result = await sql<Record<string, unknown>>`SHOW BINARY LOGS`.execute(database.db)
    logs = result.rows.map((r) => ({ name: String(r['Log_name']), size: toNumber(r['File_size']) }))
  } catch {
    logs = undefined
  }
  return rows.rows.map((r) => {
    const file = String(r['binlog_file'])
    const offset = toNumber(r['binlog_position'])
    const behind = logs ? bytesBehind(logs, { file, offset }) : undefined
    return {
      kind: 'mysql-binlog',
      name: String(r['feed']),
      // The binlog file the position names was purged: the feed cannot resume there.
      state: logs && behind === undefined ? 'lost' : 'unknown',
      confirmedPosition: `${file}:${offset}`,
      lagBytes: behind ?? null,
      confirmedAgeMs: r['age_us'] === null ? null : toNumber(r['age_us']) / 1000,
    }
  })
}

/** The feeds of this outbox table, or null when none was ever created. */
export async function feedStatus(database: Database, tables: Set<string>): Promise<FeedStatus[] | null> {
  if (database.dialect === 'postgres') {
    return tables.has(markerTable(database)) ? postgresFeeds(database) : null
  }
  return tables.has(positionTable(database)) ? mysqlFeeds(database) : null
}

export function formatFeeds(feeds: readonly FeedStatus[]): string {
  return table(
    ['FEED', 'KIND', 'STATE', 'CONFIRMED', 'LAG'],
    feeds.map((f) => [
      f.name,
      f.kind,
      f.state === 'lost' ? 'LOST (docs/relay.md)' : f.state,
      f.confirmedPosition ?? '-',
      f.lagBytes === null ? '-' : formatBytes(f.lagBytes),
    ]),
  )
}

export function formatFeedChange(change: FeedChange, verb: 'created' | 'dropped'): string {
  if (change.dryRun) return change.statements.map((s) => `${s};`).join('\n\n')
  return `${verb} ${change.kind} feed ${change.name}`
}
