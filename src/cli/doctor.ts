/**
 * `outboxkit doctor`: checks the database, the tables and their migration version, the broker,
 * and each topic's settings against what the relay sends; says what is wrong and how to fix it.
 */
import { sql } from 'kysely'
import { type Database, type DatabaseOptions, describe, openDatabase } from './connection.js'
import { CliError, ExitCode, isCliError } from './exit-codes.js'
import { type FeedStatus, feedStatus } from './feeds.js'
import { formatBytes } from './output.js'
import { existingTables, schemaState } from './schema-state.js'

export type CheckStatus = 'ok' | 'warn' | 'fail' | 'skip'

export interface Check {
  readonly name: string
  readonly status: CheckStatus
  readonly message: string
  /** What to do about it, when it is not ok. */
  readonly fix?: string
}

export interface DoctorRequest extends DatabaseOptions {
  brokers?: string
  topics: readonly string[]
  /** The relay's `maxRecordBytes` (the Kafka transport's default: 1 000 000). */
  maxRecordBytes: number
}

export interface DoctorReport {
  readonly ok: boolean
  readonly checks: readonly Check[]
}

/** Kafka's default `max.message.bytes` (1 MiB plus record batch overhead). */
const KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
/** Topics read from the outbox when none are named: among the newest rows and the pending ones. */
const RECENT_ROWS = 10_000

interface KafkaAdmin {
  connect(): Promise<void>
  disconnect(): Promise<void>
  describeCluster(): Promise<{
    brokers: { nodeId: number; host: string; port: number }[]
    controller: number | null
  }>
  fetchTopicMetadata(options: { topics: string[] }): Promise<{
    topics: { name: string; partitions: { partitionId: number; replicas: number[]; isr: number[] }[] }[]
  }>
  listTopics(): Promise<string[]>
  describeConfigs(options: {
    resources: { type: number; name: string; configNames?: string[] }[]
    includeSynonyms: boolean
  }): Promise<{
    resources: { resourceName: string; configEntries: { configName: string; configValue: string }[] }[]
  }>
}

interface KafkaJsModule {
  Kafka: new (config: Record<string, unknown>) => { admin(): KafkaAdmin }
  logLevel: { NOTHING: number }
  ConfigResourceTypes: { TOPIC: number }
}

export async function doctor(request: DoctorRequest): Promise<{ report: DoctorReport; exitCode: number }> {
  const checks: Check[] = []
  let exitCode: number = ExitCode.ok
  const worse = (code: number) => {
    if (exitCode === ExitCode.ok || (exitCode === ExitCode.problems && code !== ExitCode.problems))
      exitCode = code
  }
  let database: Database | undefined
  let topics = [...request.topics]
  try {
    database = await openDatabase(request)
    const version = await sql<{ v: string }>`SELECT version() AS v`.execute(database.db)
    checks.push({
      name: 'database',
      status: 'ok',
      message: `reachable (${
        database.dialect === 'mysql'
          ? `MySQL/MariaDB ${String(version.rows[0]?.v ?? '')}`
          : String(version.rows[0]?.v ?? '')
              .split(' ')
              .slice(0, 2)
              .join(' ')
      }), schema ${database.schemaName}`,
    })
    const state = await schemaState(database)
    const t = database.tables
    const missing = [
      state.outbox ? undefined : t.outboxName,
      state.inbox ? undefined : t.inboxName,
      state.shards ? undefined : `${t.outboxName}_shards, ${t.outboxName}_relays`,
    ].filter((n) => n !== undefined)
    if (missing.length > 0) {
      checks.push({
        name: 'tables',
        status: 'fail',
        message: `missing in ${database.schemaName}: ${missing.join(', ')}`,
        fix: 'run outboxkit migrate (outboxkit migrate --dry-run prints the SQL first)',
      })
      worse(ExitCode.tablesMissing)
    } else {
      checks.push({
        name: 'tables',
        status: 'ok',
        message: `${t.outboxName}, ${t.inboxName} and the shard tables exist`,
      })
    }
    if (state.outbox && state.pending.length > 0) {
      checks.push({
        name: 'migrations',
        status: 'fail',
        message: `not at the current version: ${state.pending.join(', ')} ${state.source === 'migrate' ? 'not yet run' : 'missing from the layout'}`,
        fix: 'run outboxkit migrate (the shards migration rewrites the outbox table: purge first or run it in a quiet window)',
      })
      worse(ExitCode.tablesMissing)
    } else if (state.outbox) {
      checks.push({
        name: 'migrations',
        status: 'ok',
        message:
          state.source === 'migrate'
            ? 'at the current version (recorded by outboxkit migrate)'
            : 'at the current layout (tables made without outboxkit migrate)',
      })
    }
    if (state.outbox) {
      for (const feed of (await feedStatus(database, await existingTables(database))) ?? []) {
        checks.push(feedCheck(feed))
        if (feed.state === 'lost') worse(ExitCode.problems)
      }
    }
    if (topics.length === 0 && state.outbox) topics = await outboxTopics(database)
  } catch (error) {
    if (!isCliError(error) || error.exitCode === ExitCode.failed) throw error
    checks.push({
      name: 'database',
      status: 'fail',
      message: error.message,
      fix:
        error.exitCode === ExitCode.databaseUnreachable
          ? 'start the database or correct --database-url / DATABASE_URL'
          : 'correct the flags',
    })
    worse(error.exitCode)
  } finally {
    await database?.close().catch(() => {})
  }
  await brokerChecks(request, topics, checks, worse)
  return { report: { ok: !checks.some((c) => c.status === 'fail'), checks }, exitCode }
}

/** A log-tailing feed: lost is a failure (the relay stops on FEED_LOST); otherwise the log it holds back. */
function feedCheck(feed: FeedStatus): Check {
  const name = `feed ${feed.name}`
  const behind = feed.lagBytes === null ? '' : `, ${formatBytes(feed.lagBytes)} of log behind`
  if (feed.state === 'lost') {
    return {
      name,
      status: 'fail',
      message:
        feed.kind === 'postgres-logical'
          ? `the replication slot ${feed.name} is gone or its WAL was removed (wal_status ${feed.walStatus ?? 'none'}): its relay stops with FEED_LOST`
          : `the binlog file of the stored position ${feed.confirmedPosition ?? ''} was purged: its relay cannot resume there`,
      fix: 'follow docs/relay.md (A dropped slot, recycled WAL): outboxkit feed drop, create it again, republish the pending rows with the polling relay',
    }
  }
  return { name, status: 'ok', message: `${feed.kind}, ${feed.state}${behind}` }
}

/** Topics of the pending rows and of the newest rows. */
async function outboxTopics(database: Database): Promise<string[]> {
  const { outbox, columns: c } = database.tables
  const rows = await sql<{ topic: string }>`SELECT DISTINCT topic FROM (
      (SELECT ${sql.raw(c.topic)} AS topic FROM ${sql.raw(outbox)} ORDER BY ${sql.raw(c.seq)} DESC LIMIT ${RECENT_ROWS})
      UNION (SELECT ${sql.raw(c.topic)} AS topic FROM ${sql.raw(outbox)} WHERE ${sql.raw(c.status)} = 0 LIMIT ${RECENT_ROWS})
    ) recent ORDER BY topic`.execute(database.db)
  return rows.rows.map((r) => String(r.topic))
}

async function brokerChecks(
  request: DoctorRequest,
  topics: readonly string[],
  checks: Check[],
  worse: (code: number) => void,
): Promise<void> {
  const brokers = (request.brokers ?? process.env['KAFKA_BROKERS'] ?? '')
    .split(',')
    .map((b) => b.trim())
    .filter(Boolean)
  if (brokers.length === 0) {
    checks.push({
      name: 'broker',
      status: 'skip',
      message: 'no broker given',
      fix: 'pass --brokers host:9092 (or set KAFKA_BROKERS) to check the broker and the topics',
    })
    return
  }
  let kafkajs: KafkaJsModule
  try {
    kafkajs = (await import('kafkajs')) as unknown as KafkaJsModule
  } catch {
    throw new CliError(
      ExitCode.usage,
      'driver_missing',
      'Checking the broker needs kafkajs: npm install kafkajs.',
    )
  }
  const Kafka = kafkajs.Kafka ?? (kafkajs as unknown as { default: KafkaJsModule }).default.Kafka
  const admin = new Kafka({
    clientId: 'outboxkit-doctor',
    brokers,
    logLevel: 0,
    connectionTimeout: 3_000,
    requestTimeout: 10_000,
    retry: { retries: 1, initialRetryTime: 200 },
  }).admin()
  try {
    await admin.connect()
    const cluster = await admin.describeCluster()
    checks.push({
      name: 'broker',
      status: 'ok',
      message: `reachable at ${brokers.join(',')}: ${cluster.brokers.length} broker(s)`,
    })
    const existing = new Set(await admin.listTopics())
    for (const topic of topics)
      await topicCheck(admin, topic, existing.has(topic), cluster.brokers.length, request, checks, worse)
    if (topics.length === 0) {
      checks.push({
        name: 'topics',
        status: 'skip',
        message: 'no topic to check: none named with --topic, none found in the outbox',
        fix: 'name topics with --topic to check their settings',
      })
    }
  } catch (error) {
    checks.push({
      name: 'broker',
      status: 'fail',
      message: `cannot reach the broker at ${brokers.join(',')}: ${describe(error)}`,
      fix: 'start the broker or correct --brokers / KAFKA_BROKERS (host:port of any broker, comma separated)',
    })
    worse(ExitCode.brokerUnreachable)
  } finally {
    await admin.disconnect().catch(() => {})
  }
}

async function topicCheck(
  admin: KafkaAdmin,
  topic: string,
  exists: boolean,
  brokerCount: number,
  request: DoctorRequest,
  checks: Check[],
  worse: (code: number) => void,
): Promise<void> {
  const name = `topic ${topic}`
  if (!exists) {
    checks.push({
      name,
      status: 'warn',
      message: 'does not exist: the relay can publish only if the broker creates topics on first use',
      fix: `create it: kafka-topics.sh --create --topic ${topic} --partitions <n> --replication-factor <n>`,
    })
    return
  }
  const config = await admin.describeConfigs({
    resources: [{ type: 2, name: topic, configNames: ['max.message.bytes', 'min.insync.replicas'] }],
    includeSynonyms: false,
  })
  const entries = new Map(config.resources[0]?.configEntries.map((e) => [e.configName, e.configValue]) ?? [])
  const maxMessageBytes = Number(entries.get('max.message.bytes') ?? KAFKA_DEFAULT_MAX_MESSAGE_BYTES)
  const minIsr = Number(entries.get('min.insync.replicas') ?? 1)
  const metadata = await admin.fetchTopicMetadata({ topics: [topic] })
  const partitions = metadata.topics[0]?.partitions ?? []
  const replicas = Math.min(...partitions.map((p) => p.replicas.length))
  const problems: Check[] = []
  if (maxMessageBytes < request.maxRecordBytes) {
    problems.push({
      name,
      status: 'fail',
      message: `max.message.bytes is ${maxMessageBytes}, below the relay's record limit (maxRecordBytes ${request.maxRecordBytes}): records between the two are refused by the broker and dead-lettered`,
      fix: `raise it: kafka-configs.sh --alter --entity-type topics --entity-name ${topic} --add-config max.message.bytes=${request.maxRecordBytes + 1024} (or lower maxRecordBytes and the Outbox's maxPayloadBytes to fit)`,
    })
  }
  if (partitions.length > 0 && minIsr > replicas) {
    problems.push({
      name,
      status: 'fail',
      message: `min.insync.replicas is ${minIsr} but partitions have ${replicas} replica(s): every acks=all send is refused (NOT_ENOUGH_REPLICAS)`,
      fix: `lower it: kafka-configs.sh --alter --entity-type topics --entity-name ${topic} --add-config min.insync.replicas=${replicas}`,
    })
  }
  if (problems.length > 0) {
    checks.push(...problems)
    worse(ExitCode.problems)
    return
  }
  checks.push({
    name,
    status: 'ok',
    message: `${partitions.length} partition(s), ${replicas} of ${brokerCount} broker(s) per partition, max.message.bytes ${maxMessageBytes} ≥ maxRecordBytes ${request.maxRecordBytes}`,
  })
}

export function formatDoctor(report: DoctorReport): string {
  const mark: Record<CheckStatus, string> = { ok: 'ok  ', warn: 'warn', fail: 'FAIL', skip: 'skip' }
  const lines = report.checks.flatMap((c) => [
    `${mark[c.status]}  ${c.name}: ${c.message}`,
    ...(c.fix && c.status !== 'ok' ? [`      fix: ${c.fix}`] : []),
  ])
  lines.push(report.ok ? 'No problem found.' : 'Problems found: see FAIL above.')
  return lines.join('\n')
}
