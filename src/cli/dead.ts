/**
 * `outboxkit dead list|show|requeue|drop`: dead rows (status 2). Requeue goes through the store's
 * `requeue`, which puts each row at the end of its key; drop deletes only rows still dead.
 */
import { sql } from 'kysely'
import { toNumber } from '../adapters/kysely/dialect.js'
import { createKyselyOutboxStore } from '../adapters/kysely/kysely-outbox-store.js'
import { Status } from '../adapters/kysely/schema.js'
import type { Database } from './connection.js'
import { CliError, ExitCode } from './exit-codes.js'
import { requireOutbox } from './status.js'

/** Ids per requeue or delete statement with `--all`. */
const BATCH = 1_000
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

export interface DeadFilter {
  topic?: string
  key?: string
}

export interface DeadRow {
  readonly id: string
  readonly seq: number
  readonly topic: string
  readonly key: string
  readonly type: string
  readonly attempts: number
  readonly createdAt: string
  readonly lastError: string | null
}

export interface DeadRowDetail extends DeadRow {
  readonly headers: Record<string, string>
  /** The payload as UTF-8 text, or base64 when it is not valid UTF-8 (see `payloadEncoding`). */
  readonly payload: string
  readonly payloadEncoding: 'utf8' | 'base64'
}

function iso(value: unknown): string {
  const date = value instanceof Date ? value : new Date(String(value))
  return Number.isNaN(date.getTime()) ? String(value) : date.toISOString()
}

function deadRow(r: Record<string, unknown>): DeadRow {
  return {
    id: String(r['id']),
    seq: toNumber(r['seq']),
    topic: String(r['topic']),
    key: String(r['k']),
    type: String(r['type']),
    attempts: toNumber(r['attempts']),
    createdAt: iso(r['created_at']),
    lastError: r['last_error'] === null || r['last_error'] === undefined ? null : String(r['last_error']),
  }
}

function where(database: Database, filter: DeadFilter) {
  const c = database.tables.columns
  const parts = [sql`${sql.raw(c.status)} = ${Status.dead}`]
  if (filter.topic !== undefined) parts.push(sql`${sql.raw(c.topic)} = ${filter.topic}`)
  if (filter.key !== undefined) parts.push(sql`${sql.raw(c.key)} = ${filter.key}`)
  return sql.join(parts, sql` AND `)
}

function columns(database: Database) {
  const c = database.tables.columns
  return sql.raw(
    `${c.id} AS id, ${c.seq} AS seq, ${c.topic} AS topic, ${c.key} AS k, ${c.type} AS type, ${c.attempts} AS attempts, ${c.createdAt} AS created_at, ${c.lastError} AS last_error`,
  )
}

export async function listDead(
  database: Database,
  filter: DeadFilter,
  limit: number,
): Promise<{ total: number; rows: DeadRow[] }> {
  await requireOutbox(database)
  const { outbox, columns: c } = database.tables
  const total = await sql<{ n: unknown }>`SELECT count(*) AS n FROM ${sql.raw(outbox)}
    WHERE ${where(database, filter)}`.execute(database.db)
  const rows = await sql<Record<string, unknown>>`SELECT ${columns(database)} FROM ${sql.raw(outbox)}
    WHERE ${where(database, filter)} ORDER BY ${sql.raw(c.seq)} LIMIT ${limit}`.execute(database.db)
  return { total: toNumber(total.rows[0]?.n), rows: rows.rows.map(deadRow) }
}

export async function showDead(database: Database, id: string): Promise<DeadRowDetail> {
  await requireOutbox(database)
  const { outbox, columns: c } = database.tables
  const found =
    database.dialect === 'postgres' && !UUID.test(id)
      ? []
      : (
          await sql<Record<string, unknown>>`SELECT ${columns(database)}, ${sql.raw(c.payload)} AS payload,
            ${sql.raw(c.headers)} AS headers FROM ${sql.raw(outbox)}
            WHERE ${sql.raw(c.id)} = ${id} AND ${sql.raw(c.status)} = ${Status.dead}`.execute(database.db)
        ).rows
  const row = found[0]
  if (!row) {
    throw new CliError(
      ExitCode.problems,
      'not_dead',
      `No dead row has the id ${id}: outboxkit dead list shows the dead rows.`,
    )
  }
  const bytes =
    row['payload'] instanceof Uint8Array ? row['payload'] : new TextEncoder().encode(String(row['payload']))
  let payload: string
  let payloadEncoding: 'utf8' | 'base64' = 'utf8'
  try {
    payload = new TextDecoder('utf-8', { fatal: true }).decode(bytes)
  } catch {
    payload = Buffer.from(bytes).toString('base64')
    payloadEncoding = 'base64'
  }
  const rawHeaders = row['headers']
  const parsed: unknown = typeof rawHeaders === 'string' ? JSON.parse(rawHeaders) : rawHeaders
  const headers: Record<string, string> = {}
  if (parsed && typeof parsed === 'object') {
    for (const [name, value] of Object.entries(parsed)) if (typeof value === 'string') headers[name] = value
  }
  return { ...deadRow(row), headers, payload, payloadEncoding }
}

/** The ids of every dead row matching `filter`, oldest first. */
async function deadIds(database: Database, filter: DeadFilter): Promise<string[]> {
  const { outbox, columns: c } = database.tables
  const rows = await sql<{ id: unknown }>`SELECT ${sql.raw(c.id)} AS id FROM ${sql.raw(outbox)}
    WHERE ${where(database, filter)} ORDER BY ${sql.raw(c.seq)}`.execute(database.db)
  return rows.rows.map((r) => String(r.id))
}

export interface DeadChange {
  readonly requeued?: readonly string[]
  readonly dropped?: readonly string[]
  /** Ids left as they were: not dead (pending, published, requeued meanwhile) or unknown. */
  readonly skipped: readonly string[]
}

function chunks<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = []
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size))
  return out
}

/**
 * Requeues through the store: each row goes to the end of its key, oldest first, so rows of one
 * key requeued together keep their order. With `--all`, in batches, oldest first.
 */
export async function requeueDead(
  database: Database,
  ids: readonly string[] | DeadFilter,
): Promise<DeadChange> {
  await requireOutbox(database)
  const store = createKyselyOutboxStore({ db: database.db, ...database.options })
  const list = Array.isArray(ids) ? ids : await deadIds(database, ids as DeadFilter)
  const requeued: string[] = []
  const skipped: string[] = []
  for (const batch of chunks(list, BATCH)) {
    const result = await store.requeue(batch)
    requeued.push(...result.requeued)
    skipped.push(...result.skipped)
  }
  return { requeued, skipped }
}

/** Deletes dead rows; a row that is no longer dead (requeued meanwhile) is skipped. */
export async function dropDead(database: Database, ids: readonly string[] | DeadFilter): Promise<DeadChange> {
  await requireOutbox(database)
  const { outbox, columns: c } = database.tables
  const list = [...new Set(Array.isArray(ids) ? ids : await deadIds(database, ids as DeadFilter))]
  const dropped: string[] = []
  for (const batch of chunks(list, BATCH)) {
    const candidates = database.dialect === 'postgres' ? batch.filter((id) => UUID.test(id)) : batch
    if (candidates.length === 0) continue
    await database.db.transaction().execute(async (trx) => {
      const dead = await sql<{
        id: unknown
        seq: unknown
      }>`SELECT ${sql.raw(c.id)} AS id, ${sql.raw(c.seq)} AS seq
        FROM ${sql.raw(outbox)} WHERE ${sql.raw(c.id)} IN (${sql.join(candidates)}) AND ${sql.raw(c.status)} = ${Status.dead}
        FOR UPDATE`.execute(trx)
      if (dead.rows.length === 0) return
      await sql`DELETE FROM ${sql.raw(outbox)} WHERE ${sql.raw(c.seq)} IN (${sql.join(dead.rows.map((r) => r.seq))})
        AND ${sql.raw(c.status)} = ${Status.dead}`.execute(trx)
      dropped.push(...dead.rows.map((r) => String(r.id)))
    })
  }
  const done = new Set(dropped)
  return { dropped: list.filter((id) => done.has(id)), skipped: list.filter((id) => !done.has(id)) }
}
