/**
 * M10 change data capture against Debezium: commit → handler latency and backlog drain of the
 * Postgres `LogRelay`, of the polling `Relay` woken by LISTEN/NOTIFY, and of real Debezium (Kafka
 * Connect standalone, the Postgres connector and its outbox event router, `poll.interval.ms=10`),
 * all on the same Postgres and broker in the same run, read by the same consumer.
 *
 * Latency: events written at a fixed rate (one business row and one event per transaction), the
 * clock started when the commit returned and stopped in the consumer's `eachMessage`.
 * Drain: a backlog written while the path is stopped (the log relay stopped, its slot kept; the
 * polling relay stopped; the Debezium connector paused through Connect's REST API), then started
 * (resumed); the clock runs from the first records in the topic until its high watermarks hold
 * every record, so start-up is left out. Debezium's streaming thread keeps reading the log into
 * its queue while the connector is paused, so its figure includes a head start. Goals (issue figures): log relay p99 ≤ ½ Debezium's, drain ≥ 2×.
 *
 * Needs Java and Maven for Debezium's jars (scripts/debezium); without them the measurement fails.
 */
import type { Consumer } from 'kafkajs'
import type { Transaction } from 'kysely'
import { createKafkaTransport } from '../src/adapters/kafka/index.js'
import {
  createKyselyOutboxStore,
  ensureOutboxSchema,
  type KyselyOutboxStore,
  postgresJsListener,
} from '../src/adapters/kysely/index.js'
import { createPostgresChangeFeed, dropPostgresFeed } from '../src/adapters/postgres-log/index.js'
import { LogRelay, Outbox, type OutboxMessageInput, Relay } from '../src/index.js'
import {
  connectorProperties,
  DebeziumWorker,
  debeziumRestPort,
  debeziumScript,
} from '../test/support/debezium.js'
import { type Context, type Figure, type MeasurementResult, ms, ofRounds, rate } from './lib/context.js'
import {
  type BenchDatabase,
  type BenchTables,
  listenConnection,
  openDatabase,
  POSTGRES_URL,
} from './lib/db.js'
import { freshTopic, PAYLOAD, testKafka, uniqueName } from './lib/kafka.js'
import { median, now, percentile, sleep } from './lib/stats.js'

const RATE = 200
const PARTITIONS = 3
const KEYS = 1_000
const BATCH = 500
const DEBEZIUM_TABLE = 'outbox_dbz'
const WAIT_MS = 120_000

type Path = 'log' | 'notify' | 'debezium'
const PATHS: readonly Path[] = ['log', 'notify', 'debezium']
const LABELS: Record<Path, string> = {
  log: 'LogRelay (logical replication)',
  notify: 'polling Relay, LISTEN/NOTIFY',
  debezium: 'Debezium, poll.interval.ms=10',
}

interface Writer {
  readonly database: BenchDatabase
  readonly store: KyselyOutboxStore<BenchTables>
  readonly outbox: Outbox<Transaction<BenchTables>>
}

/** Start and stop of a path's relay, for the drain. */
interface Runner {
  start(): Promise<void>
  stop(): Promise<void>
}

async function connectorState(name: string): Promise<string> {
  const response = await fetch(`http://127.0.0.1:${debeziumRestPort()}/connectors/${name}/status`)
  if (!response.ok) throw new Error(`M10: Connect status of ${name} answered ${response.status}`)
  const status = (await response.json()) as {
    connector: { state: string }
    tasks: { state: string; trace?: string }[]
  }
  const states = new Set([status.connector.state, ...status.tasks.map((t) => t.state)])
  const trace = status.tasks
    .find((t) => t.trace)
    ?.trace?.split('\n')
    .filter((line, i) => i === 0 || line.startsWith('Caused by'))
    .join('\n')
  return (states.size === 1 ? status.connector.state : [...states].join('/')) + (trace ? `\n${trace}` : '')
}

/** Pauses or resumes the connector and waits until it and its task say so. */
async function setConnector(name: string, action: 'pause' | 'resume'): Promise<void> {
  const response = await fetch(`http://127.0.0.1:${debeziumRestPort()}/connectors/${name}/${action}`, {
    method: 'PUT',
  })
  if (!response.ok && response.status !== 202)
    throw new Error(`M10: Connect ${action} answered ${response.status}`)
  const wanted = action === 'pause' ? 'PAUSED' : 'RUNNING'
  const deadline = Date.now() + 90_000
  for (let state = await connectorState(name); state !== wanted; state = await connectorState(name)) {
    if (Date.now() > deadline) throw new Error(`M10: the connector is ${state} 90 s after ${action}`)
    await sleep(20)
  }
}

async function topicRecords(admin: ReturnType<ReturnType<typeof testKafka>['admin']>, topic: string) {
  let total = 0
  for (const p of await admin.fetchTopicOffsets(topic)) total += Number(p.high) - Number(p.low)
  return total
}

export async function runM10(ctx: Context): Promise<MeasurementResult> {
  const seconds = ctx.sizes.latencySeconds
  const repetitions = ctx.sizes.latencyRepetitions
  const backlog = ctx.sizes.relayEvents[1000] ?? 10_000
  await debeziumScript(['fetch'])

  const databases: BenchDatabase[] = []
  const open = async () => {
    const database = await openDatabase('postgres.js')
    databases.push(database)
    return database
  }
  const logDb = await open()
  const notifyDb = await open()
  const debeziumDb = await open()
  await ensureOutboxSchema(debeziumDb.db, {
    dialect: 'postgres',
    schema: debeziumDb.schema,
    layout: 'debezium',
    outboxTable: DEBEZIUM_TABLE,
  })
  const topics: Record<Path, string> = {
    log: await freshTopic('bench-cdc-log', PARTITIONS),
    notify: await freshTopic('bench-cdc-notify', PARTITIONS),
    debezium: await freshTopic('bench-cdc-dbz', PARTITIONS),
  }
  const writerOf = (
    database: BenchDatabase,
    options: { notify?: boolean; layout?: 'debezium'; outboxTable?: string } = {},
  ): Writer => {
    const store = createKyselyOutboxStore({ db: database.db, schema: database.schema, ...options })
    return { database, store, outbox: new Outbox({ store }) }
  }
  const writers: Record<Path, Writer> = {
    log: writerOf(logDb),
    notify: writerOf(notifyDb, { notify: true }),
    debezium: writerOf(debeziumDb, { layout: 'debezium', outboxTable: DEBEZIUM_TABLE }),
  }

  // Commit return time by message id, and arrival time by message id.
  const committed = new Map<string, number>()
  const received = new Map<string, number>()
  const consumer: Consumer = testKafka().consumer({ groupId: uniqueName('bench-cdc'), maxWaitTimeInMs: 10 })
  let joined = false
  consumer.on(consumer.events.GROUP_JOIN, () => {
    joined = true
  })
  await consumer.connect()
  await consumer.subscribe({ topics: Object.values(topics), fromBeginning: false })
  await consumer.run({
    eachMessage: async ({ message }) => {
      const at = now()
      // The router's `id` header (Debezium), or the relay's `outboxkit-id`.
      const id = (message.headers?.['outboxkit-id'] ?? message.headers?.['id'])?.toString()
      if (id && !received.has(id)) received.set(id, at)
    },
  })

  const slot = uniqueName('m10').replaceAll('-', '_').toLowerCase()
  const feedNames = { slot, publication: slot, schema: logDb.schema }
  const connectorName = uniqueName('m10dbz').replaceAll('-', '_').toLowerCase()
  const worker = new DebeziumWorker(
    connectorProperties({
      name: connectorName,
      schema: debeziumDb.schema,
      extra: {
        'table.include.list': `${debeziumDb.schema}.${DEBEZIUM_TABLE}`,
        'poll.interval.ms': '10',
        'transforms.outbox.table.fields.additional.placement': 'type:header:outboxkit-type',
      },
    }),
  )
  const listenSql = listenConnection()
  const transports: ReturnType<typeof createKafkaTransport>[] = []
  const transport = () => {
    const t = createKafkaTransport({ kafka: testKafka() })
    transports.push(t)
    return t
  }
  const logTransport = transport()
  const notifyTransport = transport()
  const runners: Record<Path, Runner> = (() => {
    let logRelay: LogRelay | undefined
    let notifyRelay: Runner | undefined
    return {
      log: {
        async start() {
          logRelay = new LogRelay({
            feed: createPostgresChangeFeed({ connectionString: POSTGRES_URL, ...feedNames }),
            transport: logTransport,
            batchSize: BATCH,
            logger: false,
          })
          await logRelay.start()
        },
        async stop() {
          await logRelay?.stop()
        },
      },
      notify: {
        async start() {
          notifyRelay = new Relay({
            store: createKyselyOutboxStore({
              db: notifyDb.pool({ max: 4 }),
              schema: notifyDb.schema,
              notify: true,
              listener: postgresJsListener(listenSql),
            }),
            transport: notifyTransport,
            batchSize: BATCH,
            logger: false,
          })
          await notifyRelay.start()
        },
        async stop() {
          await notifyRelay?.stop()
        },
      },
      debezium: {
        start: () => setConnector(connectorName, 'resume'),
        stop: () => setConnector(connectorName, 'pause'),
      },
    }
  })()

  const messageOf = (path: Path, n: number): OutboxMessageInput => ({
    topic: topics[path],
    key: `key-${n % KEYS}`,
    type: 'OrderCreated',
    payload: { ...PAYLOAD, n },
  })
  /** One business row and one event in a transaction; resolves with the event's id once committed. */
  const writeOne = async (path: Path, n: number): Promise<string> => {
    const { database, store, outbox } = writers[path]
    const id = await store.transaction(async (trx) => {
      await trx
        .withSchema(database.schema)
        .insertInto('orders')
        .values({ id: crypto.randomUUID(), customer: `customer-${n % 100}`, total: 10, items: 1 })
        .execute()
      return outbox.add(trx, messageOf(path, n))
    })
    committed.set(id, now())
    return id
  }

  const latencyPhase = async (path: Path, phaseSeconds: number) => {
    const total = Math.max(1, Math.round(RATE * phaseSeconds))
    const started = now()
    const pending: Promise<string>[] = []
    for (let n = 0; n < total; n++) {
      const wait = started + (n * 1000) / RATE - now()
      if (wait > 0) await sleep(wait)
      pending.push(writeOne(path, n))
    }
    const ids = await Promise.all(pending)
    const deadline = now() + 60_000
    while (ids.some((id) => !received.has(id))) {
      if (now() > deadline) {
        const missing = ids.filter((id) => !received.has(id)).length
        const state = path === 'debezium' ? `; the connector is ${await connectorState(connectorName)}` : ''
        throw new Error(`M10 ${path}: ${missing} of ${ids.length} events did not arrive within 60 s${state}`)
      }
      await sleep(10)
    }
    const latencies = ids.map((id) => received.get(id)! - committed.get(id)!)
    for (const id of ids) {
      received.delete(id)
      committed.delete(id)
    }
    return { p50: percentile(latencies, 50), p99: percentile(latencies, 99) }
  }

  const admin = testKafka().admin()
  await admin.connect()
  const drainPhase = async (path: Path): Promise<number> => {
    const { store, outbox } = writers[path]
    await runners[path].stop()
    // The consumer shares this process with the relays: it waits while the backlog drains.
    consumer.pause([{ topic: topics[path] }])
    const before = await topicRecords(admin, topics[path])
    for (let start = 0; start < backlog; start += 1000) {
      const messages: OutboxMessageInput[] = []
      for (let i = start; i < Math.min(start + 1000, backlog); i++) messages.push(messageOf(path, i))
      await store.transaction((trx) => outbox.add(trx, messages))
    }
    await runners[path].start()
    // Timed from the first records in the topic to the last: starting up (opening the
    // replication connection, resuming the connector) is left out for every path.
    let first: { at: number; count: number } | undefined
    let count = 0
    const deadline = Date.now() + WAIT_MS
    while (count < backlog) {
      if (Date.now() > deadline) throw new Error(`M10 ${path}: the backlog of ${backlog} did not drain`)
      await sleep(5)
      count = (await topicRecords(admin, topics[path])) - before
      if (count > 0) first ??= { at: now(), count }
    }
    const drainRate = (backlog - first!.count) / ((now() - first!.at) / 1000)
    // The consumer sees the backlog too: forget it, so the next latency phase starts clean.
    consumer.resume([{ topic: topics[path] }])
    const settle = Date.now() + WAIT_MS
    while (received.size < backlog && Date.now() < settle) await sleep(20)
    received.clear()
    return drainRate
  }

  const latency: Record<Path, { p50: number; p99: number }[]> = { log: [], notify: [], debezium: [] }
  const drains: Record<Path, number[]> = { log: [], notify: [], debezium: [] }
  try {
    // The slot exists before the first write; then every path runs.
    const feed = createPostgresChangeFeed({ connectionString: POSTGRES_URL, ...feedNames })
    await feed.open()
    await feed.close()
    ctx.log('  M10: starting Kafka Connect with Debezium')
    await worker.start()
    await runners.log.start()
    await runners.notify.start()
    while (!joined) await sleep(20)
    ctx.log('  M10: warm-up')
    for (const path of PATHS) await latencyPhase(path, Math.min(1, seconds))
    for (let round = 1; round <= repetitions; round++) {
      for (const path of PATHS) latency[path].push(await latencyPhase(path, seconds))
      ctx.log(
        `  M10 round ${round}: p50/p99 ${PATHS.map((p) => `${p} ${latency[p].at(-1)!.p50.toFixed(1)}/${latency[p].at(-1)!.p99.toFixed(1)} ms`).join(', ')}`,
      )
    }
    for (let round = 1; round <= repetitions; round++) {
      for (const path of PATHS) drains[path].push(await drainPhase(path))
      ctx.log(
        `  M10 drain round ${round}: ${PATHS.map((p) => `${p} ${drains[p].at(-1)!.toFixed(0)}`).join(', ')} events/s`,
      )
    }
  } finally {
    await runners.log.stop().catch(() => {})
    await runners.notify.stop().catch(() => {})
    await worker
      .stop()
      .catch((error: unknown) => ctx.log(`  M10: stopping Debezium failed: ${String(error)}`))
    for (const t of transports) await t.close().catch(() => {})
    await admin.disconnect().catch(() => {})
    await consumer.disconnect().catch(() => {})
    await listenSql.end({ timeout: 1 }).catch(() => {})
    await dropPostgresFeed({ connectionString: POSTGRES_URL, ...feedNames }).catch(() => {})
    for (const database of databases) await database.close().catch(() => {})
  }

  const figures: Figure[] = []
  for (const p of ['p50', 'p99'] as const) {
    const debezium = latency.debezium.map((r) => r[p])
    for (const path of ['log', 'notify'] as const) {
      figures.push({
        id: `M10.latency.${path}.${p}`,
        group: 'M10 change data capture vs Debezium',
        label: `${LABELS[path]}, commit → handler ${p}, added over Debezium (negative: faster)`,
        unit: 'ms',
        ...ofRounds(latency[path].map((r, i) => r[p] - debezium[i]!)),
        measured: ms(median(latency[path].map((r) => r[p]))),
        baseline: `${ms(median(debezium))} Debezium`,
      })
    }
  }
  const dbzP99 = latency.debezium.map((r) => r.p99)
  figures.push({
    id: 'M10.latency.log-vs-debezium.p99',
    group: 'M10 change data capture vs Debezium',
    label: 'LogRelay p99 ÷ Debezium p99 (tuned)',
    unit: 'ratio',
    ...ofRounds(latency.log.map((r, i) => r.p99 / dbzP99[i]!)),
    measured: ms(median(latency.log.map((r) => r.p99))),
    baseline: `${ms(median(dbzP99))} Debezium`,
    target: { op: '<=', value: 0.5 },
  })
  for (const path of ['log', 'notify'] as const) {
    figures.push({
      id: `M10.drain.${path}`,
      group: 'M10 change data capture vs Debezium',
      label: `backlog drain, ${LABELS[path]} ÷ Debezium`,
      unit: 'ratio',
      ...ofRounds(drains[path].map((d, i) => d / drains.debezium[i]!)),
      measured: rate(median(drains[path]), 'ev/s'),
      baseline: `${rate(median(drains.debezium), 'ev/s')} Debezium`,
      ...(path === 'log' ? { target: { op: '>=', value: 2 } } : {}),
    })
  }
  return {
    figures,
    raw: { rate: RATE, seconds, backlog, batch: BATCH, keys: KEYS, partitions: PARTITIONS, latency, drains },
  }
}
