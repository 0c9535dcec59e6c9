/**
 * `runExclusive` of the Kysely stores: a named lock across every process of one database, held by
 * a session (one pooled connection reserved for the length of `fn`), so it is free again as soon
 * as its holder's connection closes, and `fn` runs its own statements on other connections in
 * short transactions of their own.
 */
import { type Kysely, sql } from 'kysely'
import type { ExclusiveOutcome } from '../../core/store.js'
import { runStoreOperation } from './database-errors.js'
import type { SqlDialect } from './schema.js'

/** Names of locks this process holds on a single-connection database (PGlite), per instance. */
const heldInProcess = new WeakMap<object, Set<string>>()

/**
 * Whether every query of `db` runs on one session (the PGlite dialect): reserving it for the
 * lock would leave `fn` waiting for it forever, and one process is the only user anyway.
 */
export function singleSession(db: Kysely<unknown>): boolean {
  const adapter = db.getExecutor().adapter as { singleConnection?: unknown }
  return adapter.singleConnection === true
}

export async function runExclusive<T>(
  db: Kysely<unknown>,
  dialect: SqlDialect,
  source: { name: string; table: string; scope: string },
  name: string,
  fn: () => Promise<T>,
): Promise<ExclusiveOutcome<T>> {
  // Scoped to the table, so outboxes sharing a database do not exclude each other.
  const lockName = `outboxkit:${source.scope}:${name}`
  if (singleSession(db)) {
    const held = heldInProcess.get(db) ?? new Set<string>()
    heldInProcess.set(db, held)
    if (held.has(lockName)) return { acquired: false }
    held.add(lockName)
    try {
      return { acquired: true, value: await fn() }
    } finally {
      held.delete(lockName)
    }
  }
  const run = <R>(operation: string, call: () => Promise<R>) =>
    runStoreOperation(source.name, source.table, operation, call)
  // Postgres: a 64-bit key from the name. MariaDB: lock names are at most 64 characters.
  const take =
    dialect === 'postgres'
      ? sql<{ got: unknown }>`SELECT pg_try_advisory_lock(hashtextextended(${lockName}, 0)) AS got`
      : sql<{ got: unknown }>`SELECT GET_LOCK(CONCAT('outboxkit:', MD5(${lockName})), 0) AS got`
  const give =
    dialect === 'postgres'
      ? sql`SELECT pg_advisory_unlock(hashtextextended(${lockName}, 0))`
      : sql`SELECT RELEASE_LOCK(CONCAT('outboxkit:', MD5(${lockName})))`
  return db.connection().execute(async (session) => {
    const got = await run('lock', () => take.execute(session))
    const value = got.rows[0]?.got
    if (!(value === true || value === 1 || value === '1' || value === 't')) return { acquired: false }
    try {
      return { acquired: true, value: await fn() }
    } finally {
      // An unlock fails when the session is gone, and the lock with it; report it all the same.
      await run('unlock', () => give.execute(session))
    }
  })
}
