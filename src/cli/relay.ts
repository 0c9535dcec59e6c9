/**
 * `outboxkit relay`: runs a relay (src/core/relay.ts) on the Kysely store and the Kafka transport,
 * and retention when asked, through `runUntilSignal` until SIGTERM or SIGINT, then stops them
 * cleanly: nothing new is claimed, the batch being published is finished and marked, the producer
 * is closed, then the database pool. A second signal exits at once.
 */
import { createKafkaTransport } from '../adapters/kafka/kafka-transport.js'
import { createKyselyOutboxStore } from '../adapters/kysely/kysely-outbox-store.js'
import { describeError } from '../core/errors.js'
import type { LifecycleHealth } from '../core/lifecycle.js'
import { LogRelay, type LogRelayEvents, type LogRelayOptions } from '../core/log-relay.js'
import { Relay, type RelayEvents, type RelayOptions, type RelayOwnership } from '../core/relay.js'

type SharedEvent = 'published' | 'failed' | 'deadLettered' | 'deadLetterFailed' | 'error'

import { Retention } from '../core/retention.js'
import { type HealthServer, serveHealth } from '../process/health-server.js'
import { runUntilSignal } from '../process/index.js'
import type { Database } from './connection.js'
import { CliError, ExitCode } from './exit-codes.js'
import type { FeedRequest } from './relay-feeds.js'
import { requireOutbox } from './status.js'

/** The change feeds' bundle (dist/cli-relay-feeds.js), loaded only for the log mode. */
const FEEDS = './cli-relay-feeds.js'

/** Log mode: tail the database's log instead of polling the table (docs/cli.md). */
export interface LogModeRequest extends Omit<FeedRequest, 'url' | 'schema' | 'outboxTable' | 'layout'> {
  /** Warn when the feed's log lag passes this many bytes. */
  readonly maxLagBytes?: number
}

export interface RelayRequest {
  readonly brokers: readonly string[]
  readonly clientId: string
  readonly ownership: RelayOwnership
  readonly relayId: string | undefined
  readonly batchSize: number | undefined
  readonly pollIntervalMs: number | undefined
  readonly leaseMs: number | undefined
  readonly maxAttempts: number | undefined
  readonly deadLetterTopic: string | undefined
  readonly maxRecordBytes: number | undefined
  /** Serve /livez and /readyz on this port (0: any free one, printed in the `health` event). */
  readonly healthPort: number | undefined
  readonly healthHost: string | undefined
  /** Delete published rows created longer ago than this, in ms (retention on). */
  readonly retainMs: number | undefined
  /** With retention: delete dead rows created longer ago than this, in ms. */
  readonly retainDeadMs: number | undefined
  readonly retentionIntervalMs: number | undefined
  /** How long the shutdown may take before the command gives up waiting, ms. */
  readonly shutdownTimeoutMs: number | undefined
  /** Set: run a `LogRelay` on this feed instead of the polling relay. */
  readonly log: LogModeRequest | undefined
  /** The database URL, for the feed's own connection in log mode. */
  readonly databaseUrl: string | undefined
  readonly json: boolean
}

/** Loads the feeds' bundle once its driver is known to be installed. */
async function loadFeeds(postgres: boolean): Promise<typeof import('./relay-feeds.js')> {
  const driver = postgres ? 'pg-logical-replication' : '@vlasky/zongji'
  try {
    await import(driver)
  } catch {
    throw new CliError(
      ExitCode.usage,
      'driver_missing',
      `outboxkit relay ${postgres ? '--slot' : '--server-id'} needs ${driver}: npm install ${driver}${postgres ? ' pg' : ' mysql2'}.`,
    )
  }
  return (await import(FEEDS)) as typeof import('./relay-feeds.js')
}

/** One line per event: JSON with `--json`, text otherwise, on stdout (errors on stderr as well). */
function logger(json: boolean) {
  return (event: string, fields: Record<string, unknown>) => {
    const at = new Date().toISOString()
    if (json) {
      process.stdout.write(`${JSON.stringify({ at, event, ...fields })}\n`)
      return
    }
    const text = Object.entries(fields)
      .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
      .join(' ')
    process.stdout.write(`${at} ${event} ${text}\n`)
  }
}

export async function runRelay(database: Database, request: RelayRequest): Promise<number> {
  if (request.brokers.length === 0) {
    throw new CliError(
      ExitCode.usage,
      'no_brokers',
      'No broker: pass --brokers host:9092,... or set KAFKA_BROKERS.',
    )
  }
  await requireOutbox(database)
  const log = logger(request.json)
  const store = createKyselyOutboxStore({ db: database.db, ...database.options })
  const transport = createKafkaTransport({
    brokers: [...request.brokers],
    clientId: request.clientId,
    ...(request.maxRecordBytes === undefined ? {} : { maxRecordBytes: request.maxRecordBytes }),
  })
  type AnyRelay = Relay<unknown> | LogRelay
  let relay: AnyRelay
  try {
    relay = request.log
      ? await logRelay(database, request, request.log, transport)
      : pollingRelay(store, request, transport)
  } catch (error) {
    await transport.close().catch(() => {})
    if (error instanceof CliError) throw error
    throw new CliError(ExitCode.usage, 'bad_flag', describeError(error))
  }
  // The events both relays emit, with the same fields.
  const on = <E extends SharedEvent>(event: E, listener: (e: RelayEvents[E] | LogRelayEvents[E]) => void) =>
    relay instanceof LogRelay ? relay.on(event, listener) : relay.on(event, listener)
  on('published', (e) => log('published', { count: e.count, durationMs: Math.round(e.durationMs) }))
  on('failed', (e) => log('failed', { ids: e.ids, error: e.error, retryInMs: e.retryInMs }))
  on('deadLettered', (e) => log('deadLettered', { ids: e.ids, error: e.error }))
  on('deadLetterFailed', (e) => log('deadLetterFailed', { ids: e.ids, error: e.error }))
  on('error', (e) => {
    log('error', { error: describeError(e.error), retryInMs: e.retryInMs })
    process.stderr.write(`outboxkit relay: ${describeError(e.error)}\n`)
  })
  if (relay instanceof LogRelay) {
    relay.on('opened', (e) => log('opened', { feed: e.feed }))
    relay.on('standby', (e) => log('standby', { retryInMs: e.retryInMs }))
    relay.on('confirmed', (e) => log('confirmed', { position: e.position, records: e.records }))
    relay.on('lagExceeded', (e) => log('lagExceeded', { ...e }))
  } else {
    relay.on('leaseLost', (e) => log('leaseLost', { ids: e.ids }))
    relay.on('shardsChanged', (e) => log('shardsChanged', { ...e }))
  }
  let retention: Retention | undefined
  try {
    if (request.retainMs !== undefined) {
      retention = new Retention({
        outbox: {
          store,
          publishedOlderThanMs: request.retainMs,
          ...(request.retainDeadMs === undefined ? {} : { deadOlderThanMs: request.retainDeadMs }),
          // The log relay never marks rows published: they go by the same horizon (docs/cli.md).
          ...(request.log ? { pendingOlderThanMs: request.retainMs } : {}),
        },
        ...(request.retentionIntervalMs === undefined ? {} : { intervalMs: request.retentionIntervalMs }),
        logger: false,
      })
      retention.on('purged', (e) => log('purged', { ...e }))
    } else if (request.retainDeadMs !== undefined) {
      throw new Error('--retain-dead needs --retain (the horizon of published rows).')
    }
  } catch (error) {
    await transport.close().catch(() => {})
    throw new CliError(ExitCode.usage, 'bad_flag', describeError(error))
  }
  const health = (): LifecycleHealth => ({
    'relay[0]': relay.health(),
    ...(retention ? { 'retention[0]': retention.health() } : {}),
  })
  let server: HealthServer | undefined
  if (request.healthPort !== undefined) {
    try {
      server = await serveHealth({
        health,
        port: request.healthPort,
        ...(request.healthHost === undefined ? {} : { host: request.healthHost }),
      })
    } catch (error) {
      await transport.close().catch(() => {})
      throw new CliError(ExitCode.usage, 'bad_flag', `--health-port: ${describeError(error)}`)
    }
    log('health', { port: server.port, livez: '/livez', readyz: '/readyz' })
  }
  const forceOnSecondSignal = () => {
    const force = (signal: string) => () => {
      log('forced', { signal })
      process.stderr.write(`outboxkit relay: ${signal} again, exiting without waiting\n`)
      process.exit(ExitCode.problems)
    }
    process.once('SIGTERM', force('SIGTERM'))
    process.once('SIGINT', force('SIGINT'))
  }
  let clean: boolean
  try {
    const result = await runUntilSignal({
      relays: [relay],
      ...(retention ? { retention } : {}),
      close: [transport],
      ...(request.shutdownTimeoutMs === undefined ? {} : { timeoutMs: request.shutdownTimeoutMs }),
      logger: false,
      onStarted: () =>
        log('started', {
          ...(relay instanceof Relay
            ? { relayId: relay.relayId, ownership: request.ownership }
            : { mode: 'log', feed: request.log?.slot ?? request.log?.feedName ?? 'default' }),
          table: `${database.schemaName}.${database.tables.outboxName}`,
          brokers: request.brokers.join(','),
          retention: retention !== undefined,
        }),
      onSignal: (signal) => {
        forceOnSecondSignal()
        log('stopping', { signal })
      },
    })
    clean = result.clean
    if (result.failure) {
      // The relay stopped by itself (fenced, exactly-once unprovable): exit 1 so that it is restarted.
      log('stoppedByItself', { name: result.failure.name, error: describeError(result.failure.error) })
    } else if (!clean) {
      const what = [...result.timedOut, ...result.failed.map((f) => `${f.name} (${describeError(f.error)})`)]
      log('unclean', { timedOut: result.timedOut, failed: result.failed.map((f) => f.name) })
      process.stderr.write(`outboxkit relay: the shutdown was not clean: ${what.join(', ')}\n`)
    }
  } finally {
    await transport.close().catch(() => {})
    await server?.close()
  }
  log('stopped', { ...(relay instanceof Relay ? { relayId: relay.relayId } : {}), clean })
  return clean ? ExitCode.ok : ExitCode.problems
}

function pollingRelay(
  store: ReturnType<typeof createKyselyOutboxStore>,
  request: RelayRequest,
  transport: ReturnType<typeof createKafkaTransport>,
): Relay<unknown> {
  const options: RelayOptions<unknown> = {
    store: store as RelayOptions<unknown>['store'],
    transport,
    ownership: request.ownership,
    // The command writes every event itself (the JSON log and stderr).
    logger: false,
  }
  if (request.relayId !== undefined) options.relayId = request.relayId
  if (request.batchSize !== undefined) options.batchSize = request.batchSize
  if (request.pollIntervalMs !== undefined) options.pollIntervalMs = request.pollIntervalMs
  if (request.leaseMs !== undefined) options.leaseMs = request.leaseMs
  if (request.maxAttempts !== undefined) options.maxAttempts = request.maxAttempts
  if (request.deadLetterTopic !== undefined) options.deadLetter = { topic: request.deadLetterTopic }
  return new Relay(options)
}

async function logRelay(
  database: Database,
  request: RelayRequest,
  mode: LogModeRequest,
  transport: ReturnType<typeof createKafkaTransport>,
): Promise<LogRelay> {
  const postgres = mode.slot !== undefined
  if ((database.dialect === 'postgres') !== postgres) {
    throw new CliError(
      ExitCode.usage,
      'bad_flag',
      database.dialect === 'postgres'
        ? 'outboxkit relay: on Postgres the log mode takes --slot (a replication slot), not --server-id.'
        : 'outboxkit relay: on MySQL/MariaDB the log mode takes --server-id, not --slot.',
    )
  }
  if (request.databaseUrl === undefined) {
    throw new CliError(ExitCode.usage, 'no_database', 'The log mode needs --database-url or DATABASE_URL.')
  }
  const { createFeed } = await loadFeeds(postgres)
  const { maxLagBytes, ...feed } = mode
  const options: LogRelayOptions = {
    feed: createFeed({
      ...feed,
      url: request.databaseUrl,
      schema: database.schemaName,
      outboxTable: database.tables.outboxName,
      layout: database.tables.layout,
    }),
    transport,
    logger: false,
  }
  if (request.batchSize !== undefined) options.batchSize = request.batchSize
  if (request.pollIntervalMs !== undefined) options.pollIntervalMs = request.pollIntervalMs
  if (request.maxAttempts !== undefined) options.maxAttempts = request.maxAttempts
  if (request.deadLetterTopic !== undefined) options.deadLetter = { topic: request.deadLetterTopic }
  if (maxLagBytes !== undefined) options.maxLagBytes = maxLagBytes
  return new LogRelay(options)
}
