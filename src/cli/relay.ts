/**
 * `outboxkit relay`: runs a relay (src/core/relay.ts) on the Kysely store and the Kafka transport
 * until SIGTERM or SIGINT, then stops it cleanly: the batch being published is finished and
 * marked, nothing new is claimed, the producer is closed, then the database pool.
 */
import { createKafkaTransport } from '../adapters/kafka/kafka-transport.js'
import { createKyselyOutboxStore } from '../adapters/kysely/kysely-outbox-store.js'
import { describeError } from '../core/errors.js'
import { Relay, type RelayOptions, type RelayOwnership } from '../core/relay.js'
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
  let stop: (signal: string) => void = () => {}
  const stopped = new Promise<string>((resolve) => {
    stop = resolve
  })
  const onSigterm = () => stop('SIGTERM')
  const onSigint = () => stop('SIGINT')
  process.once('SIGTERM', onSigterm)
  process.once('SIGINT', onSigint)
  try {
    await relay.start()
    log('started', {
      relayId: relay.relayId,
      ownership: request.ownership,
      table: `${database.schemaName}.${database.tables.outboxName}`,
      brokers: request.brokers.join(','),
    })
    const signal = await stopped
    log('stopping', { signal })
    await relay.stop()
  } finally {
    process.off('SIGTERM', onSigterm)
    process.off('SIGINT', onSigint)
    await transport.close().catch(() => {})
  }
  log('stopped', { relayId: relay.relayId })
  return ExitCode.ok
}
