import { ErrorCode, isOutboxKitError, OutboxKitError } from './errors.js'

/** Structured context of a log line (ids, counts, an error's code). */
export type LogFields = Readonly<Record<string, unknown>>

/** One level of a {@link Logger}: a message first, then its fields. */
export type LogMethod = (message: string, fields?: LogFields) => void

/**
 * Where a relay or a consumer runner writes what it does. Every level is optional (a missing one
 * is not written), so `console` fits as is, and so does any logger whose methods take the message
 * first. For loggers that take the fields first (pino, bunyan) wrap them: `fieldsFirstLogger(pino())`.
 */
export interface Logger {
  debug?: LogMethod
  info?: LogMethod
  warn?: LogMethod
  error?: LogMethod
}

/**
 * The `logger` option of a relay or a runner: a {@link Logger}, or `false` for no log at all.
 * Left out, failures are still written to `console.warn` / `console.error`, throttled (see
 * docs/relay.md, "Logging").
 */
export type LoggerOption = Logger | false

/** A logger whose methods take the fields first and the message second, as pino and bunyan do. */
export interface FieldsFirstLogger {
  debug?(fields: LogFields, message: string): void
  info?(fields: LogFields, message: string): void
  warn?(fields: LogFields, message: string): void
  error?(fields: LogFields, message: string): void
}

const LEVELS = ['debug', 'info', 'warn', 'error'] as const
type Level = (typeof LEVELS)[number]

/**
 * Adapts a fields-first logger (pino, bunyan) to {@link Logger}.
 *
 * @example
 * ```ts
 * import pino from 'pino'
 * const relay = new Relay({ store, transport, logger: fieldsFirstLogger(pino()) })
 * ```
 */
export function fieldsFirstLogger(logger: FieldsFirstLogger): Logger {
  const adapted: Logger = {}
  for (const level of LEVELS) {
    if (typeof logger[level] === 'function') {
      adapted[level] = (message, fields) => logger[level]!(fields ?? {}, message)
    }
  }
  return adapted
}

/** Without a `logger` option: failures only, to the console. */
const DEFAULT_LOGGER: Logger = {
  warn: (message, fields) => globalThis.console?.warn(message, fields ?? {}),
  error: (message, fields) => globalThis.console?.error(message, fields ?? {}),
}

/**
 * With the default logger, a run of failures is written at its first error, then at most once per
 * this many ms while it lasts (each line carries the count), so a loop that keeps failing is seen
 * without flooding the console.
 */
export const DEFAULT_LOG_FAILURE_INTERVAL_MS = 60_000

/** The code and message of an error, as health reports and log lines carry them. */
export interface ErrorSummary {
  /** The {@link ErrorCode} of an outboxkit error; else the error's own `code` (a driver's), or its name. */
  readonly code: string
  readonly message: string
  /** When it happened. */
  readonly at: Date
}

export function summarizeError(error: unknown, at = new Date()): ErrorSummary {
  if (isOutboxKitError(error)) return { code: error.code, message: error.message, at }
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code
    return { code: typeof code === 'string' && code !== '' ? code : error.name, message: error.message, at }
  }
  return { code: 'UNKNOWN', message: String(error), at }
}

/**
 * The logger a component writes to, resolved from its option, with the component's fields on
 * every line. `throttled` is true for the default logger (see {@link FailureLog}).
 */
export class Log {
  readonly #logger: Logger
  readonly #fields: LogFields
  readonly throttled: boolean

  constructor(option: LoggerOption | undefined, fields: LogFields, source?: string) {
    if (option !== undefined && option !== false) {
      if (typeof option !== 'object' || option === null) {
        throw new OutboxKitError(
          ErrorCode.InvalidOptions,
          '`logger` must be an object with debug/info/warn/error methods (console fits), or false for no log.',
          { source, details: { option: 'logger' } },
        )
      }
      for (const level of LEVELS) {
        if (option[level] !== undefined && typeof option[level] !== 'function') {
          throw new OutboxKitError(
            ErrorCode.InvalidOptions,
            `\`logger.${level}\` must be a function (message, fields) => void.`,
            { source, details: { option: `logger.${level}` } },
          )
        }
      }
    }
    this.#logger = option === undefined ? DEFAULT_LOGGER : option === false ? {} : option
    this.#fields = fields
    this.throttled = option === undefined
  }

  /** Whether `level` is written at all (skip building costly fields when it is not). */
  enabled(level: Level): boolean {
    return typeof this.#logger[level] === 'function'
  }

  write(level: Level, message: string, fields?: LogFields): void {
    if (!this.enabled(level)) return
    try {
      // Called as a method: console and class-based loggers need their `this`.
      this.#logger[level]!(`[outboxkit] ${message}`, { ...this.#fields, ...fields })
    } catch {
      // A logger that throws must not change what happens to the work it describes.
    }
  }
}

/**
 * Writes failures of a loop: every one with a logger given; with the default logger, the first of a
 * run and then at most one per `intervalMs`, each with the run's count. Fatal ones are always written.
 */
export class FailureLog {
  readonly #log: Log
  readonly #intervalMs: number
  #lastWrittenAt = Number.NEGATIVE_INFINITY

  constructor(log: Log, intervalMs = DEFAULT_LOG_FAILURE_INTERVAL_MS) {
    this.#log = log
    this.#intervalMs = intervalMs
  }

  failed(
    message: string,
    error: unknown,
    consecutiveErrors: number,
    fatal: boolean,
    fields?: LogFields,
  ): void {
    const now = Date.now()
    if (
      this.#log.throttled &&
      !fatal &&
      consecutiveErrors > 1 &&
      now - this.#lastWrittenAt < this.#intervalMs
    ) {
      return
    }
    this.#lastWrittenAt = now
    const { code, message: errorMessage } = summarizeError(error)
    this.#log.write(fatal ? 'error' : 'warn', message, {
      code,
      error: errorMessage,
      consecutiveErrors,
      ...fields,
    })
  }

  /** A success ended a run of `consecutiveErrors` failures. */
  recovered(message: string, consecutiveErrors: number): void {
    this.#lastWrittenAt = Number.NEGATIVE_INFINITY
    this.#log.write('info', message, { consecutiveErrors })
  }
}
