/** Classifying driver errors, and turning them into typed store errors. */
import { isDatabaseOutage } from '../../core/database-outage.js'
import { describeError, ErrorCode, isOutboxKitError, OutboxKitError } from '../../core/errors.js'

/**
 * Errors worth retrying: the database is unreachable or overloaded, or a lock conflict
 * (deadlock, lock timeout, serialization failure) rolled the statement back. The rules, and the
 * table in docs/errors.md, are in core's {@link isDatabaseOutage}. Constraint violations and
 * syntax errors are not retriable.
 */
export function isRetriableDatabaseError(error: unknown): boolean {
  return isDatabaseOutage(error)
}

/**
 * The database cannot serve us (unreachable, refused, overloaded, shutting down, went away
 * mid-statement): a retriable error that is not a lock conflict.
 */
export function isConnectionError(error: unknown): boolean {
  return isDatabaseOutage(error) && !isLockConflict(errorCode(error))
}

function isLockConflict(code: string): boolean {
  return ['40001', '40P01', '55P03', 'ER_LOCK_DEADLOCK', 'ER_LOCK_WAIT_TIMEOUT'].includes(code)
}

/** Times a transaction rolled back by a deadlock is run again before its error is reported. */
const DEADLOCK_RETRIES = 3

/**
 * Runs a whole transaction again when the database rolled it back to break a deadlock (Postgres
 * 40P01, InnoDB ER_LOCK_DEADLOCK): nothing of it was written, so running it again is safe.
 */
export async function retryOnDeadlock<T>(transaction: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await transaction()
    } catch (error) {
      const code = errorCode(error)
      if (attempt > DEADLOCK_RETRIES || (code !== '40P01' && code !== 'ER_LOCK_DEADLOCK')) throw error
    }
  }
}

function errorCode(error: unknown): string {
  if (typeof error !== 'object' || error === null) return ''
  const code = (error as { code?: unknown }).code
  return typeof code === 'string' ? code : ''
}

/**
 * Runs one database call of a store; a driver error becomes a `STORE_FAILED` error that names the
 * operation and the table, keeps the driver's error as `cause`, and says whether to retry.
 */
export async function runStoreOperation<T>(
  source: string,
  table: string,
  operation: string,
  fn: () => Promise<T>,
): Promise<T> {
  try {
    return await fn()
  } catch (error) {
    if (isOutboxKitError(error)) throw error
    throw new OutboxKitError(
      ErrorCode.StoreFailed,
      `${operation} on ${table} failed: ${describeError(error)}`,
      {
        source,
        cause: error,
        retriable: isRetriableDatabaseError(error),
        details: { operation },
      },
    )
  }
}
