/** Classifying driver errors, and turning them into typed store errors. */
import { describeError, ErrorCode, isOutboxKitError, OutboxKitError } from '../../core/errors.js'

/**
 * Errors worth retrying: lost connections, deadlocks, serialization failures, lock timeouts.
 * Constraint violations and syntax errors are not.
 */
export function isRetriableDatabaseError(error: unknown): boolean {
  if (isConnectionError(error)) return true
  const code = errorCode(error)
  if (/^(40|53)/.test(code)) return true // Postgres: rollback (deadlock, serialization), resources
  return code === 'ER_LOCK_DEADLOCK' || code === 'ER_LOCK_WAIT_TIMEOUT'
}

/** The database cannot be reached (or went away mid-statement). */
export function isConnectionError(error: unknown): boolean {
  const code = errorCode(error)
  if (/^(08|57P)/.test(code)) return true // Postgres: connection exception, admin shutdown
  return [
    'ECONNRESET',
    'ECONNREFUSED',
    'EPIPE',
    'ETIMEDOUT',
    'PROTOCOL_CONNECTION_LOST',
    'CONNECTION_CLOSED',
    'CONNECTION_ENDED',
    'CONNECTION_DESTROYED',
    'CONNECT_TIMEOUT',
  ].includes(code)
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
