/**
 * M4 latency: commit → consumer handler, at a fixed moderate rate, with a relay that polls every
 * 100 ms, with one woken by LISTEN/NOTIFY, and with one woken by LISTEN/NOTIFY in ownership
 * 'shards', minus raw kafkajs produce → consume measured in the same run with the same consumer.
 *
 * Each event's payload carries the time its transaction was about to commit (`writtenAt`); the
 * writer also records when the commit returned, by message id. The figures start the clock at
 * the commit's return; `writtenAt` is kept in the results as a cross-check.
 */
import type { Consumer, Producer } from 'kafkajs'
import { createKafkaTransport } from '../src/adapters/kafka/index.js'
import { createKyselyOutboxStore, postgresJsListener } from '../src/adapters/kysely/index.js'
import { Outbox, Relay } from '../src/index.js'
import { type Context, type Figure, type MeasurementResult, ms, ofRounds } from './lib/context.js'
import { type BenchDatabase, listenConnection, openDatabase } from './lib/db.js'
import { freshTopic, PAYLOAD, rawProducer, testKafka, uniqueName } from './lib/kafka.js'
import { PhaseProfile, ProfiledStore, ProfiledTransport } from './lib/relay.js'
import { median, now, percentile, sleep } from './lib/stats.js'

const POLL_INTERVAL_MS = 100
type Path = 'raw' | 'polling' | 'notify' | 'shards'
type RelayPath = Exclude<Path, 'raw'>
const RELAY_PATHS: readonly RelayPath[] = ['polling', 'notify', 'shards']

interface Sample {
  /** When the commit returned (relay paths) or the send started (raw). */
  start?: number
  /** `writtenAt` from the payload. */
  written?: number
  /** When the relay's claim that took the event started and ended, and when its publish ended. */
  claimStart?: number
  claimEnd?: number
  publishEnd?: number
  received?: number
}

/** Medians of where an event's time went, for the relay paths. */
interface Breakdown {
  /** Commit returned → the claim that took it started (the relay finishing its cycle, or waking up). */
  wait: number
  claim: number
  /** Claim ended → publish acknowledged. */
  publish: number
  /** Publish acknowledged → the consumer's handler. */
  deliver: number
  /** Events per claim. */
  batch: number
}

interface PathResult {
  p50: number
  p99: number
  p50FromWrite: number
  count: number
  breakdown?: Breakdown
}

export async function runM4(ctx: Context): Promise<MeasurementResult> {
  const { latencyRate, latencySeconds, latencyRepetitions } = ctx.sizes
  const pollingDb = await openDatabase('postgres.js')
  const notifyDb = await openDatabase('postgres.js')
  const shardsDb = await openDatabase('postgres.js')
  const listenSql = listenConnection()
  const topics: Record<Path, string> = {
    raw: await freshTopic('bench-latency-raw', 3),
    polling: await freshTopic('bench-latency-poll', 3),
    notify: await freshTopic('bench-latency-notify', 3),
    shards: await freshTopic('bench-latency-shards', 3),
  }
  const samples = new Map<string, Sample>()
  const sample = (id: string): Sample => {
    let s = samples.get(id)
    if (!s) {
      s = {}
      samples.set(id, s)
    }
    return s
  }

  // The consumer: one group on the three topics, a no-op handler that notes the arrival.
  const consumer: Consumer = testKafka().consumer({
    groupId: uniqueName('bench-latency'),
    maxWaitTimeInMs: 100,
  })
  let joined = false
  consumer.on(consumer.events.GROUP_JOIN, () => {
    joined = true
  })
  await consumer.connect()
  await consumer.subscribe({ topics: Object.values(topics), fromBeginning: true })
  await consumer.run({
    eachMessage: async ({ message }) => {
      const received = now()
      const id = message.headers?.['outboxkit-id']?.toString()
      if (!id) return
      const s = sample(id)
      s.received = received
      const value = message.value ? (JSON.parse(message.value.toString()) as { writtenAt?: number }) : {}
      if (typeof value.writtenAt === 'number') s.written = value.writtenAt
    },
  })
  while (!joined) await sleep(20)

  const producer: Producer = await rawProducer(testKafka())
  const batchSizes: number[] = []
  const relayFor = (database: BenchDatabase, notify: boolean, ownership: 'rows' | 'shards' = 'rows') => {
    // The wrappers note when each event's claim and publish happened; they add two clock reads.
    const timeline = new PhaseProfile()
    timeline.onClaimed = (records, startedAt, endedAt) => {
      batchSizes.push(records.length)
      for (const r of records) {
        const s = sample(r.id)
        s.claimStart = startedAt
        s.claimEnd = endedAt
      }
    }
    timeline.onPublished = (records, _startedAt, endedAt) => {
      for (const r of records) sample(r.id).publishEnd = endedAt
    }
    const store = new ProfiledStore(
      createKyselyOutboxStore({
        db: database.pool({ max: 4 }),
        schema: database.schema,
        ...(notify ? { notify: true, listener: postgresJsListener(listenSql) } : {}),
      }),
      timeline,
    )
    const transport = createKafkaTransport({ kafka: testKafka() })
    return {
      relay: new Relay({
        store,
        transport: new ProfiledTransport(transport, timeline),
        pollIntervalMs: POLL_INTERVAL_MS,
        ownership,
      }),
      transport,
    }
  }
  const polling = relayFor(pollingDb, false)
  const notifying = relayFor(notifyDb, true)
  const sharding = relayFor(shardsDb, true, 'shards')
  await polling.relay.start()
  await notifying.relay.start()
  await sharding.relay.start()
  const writers = {
    polling: {
      db: pollingDb,
      outbox: new Outbox({ store: createKyselyOutboxStore({ db: pollingDb.db, schema: pollingDb.schema }) }),
    },
    notify: {
      db: notifyDb,
      outbox: new Outbox({
        store: createKyselyOutboxStore({ db: notifyDb.db, schema: notifyDb.schema, notify: true }),
      }),
    },
    shards: {
      db: shardsDb,
      outbox: new Outbox({
        store: createKyselyOutboxStore({ db: shardsDb.db, schema: shardsDb.schema, notify: true }),
      }),
    },
  }

  /** One event on `path`; resolves with its id once committed (or sent). */
  const one = async (path: Path, n: number): Promise<string> => {
    const orderId = crypto.randomUUID()
    if (path === 'raw') {
      const id = crypto.randomUUID()
      const s = sample(id)
      s.start = now()
      s.written = s.start
      await producer.send({
        topic: topics.raw,
        acks: -1,
        messages: [
          {
            key: orderId,
            value: JSON.stringify({ ...PAYLOAD, writtenAt: s.start }),
            headers: {
              'outboxkit-id': id,
              'outboxkit-type': 'OrderCreated',
              'content-type': 'application/json',
            },
          },
        ],
      })
      return id
    }
    const { db, outbox } = writers[path]
    let id = ''
    await db.db.transaction().execute(async (trx) => {
      await trx
        .withSchema(db.schema)
        .insertInto('orders')
        .values({ id: orderId, customer: `customer-${n % 100}`, total: 10, items: 1 })
        .execute()
      id = await outbox.add(trx, {
        topic: topics[path],
        key: orderId,
        type: 'OrderCreated',
        payload: { ...PAYLOAD, writtenAt: now() },
      })
    })
    sample(id).start = now()
    return id
  }

  /** Writes at `latencyRate`/s for `seconds`, waits for every event to arrive, returns latencies. */
  const phase = async (path: Path, seconds: number): Promise<PathResult> => {
    const total = Math.round(latencyRate * seconds)
    const interval = 1000 / latencyRate
    const started = now()
    const pending: Promise<string>[] = []
    for (let n = 0; n < total; n++) {
      const due = started + n * interval
      const wait = due - now()
      if (wait > 0) await sleep(wait)
      pending.push(one(path, n))
    }
    const ids = await Promise.all(pending)
    const deadline = now() + 30_000
    while (ids.some((id) => samples.get(id)?.received === undefined)) {
      if (now() > deadline) throw new Error(`M4 ${path}: events did not arrive within 30 s`)
      await sleep(10)
    }
    const latencies: number[] = []
    const fromWrite: number[] = []
    const parts = {
      wait: [] as number[],
      claim: [] as number[],
      publish: [] as number[],
      deliver: [] as number[],
    }
    for (const id of ids) {
      const s = samples.get(id)!
      latencies.push(s.received! - s.start!)
      if (s.written !== undefined) fromWrite.push(s.received! - s.written)
      if (s.claimStart !== undefined && s.claimEnd !== undefined && s.publishEnd !== undefined) {
        parts.wait.push(s.claimStart - s.start!)
        parts.claim.push(s.claimEnd - s.claimStart)
        parts.publish.push(s.publishEnd - s.claimEnd)
        parts.deliver.push(s.received! - s.publishEnd)
      }
      samples.delete(id)
    }
    const batches = batchSizes.splice(0)
    return {
      p50: percentile(latencies, 50),
      p99: percentile(latencies, 99),
      p50FromWrite: percentile(fromWrite, 50),
      count: ids.length,
      ...(path === 'raw'
        ? {}
        : {
            breakdown: {
              wait: median(parts.wait),
              claim: median(parts.claim),
              publish: median(parts.publish),
              deliver: median(parts.deliver),
              batch: batches.length === 0 ? 0 : batches.reduce((a, b) => a + b, 0) / batches.length,
            },
          }),
    }
  }

  const paths: Path[] = ['raw', ...RELAY_PATHS]
  const results: Record<Path, PathResult[]> = { raw: [], polling: [], notify: [], shards: [] }
  try {
    ctx.log('  warm-up')
    for (const path of paths) await phase(path, Math.min(1, latencySeconds))
    for (let round = 1; round <= latencyRepetitions; round++) {
      for (const path of paths) results[path].push(await phase(path, latencySeconds))
      ctx.log(
        `  M4 round ${round}: p50/p99 ${paths
          .map((p) => `${p} ${results[p].at(-1)!.p50.toFixed(1)}/${results[p].at(-1)!.p99.toFixed(1)} ms`)
          .join(', ')}`,
      )
    }
  } finally {
    await polling.relay.stop()
    await notifying.relay.stop()
    await sharding.relay.stop()
    await polling.transport.close()
    await notifying.transport.close()
    await sharding.transport.close()
    await producer.disconnect().catch(() => {})
    await consumer.disconnect().catch(() => {})
    await listenSql.end({ timeout: 1 }).catch(() => {})
    await pollingDb.close()
    await notifyDb.close()
    await shardsDb.close()
  }

  const figures: Figure[] = []
  const labels: Record<RelayPath, string> = {
    polling: `polling ${POLL_INTERVAL_MS} ms`,
    notify: 'LISTEN/NOTIFY',
    shards: "LISTEN/NOTIFY, ownership 'shards'",
  }
  for (const path of RELAY_PATHS) {
    for (const p of ['p50', 'p99'] as const) {
      const added = results[path].map((r, i) => r[p] - results.raw[i]![p])
      figures.push({
        id: `M4.${path}.${p}`,
        group: 'M4 commit → handler latency',
        label: `${labels[path]}, ${p} added over raw`,
        unit: 'ms',
        ...ofRounds(added),
        measured: ms(median(results[path].map((r) => r[p]))),
        baseline: `${ms(median(results.raw.map((r) => r[p])))} raw`,
        ...(path !== 'polling' ? { target: { op: '<=', value: p === 'p50' ? 3 : 20 } } : {}),
      })
    }
  }
  const details = [
    'Where the time of a relayed event goes (medians over all events of the rounds):',
    '',
    ...RELAY_PATHS.map((path) => {
      const part = (k: keyof Breakdown) => median(results[path].map((r) => r.breakdown?.[k] ?? Number.NaN))
      return `  ${path.padEnd(8)} wait ${ms(part('wait'))}, claim ${ms(part('claim'))}, publish ${ms(part('publish'))}, to the handler ${ms(part('deliver'))}; ${part('batch').toFixed(1)} events per claim`
    }),
  ].join('\n')
  return {
    figures,
    raw: { rate: latencyRate, seconds: latencySeconds, pollIntervalMs: POLL_INTERVAL_MS, rounds: results },
    details,
  }
}
