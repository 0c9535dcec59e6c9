/** The exit codes of the `outboxkit` command (docs/cli.md lists them). */
export const ExitCode = {
  /** The command did what it was asked. */
  ok: 0,
  /** The command ran and found something wrong: a failed check, ids that are not dead rows. */
  problems: 1,
  /** Bad usage: an unknown command or flag, a bad value, a missing URL or driver package. */
  usage: 2,
  /** The database cannot be reached (refused, unknown host, authentication, unknown database). */
  databaseUnreachable: 3,
  /** The outbox tables are missing or not at the current migration version. */
  tablesMissing: 4,
  /** The broker cannot be reached. */
  brokerUnreachable: 5,
  /** Anything else: an unexpected error (its message is printed). */
  failed: 70,
} as const

export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode]

const BRAND = Symbol.for('outboxkit.cli-error')

/**
 * An error that ends the command with an exit code and a message saying what to do. The command's
 * bundles each have a copy of this class: recognise it with {@link isCliError}, not instanceof.
 */
export class CliError extends Error {
  override readonly name = 'CliError'
  readonly exitCode: ExitCode
  readonly reason: string
  readonly [BRAND] = true

  constructor(exitCode: ExitCode, reason: string, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.exitCode = exitCode
    this.reason = reason
  }
}

export function isCliError(error: unknown): error is CliError {
  return typeof error === 'object' && error !== null && (error as { [BRAND]?: unknown })[BRAND] === true
}
