/**
 * Which errors mean "the database cannot serve us right now" rather than "this statement or this
 * message is wrong". Consumers pause and retry on them without spending a message's attempts;
 * stores report them as retriable `STORE_FAILED`. The rules read only the `code`, `errno`,
 * `fatal` and `message` fields the drivers set (pg, postgres.js, mysql2, PGlite), so core needs
 * no driver. docs/errors.md has the same list as a table.
 */
import { ErrorCode, isOutboxKitError } from './errors.js'

/**
 * SQLSTATE codes (Postgres, PGlite; pg and postgres.js report them as `code`) that are outages.
 * Whole classes are given by their two first characters.
 */
const OUTAGE_SQLSTATE_CLASSES: readonly string[] = [
  '08', // connection exception
  '53', // insufficient resources: too many connections (53300), disk full, out of memory
  '28', // invalid authorization: credentials rotated or revoked; no message can fix it
]
const OUTAGE_SQLSTATES: ReadonlySet<string> = new Set([
  '57P01', // admin_shutdown (also pg_terminate_backend)
  '57P02', // crash_shutdown
  '57P03', // cannot_connect_now (starting up, in recovery)
  '57P05', // idle_session_timeout
  '55P03', // lock_not_available
  '40001', // serialization_failure
  '40P01', // deadlock_detected
  '40003', // statement_completion_unknown
  '25006', // read_only_sql_transaction: a standby during a failover
  '58000', // system_error
  '58030', // io_error
])

/** mysql2 (MySQL, MariaDB) server error names and numbers that are outages. */
const OUTAGE_MYSQL_ERRORS: ReadonlyMap<string, number> = new Map([
  ['ER_CON_COUNT_ERROR', 1040], // too many connections
  ['ER_TOO_MANY_USER_CONNECTIONS', 1203],
  ['ER_USER_LIMIT_REACHED', 1226],
  ['ER_ACCESS_DENIED_ERROR', 1045],
  ['ER_HANDSHAKE_ERROR', 1043],
  ['ER_SERVER_SHUTDOWN', 1053],
  ['ER_ABORTING_CONNECTION', 1152],
  ['ER_NET_READ_ERROR', 1158],
  ['ER_NET_READ_INTERRUPTED', 1159],
  ['ER_NET_ERROR_ON_WRITE', 1160],
  ['ER_NET_WRITE_INTERRUPTED', 1161],
  ['ER_LOCK_WAIT_TIMEOUT', 1205],
  ['ER_LOCK_DEADLOCK', 1213],
  ['ER_OPTION_PREVENTS_STATEMENT', 1290], // --read-only during a failover
  ['ER_READ_ONLY_MODE', 1836],
  ['ER_CONNECTION_KILLED', 1927], // MariaDB: KILL of the connection
])
const OUTAGE_MYSQL_ERRNOS: ReadonlySet<number> = new Set(OUTAGE_MYSQL_ERRORS.values())

/** Client-side codes: Node sockets and DNS, postgres.js and mysql2 connection states. */
const OUTAGE_CLIENT_CODES: ReadonlySet<string> = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'EHOSTDOWN',
  'ENETUNREACH',
  'ENETDOWN',
  'ENOTFOUND',
  'EAI_AGAIN',
  'CONNECTION_CLOSED', // postgres.js
  'CONNECTION_ENDED',
  'CONNECTION_DESTROYED',
  'CONNECT_TIMEOUT',
  'PROTOCOL_CONNECTION_LOST', // mysql2
  'PROTOCOL_SEQUENCE_TIMEOUT',
])

/** Messages of errors that drivers raise without a code (pg, pg-pool, mysql2). */
const OUTAGE_MESSAGES: readonly RegExp[] = [
  /^Connection terminated\b/, // pg: "... unexpectedly", "... due to connection timeout"
  /^timeout exceeded when trying to connect$/, // pg-pool: no client free within connectionTimeoutMillis
  /^Client has encountered a connection error and is not queryable$/, // pg
  /^Query read timeout$/, // pg
  /^Can't add new command when connection is in closed state$/, // mysql2
  /^Can't write in closed state$/, // mysql2
  /^Queue limit reached\.$/, // mysql2 pool
  /^No connections available\.$/, // mysql2 pool without waitForConnections
]

/**
 * True when `error` says the database is unreachable, overloaded or briefly contended (lost or
 * refused connections, too many connections, a pool that gave no connection in time, a server
 * shutting down, a deadlock, a lock not available, a serialization failure), so the same work is
 * expected to succeed once the database recovers. Also true for a retriable `STORE_FAILED` from
 * any copy of outboxkit (recognised by its brand). Looks through `cause` chains and the `errors`
 * of an `AggregateError`.
 *
 * False for everything else: constraint violations, syntax errors, a statement cancelled by a
 * timeout, a transaction already aborted, a pool or client that was closed on purpose.
 */
export function isDatabaseOutage(error: unknown): boolean {
  return outage(error, 0)
}

function outage(error: unknown, depth: number): boolean {
  if (typeof error !== 'object' || error === null || depth > 8) return false
  if (isOutboxKitError(error)) {
    if (error.code === ErrorCode.StoreFailed && error.retriable) return true
  } else if (isOutageShape(error as DriverErrorShape)) {
    return true
  }
  const { cause, errors } = error as { cause?: unknown; errors?: unknown }
  if (outage(cause, depth + 1)) return true
  return Array.isArray(errors) && errors.some((inner) => outage(inner, depth + 1))
}

interface DriverErrorShape {
  readonly code?: unknown
  readonly errno?: unknown
  readonly fatal?: unknown
  readonly message?: unknown
}

function isOutageShape(error: DriverErrorShape): boolean {
  const code = typeof error.code === 'string' ? error.code : ''
  if (/^[0-9A-Z]{5}$/.test(code)) {
    if (OUTAGE_SQLSTATES.has(code) || OUTAGE_SQLSTATE_CLASSES.includes(code.slice(0, 2))) return true
  }
  if (OUTAGE_CLIENT_CODES.has(code) || OUTAGE_MYSQL_ERRORS.has(code)) return true
  if (typeof error.errno === 'number' && OUTAGE_MYSQL_ERRNOS.has(error.errno)) return true
  // mysql2 marks an error fatal when the connection it came from is unusable.
  if (error.fatal === true && code !== 'PROTOCOL_ENQUEUE_AFTER_QUIT') return true
  const message = typeof error.message === 'string' ? error.message : ''
  return OUTAGE_MESSAGES.some((pattern) => pattern.test(message))
}
