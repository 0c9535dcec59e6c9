/**
 * M8 exactly-once cost.
 *
 * - Throughput: a relay with `exactlyOnce` ÷ the transactional relay, both with ownership
 *   'shards', on the same table, records and batch size, in alternating rounds, on Postgres and
 *   MariaDB at batch 100 and 1000. Each drain is timed from the relay's first claim to its last
 *   mark, so the session's start (fencing, reading the progress topic) is left out: it is what
 *   the reconciliation figure measures.
 * - Reconciliation: rows published in Kafka with their progress but not marked in the database (a
 *   relay whose marks never reach the database, then abandoned); the time from a new relay's
 *   start until its `reconciled` events cover them, and until it claims.
 * - Back-to-back transactions: the time of each publish of one record through an exactly-once
 *   session, one after the other, and how many of them kafkajs retried after the coordinator
 *   answered CONCURRENT_TRANSACTIONS (the previous commit's markers were still being written).
 */
import { type Kafka, logLevel } from 'kafkajs'
import { createKafkaTransport, type KafkaTransport } from '../src/adapters/kafka/index.js'
import { createKyselyOutboxStore } from '../src/adapters/kysely/index.js'
import {
  type ClaimedRecord,
  type OutboxStore,
  Relay,
  type RelayEvents,
  type SettleResult,
  uuidv7,
} from '../src/index.js'
import { type Context, type Figure, type MeasurementResult, ms, ofRounds, rate } from './lib/context.js'
import type { BackendName, BenchDatabase, BenchKysely } from './lib/db.js'
import { openDatabase } from './lib/db.js'
import { freshTopic, keyOf, PAYLOAD, testKafka, uniqueName } from './lib/kafka.js'
import { fillOutbox } from './lib/relay.js'
import { median, now, percentile, ratios, rounds, sleep } from './lib/stats.js'
import { RELAY_KEYS } from './m2-relay.js'

const PARTITIONS = 3
const BATCHES = [100, 1000] as const
const BACKENDS: readonly BackendName[] = ['postgres.js', 'mariadb']
/** Rows in flight for the reconciliation figure, and the batch that puts them there (two batches in flight). */
const IN_FLIGHT_ROWS = 10_000
/** The lease of the relay that is abandoned with rows in flight: its shards are free after it. */
const ABANDONED_LEASE_MS = 1_000
/** Most time one drain or one wait may take before the measurement gives up. */
const WAIT_MS = 120_000

/** kafkajs' text for CONCURRENT_TRANSACTIONS, which it logs (at ERROR) before each retry of a send. */
const CONCURRENT_TRANSACTIONS_TEXT = 'another concurrent operation on the same transaction was ongoing'

type Mode = 'tx' | 'eos'

interface Setup {
  readonly database: BenchDatabase
  readonly db: BenchKysely
  readonly store: OutboxStore<BenchKysely>
  readonly topic: string
  readonly progressTopic: string
  readonly tx: KafkaTransport
  readonly eos: KafkaTransport
  close(): Promise<void>
}

async function open(backend: BackendName): Promise<Setup> {
  const database = await openDatabase(backend)
  const db = database.pool({ max: 4 })
  const store = createKyselyOutboxStore({ db, schema: database.schema })
  const topic = await freshTopic(`bench-eos-${backend.replace('.', '')}`, PARTITIONS)
  const progressTopic = uniqueName('bench-eos-progress')
  const tx = createKafkaTransport({ kafka: testKafka(), transactionalId: uniqueName('bench-eos-tx') })
  const eos = createKafkaTransport({ kafka: testKafka(), exactlyOnce: { progressTopic } })
  return {
    database,
    db,
    store,
    topic,
    progressTopic,
    tx,
    eos,
    async close() {
      await tx.close().catch(() => {})
      await eos.close().catch(() => {})
      await database.close()
    },
  }
}

/** A promise that rejects after `ms` with `what` in its message, and a way to cancel the timer. */
function deadline(ms: number, what: string): { promise: Promise<never>; cancel(): void } {
  let timer: ReturnType<typeof setTimeout> | undefined
  const promise = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`M8: ${what} took longer than ${ms} ms`)), ms)
  })
  promise.catch(() => {})
  return { promise, cancel: () => clearTimeout(timer) }
}

function relayOf(setup: Setup, mode: Mode, batchSize: number, store = setup.store): Relay<BenchKysely> {
  return new Relay({
    store,
    transport: mode === 'eos' ? setup.eos : setup.tx,
    ownership: 'shards',
    exactlyOnce: mode === 'eos',
    relayId: uniqueName(`m8-${mode}`),
    batchSize,
    pollIntervalMs: 5,
    lagIntervalMs: 0,
  })
}

/**
 * Fills the outbox (not timed), then drains it with one relay of the mode; events/s from its
 * first claim to its last mark.
 */
async function drained(
  setup: Setup,
  mode: Mode,
  events: number,
  batch: number,
  log: (line: string) => void,
): Promise<number> {
  await setup.database.resetOutbox()
  await fillOutbox(setup.database, setup.topic, events, RELAY_KEYS)
  const relay = relayOf(setup, mode, batch)
  let firstClaim: number | undefined
  let published = 0
  let finished!: (at: number) => void
  const done = new Promise<number>((resolve) => (finished = resolve))
  relay.on('claimed', () => {
    firstClaim ??= now()
  })
  relay.on('published', ({ count }) => {
    published += count
    if (published >= events) finished(now())
  })
  relay.on('error', ({ error }) => log(`  M8 ${mode} relay error: ${String(error)}`))
  const limit = deadline(WAIT_MS, `draining ${events} events (${mode}, batch ${batch})`)
  try {
    await relay.start()
    const end = await Promise.race([done, limit.promise])
    return events / ((end - firstClaim!) / 1000)
  } finally {
    limit.cancel()
    await relay.stop()
  }
}

/**
 * A store whose marks never reach the database (the relay "died" after Kafka committed, before
 * the mark), and whose claims and shard renewals stop once `abandon()` is called, so its shards
 * expire. Reports how many ids it was asked to mark.
 */
function droppingMarks(store: OutboxStore<BenchKysely>) {
  let asked = 0
  let abandoned = false
  const hang = new Promise<never>(() => {})
  const view = new Proxy(store, {
    get(target, name, receiver) {
      const value = Reflect.get(target, name, receiver)
      if (typeof value !== 'function') return value
      if (name === 'markPublished') {
        return (_token: string, ids: readonly string[]): Promise<SettleResult> => {
          asked += ids.length
          return hang
        }
      }
      if (name === 'syncShards' || name === 'claimOwned' || name === 'extendLease') {
        return (...args: unknown[]) => (abandoned ? hang : value.apply(target, args))
      }
      return value.bind(target)
    },
  })
  return {
    view,
    asked: () => asked,
    abandon() {
      abandoned = true
    },
  }
}

interface Reconciliation {
  rows: number
  /** From the new relay's start until its reconciled events cover the rows in flight. */
  reconciledMs: number
  /** From its start until its first claim. */
  claimingMs: number
  /** Sum of the reconciled events' own durations (fence, read, mark). */
  reconcileWorkMs: number
  events: { shards: number; fenced: number; marked: number; named: number; durationMs: number }[]
}

/** `rows` rows in flight (in Kafka with their progress, pending in the table), then a new relay reconciles them. */
async function reconciliation(
  setup: Setup,
  rows: number,
  log: (line: string) => void,
): Promise<Reconciliation> {
  await setup.database.resetOutbox()
  await fillOutbox(setup.database, setup.topic, rows, RELAY_KEYS)
  const dropping = droppingMarks(setup.store)
  const first = new Relay({
    store: dropping.view,
    transport: setup.eos,
    ownership: 'shards',
    exactlyOnce: true,
    relayId: uniqueName('m8-abandoned'),
    // Two batches in flight: every row is published before the relay waits on a mark.
    batchSize: Math.ceil(rows / 2),
    leaseMs: ABANDONED_LEASE_MS,
    pollIntervalMs: 5,
    lagIntervalMs: 0,
  })
  first.on('error', ({ error }) => log(`  M8 abandoned relay error: ${String(error)}`))
  const limit = deadline(WAIT_MS, `publishing ${rows} rows without their marks`)
  try {
    await first.start()
    await Promise.race([
      (async () => {
        while (dropping.asked() < rows) await sleep(20)
      })(),
      limit.promise,
    ])
  } finally {
    limit.cancel()
  }
  dropping.abandon()
  // Its shards expire by the database's clock (on this machine); a small margin for the last renewal.
  await sleep(ABANDONED_LEASE_MS + 300)
  // A few new rows, so that the new relay has something to claim once it has reconciled.
  await fillOutbox(setup.database, setup.topic, 10, RELAY_KEYS)

  const second = relayOf(setup, 'eos', 100)
  const events: RelayEvents['reconciled'][] = []
  let marked = 0
  let reconciledAt: number | undefined
  let claimedAt: number | undefined
  let ready!: () => void
  const claiming = new Promise<void>((resolve) => (ready = resolve))
  second.on('reconciled', (event) => {
    events.push(event)
    marked += event.marked
    if (marked >= rows) reconciledAt ??= now()
  })
  second.on('claimed', () => {
    claimedAt ??= now()
    ready()
  })
  second.on('error', ({ error }) => log(`  M8 reconciling relay error: ${String(error)}`))
  const wait = deadline(WAIT_MS, 'reconciling')
  const started = now()
  try {
    await second.start()
    await Promise.race([claiming, wait.promise])
  } finally {
    wait.cancel()
    await second.stop()
  }
  if (reconciledAt === undefined) {
    throw new Error(`M8: the new relay reconciled ${marked} rows, not the ${rows} in flight`)
  }
  return {
    rows,
    reconciledMs: reconciledAt - started,
    claimingMs: claimedAt! - started,
    reconcileWorkMs: events.reduce((sum, e) => sum + e.durationMs, 0),
    events: events.map((e) => ({
      shards: e.shards.length,
      fenced: e.fenced.length,
      marked: e.marked,
      named: e.named,
      durationMs: e.durationMs,
    })),
  }
}

/** A kafkajs client that counts the CONCURRENT_TRANSACTIONS retries of its producers. */
function countingKafka(): { kafka: Kafka; retries: () => number } {
  let retries = 0
  const kafka = testKafka(undefined, {
    logLevel: logLevel.ERROR,
    logCreator:
      () =>
      ({ log }) => {
        if (String(log.message).includes(CONCURRENT_TRANSACTIONS_TEXT)) retries++
      },
  })
  return { kafka, retries: () => retries }
}

const PAYLOAD_BYTES = new TextEncoder().encode(JSON.stringify(PAYLOAD))

function sessionRecord(topic: string, i: number): ClaimedRecord {
  return {
    id: uuidv7(),
    topic,
    key: keyOf(i, RELAY_KEYS),
    type: 'OrderCreated',
    payload: PAYLOAD_BYTES,
    headers: { 'content-type': 'application/json' },
    attempts: 1,
    createdAt: new Date(),
    shard: i % 64,
  }
}

interface BackToBack {
  transactions: number
  retried: number
  /** Time of each publish (one record, one transaction), ms. */
  publishMs: number[]
}

/** `count` publishes of one record through one exactly-once session, back to back. */
async function backToBack(topic: string, count: number): Promise<BackToBack> {
  const { kafka, retries } = countingKafka()
  const transport = createKafkaTransport({
    kafka,
    exactlyOnce: { progressTopic: uniqueName('bench-eos-b2b-progress') },
  })
  try {
    const session = await transport.exactlyOnce!.open(uniqueName('m8-b2b'))
    try {
      for (let i = 0; i < 5; i++) {
        const record = sessionRecord(topic, i)
        await session.publish([record])
        session.settled([record.id])
      }
      const before = retries()
      const publishMs: number[] = []
      for (let i = 0; i < count; i++) {
        const record = sessionRecord(topic, i)
        const started = now()
        const [outcome] = await session.publish([record])
        publishMs.push(now() - started)
        if (outcome?.status !== 'published')
          throw new Error(`M8: a session publish failed: ${outcome?.error}`)
        session.settled([record.id])
      }
      return { transactions: count, retried: retries() - before, publishMs }
    } finally {
      await session.close()
    }
  } finally {
    await transport.close()
  }
}

export async function runM8(ctx: Context): Promise<MeasurementResult> {
  const figures: Figure[] = []
  const raw: Record<string, unknown> = {}
  for (const backend of BACKENDS) {
    const setup = await open(backend)
    const backendRaw: Record<string, unknown> = {}
    raw[backend] = backendRaw
    try {
      ctx.log(`  M8 ${backend}: warm-up`)
      for (const mode of ['tx', 'eos'] as const)
        await drained(setup, mode, ctx.quick ? 200 : 500, 100, ctx.log)
      for (const batch of BATCHES) {
        // Full runs drain 30 batches at batch 1 000: 10 (M2's size) leaves the ratio to the pipeline's
        // fill and drain and to one slow commit, and its rounds spread over ±30 %.
        const events = ctx.quick
          ? (ctx.sizes.relayEvents[batch] ?? 1000)
          : Math.max(ctx.sizes.relayEvents[batch] ?? 1000, batch * 30)
        const result = await rounds({
          warmup: 0,
          repetitions: ctx.sizes.repetitions,
          steps: {
            tx: () => drained(setup, 'tx', events, batch, ctx.log),
            eos: () => drained(setup, 'eos', events, batch, ctx.log),
          },
          onRound: (round, v) =>
            ctx.log(
              `  M8 ${backend} batch ${batch} round ${round}: tx ${v.tx.toFixed(0)}, eos ${v.eos.toFixed(0)} events/s`,
            ),
        })
        backendRaw[`batch${batch}`] = { events, keys: RELAY_KEYS, partitions: PARTITIONS, ...result }
        figures.push({
          id: `M8.${backend}.b${batch}`,
          group: 'M8 exactly-once cost',
          label: `${backend}, batch ${batch}: exactlyOnce ÷ transactional relay (shards)`,
          unit: 'ratio',
          ...ofRounds(ratios(result.eos, result.tx)),
          measured: rate(median(result.eos), 'ev/s'),
          baseline: rate(median(result.tx), 'ev/s'),
          target: { op: '>=', value: batch >= 1000 ? 0.9 : 0.8 },
        })
      }
      if (backend === 'postgres.js' || !ctx.quick) {
        const rows = ctx.quick ? 2_000 : IN_FLIGHT_ROWS
        ctx.log(`  M8 ${backend}: reconciliation of ${rows} rows in flight`)
        const r = await reconciliation(setup, rows, ctx.log)
        backendRaw['reconciliation'] = r
        figures.push({
          id: `M8.${backend}.reconcile`,
          group: 'M8 exactly-once cost',
          label: `${backend}: start → ${r.rows} rows in flight reconciled (then claiming after ${r.claimingMs.toFixed(0)} ms)`,
          unit: 'ms',
          value: r.reconciledMs,
          measured: rate(r.rows / (r.reconciledMs / 1000), 'rows/s'),
          baseline: `${ms(r.reconcileWorkMs)} fence + read + mark`,
        })
      }
    } finally {
      await setup.close()
    }
  }

  ctx.log('  M8 back-to-back exactly-once transactions')
  const topic = await freshTopic('bench-eos-b2b', PARTITIONS)
  const b2b = await backToBack(topic, ctx.quick ? 50 : 300)
  raw['backToBack'] = b2b
  const p50 = percentile(b2b.publishMs, 50)
  const p99 = percentile(b2b.publishMs, 99)
  figures.push({
    id: 'M8.b2b.p50',
    group: 'M8 exactly-once cost',
    label: `back-to-back session transactions of 1 record: p50 (p99 ${ms(p99)})`,
    unit: 'ms',
    value: p50,
    measured: `${b2b.retried} of ${b2b.transactions} retried after CONCURRENT_TRANSACTIONS`,
    baseline: `mean ${ms(b2b.publishMs.reduce((a, b) => a + b, 0) / b2b.publishMs.length)}`,
  })
  return { figures, raw }
}
