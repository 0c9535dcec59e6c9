/**
 * `outboxkit purge`: settled outbox rows and inbox rows older than a horizon, through the stores'
 * own `purge` (short batches that never lock pending rows), called until nothing old is left.
 */
import { SingleBar } from 'cli-progress'
import { sql } from 'kysely'
import { DIALECT_SQL, toNumber } from '../adapters/kysely/dialect.js'
import { createKyselyInboxStore } from '../adapters/kysely/kysely-inbox-store.js'
import { createKyselyOutboxStore } from '../adapters/kysely/kysely-outbox-store.js'
import { Status } from '../adapters/kysely/schema.js'
import type { Database } from './connection.js'
import { requireOutbox } from './status.js'

export interface PurgeRequest {
  /** Outbox rows created longer ago than this are purged (published ones; dead ones with `includeDead`). */
  readonly olderThanMs: number
  readonly includeDead: boolean
  /** Also pending rows: only for an outbox read by a log-tailing relay, which never marks rows published. */
  readonly includePending: boolean
  /** Inbox rows processed longer ago than this; undefined skips the inbox. */
  readonly inboxOlderThanMs: number | undefined
  readonly consumer: string | undefined
  /** Rows per store `purge` call. */
  readonly batch: number
  /** Show a progress bar (on stderr). */
  readonly progress: boolean
}

export interface PurgeResult {
  readonly outbox: {
    readonly purged: number
    readonly olderThanMs: number
    readonly includeDead: boolean
    readonly includePending: boolean
  }
  readonly inbox: null | {
    readonly purged: number
    readonly olderThanMs: number
    readonly consumer: string | null
  }
}

/** Calls `step` (one store purge of at most `batch` rows) until it deletes fewer than `batch`. */
async function drain(
  label: string,
  total: number,
  batch: number,
  progress: boolean,
  step: (limit: number) => Promise<number>,
): Promise<number> {
  const bar = progress
    ? new SingleBar({
        format: `${label} [{bar}] {value}/{total} rows | {duration_formatted}`,
        stream: process.stderr,
        hideCursor: true,
        clearOnComplete: false,
      })
    : undefined
  bar?.start(Math.max(total, 1), 0)
  let purged = 0
  try {
    for (;;) {
      const deleted = await step(batch)
      purged += deleted
      if (bar) {
        // Rows keep crossing the horizon while the purge runs.
        if (purged > total) bar.setTotal(purged)
        bar.update(purged)
      }
      if (deleted < batch) break
    }
  } finally {
    if (bar) {
      bar.setTotal(Math.max(purged, 1))
      bar.update(purged)
      bar.stop()
    }
  }
  return purged
}

export async function purge(database: Database, request: PurgeRequest): Promise<PurgeResult> {
  const tables = await requireOutbox(database)
  const { db } = database
  const t = database.tables
  const c = t.columns
  const horizon = (ms: number) => DIALECT_SQL[database.dialect].minusMs(ms)
  const statuses = [
    Status.published,
    ...(request.includeDead ? [Status.dead] : []),
    ...(request.includePending ? [Status.pending] : []),
  ]
  const outboxStore = createKyselyOutboxStore({ db, ...database.options })
  const outboxTotal = request.progress
    ? toNumber(
        (
          await sql<{ n: unknown }>`SELECT count(*) AS n FROM ${sql.raw(t.outbox)}
            WHERE ${sql.raw(c.status)} IN (${sql.join(statuses)}) AND ${sql.raw(c.createdAt)} < ${horizon(request.olderThanMs)}`.execute(
            db,
          )
        ).rows[0]?.n,
      )
    : 0
  const outboxPurged = await drain('outbox', outboxTotal, request.batch, request.progress, (limit) =>
    outboxStore.purge({
      olderThanMs: request.olderThanMs,
      includeDead: request.includeDead,
      includePending: request.includePending,
      limit,
    }),
  )
  let inbox: PurgeResult['inbox'] = null
  if (request.inboxOlderThanMs !== undefined && tables.has(t.inboxName)) {
    const olderThanMs = request.inboxOlderThanMs
    const inboxStore = createKyselyInboxStore({ db, ...database.options })
    const forConsumer = request.consumer === undefined ? sql`` : sql`AND consumer = ${request.consumer}`
    const inboxTotal = request.progress
      ? toNumber(
          (
            await sql<{ n: unknown }>`SELECT count(*) AS n FROM ${sql.raw(t.inbox)}
              WHERE processed_at < ${horizon(olderThanMs)} ${forConsumer}`.execute(db)
          ).rows[0]?.n,
        )
      : 0
    const purged = await drain('inbox ', inboxTotal, request.batch, request.progress, (limit) =>
      inboxStore.purge({
        olderThanMs,
        limit,
        ...(request.consumer === undefined ? {} : { consumer: request.consumer }),
      }),
    )
    inbox = { purged, olderThanMs, consumer: request.consumer ?? null }
  }
  return {
    outbox: {
      purged: outboxPurged,
      olderThanMs: request.olderThanMs,
      includeDead: request.includeDead,
      includePending: request.includePending,
    },
    inbox,
  }
}
