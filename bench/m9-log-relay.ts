/**
 * M9 log-tailing relay throughput.
 *
 * A `LogRelay` on the Postgres logical-replication feed and on the MariaDB binlog feed drains a
 * backlog written to the outbox beforehand (its records wait in the log), ÷ raw kafkajs produce
 * of the same number of records at the same batch size (the settings the relay's transport
 * forces: idempotent, one request in flight, acks all), alternated in rounds. The relay is timed
 * from its first publish to the last record's acknowledgement, so opening the feed is left out.
 * Goal: ≥ 0.8 at batch ≥ 500 (the relay writes nothing per row, so the database is no longer the
 * limit).
 */
import { createKafkaTransport } from '../src/adapters/kafka/index.js'
import { createMysqlChangeFeed } from '../src/adapters/mysql-binlog/index.js'
import { createPostgresChangeFeed, dropPostgresFeed } from '../src/adapters/postgres-log/index.js'
import { type ChangeFeed, LogRelay } from '../src/index.js'
import { type Context, type Figure, type MeasurementResult, ofRounds, rate } from './lib/context.js'
import { type BackendName, MYSQL_URL, openDatabase, POSTGRES_URL } from './lib/db.js'
import { freshTopic, rawProducer, sendRaw, testKafka, uniqueName } from './lib/kafka.js'
import { fillOutbox } from './lib/relay.js'
import { median, now, ratios, rounds, sleep } from './lib/stats.js'

const PARTITIONS = 3
const KEYS = 1_000
const BATCH = 500
const BACKENDS: readonly BackendName[] = ['postgres.js', 'mariadb']
const WAIT_MS = 120_000

/** Drains `events` records already in the feed's log with a new LogRelay; events/s. */
async function drainedByLogRelay(
  feed: ChangeFeed,
  transport: ReturnType<typeof createKafkaTransport>,
  events: number,
): Promise<number> {
  const relay = new LogRelay({ feed, transport, batchSize: BATCH, pollIntervalMs: 5, logger: false })
  let published = 0
  let first: number | undefined
  let last = 0
  relay.on('published', (e) => {
    // The first batch's own publish is inside the timed span: start from when it began.
    first ??= now() - e.durationMs
    published += e.count
    last = now()
  })
  const errors: unknown[] = []
  relay.on('error', (e) => errors.push(e.error))
  await relay.start()
  const deadline = Date.now() + WAIT_MS
  while (published < events) {
    if (Date.now() > deadline)
      throw new Error(
        `M9: the log relay published ${published} of ${events} in ${WAIT_MS} ms (${String(errors[0])})`,
      )
    await sleep(5)
  }
  await relay.stop()
  return events / ((last - first!) / 1000)
}

async function rawRate(topic: string, events: number): Promise<number> {
  const producer = await rawProducer(testKafka())
  try {
    const started = now()
    await sendRaw(producer, topic, 0, events, BATCH, KEYS)
    return events / ((now() - started) / 1000)
  } finally {
    await producer.disconnect()
  }
}

export async function runM9(ctx: Context): Promise<MeasurementResult> {
  const figures: Figure[] = []
  const raw: Record<string, unknown> = {}
  const events = ctx.sizes.relayEvents[1000] ?? 10_000
  for (const backend of BACKENDS) {
    const database = await openDatabase(backend)
    const topic = await freshTopic(`bench-log-${backend.replace('.', '')}`, PARTITIONS)
    const transport = createKafkaTransport({ kafka: testKafka() })
    const slot = uniqueName('m9').replaceAll('-', '_').toLowerCase()
    const feed =
      backend === 'postgres.js'
        ? createPostgresChangeFeed({
            connectionString: POSTGRES_URL,
            slot,
            publication: slot,
            schema: database.schema,
          })
        : createMysqlChangeFeed({
            connection: MYSQL_URL,
            schema: database.schema,
            serverId: 9_000 + Math.floor(Math.random() * 1_000),
            firstOpen: 'log-end',
          })
    try {
      // The slot (Postgres) or the stored position (MariaDB) exists before the first write.
      await feed.open()
      await feed.close()
      ctx.log(`  M9 ${backend}: warm-up`)
      await fillOutbox(database, topic, BATCH * 2, KEYS)
      await drainedByLogRelay(feed, transport, BATCH * 2)
      const result = await rounds({
        warmup: 0,
        repetitions: ctx.sizes.repetitions,
        steps: {
          relay: async () => {
            await fillOutbox(database, topic, events, KEYS)
            return drainedByLogRelay(feed, transport, events)
          },
          raw: () => rawRate(topic, events),
        },
        onRound: (round, v) =>
          ctx.log(
            `  M9 ${backend} round ${round}: log relay ${v.relay.toFixed(0)}, raw ${v.raw.toFixed(0)} events/s`,
          ),
      })
      raw[backend] = { events, batch: BATCH, keys: KEYS, partitions: PARTITIONS, ...result }
      figures.push({
        id: `M9.${backend}`,
        group: 'M9 log-tailing relay',
        label: `${backend === 'postgres.js' ? 'Postgres logical replication' : 'MariaDB binlog'}, batch ${BATCH}: LogRelay ÷ raw kafkajs produce`,
        unit: 'ratio',
        ...ofRounds(ratios(result.relay, result.raw)),
        measured: rate(median(result.relay), 'ev/s'),
        baseline: rate(median(result.raw), 'ev/s'),
        target: { op: '>=', value: 0.8 },
      })
    } finally {
      await feed.close().catch(() => {})
      await transport.close().catch(() => {})
      if (backend === 'postgres.js')
        await dropPostgresFeed({
          connectionString: POSTGRES_URL,
          slot,
          publication: slot,
          schema: database.schema,
        }).catch(() => {})
      await database.close()
    }
  }
  return { figures, raw }
}
