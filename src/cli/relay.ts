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
import { Relay, type RelayOptions, type RelayOwnership } from '../core/relay.js'
import { Retention } from '../core/retention.js'
import { type HealthServer, serveHealth } from '../process/health-server.js'
import { runUntilSignal } from '../process/index.js'
import type { Database } from './connection.js'
import { CliError, ExitCode } from './exit-codes.js'
import { requireOutbox } from './status.js'

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
  readonly json: boolean
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
  const options: RelayOptions<unknown> = {
    store: store as RelayOptions<unknown>['store'],
    transport,
    ownership: request.ownership,
    // The command writes every event itself (the JSON log and stderr below).
    logger: false,
  }
  if (request.relayId !== undefined) options.relayId = request.relayId
  if (request.batchSize !== undefined) options.batchSize = request.batchSize
  if (request.pollIntervalMs !== undefined) options.pollIntervalMs = request.pollIntervalMs
  if (request.leaseMs !== undefined) options.leaseMs = request.leaseMs
  if (request.maxAttempts !== undefined) options.maxAttempts = request.maxAttempts
  if (request.deadLetterTopic !== undefined) options.deadLetter = { topic: request.deadLetterTopic }
  let relay: Relay<unknown>
  try {
    relay = new Relay(options)
  } catch (error) {
    await transport.close().catch(() => {})
    throw new CliError(ExitCode.usage, 'bad_flag', describeError(error))
  }
  relay.on('published', (e) => log('published', { count: e.count, durationMs: Math.round(e.durationMs) }))
  relay.on('failed', (e) => log('failed', { ids: e.ids, error: e.error, retryInMs: e.retryInMs }))
  relay.on('deadLettered', (e) => log('deadLettered', { ids: e.ids, error: e.error }))
  relay.on('deadLetterFailed', (e) => log('deadLetterFailed', { ids: e.ids, error: e.error }))
  relay.on('leaseLost', (e) => log('leaseLost', { ids: e.ids }))
  relay.on('shardsChanged', (e) => log('shardsChanged', { ...e }))
  relay.on('error', (e) => {
    log('error', { error: describeError(e.error), retryInMs: e.retryInMs })
    process.stderr.write(`outboxkit relay: ${describeError(e.error)}\n`)
  })
  let retention: Retention | undefined
  try {
    if (request.retainMs !== undefined) {
      retention = new Retention({
        outbox: {
          store,
          publishedOlderThanMs: request.retainMs,
          ...(request.retainDeadMs === undefined ? {} : { deadOlderThanMs: request.retainDeadMs }),
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
          relayId: relay.relayId,
          ownership: request.ownership,
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
  log('stopped', { relayId: relay.relayId, clean })
  return clean ? ExitCode.ok : ExitCode.problems
}
