import { type Kysely, sql, type Transaction } from 'kysely'
import { isDatabaseOutage } from '../../core/database-outage.js'
import { describeError, ErrorCode, isOutboxKitError, OutboxKitError } from '../../core/errors.js'
import { MAX_MESSAGE_ID_LENGTH, messageIdProblem } from '../../core/message-id.js'
import { checkPurgeOptions } from '../../core/options.js'
import type { ExclusiveOutcome, InboxStore } from '../../core/store.js'
import { runStoreOperation } from './database-errors.js'
import { DIALECT_SQL, type DialectSql, resolveStoreSetup, toNumber } from './dialect.js'
import { runExclusive } from './exclusive-lock.js'
import type { KyselyStoreOptions } from './kysely-outbox-store.js'
import type { ResolvedTables } from './schema.js'

/** Set by `markProcessed` and `markProcessedMany` on MySQL/MariaDB, released by `confirmProcessed`. */
const INBOX_SAVEPOINT = 'outboxkit_inbox'
/** Most ids `markProcessedMany` sends in one statement; a longer list takes several. */
const INBOX_IDS_PER_STATEMENT = 1_000
/** Records deleted per purge transaction. */
export const INBOX_PURGE_BATCH_SIZE = 500

/**
 * An {@link InboxStore} on Kysely: one row per (consumer, message id), written in the consumer's
 * transaction. The primary key makes a second writer of the same pair wait for the first and then
 * see the conflict, so at most one transaction processes each message.
 */
export function createKyselyInboxStore<DB>(options: KyselyStoreOptions<DB>): KyselyInboxStore<DB> {
  return new KyselyInboxStore(options)
}

export class KyselyInboxStore<DB> implements InboxStore<Transaction<DB>> {
  readonly name: string
  readonly tables: ResolvedTables
  readonly #db: Kysely<DB>
  readonly #sql: DialectSql

  constructor(options: KyselyStoreOptions<DB>) {
    const { dialect, tables } = resolveStoreSetup(options, 'createKyselyInboxStore')
    this.tables = tables
    this.name = dialect
    this.#db = options.db
    this.#sql = DIALECT_SQL[dialect]
  }

  /**
   * Runs `fn` in a transaction. Outages (the database unreachable, overloaded or contended, see
   * `isDatabaseOutage`) while beginning, committing or inside `fn` become retriable
   * `STORE_FAILED` errors, so a consumer waits for the database instead of counting them as
   * handler failures; anything else `fn` throws passes through.
   *
   * On MySQL/MariaDB the session runs with autocommit off for the transaction's length: when
   * InnoDB rolls a transaction back on its own (a deadlock), the statements that follow would
   * otherwise commit one by one; this way they form a new transaction, which the rollback after
   * a failed {@link confirmProcessed} discards.
   */
  async transaction<T>(fn: (tx: Transaction<DB>) => Promise<T>): Promise<T> {
    try {
      if (this.tables.dialect !== 'mysql') return await this.#db.transaction().execute(fn)
      return await this.#db.connection().execute(async (connection) => {
        await sql`SET autocommit = 0`.execute(connection)
        let settled = false
        try {
          const result = await connection.transaction().execute(fn)
          settled = true
          return result
        } finally {
          // The connection goes back to a pool others use: restore autocommit. If that fails
          // after a failure of the transaction, the connection is gone and the first error counts.
          await sql`SET autocommit = 1`.execute(connection).catch((error: unknown) => {
            if (settled) throw error
          })
        }
      })
    } catch (error) {
      if (isOutboxKitError(error) || !isDatabaseOutage(error)) throw error
      throw new OutboxKitError(
        ErrorCode.StoreFailed,
        `The transaction failed because the database is unavailable: ${describeError(error)}`,
        {
          source: this.name,
          cause: error,
          retriable: true,
          details: { operation: 'transaction' },
        },
      )
    }
  }

  async markProcessed(tx: Transaction<DB>, consumer: string, messageId: string): Promise<boolean> {
    checkId('consumer name', consumer)
    checkId('message id', messageId)
    const inbox = sql.raw(this.tables.inbox)
    if (this.tables.dialect === 'mysql') {
      // MySQL keeps a transaction usable after a failed statement, so a duplicate-key error is the
      // exact answer. (mysql2 reports "found" rows, so ON DUPLICATE KEY UPDATE cannot tell.)
      try {
        await sql`INSERT INTO ${inbox} (consumer, message_id) VALUES (${consumer}, ${messageId})`.execute(tx)
      } catch (error) {
        if (isDuplicateKeyError(error)) return false
        return this.#run('markProcessed', () => Promise.reject(error))
      }
      // A mark of this very transaction: a rollback by InnoDB removes it, see confirmProcessed.
      await this.#run('markProcessed', () => sql.raw(`SAVEPOINT ${INBOX_SAVEPOINT}`).execute(tx))
      return true
    }
    const result = await this.#run('markProcessed', () =>
      sql`INSERT INTO ${inbox} (consumer, message_id) VALUES (${consumer}, ${messageId})
        ON CONFLICT DO NOTHING`.execute(tx),
    )
    return toNumber(result.numAffectedRows) === 1
  }

  /**
   * One statement for the whole list in the common case. Postgres: `INSERT ... SELECT unnest(...)
   * ON CONFLICT DO NOTHING RETURNING message_id` names the ids it recorded. MySQL/MariaDB:
   * `INSERT IGNORE` with one row per id; when it records them all (a fresh batch) that is the
   * answer. When it records fewer (some were processed before, e.g. a batch redelivered after a
   * crash), it cannot say which, so the statement is rolled back to a savepoint and the ids are
   * recorded one by one as {@link markProcessed} does. The ids go in sorted, so two transactions
   * recording overlapping lists take their row locks in the same order.
   */
  async markProcessedMany(
    tx: Transaction<DB>,
    consumer: string,
    messageIds: readonly string[],
  ): Promise<boolean[]> {
    checkId('consumer name', consumer)
    for (const messageId of messageIds) checkId('message id', messageId)
    const unique = [...new Set(messageIds)].sort()
    if (unique.length === 0) return []
    const recorded = new Set<string>()
    for (let start = 0; start < unique.length; start += INBOX_IDS_PER_STATEMENT) {
      const chunk = unique.slice(start, start + INBOX_IDS_PER_STATEMENT)
      for (const id of await this.#recordMany(tx, consumer, chunk)) recorded.add(id)
    }
    const answered = new Set<string>()
    return messageIds.map((id) => {
      if (answered.has(id)) return false
      answered.add(id)
      return recorded.has(id)
    })
  }

  async #recordMany(tx: Transaction<DB>, consumer: string, ids: readonly string[]): Promise<Set<string>> {
    const inbox = sql.raw(this.tables.inbox)
    if (this.tables.dialect !== 'mysql') {
      const result = await this.#run('markProcessedMany', () =>
        sql<{ message_id: string }>`INSERT INTO ${inbox} (consumer, message_id)
          SELECT ${consumer}, m FROM unnest(${sql.val(ids)}::text[]) WITH ORDINALITY AS u(m, n) ORDER BY n
          ON CONFLICT DO NOTHING RETURNING message_id`.execute(tx),
      )
      return new Set(result.rows.map((row) => row.message_id))
    }
    // Set before the INSERT, it serves both to undo a partial one and, as markProcessed's
    // savepoint, for confirmProcessed: InnoDB rolling the transaction back removes it either way.
    await this.#run('markProcessedMany', () => sql.raw(`SAVEPOINT ${INBOX_SAVEPOINT}`).execute(tx))
    const rows = sql.join(ids.map((id) => sql`(${consumer}, ${id})`))
    const result = await this.#run('markProcessedMany', () =>
      sql`INSERT IGNORE INTO ${inbox} (consumer, message_id) VALUES ${rows}`.execute(tx),
    )
    if (toNumber(result.numAffectedRows) === ids.length) return new Set(ids)
    await this.#run('markProcessedMany', () =>
      sql.raw(`ROLLBACK TO SAVEPOINT ${INBOX_SAVEPOINT}`).execute(tx),
    )
    const recorded = new Set<string>()
    for (const id of ids) if (await this.markProcessed(tx, consumer, id)) recorded.add(id)
    return recorded
  }

  /**
   * MySQL/MariaDB: the savepoint `markProcessed` set must still exist. It does not once InnoDB
   * rolled the transaction back (a deadlock), even if later statements opened a new one, and
   * even if another consumer has since recorded the same message. Postgres: `tx` must read the
   * inbox row as written by itself; an aborted transaction refuses the read (25P02).
   */
  async confirmProcessed(tx: Transaction<DB>, consumer: string, messageId: string): Promise<boolean> {
    if (this.tables.dialect === 'mysql') {
      try {
        await sql.raw(`RELEASE SAVEPOINT ${INBOX_SAVEPOINT}`).execute(tx)
        return true
      } catch (error) {
        if (errorCode(error) === 'ER_SP_DOES_NOT_EXIST') return false
        return this.#run('confirmProcessed', () => Promise.reject(error))
      }
    }
    try {
      // xmin: written by this transaction, not by another that committed the same pair since.
      const result = await sql`SELECT 1 AS found FROM ${sql.raw(this.tables.inbox)}
        WHERE consumer = ${consumer} AND message_id = ${messageId}
          AND xmin = pg_current_xact_id()::xid`.execute(tx)
      return result.rows.length > 0
    } catch (error) {
      if (errorCode(error) === '25P02') return false // in_failed_sql_transaction
      return this.#run('confirmProcessed', () => Promise.reject(error))
    }
  }

  async isProcessed(consumer: string, messageId: string): Promise<boolean> {
    const result = await this.#run('isProcessed', () =>
      sql`SELECT 1 AS found FROM ${sql.raw(this.tables.inbox)}
        WHERE consumer = ${consumer} AND message_id = ${messageId}`.execute(this.#db),
    )
    return result.rows.length > 0
  }

  /**
   * Deletes old records in batches of {@link INBOX_PURGE_BATCH_SIZE}, each in its own short READ
   * COMMITTED transaction: a batch is found through the `processed_at` index (a plain read, no
   * locks) and deleted by primary key, so consumers recording new messages never wait for it.
   */
  async purge(options: { olderThanMs: number; consumer?: string; limit?: number }): Promise<number> {
    checkPurgeOptions(options, this.name)
    const inbox = sql.raw(this.tables.inbox)
    const limit = options.limit ?? 10_000
    const forConsumer = options.consumer === undefined ? sql`` : sql`AND consumer = ${options.consumer}`
    const byProcessedAt =
      this.tables.dialect === 'mysql'
        ? sql.raw(`FORCE INDEX (\`${this.tables.inboxName}_processed_at\`)`)
        : sql``
    let purged = 0
    while (purged < limit) {
      const batch = Math.min(INBOX_PURGE_BATCH_SIZE, limit - purged)
      const horizon = this.#sql.minusMs(options.olderThanMs)
      const outcome = await this.#run('purge', () =>
        this.#db
          .transaction()
          .setIsolationLevel('read committed')
          .execute(async (trx) => {
            const found = await sql<{ consumer: unknown; message_id: unknown }>`
              SELECT consumer, message_id FROM ${inbox} ${byProcessedAt}
              WHERE processed_at < ${horizon} ${forConsumer} LIMIT ${batch}`.execute(trx)
            if (found.rows.length === 0) return { found: 0, deleted: 0 }
            const pairs = sql.join(
              found.rows.map((r) => sql`(consumer = ${r.consumer} AND message_id = ${r.message_id})`),
              sql` OR `,
            )
            const result = await sql`DELETE FROM ${inbox} WHERE (${pairs})`.execute(trx)
            return { found: found.rows.length, deleted: toNumber(result.numAffectedRows) }
          }),
      )
      purged += outcome.deleted
      if (outcome.found < batch) break
    }
    return purged
  }

  /** A lock across processes, as `KyselyOutboxStore.runExclusive` takes it. */
  runExclusive<T>(name: string, fn: () => Promise<T>): Promise<ExclusiveOutcome<T>> {
    return runExclusive(
      this.#db as Kysely<unknown>,
      this.tables.dialect,
      { name: this.name, table: this.tables.inboxName, scope: this.tables.inbox },
      name,
      fn,
    )
  }

  #run<T>(operation: string, fn: () => Promise<T>): Promise<T> {
    return runStoreOperation(this.name, this.tables.inboxName, operation, fn)
  }
}

function checkId(kind: 'consumer name' | 'message id', value: unknown): void {
  const problem = messageIdProblem(value)
  if (problem !== undefined) {
    throw new OutboxKitError(
      kind === 'message id' ? ErrorCode.InvalidMessageId : ErrorCode.InvalidOptions,
      `The ${kind} cannot be stored in the inbox: ${problem}. Use 1–${MAX_MESSAGE_ID_LENGTH} characters without NUL or unpaired surrogates.`,
      { details: { field: kind === 'message id' ? 'messageId' : 'consumer' } },
    )
  }
}

function errorCode(error: unknown): unknown {
  return typeof error === 'object' && error !== null ? (error as { code?: unknown }).code : undefined
}

function isDuplicateKeyError(error: unknown): boolean {
  const e = error as { code?: unknown; errno?: unknown } | null
  return e?.code === 'ER_DUP_ENTRY' || e?.errno === 1062
}
