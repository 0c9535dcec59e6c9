/**
 * Every error outboxkit throws on purpose is an {@link OutboxKitError} with a stable `code`.
 *
 * Errors are recognised by a global brand rather than `instanceof` alone, so two bundled copies
 * of the library (an app and a plugin, say) still recognise each other's errors.
 */

const BRAND = Symbol.for('outboxkit.error')

/** The closed list of error codes. Each is documented in docs/errors.md. */
export const ErrorCode = {
  /** A message failed validation (empty topic, bad header, non-serialisable payload, ...). */
  InvalidMessage: 'INVALID_MESSAGE',
  /** A payload is larger than the configured `maxPayloadBytes`. */
  PayloadTooLarge: 'PAYLOAD_TOO_LARGE',
  /** A schema, table or column name is not a safe SQL identifier. */
  InvalidIdentifier: 'INVALID_IDENTIFIER',
  /** An option passed to a constructor or factory is invalid. */
  InvalidOptions: 'INVALID_OPTIONS',
  /** The database rejected or failed a store operation. */
  StoreFailed: 'STORE_FAILED',
  /** The broker or transport failed; `retriable` says whether trying again can help. */
  TransportFailed: 'TRANSPORT_FAILED',
  /** Another producer with the same transactional id took over; this one must stop. */
  Fenced: 'FENCED',
  /**
   * Exactly-once publishing cannot be proven: the progress topic is missing, misconfigured
   * (not compacted only), was deleted and recreated, or cannot be read. The relay stops rather
   * than risk a duplicate; fix the topic and start it again.
   */
  ProgressUnavailable: 'PROGRESS_UNAVAILABLE',
  /**
   * A change feed (the log a log-tailing relay reads) is held by another reader: another relay
   * runs on the same replication slot or binlog position. Retriable: the relay waits as a standby.
   */
  FeedBusy: 'FEED_BUSY',
  /**
   * A change feed cannot resume where it stopped: its replication slot was dropped, or the log it
   * needs was removed (WAL recycled, binlog purged). Records in the missing part of the log would
   * be skipped, so the relay stops instead; see the feed's docs for how to recover.
   */
  FeedLost: 'FEED_LOST',
  /** A consumed record carries no usable message id, so it cannot be deduplicated. */
  MissingMessageId: 'MISSING_MESSAGE_ID',
  /**
   * A consumed record's message id cannot be stored in an inbox (over 255 characters, a NUL, an
   * unpaired surrogate), so it cannot be deduplicated.
   */
  InvalidMessageId: 'INVALID_MESSAGE_ID',
  /** A consumer handler kept throwing; the message went to the dead letter. */
  HandlerFailed: 'HANDLER_FAILED',
  /**
   * An optional peer dependency an adapter needs (a driver: kafkajs, mysql2, @vlasky/zongji, ...)
   * is not installed. `details.package` names it, `details.install` is the command that adds it.
   */
  DriverMissing: 'DRIVER_MISSING',
  /** `start()` was called on a component that is already running. */
  AlreadyStarted: 'ALREADY_STARTED',
  /** A component was used after it was stopped or closed. */
  Closed: 'CLOSED',
} as const

export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode]

export interface OutboxKitErrorOptions {
  /** Whether the same operation may succeed if tried again later. Defaults to `false`. */
  retriable?: boolean
  /** The underlying error, if any. */
  cause?: unknown
  /** The adapter or component that raised the error, shown as a prefix (`[outboxkit] [postgres]`). */
  source?: string
  /** Structured details for programs (the field that failed, a limit, ...). */
  details?: Readonly<Record<string, unknown>>
}

export class OutboxKitError extends Error {
  override readonly name: string = 'OutboxKitError'
  readonly code: ErrorCode
  readonly retriable: boolean
  readonly source: string | undefined
  readonly details: Readonly<Record<string, unknown>>
  readonly [BRAND] = true

  constructor(code: ErrorCode, message: string, options: OutboxKitErrorOptions = {}) {
    const prefix = options.source ? `[outboxkit] [${options.source}]` : '[outboxkit]'
    super(`${prefix} ${message}`, options.cause === undefined ? undefined : { cause: options.cause })
    this.code = code
    this.retriable = options.retriable ?? false
    this.source = options.source
    this.details = options.details ?? {}
  }
}

/**
 * True when `error` is an outboxkit error (from any copy of the library), optionally with `code`.
 *
 * @example
 * ```ts
 * try { await outbox.add(trx, message) }
 * catch (e) { if (isOutboxKitError(e, ErrorCode.PayloadTooLarge)) { ... } }
 * ```
 */
export function isOutboxKitError(error: unknown, code?: ErrorCode): error is OutboxKitError {
  if (typeof error !== 'object' || error === null) return false
  if ((error as { [BRAND]?: unknown })[BRAND] !== true) return false
  return code === undefined || (error as OutboxKitError).code === code
}

/** The message of any thrown value, for logs and `last_error` columns. */
export function describeError(error: unknown): string {
  if (error instanceof Error) return `${error.name}: ${error.message}`
  return String(error)
}
