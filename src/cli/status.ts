/**
 * `outboxkit status`: read-only queries on the outbox, shard and inbox tables. Nothing here
 * takes a lock or writes.
 */
import { sql } from 'kysely'
import { DIALECT_SQL, toNumber } from '../adapters/kysely/dialect.js'
import { createKyselyOutboxStore } from '../adapters/kysely/kysely-outbox-store.js'
import { Status } from '../adapters/kysely/schema.js'
import type { Database } from './connection.js'
import { CliError, ExitCode } from './exit-codes.js'
import { type FeedStatus, feedStatus, formatFeeds } from './feeds.js'
import { formatDuration, table } from './output.js'
import { existingTables } from './schema-state.js'

/** Keys listed under `blockedKeys.keys` (all are counted). */
export const BLOCKED_KEYS_SHOWN = 20

export interface StatusReport {
  readonly outbox: {
    readonly table: string
    /** Unsettled rows (claimed or not). */
    readonly pending: number
    /** Pending rows a claim could take now. */
    readonly ready: number
    /** Pending rows held by a live claim lease. */
    readonly claimed: number
    /** Pending rows waiting for a retry (available later). */
    readonly waitingRetry: number
    readonly oldestPendingAgeMs: number
    readonly dead: number
  }
  readonly blockedKeys: {
    /** Keys whose head (oldest pending row) has failed at least once and is still pending. */
    readonly count: number
    readonly keys: readonly BlockedKey[]
  }
  /** Live row claims (ownership `rows`), by claim token. */
  readonly claims: readonly { token: string; rows: number; keys: number; leaseUntil: string }[]
  /** Shard ownership (ownership `shards`); null when the shard tables do not exist. */
  readonly shards: null | {
    readonly total: number
    readonly unowned: number
    readonly owners: readonly { relayId: string; shards: number; leaseUntil: string }[]
    readonly relays: readonly { relayId: string; leaseUntil: string }[]
  }
  /** Log-tailing feeds (replication slots, stored binlog positions); null when none was created. */
  readonly feeds: null | readonly FeedStatus[]
  /** Inbox rows per consumer; null when the inbox table does not exist. */
  readonly inbox: null | {
    readonly table: string
    readonly rows: number
    readonly consumers: readonly { consumer: string; rows: number; lastProcessedAt: string | null }[]
  }
}

export interface BlockedKey {
  readonly key: string
  readonly headId: string
  readonly topic: string
  readonly attempts: number
  readonly lastError: string | null
  /** When the head may be tried again (database clock). */
  readonly availableAt: string
  /** Pending rows of the key behind the head. */
  readonly behind: number
}

function iso(value: unknown): string {
  if (value instanceof Date) return value.toISOString()
  const date = new Date(String(value))
  return Number.isNaN(date.getTime()) ? String(value) : date.toISOString()
}

export async function requireOutbox(database: Database): Promise<Set<string>> {
  const tables = await existingTables(database)
  if (!tables.has(database.tables.outboxName)) {
    throw new CliError(
      ExitCode.tablesMissing,
      'tables_missing',
      `The outbox table ${database.schemaName}.${database.tables.outboxName} does not exist: run outboxkit migrate (with the same --schema and --outbox-table).`,
    )
  }
  return tables
}

export async function status(database: Database): Promise<StatusReport> {
  const tables = await requireOutbox(database)
  const { db } = database
  const t = database.tables
  const c = t.columns
  const now = DIALECT_SQL[database.dialect].now
  const raw = sql.raw
  const store = createKyselyOutboxStore({ db, ...database.options })
  const stats = await store.stats()
  const counts = await sql<{ ready: unknown; claimed: unknown; waiting: unknown }>`
    SELECT
      coalesce(sum(CASE WHEN ${raw(c.availableAt)} <= ${now} AND (${raw(c.leaseUntil)} IS NULL OR ${raw(c.leaseUntil)} <= ${now}) THEN 1 ELSE 0 END), 0) AS ready,
      coalesce(sum(CASE WHEN ${raw(c.leaseUntil)} > ${now} THEN 1 ELSE 0 END), 0) AS claimed,
      coalesce(sum(CASE WHEN ${raw(c.availableAt)} > ${now} AND (${raw(c.leaseUntil)} IS NULL OR ${raw(c.leaseUntil)} <= ${now}) THEN 1 ELSE 0 END), 0) AS waiting
    FROM ${raw(t.outbox)} WHERE ${raw(c.status)} = ${Status.pending}`.execute(db)
  const failedHeads = sql`FROM ${raw(t.outbox)} o WHERE o.${raw(c.status)} = ${Status.pending}
      AND o.${raw(c.lastError)} IS NOT NULL AND o.${raw(c.attempts)} > 0
      AND o.${raw(c.seq)} = (SELECT min(i.${raw(c.seq)}) FROM ${raw(t.outbox)} i
        WHERE i.${raw(c.key)} = o.${raw(c.key)} AND i.${raw(c.status)} = ${Status.pending})`
  const blockedCount = await sql<{ n: unknown }>`SELECT count(*) AS n ${failedHeads}`.execute(db)
  const blocked = await sql<Record<string, unknown>>`
    SELECT o.${raw(c.key)} AS k, o.${raw(c.id)} AS id, o.${raw(c.topic)} AS topic, o.${raw(c.attempts)} AS attempts,
      o.${raw(c.lastError)} AS last_error, o.${raw(c.availableAt)} AS available_at,
      (SELECT count(*) FROM ${raw(t.outbox)} b WHERE b.${raw(c.key)} = o.${raw(c.key)}
        AND b.${raw(c.status)} = ${Status.pending} AND b.${raw(c.seq)} > o.${raw(c.seq)}) AS behind
    ${failedHeads} ORDER BY o.${raw(c.seq)} LIMIT ${BLOCKED_KEYS_SHOWN}`.execute(db)
  const claims = await sql<Record<string, unknown>>`
    SELECT ${raw(c.claimToken)} AS token, count(*) AS n, count(DISTINCT ${raw(c.key)}) AS k, max(${raw(c.leaseUntil)}) AS lease
    FROM ${raw(t.outbox)} WHERE ${raw(c.status)} = ${Status.pending} AND ${raw(c.claimToken)} IS NOT NULL
      AND ${raw(c.leaseUntil)} > ${now}
    GROUP BY ${raw(c.claimToken)} ORDER BY n DESC`.execute(db)
  let shards: StatusReport['shards'] = null
  if (tables.has(`${t.outboxName}_shards`) && tables.has(`${t.outboxName}_relays`)) {
    const owners = await sql<Record<string, unknown>>`
      SELECT owner, count(*) AS n, min(lease_until) AS lease FROM ${raw(t.shards)}
      WHERE owner IS NOT NULL AND lease_until > ${now} GROUP BY owner ORDER BY owner`.execute(db)
    const total = await sql<{ n: unknown }>`SELECT count(*) AS n FROM ${raw(t.shards)}`.execute(db)
    const relays = await sql<Record<string, unknown>>`
      SELECT relay_id, lease_until FROM ${raw(t.relays)} WHERE lease_until > ${now} ORDER BY relay_id`.execute(
      db,
    )
    const owned = owners.rows.reduce((sum, r) => sum + toNumber(r['n']), 0)
    shards = {
      total: toNumber(total.rows[0]?.n),
      unowned: toNumber(total.rows[0]?.n) - owned,
      owners: owners.rows.map((r) => ({
        relayId: String(r['owner']),
        shards: toNumber(r['n']),
        leaseUntil: iso(r['lease']),
      })),
      relays: relays.rows.map((r) => ({ relayId: String(r['relay_id']), leaseUntil: iso(r['lease_until']) })),
    }
  }
  let inbox: StatusReport['inbox'] = null
  if (tables.has(t.inboxName)) {
    const consumers = await sql<Record<string, unknown>>`
      SELECT consumer, count(*) AS n, max(processed_at) AS last FROM ${raw(t.inbox)}
      GROUP BY consumer ORDER BY consumer`.execute(db)
    const list = consumers.rows.map((r) => ({
      consumer: String(r['consumer']),
      rows: toNumber(r['n']),
      lastProcessedAt: r['last'] === null ? null : iso(r['last']),
    }))
    inbox = { table: t.inboxName, rows: list.reduce((sum, r) => sum + r.rows, 0), consumers: list }
  }
  const feeds = await feedStatus(database, tables)
  const row = counts.rows[0]
  return {
    outbox: {
      table: t.outboxName,
      pending: stats.pending,
      ready: toNumber(row?.ready),
      claimed: toNumber(row?.claimed),
      waitingRetry: toNumber(row?.waiting),
      oldestPendingAgeMs: stats.oldestPendingAgeMs,
      dead: stats.dead,
    },
    blockedKeys: {
      count: toNumber(blockedCount.rows[0]?.n),
      keys: blocked.rows.map((r) => ({
        key: String(r['k']),
        headId: String(r['id']),
        topic: String(r['topic']),
        attempts: toNumber(r['attempts']),
        lastError: r['last_error'] === null ? null : String(r['last_error']),
        availableAt: iso(r['available_at']),
        behind: toNumber(r['behind']),
      })),
    },
    claims: claims.rows.map((r) => ({
      token: String(r['token']),
      rows: toNumber(r['n']),
      keys: toNumber(r['k']),
      leaseUntil: iso(r['lease']),
    })),
    shards,
    feeds,
    inbox,
  }
}

function clip(text: string, width: number): string {
  const line = text.replace(/\s+/g, ' ')
  return line.length <= width ? line : `${line.slice(0, width - 1)}…`
}

export function formatStatus(report: StatusReport): string {
  const o = report.outbox
  const lines = [
    `outbox ${o.table}`,
    `  pending   ${o.pending} (ready ${o.ready}, claimed ${o.claimed}, waiting for a retry ${o.waitingRetry})`,
    `  oldest    ${o.pending === 0 ? '-' : formatDuration(o.oldestPendingAgeMs)}`,
    `  dead      ${o.dead}${o.dead > 0 ? '  (outboxkit dead list)' : ''}`,
    `  blocked keys (failed head): ${report.blockedKeys.count}`,
  ]
  if (report.blockedKeys.keys.length > 0) {
    lines.push(
      indent(
        table(
          ['KEY', 'HEAD ID', 'ATTEMPTS', 'BEHIND', 'RETRY AT', 'LAST ERROR'],
          report.blockedKeys.keys.map((k) => [
            clip(k.key, 32),
            k.headId,
            String(k.attempts),
            String(k.behind),
            k.availableAt,
            clip(k.lastError ?? '', 60),
          ]),
        ),
      ),
    )
  }
  lines.push(`claims (ownership rows): ${report.claims.length}`)
  if (report.claims.length > 0) {
    lines.push(
      indent(
        table(
          ['CLAIM TOKEN', 'ROWS', 'KEYS', 'LEASE UNTIL'],
          report.claims.map((c) => [c.token, String(c.rows), String(c.keys), c.leaseUntil]),
        ),
      ),
    )
  }
  if (report.shards) {
    const s = report.shards
    lines.push(
      `shards (ownership shards): ${s.total - s.unowned} of ${s.total} owned, ${s.relays.length} live relays`,
    )
    if (s.owners.length > 0) {
      lines.push(
        indent(
          table(
            ['RELAY', 'SHARDS', 'LEASE UNTIL'],
            s.owners.map((r) => [r.relayId, String(r.shards), r.leaseUntil]),
          ),
        ),
      )
    }
  } else {
    lines.push('shards: no shard tables (outboxkit migrate adds them)')
  }
  if (report.feeds && report.feeds.length > 0) {
    const lost = report.feeds.filter((f) => f.state === 'lost').length
    lines.push(`feeds (log-tailing relays): ${report.feeds.length}${lost > 0 ? `, ${lost} LOST` : ''}`)
    lines.push(indent(formatFeeds(report.feeds)))
  }
  if (report.inbox) {
    lines.push(`inbox ${report.inbox.table}: ${report.inbox.rows} rows`)
    if (report.inbox.consumers.length > 0) {
      lines.push(
        indent(
          table(
            ['CONSUMER', 'ROWS', 'LAST PROCESSED'],
            report.inbox.consumers.map((c) => [c.consumer, String(c.rows), c.lastProcessedAt ?? '-']),
          ),
        ),
      )
    }
  } else {
    lines.push('inbox: no inbox table')
  }
  return lines.join('\n')
}

function indent(text: string): string {
  return text
    .split('\n')
    .map((l) => `  ${l}`)
    .join('\n')
}
