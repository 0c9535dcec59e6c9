/**
 * The `outboxkit` command's program: its commands, flags and exit codes. Loaded by main.ts once
 * Kysely is known to be installed.
 */
import { Command, CommanderError, Option } from 'commander'
import { type Database, type DatabaseOptions, openDatabase } from './connection.js'
import { type DeadChange, type DeadFilter, dropDead, listDead, requeueDead, showDead } from './dead.js'
import { doctor, formatDoctor } from './doctor.js'
import { CliError, ExitCode } from './exit-codes.js'
import { createFeed, dropFeed, type FeedNames, formatFeedChange } from './feeds.js'
import { migrate } from './migrate.js'
import {
  emit,
  formatDuration,
  type OutputOptions,
  parseDuration,
  parsePositiveInteger,
  reportError,
  table,
} from './output.js'
import { purge } from './purge.js'
import type { LogModeRequest } from './relay.js'
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

function action<O extends GlobalOptions, A extends unknown[]>(
  body: (options: O, ...args: A) => Promise<number | undefined>,
): (...args: unknown[]) => Promise<void> {
  return async (...args: unknown[]) => {
    const command = args[args.length - 1] as Command
    const options = command.optsWithGlobals<O>()
    outputMode = options
    process.exitCode = (await body(options, ...(args.slice(0, -2) as A))) ?? ExitCode.ok
  }
}

export function buildProgram(): Command {
  const program = new Command('outboxkit')
  program
    .description(
      'Operate an outboxkit outbox: migrate its tables, inspect the backlog, requeue dead rows, purge, check the setup, run a relay.',
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
    .addOption(
      new Option('--pg-driver <driver>', 'Postgres driver (default: postgres.js when installed, else pg)')
        .choices(['postgres', 'pg'])
        .env('OUTBOXKIT_PG_DRIVER'),
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

  const dead = program.command('dead').description('dead rows: list, show, requeue, drop')
  const filters = (command: Command) =>
    command
      .option('--topic <topic>', 'only rows of this topic')
      .option('--key <key>', 'only rows of this key')
  filters(dead.command('list').description('list dead rows, oldest first'))
    .option('--limit <n>', 'rows to list (default 50)')
    .action(
      action(async (options: GlobalOptions & DeadFilter & { limit?: string }) => {
        const limit =
          options.limit === undefined ? 50 : parsePositiveInteger('--limit', options.limit, 100_000)
        return withDatabase(options, async (database) => {
          const result = await listDead(database, filterOf(options), limit)
          emit(options, result, () => {
            if (result.total === 0) return 'No dead rows.'
            const rows = table(
              ['ID', 'TOPIC', 'KEY', 'TYPE', 'ATTEMPTS', 'CREATED', 'LAST ERROR'],
              result.rows.map((r) => [
                r.id,
                r.topic,
                r.key,
                r.type,
                String(r.attempts),
                r.createdAt,
                clip(r.lastError ?? '', 60),
              ]),
            )
            const more =
              result.total > result.rows.length
                ? `\n(${result.total - result.rows.length} more; --limit)`
                : ''
            return `${rows}${more}`
          })
          return ExitCode.ok
        })
      }),
    )
  dead
    .command('show')
    .description('one dead row in full: columns, headers, payload')
    .argument('<id>', 'message id')
    .action(
      action(async (options: GlobalOptions, id: string) =>
        withDatabase(options, async (database) => {
          const row = await showDead(database, id)
          emit(options, row, () =>
            [
              `id         ${row.id}`,
              `topic      ${row.topic}`,
              `key        ${row.key}`,
              `type       ${row.type}`,
              `seq        ${row.seq}`,
              `attempts   ${row.attempts}`,
              `created    ${row.createdAt}`,
              `last error ${row.lastError ?? '-'}`,
              'headers',
              ...Object.entries(row.headers).map(([k, v]) => `  ${k}: ${v}`),
              `payload (${row.payloadEncoding})`,
              row.payload,
            ].join('\n'),
          )
          return ExitCode.ok
        }),
      ),
    )
  const change = (name: 'requeue' | 'drop', description: string, run: typeof requeueDead) =>
    filters(dead.command(name).description(description))
      .argument('[ids...]', 'message ids')
      .option('--all', 'every dead row (matching --topic/--key)')
      .option('--yes', name === 'drop' ? 'confirm dropping with --all' : 'accepted for symmetry with drop')
      .action(
        action(
          async (options: GlobalOptions & DeadFilter & { all?: boolean; yes?: boolean }, ids: string[]) => {
            if (ids.length > 0 && options.all) {
              throw new CliError(ExitCode.usage, 'bad_flag', `dead ${name}: give ids or --all, not both.`)
            }
            if (ids.length === 0 && !options.all) {
              throw new CliError(
                ExitCode.usage,
                'bad_flag',
                `dead ${name}: give the ids of dead rows, or --all.`,
              )
            }
            if (name === 'drop' && options.all && !options.yes) {
              throw new CliError(
                ExitCode.usage,
                'confirm',
                'dead drop --all deletes every matching dead row for good: add --yes to confirm.',
              )
            }
            return withDatabase(options, async (database) => {
              const result: DeadChange = await run(database, options.all ? filterOf(options) : ids)
              const done = (name === 'requeue' ? result.requeued : result.dropped) ?? []
              emit(options, result, () =>
                [
                  `${name === 'requeue' ? 'requeued' : 'dropped'} ${done.length}`,
                  ...done.map((id) => `  ${id}`),
                  ...(result.skipped.length > 0
                    ? [
                        `skipped ${result.skipped.length} (not dead or unknown)`,
                        ...result.skipped.map((id) => `  ${id}`),
                      ]
                    : []),
                ].join('\n'),
              )
              return result.skipped.length > 0 ? ExitCode.problems : ExitCode.ok
            })
          },
        ),
      )
  change('requeue', 'make dead rows pending again, each at the end of its key', requeueDead)
  change('drop', 'delete dead rows for good', dropDead)

  program
    .command('purge')
    .description(
      'delete published (and, with --include-dead, dead) outbox rows and inbox rows older than a horizon',
    )
    .requiredOption(
      '--older-than <duration>',
      'outbox rows created longer ago than this: 90s, 15m, 12h, 7d, 2w',
    )
    .option('--include-dead', 'also delete dead outbox rows older than the horizon')
    .option(
      '--include-pending',
      'also delete pending outbox rows older than the horizon: only for an outbox read by a log-tailing relay (docs/cli.md)',
    )
    .option(
      '--inbox-older-than <duration>',
      'inbox rows processed longer ago than this (default: --older-than)',
    )
    .option('--consumer <name>', "only this consumer's inbox rows")
    .option('--no-inbox', 'leave the inbox alone')
    .option('--batch <n>', 'rows per store purge call (default 10000)')
    .action(
      action(
        async (
          options: GlobalOptions & {
            olderThan: string
            includeDead?: boolean
            includePending?: boolean
            inboxOlderThan?: string
            consumer?: string
            inbox: boolean
            batch?: string
          },
        ) => {
          const olderThanMs = parseDuration('--older-than', options.olderThan)
          const inboxOlderThanMs = !options.inbox
            ? undefined
            : options.inboxOlderThan === undefined
              ? olderThanMs
              : parseDuration('--inbox-older-than', options.inboxOlderThan)
          const batch =
            options.batch === undefined ? 10_000 : parsePositiveInteger('--batch', options.batch, 1_000_000)
          return withDatabase(options, async (database) => {
            const result = await purge(database, {
              olderThanMs,
              includeDead: options.includeDead === true,
              includePending: options.includePending === true,
              inboxOlderThanMs,
              consumer: options.consumer,
              batch,
              progress: process.stderr.isTTY === true && !options.json,
            })
            emit(options, result, () =>
              [
                `outbox: purged ${result.outbox.purged} ${purgedKinds(result.outbox)} rows older than ${formatDuration(result.outbox.olderThanMs)}`,
                result.inbox
                  ? `inbox: purged ${result.inbox.purged} rows older than ${formatDuration(result.inbox.olderThanMs)}${result.inbox.consumer ? ` of ${result.inbox.consumer}` : ''}`
                  : 'inbox: left alone',
              ].join('\n'),
            )
            return ExitCode.ok
          })
        },
      ),
    )

  const feed = program
    .command('feed')
    .description('the database objects of a log-tailing relay: create or drop them (docs/relay.md)')
  const feedCommand = (name: 'create' | 'drop', description: string, run: typeof createFeed) =>
    feed
      .command(name)
      .description(description)
      .option('--slot <name>', 'Postgres: the replication slot (1–63 lower-case letters, digits, _)')
      .option('--publication <name>', "Postgres: the publication (default: the slot's name)")
      .option(
        '--no-table',
        "Postgres: a feed of logical decoding messages only (the store's messagePrefix): the publication covers no table",
      )
      .option(
        '--feed <name>',
        'MySQL/MariaDB: the feed name, feedName of createMysqlChangeFeed (default: default)',
      )
      .option('--dry-run', 'print the SQL and run nothing')
      .action(
        action(async (options: GlobalOptions & FeedFlags) =>
          withDatabase(options, async (database) => {
            const result = await run(database, feedNames(database, options), options.dryRun === true)
            emit(options, result, () => formatFeedChange(result, name === 'create' ? 'created' : 'dropped'))
            return ExitCode.ok
          }),
        ),
      )
  feedCommand(
    'create',
    'create the publication, the replication slot and its marker (Postgres) or the position table (MySQL)',
    createFeed,
  )
  feedCommand(
    'drop',
    'drop the slot, its marker and the publication (Postgres) or the stored position (MySQL)',
    dropFeed,
  )

  program
    .command('doctor')
    .description(
      'check the database, the tables, the broker and the topic settings; say how to fix what is wrong',
    )
    .option('--brokers <list>', 'Kafka bootstrap brokers, host:port,... (default: $KAFKA_BROKERS)')
    .option(
      '--topic <topic>',
      'a topic to check (repeatable; default: the topics in the outbox)',
      collect,
      [],
    )
    .option('--max-record-bytes <n>', "the relay's maxRecordBytes (default 1000000, the Kafka transport's)")
    .action(
      action(
        async (options: GlobalOptions & { brokers?: string; topic: string[]; maxRecordBytes?: string }) => {
          const maxRecordBytes =
            options.maxRecordBytes === undefined
              ? 1_000_000
              : parsePositiveInteger('--max-record-bytes', options.maxRecordBytes)
          const { report, exitCode } = await doctor({ ...options, topics: options.topic, maxRecordBytes })
          emit(options, report, () => formatDoctor(report))
          return exitCode
        },
      ),
    )

  program
    .command('relay')
    .description('run a relay (outbox → Kafka) until SIGTERM or SIGINT, then stop cleanly')
    .option('--brokers <list>', 'Kafka bootstrap brokers, host:port,... (default: $KAFKA_BROKERS)')
    .option('--client-id <id>', 'Kafka client id (default outboxkit-relay)')
    .addOption(
      new Option('--ownership <mode>', 'how relays share the table (default rows)').choices([
        'rows',
        'shards',
      ]),
    )
    .option(
      '--relay-id <id>',
      'this relay in the registry of relays (ownership shards; default relay-<uuid>)',
    )
    .option('--batch-size <n>', 'records per claim and publish (default 500)')
    .option('--poll-interval <duration>', 'how often to look for new records when idle (default 250ms)')
    .option('--lease <duration>', 'claim or shard lease, database clock (default 30s)')
    .option('--max-attempts <n>', 'attempts before a record is dead (default 10)')
    .option('--dead-letter-topic <topic>', 'also publish dead records to this topic')
    .option('--max-record-bytes <n>', 'largest record sent (default 1000000)')
    .option('--health-port <port>', 'serve GET /livez and /readyz on this port (0: any free port)')
    .option('--health-host <host>', 'address of the health endpoint (default 127.0.0.1)')
    .option('--retain <duration>', 'also run retention: delete published rows created longer ago than this')
    .option('--retain-dead <duration>', 'with --retain: also delete dead rows created longer ago than this')
    .option('--retention-interval <duration>', 'time between retention passes (default 10m)')
    .option('--shutdown-timeout <duration>', 'longest wait for a clean stop after a signal (default 30s)')
    .option(
      '--slot <name>',
      'log mode, Postgres: tail this logical replication slot instead of polling the table',
    )
    .option('--publication <name>', "log mode, Postgres: the slot's publication (default: the slot's name)")
    .option(
      '--message-prefix <prefix>',
      "log mode, Postgres: read the table-less mode's logical decoding messages",
    )
    .option('--server-id <n>', 'log mode, MySQL/MariaDB: tail the binlog as a replica with this server id')
    .option(
      '--feed <name>',
      'log mode, MySQL/MariaDB: the feed name, for its stored position (default: default)',
    )
    .addOption(
      new Option('--first-open <where>', "log mode, MySQL/MariaDB: where a feed's first open starts").choices(
        ['pending-rows', 'log-end'],
      ),
    )
    .option('--max-lag <bytes>', 'log mode: warn when the feed is more than this many bytes of log behind')
    .action(
      action(
        async (
          options: GlobalOptions & {
            brokers?: string
            clientId?: string
            ownership?: 'rows' | 'shards'
            relayId?: string
            batchSize?: string
            pollInterval?: string
            lease?: string
            maxAttempts?: string
            deadLetterTopic?: string
            maxRecordBytes?: string
            healthPort?: string
            healthHost?: string
            retain?: string
            retainDead?: string
            retentionInterval?: string
            shutdownTimeout?: string
            slot?: string
            publication?: string
            messagePrefix?: string
            serverId?: string
            feed?: string
            firstOpen?: 'pending-rows' | 'log-end'
            maxLag?: string
          },
        ) => {
          const brokers = (options.brokers ?? process.env['KAFKA_BROKERS'] ?? '')
            .split(',')
            .map((b) => b.trim())
            .filter(Boolean)
          const request = {
            brokers,
            clientId: options.clientId ?? 'outboxkit-relay',
            ownership: options.ownership ?? 'rows',
            relayId: options.relayId,
            batchSize:
              options.batchSize === undefined
                ? undefined
                : parsePositiveInteger('--batch-size', options.batchSize, 10_000),
            pollIntervalMs:
              options.pollInterval === undefined
                ? undefined
                : parseDuration('--poll-interval', options.pollInterval),
            leaseMs: options.lease === undefined ? undefined : parseDuration('--lease', options.lease),
            maxAttempts:
              options.maxAttempts === undefined
                ? undefined
                : parsePositiveInteger('--max-attempts', options.maxAttempts),
            deadLetterTopic: options.deadLetterTopic,
            maxRecordBytes:
              options.maxRecordBytes === undefined
                ? undefined
                : parsePositiveInteger('--max-record-bytes', options.maxRecordBytes),
            healthPort:
              options.healthPort === undefined ? undefined : parsePort('--health-port', options.healthPort),
            healthHost: options.healthHost,
            retainMs: options.retain === undefined ? undefined : parseDuration('--retain', options.retain),
            retainDeadMs:
              options.retainDead === undefined
                ? undefined
                : parseDuration('--retain-dead', options.retainDead),
            retentionIntervalMs:
              options.retentionInterval === undefined
                ? undefined
                : parseDuration('--retention-interval', options.retentionInterval),
            shutdownTimeoutMs:
              options.shutdownTimeout === undefined
                ? undefined
                : parseDuration('--shutdown-timeout', options.shutdownTimeout),
            log: logMode(options),
            databaseUrl: options.databaseUrl ?? process.env['DATABASE_URL'],
            json: options.json === true,
          } as const
          const { runRelay } = await loadRelay()
          return withDatabase(options, (database) => runRelay(database, request))
        },
      ),
    )

  return program
}

/** The relay's bundle (dist/cli-relay.js), apart so that only `relay` needs kafkajs. */
const RELAY = './cli-relay.js'

async function loadRelay(): Promise<typeof import('./relay.js')> {
  try {
    await import('kafkajs')
  } catch {
    throw new CliError(
      ExitCode.usage,
      'driver_missing',
      'outboxkit relay needs kafkajs: npm install kafkajs.',
    )
  }
  return (await import(RELAY)) as typeof import('./relay.js')
}

/** `published`, `published and dead`, `published, dead and pending`, ... */
function purgedKinds(outbox: { includeDead: boolean; includePending: boolean }): string {
  const kinds = [
    'published',
    ...(outbox.includeDead ? ['dead'] : []),
    ...(outbox.includePending ? ['pending'] : []),
  ]
  return kinds.length === 1 ? kinds[0]! : `${kinds.slice(0, -1).join(', ')} and ${kinds.at(-1)}`
}

interface FeedFlags {
  slot?: string
  publication?: string
  /** false with --no-table. */
  table?: boolean
  feed?: string
  dryRun?: boolean
}

/** `--slot`/`--publication` on Postgres, `--feed` on MySQL; the other dialect's flags are refused. */
function feedNames(database: Database, options: FeedFlags): FeedNames {
  if (database.dialect === 'postgres') {
    if (options.feed !== undefined) {
      throw new CliError(
        ExitCode.usage,
        'bad_flag',
        'feed: --feed is for MySQL/MariaDB; on Postgres give --slot.',
      )
    }
    return {
      ...(options.slot !== undefined ? { name: options.slot } : {}),
      ...(options.publication !== undefined ? { publication: options.publication } : {}),
      ...(options.table === false ? { table: false } : {}),
    }
  }
  if (options.slot !== undefined || options.publication !== undefined || options.table === false) {
    throw new CliError(
      ExitCode.usage,
      'bad_flag',
      'feed: --slot, --publication and --no-table are for Postgres; on MySQL/MariaDB give --feed.',
    )
  }
  return options.feed !== undefined ? { name: options.feed } : {}
}

/** The log mode's flags, or undefined for the polling relay; the other mode's flags are refused. */
function logMode(options: {
  slot?: string
  publication?: string
  messagePrefix?: string
  serverId?: string
  feed?: string
  firstOpen?: 'pending-rows' | 'log-end'
  maxLag?: string
  ownership?: string
  relayId?: string
  lease?: string
}): LogModeRequest | undefined {
  const postgres = options.slot !== undefined
  const mysql = options.serverId !== undefined
  const pgOnly = options.publication !== undefined || options.messagePrefix !== undefined
  const mysqlOnly = options.feed !== undefined || options.firstOpen !== undefined
  if (!postgres && !mysql) {
    if (pgOnly || mysqlOnly || options.maxLag !== undefined) {
      throw new CliError(
        ExitCode.usage,
        'bad_flag',
        'relay: --publication, --message-prefix, --feed, --first-open and --max-lag are for the log mode: give --slot (Postgres) or --server-id (MySQL/MariaDB).',
      )
    }
    return undefined
  }
  if ((postgres && (mysql || mysqlOnly)) || (mysql && pgOnly)) {
    throw new CliError(
      ExitCode.usage,
      'bad_flag',
      'relay: --slot, --publication and --message-prefix are for Postgres; --server-id, --feed and --first-open for MySQL/MariaDB.',
    )
  }
  if (options.ownership !== undefined || options.relayId !== undefined || options.lease !== undefined) {
    throw new CliError(
      ExitCode.usage,
      'bad_flag',
      'relay: --ownership, --relay-id and --lease are for the polling relay; one log relay reads a feed at a time, others wait as standbys.',
    )
  }
  return {
    ...(postgres ? { slot: options.slot! } : {}),
    ...(options.publication !== undefined ? { publication: options.publication } : {}),
    ...(options.messagePrefix !== undefined ? { messagePrefix: options.messagePrefix } : {}),
    ...(mysql ? { serverId: parsePositiveInteger('--server-id', options.serverId!, 4_294_967_295) } : {}),
    ...(options.feed !== undefined ? { feedName: options.feed } : {}),
    ...(options.firstOpen !== undefined ? { firstOpen: options.firstOpen } : {}),
    ...(options.maxLag !== undefined
      ? { maxLagBytes: parsePositiveInteger('--max-lag', options.maxLag) }
      : {}),
  }
}

function parsePort(flag: string, value: string): number {
  const port = Number(value)
  if (!/^\d+$/.test(value) || port > 65_535) {
    throw new CliError(ExitCode.usage, 'bad_flag', `${flag} must be a port from 0 to 65535, not ${value}.`)
  }
  return port
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value]
}

function filterOf(options: DeadFilter): DeadFilter {
  const filter: DeadFilter = {}
  if (options.topic !== undefined) filter.topic = options.topic
  if (options.key !== undefined) filter.key = options.key
  return filter
}

function clip(text: string, width: number): string {
  const line = text.replace(/\s+/g, ' ')
  return line.length <= width ? line : `${line.slice(0, width - 1)}…`
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
