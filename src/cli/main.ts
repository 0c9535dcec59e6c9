#!/usr/bin/env node
/**
 * The `outboxkit` command. Built to dist/cli.js on its own: nothing in the library imports it,
 * and its dependencies (commander, cli-progress) stay out of the library's import graph.
 */
import { Command, CommanderError, Option } from 'commander'
import { type Database, type DatabaseOptions, openDatabase } from './connection.js'
import { CliError, ExitCode } from './exit-codes.js'
import { migrate } from './migrate.js'
import { emit, type OutputOptions, parseDuration, reportError } from './output.js'
import { formatStatus, status } from './status.js'

interface GlobalOptions extends DatabaseOptions, OutputOptions {}

let outputMode: OutputOptions = {}

/** Runs a command's body with the database open, and always closes it. */
async function withDatabase(
  options: GlobalOptions,
  body: (database: Database) => Promise<number | undefined>,
) {
  const database = await openDatabase(options)
  try {
    return (await body(database)) ?? ExitCode.ok
  } finally {
    await database.close().catch(() => {})
  }
}

function action<A extends unknown[]>(
  body: (options: GlobalOptions, ...args: A) => Promise<number | undefined>,
): (...args: unknown[]) => Promise<void> {
  return async (...args: unknown[]) => {
    const command = args[args.length - 1] as Command
    const options = command.optsWithGlobals<GlobalOptions>()
    outputMode = options
    process.exitCode = (await body(options, ...(args.slice(0, -2) as A))) ?? ExitCode.ok
  }
}

export function buildProgram(): Command {
  const program = new Command('outboxkit')
  program
    .description(
      'Operate an outboxkit outbox: migrate its tables, inspect the backlog, requeue dead rows, purge.',
    )
    .exitOverride()
    .showHelpAfterError('(run outboxkit --help for usage)')
    .addOption(new Option('--database-url <url>', 'postgres://… or mysql://… (default: $DATABASE_URL)'))
    .option(
      '--schema <name>',
      "Postgres schema or MySQL database holding the tables (default: the connection's)",
    )
    .option('--outbox-table <name>', 'outbox table name (default: outbox)')
    .option('--inbox-table <name>', 'inbox table name (default: outbox_inbox)')
    .addOption(
      new Option('--layout <layout>', 'column layout of the outbox table').choices(['outboxkit', 'debezium']),
    )
    .option('--json', 'print one JSON document (for scripts) instead of text')

  program
    .command('migrate')
    .description('create or upgrade the outbox and inbox tables')
    .option('--dry-run', 'print the SQL the pending migrations would run, and run nothing')
    .action(
      action(async (options: GlobalOptions & { dryRun?: boolean }) =>
        withDatabase(options, async (database) => {
          const result = await migrate(database, options.dryRun === true)
          emit(options, result, () => {
            if (result.dryRun) {
              if (result.migrations.length === 0)
                return 'Nothing to migrate: the tables are at the current version.'
              return result.migrations
                .map((m) =>
                  m.statements.length === 0
                    ? `-- ${m.name}: nothing to change`
                    : `-- ${m.name}\n${m.statements.map((s) => `${s};`).join('\n\n')}`,
                )
                .join('\n\n')
            }
            if (result.migrations.length === 0)
              return 'Nothing to migrate: the tables are at the current version.'
            return result.migrations.map((m) => `applied ${m.name}`).join('\n')
          })
          return ExitCode.ok
        }),
      ),
    )
  program
    .command('status')
    .description('backlog, oldest pending age, blocked keys, dead rows, claims, shard owners, inbox size')
    .option('--watch [interval]', 'refresh every interval (default 2s) until interrupted')
    .action(
      action(async (options: GlobalOptions & { watch?: string | boolean }) =>
        withDatabase(options, async (database) => {
          if (options.watch === undefined || options.watch === false) {
            const report = await status(database)
            emit(options, report, () => formatStatus(report))
            return ExitCode.ok
          }
          const intervalMs = options.watch === true ? 2000 : parseDuration('--watch', options.watch)
          await watch(intervalMs, async () => {
            const report = await status(database)
            if (options.json) process.stdout.write(`${JSON.stringify(report)}\n`)
            else if (process.stdout.isTTY)
              process.stdout.write(`\x1b[2J\x1b[H${new Date().toISOString()}\n${formatStatus(report)}\n`)
            else process.stdout.write(`${new Date().toISOString()}\n${formatStatus(report)}\n\n`)
          })
          return ExitCode.ok
        }),
      ),
    )

  return program
}

/** Runs `tick` every `intervalMs` until SIGINT or SIGTERM. */
async function watch(intervalMs: number, tick: () => Promise<void>): Promise<void> {
  let stop: () => void = () => {}
  const stopped = new Promise<void>((resolve) => {
    stop = resolve
  })
  let done = false
  const onSignal = () => {
    done = true
    stop()
  }
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)
  try {
    while (!done) {
      await tick()
      let timer: ReturnType<typeof setTimeout> | undefined
      await Promise.race([stopped, new Promise((resolve) => (timer = setTimeout(resolve, intervalMs)))])
      clearTimeout(timer)
    }
  } finally {
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
  }
}

export async function main(argv: readonly string[]): Promise<number> {
  const program = buildProgram()
  try {
    await program.parseAsync(argv as string[])
    return typeof process.exitCode === 'number' ? process.exitCode : ExitCode.ok
  } catch (error) {
    if (error instanceof CommanderError) {
      // Help and --version end with 0; commander printed its own message for the rest.
      if (error.exitCode === 0) return ExitCode.ok
      if (outputMode.json || argv.includes('--json')) {
        process.stdout.write(
          `${JSON.stringify({ error: { reason: 'usage', message: error.message, exitCode: ExitCode.usage } })}\n`,
        )
      }
      return ExitCode.usage
    }
    return reportError(outputMode.json ? outputMode : { json: argv.includes('--json') }, error)
  }
}

main(process.argv).then(
  (code) => {
    process.exitCode = code
  },
  (error: unknown) => {
    process.stderr.write(`outboxkit: ${String(error)}\n`)
    process.exitCode = ExitCode.failed
  },
)

export { CliError }
