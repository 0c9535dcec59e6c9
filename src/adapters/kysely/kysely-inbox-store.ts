import { type Kysely, sql, type Transaction } from 'kysely'
import { describeError, ErrorCode, isOutboxKitError, OutboxKitError } from '../../core/errors.js'
import { checkPurgeOptions } from '../../core/options.js'
import type { InboxStore } from '../../core/store.js'
import { isConnectionError, runStoreOperation } from './database-errors.js'
import { DIALECT_SQL, type DialectSql, resolveStoreSetup, toNumber } from './dialect.js'
import type { KyselyStoreOptions } from './kysely-outbox-store.js'
import type { ResolvedTables } from './schema.js'

const MAX_ID_LENGTH = 255
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
   * Runs `fn` in a transaction. Failures to reach the database (to begin, to commit, or inside
   * `fn`) become retriable `STORE_FAILED` errors, so a consumer redelivers the message later
   * instead of counting them as handler failures; anything else `fn` throws passes through.
   */
  async transaction<T>(fn: (tx: Transaction<DB>) => Promise<T>): Promise<T> {
    try {
      return await this.#db.transaction().execute(fn)
    } catch (error) {
      if (isOutboxKitError(error) || !isConnectionError(error)) throw error
      throw new OutboxKitError(
        ErrorCode.StoreFailed,
        `The database is unreachable: ${describeError(error)}`,
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
        return true
      } catch (error) {
        if (isDuplicateKeyError(error)) return false
        return this.#run('markProcessed', () => Promise.reject(error))
      }
    }
    const result = await this.#run('markProcessed', () =>
      sql`INSERT INTO ${inbox} (consumer, message_id) VALUES (${consumer}, ${messageId})
        ON CONFLICT DO NOTHING`.execute(tx),
    )
    return toNumber(result.numAffectedRows) === 1
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

  #run<T>(operation: string, fn: () => Promise<T>): Promise<T> {
    return runStoreOperation(this.name, this.tables.inboxName, operation, fn)
  }
}

function checkId(kind: string, value: unknown): void {
  if (typeof value !== 'string' || value.length === 0 || value.length > MAX_ID_LENGTH) {
    throw new OutboxKitError(
      ErrorCode.InvalidOptions,
      `The ${kind} must be a string of 1–${MAX_ID_LENGTH} characters, got ${JSON.stringify(value)}.`,
    )
  }
}

function isDuplicateKeyError(error: unknown): boolean {
  const e = error as { code?: unknown; errno?: unknown } | null
  return e?.code === 'ER_DUP_ENTRY' || e?.errno === 1062
}
