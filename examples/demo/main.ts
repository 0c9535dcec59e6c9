/**
 * outboxkit end to end. An order service writes each order and its `OrderCreated` event in one
 * transaction; a relay publishes the events to Kafka; an inventory service takes stock once per
 * order. On the way a relay crashes between Kafka's acknowledgement and marking its rows, and
 * one record is delivered twice; at the end the database is checked.
 *
 *   npm run demo                                   embedded PGlite, local Kafka broker
 *   npm run demo -- --orders 1000
 *   npm run demo -- --exactly-once                 the relays publish exactly once into the topic
 *   DATABASE_URL=postgres://postgres@127.0.0.1:5432/test npm run demo
 *   DATABASE_URL=mysql://root@127.0.0.1:3306/test npm run demo
 *   KAFKA_BROKERS=127.0.0.1:9092 npm run demo
 */
import { fileURLToPath } from 'node:url'
import { type Admin, type Kafka, Partitioners } from 'kafkajs'
import type { Kysely } from 'kysely'
import { createKafkaTransport } from '../../src/adapters/kafka/index.js'
import {
  createKyselyInboxStore,
  createKyselyOutboxStore,
  type KyselyOutboxStore,
} from '../../src/adapters/kysely/index.js'
import { createKafkaConsumerRunner } from '../../src/consumers/index.js'
import {
  describeError,
  IdempotentConsumer,
  type InboundMessage,
  Outbox,
  type Payload,
  publishedHeaders,
  Relay,
} from '../../src/index.js'
import {
  otelConsumerInstrumentation,
  otelRelayInstrumentation,
  otelTraceCapture,
} from '../../src/otel/index.js'
import { type DemoDatabase, type DemoTables, INITIAL_STOCK, openDatabase, SKUS } from './database.js'
import {
  brokersFromEnv,
  createTopic,
  demoKafka,
  KafkaUnavailable,
  readCommitted,
  startLocalBroker,
  uniqueTopic,
} from './kafka.js'
import {
  bold,
  detail,
  green,
  type Invariant,
  Progress,
  printInvariants,
  printSummary,
  red,
  step,
  warn,
} from './report.js'
import { renderTrace, startTracing, tracer } from './trace.js'

type Tx = Kysely<DemoTables>
type Order = { id: string; sku: string; qty: number }

const USAGE = `Usage: npm run demo [-- --orders N] [--exactly-once]

  --orders N       orders to write (default 200, at least 10)
  --exactly-once   relays with exactlyOnce (ownership 'shards', a progress topic): the crash
                   leaves no duplicate in the topic

Environment:
  DATABASE_URL    postgres://... or mysql://... (default: embedded PGlite in memory)
  KAFKA_BROKERS   host:port[,host:port] (default: the local broker of scripts/kafka, started if needed)`

const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url))
const CONSUMER_NAME = 'inventory'
/** How long the relay or the consumer may make no progress before the demo checks what it has. */
const STALL_MS = 30_000

class UsageError extends Error {}
class PaymentDeclined extends Error {}
class Interrupted extends Error {}

/** Aborted by Ctrl-C: the demo stops where it is and cleans up. */
const interruption = new AbortController()

function checkInterrupted(): void {
  if (interruption.signal.aborted) throw new Interrupted('interrupted')
}

/** `promise`, or a rejection as soon as the demo is interrupted. */
function unlessInterrupted<T>(promise: Promise<T>): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(new Interrupted('interrupted'))
    if (interruption.signal.aborted) onAbort()
    interruption.signal.addEventListener('abort', onAbort, { once: true })
    promise.then(resolve, reject).finally(() => interruption.signal.removeEventListener('abort', onAbort))
  })
}

function parseArgs(argv: readonly string[]): { orders: number; exactlyOnce: boolean } {
  let orders = 200
  let exactlyOnce = false
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    if (arg === '-h' || arg === '--help') throw new UsageError('')
    if (arg === '--exactly-once') {
      exactlyOnce = true
      continue
    }
    const value = arg === '--orders' ? argv[++i] : arg.startsWith('--orders=') ? arg.slice(9) : undefined
    if (value === undefined) throw new UsageError(`unknown argument: ${arg}`)
    orders = Number(value)
    if (!Number.isSafeInteger(orders) || orders < 10 || orders > 1_000_000) {
      throw new UsageError(`--orders must be an integer from 10 to 1000000, got ${value}`)
    }
  }
  return { orders, exactlyOnce }
}

// ---------------------------------------------------------------- cleanup

const cleanups: { what: string; run: () => Promise<unknown>; done?: () => string }[] = []
/** What the cleanup did, for the last line. */
const cleaned: string[] = []
let cleaning: Promise<void> | undefined

/**
 * Registers a cleanup step; they run last registered first, each even if an earlier one fails.
 * `done` describes the step once it ran, for the last line.
 */
function defer(what: string, run: () => Promise<unknown>, done?: () => string): void {
  cleanups.push({ what, run, ...(done ? { done } : {}) })
}

function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    for (let next = cleanups.pop(); next; next = cleanups.pop()) {
      try {
        await withTimeout(next.run(), 15_000, next.what)
        const note = next.done?.()
        if (note && !cleaned.includes(note)) cleaned.push(note)
      } catch (error) {
        warn('cleanup', `${next.what}: ${describeError(error)}`)
      }
    }
  })()
  return cleaning
}

async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms / 1000} s`)), ms)
  })
  try {
    return await Promise.race([promise, timeout])
  } finally {
    clearTimeout(timer)
  }
}

/**
 * Polls `check` until it reports done. Gives up (returns false) once its progress count has not
 * moved for {@link STALL_MS}, so a long run is never cut short while work still moves.
 */
async function waitUntil(
  check: () => Promise<{ done: boolean; progress: number }> | { done: boolean; progress: number },
): Promise<boolean> {
  let last = Number.NaN
  let movedAt = Date.now()
  for (;;) {
    checkInterrupted()
    const { done, progress } = await check()
    if (done) return true
    if (progress !== last) {
      last = progress
      movedAt = Date.now()
    } else if (Date.now() - movedAt > STALL_MS) {
      return false
    }
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

// ---------------------------------------------------------------- the services

function makeOrder(n: number): Order {
  return {
    id: `order-${String(n).padStart(5, '0')}`,
    sku: SKUS[n % SKUS.length]!,
    qty: 1 + ((n * 7) % 4),
  }
}

/** The payload of an `OrderCreated` event, checked. */
function parseOrder(value: Payload): Order {
  if (
    value !== null &&
    typeof value === 'object' &&
    !(value instanceof Uint8Array) &&
    !Array.isArray(value)
  ) {
    const { id, sku, qty } = value
    if (typeof id === 'string' && typeof sku === 'string' && typeof qty === 'number') return { id, sku, qty }
  }
  throw new Error('the payload is not an order')
}

/** Headers as stored in the outbox row: jsonb (already parsed) on Postgres, text on MySQL. */
function storedHeaders(value: unknown): Record<string, string> {
  const parsed: unknown = typeof value === 'string' ? JSON.parse(value) : value
  const headers: Record<string, string> = {}
  if (parsed !== null && typeof parsed === 'object') {
    for (const [name, header] of Object.entries(parsed))
      if (typeof header === 'string') headers[name] = header
  }
  return headers
}

interface Deliveries {
  processed: number
  duplicates: number
  dead: number
  /** Distinct message ids and record keys the inventory service was handed. */
  readonly ids: Set<string>
  readonly keys: Set<string>
}

/** What the relays did, for the summary. */
interface RelayRun {
  /** Rows published before the crash, not marked. */
  readonly crashed: number
  /** Records produced a second time by hand. */
  readonly byHand: number
  /** Rows the second relay marked from the progress topic (exactly-once). */
  readonly reconciled: number
}

/**
 * The relays with `exactlyOnce`: each Kafka transaction also writes the relay's progress to a
 * compacted progress topic. Relay #1 dies right after Kafka committed a batch, before its mark
 * (its store stops answering); relay #2 takes its shards once their lease ends, fences it, reads
 * the progress topic and marks those rows without publishing them again.
 */
async function relayExactlyOnce(options: {
  kafka: Kafka
  admin: Admin
  db: Kysely<DemoTables>
  store: KyselyOutboxStore<DemoTables>
  topic: string
  total: number
  firstShare: number
  batchSize: number
}): Promise<RelayRun> {
  const { kafka, admin, db, store, total, firstShare, batchSize } = options
  const progressTopic = uniqueTopic('demo-progress')
  defer(
    `topic ${progressTopic}`,
    () => admin.deleteTopics({ topics: [progressTopic], timeout: 10_000 }),
    () => `topic ${progressTopic} deleted`,
  )
  const exactlyOnce = { progressTopic }
  const leaseMs = 1_500

  // Relay #1's store: once its marks reach the first share, the next mark never arrives (the
  // process died after Kafka's commit), and neither do its claims or shard renewals.
  let marked = 0
  let unmarked = 0
  let crashed = false
  let bury!: (error: Error) => void
  const dead = new Promise<never>((_, reject) => (bury = reject))
  dead.catch(() => {})
  const dying = new Proxy(store, {
    get(target, name, receiver) {
      const value: unknown = Reflect.get(target, name, receiver)
      if (typeof value !== 'function') return value
      if (name === 'markPublished') {
        return (token: string, ids: readonly string[]) => {
          if (marked >= firstShare) crashed = true
          if (crashed) {
            unmarked += ids.length
            return dead
          }
          marked += ids.length
          return value.call(target, token, ids)
        }
      }
      if (name === 'syncShards' || name === 'claimOwned' || name === 'extendLease') {
        return (...args: unknown[]) => (crashed ? dead : value.apply(target, args))
      }
      return value.bind(target)
    },
  })
  const transport1 = createKafkaTransport({ kafka, exactlyOnce })
  defer('relay #1 transport', () => transport1.close())
  const relay1 = new Relay({
    store: dying,
    transport: transport1,
    ownership: 'shards',
    exactlyOnce: true,
    relayId: uniqueTopic('demo-relay-1'),
    batchSize,
    leaseMs,
    pollIntervalMs: 50,
    instrumentation: otelRelayInstrumentation(),
    // Its errors are written by the error listener below.
    logger: false,
  })
  defer(
    'relay #1',
    () => {
      bury(new Error('relay #1 is gone'))
      return relay1.stop()
    },
    () => 'relays stopped',
  )
  relay1.on('error', ({ error, retryInMs }) => {
    if (!crashed) warn('relay #1', `${describeError(error)} (retry in ${retryInMs} ms)`)
  })
  let claimed = 0
  relay1.on('claimed', ({ count }) => {
    claimed += count
  })
  const relay1Progress = new Progress('relay #1')
  await relay1.start()
  // Every batch relay #1 claimed reached its mark: marked, or committed in Kafka and lost with it.
  const crashedOut = await waitUntil(() => {
    relay1Progress.update(`${marked}/${total} published`)
    return { done: crashed && marked + unmarked >= claimed, progress: marked + unmarked }
  })
  relay1Progress.clear()
  if (!crashedOut) throw new Error(`relay #1 published nothing for ${STALL_MS / 1000} s`)
  step('relay #1', `published ${marked} of ${total} events (exactlyOnce) and marked them published`)
  step('crash', `relay #1 committed ${unmarked} more events to Kafka, with its progress in ${progressTopic},`)
  detail(
    `and died before marking them published: they stay pending until its shards' lease (${leaseMs / 1000} s) ends`,
  )
  step('duplicate', 'none produced by hand with --exactly-once: the topic shows what the relays wrote')

  const transport2 = createKafkaTransport({ kafka, exactlyOnce })
  defer('relay #2 transport', () => transport2.close())
  const relay2 = new Relay({
    store,
    transport: transport2,
    ownership: 'shards',
    exactlyOnce: true,
    relayId: uniqueTopic('demo-relay-2'),
    batchSize,
    pollIntervalMs: 50,
    instrumentation: otelRelayInstrumentation(),
    // Its errors are written by the error listener below.
    logger: false,
  })
  defer(
    'relay #2',
    () => relay2.stop(),
    () => 'relays stopped',
  )
  relay2.on('error', ({ error, retryInMs }) =>
    warn('relay #2', `${describeError(error)} (retry in ${retryInMs} ms)`),
  )
  let reconciled = 0
  let fenced = false
  relay2.on('reconciled', (event) => {
    reconciled += event.marked
    if (event.fenced.includes(relay1.relayId)) fenced = true
  })
  let published2 = 0
  relay2.on('published', ({ count }) => {
    published2 += count
  })
  await relay2.start()
  const relay2Progress = new Progress('relay #2')
  const drained = await waitUntil(async () => {
    const published = await countOutbox(db, 1)
    relay2Progress.update(`${published}/${total} published`)
    return { done: (await countOutbox(db, 0)) === 0, progress: published }
  })
  await relay2.stop()
  relay2Progress.clear()
  if (drained) {
    step(
      'relay #2',
      `took relay #1's shards${fenced ? ' and fenced it' : ''}, read ${progressTopic} (read_committed) and`,
    )
    detail(`marked the ${reconciled} rows it names published without sending them again;`)
    if (published2 > 0)
      detail(`then published ${published2} events: the ${total - marked - unmarked} never sent`)
  } else {
    warn('relay #2', `no progress for ${STALL_MS / 1000} s; the outbox did not drain`)
  }
  return { crashed: unmarked, byHand: 0, reconciled }
}

// ---------------------------------------------------------------- the demo

async function main(): Promise<number> {
  const { orders: total, exactlyOnce } = parseArgs(process.argv.slice(2))
  console.log(
    bold(
      exactlyOnce
        ? `outboxkit demo: ${total} orders → outbox → exactly-once relay → Kafka → inventory, with a relay crash`
        : `outboxkit demo: ${total} orders → outbox → relay → Kafka → inventory, with a relay crash and a duplicate`,
    ),
  )
  console.log('')

  // The database opens while Kafka starts (PGlite takes a few seconds to boot).
  const databaseUrl = process.env['DATABASE_URL']
  const opening = openDatabase(databaseUrl)
  opening.catch(() => {}) // its failure is reported where it is awaited
  let dropped = 'database closed'
  defer(
    'database',
    async () => (await opening.catch(() => undefined))?.close(),
    () => dropped,
  )

  let brokers = brokersFromEnv()
  if (brokers.length > 0) {
    step('kafka', `KAFKA_BROKERS=${brokers.join(',')}`)
  } else {
    const progress = new Progress('kafka')
    progress.update('scripts/kafka start (the first run fetches Kafka with Maven and takes a minute)...')
    const local = await unlessInterrupted(startLocalBroker(REPO_ROOT))
    progress.clear()
    brokers = local.brokers
    step('kafka', local.note || `local broker at ${brokers.join(',')}`)
  }

  const databaseProgress = new Progress('database')
  databaseProgress.update('opening...')
  const database = await unlessInterrupted(opening).catch((error: unknown) => {
    const where = databaseUrl ? 'the database in DATABASE_URL' : 'the embedded PGlite database'
    if (error instanceof Interrupted) throw error
    throw new Error(`could not open ${where}: ${describeError(error)}`)
  })
  databaseProgress.clear()
  dropped = database.dropped
  step('database', database.label)
  detail(
    `tables: outbox, outbox_inbox (ensureOutboxSchema), orders, stock (${SKUS.length} SKUs × ${INITIAL_STOCK})`,
  )

  const kafka = demoKafka(brokers)
  const admin = kafka.admin()
  try {
    await admin.connect()
  } catch (error) {
    throw new KafkaUnavailable(
      `cannot reach Kafka at ${brokers.join(',')}: ${describeError(error)}\nStart a broker (npm run kafka -- start) or set KAFKA_BROKERS.`,
    )
  }
  defer('kafka admin', () => admin.disconnect())
  const topic = uniqueTopic('demo-orders')
  await createTopic(admin, topic, 3)
  defer(
    `topic ${topic}`,
    () => admin.deleteTopics({ topics: [topic], timeout: 10_000 }),
    () => `topic ${topic} deleted`,
  )
  step('kafka', `topic ${topic} created (3 partitions)`)

  const { db } = database
  const store = createKyselyOutboxStore({ db })
  // The trace context of each order's request is stored with its event (outboxkit/otel).
  const outbox = new Outbox({ store, tracing: otelTraceCapture() })

  // ---- the inventory service: takes stock once per order, whatever Kafka delivers
  const deliveries: Deliveries = { processed: 0, duplicates: 0, dead: 0, ids: new Set(), keys: new Set() }
  const seen = (message: InboundMessage) => {
    deliveries.ids.add(message.id)
    if (message.key !== null) deliveries.keys.add(message.key)
  }
  const inventory = new IdempotentConsumer<Tx>({
    store: createKyselyInboxStore({ db }),
    name: CONSUMER_NAME,
    instrumentation: otelConsumerInstrumentation(),
    handler: async (message, trx) => {
      const order = parseOrder(message.value)
      await tracer.startActiveSpan('take stock', async (span) => {
        const result = await trx
          .updateTable('stock')
          .set((eb) => ({ qty: eb('qty', '-', order.qty) }))
          .where('sku', '=', order.sku)
          .executeTakeFirst()
        span.end()
        if (Number(result.numUpdatedRows) !== 1) throw new Error(`no stock row for SKU ${order.sku}`)
      })
    },
  })
  inventory.on('processed', ({ message }) => {
    deliveries.processed++
    seen(message)
  })
  inventory.on('duplicate', ({ message }) => {
    deliveries.duplicates++
    seen(message)
  })
  inventory.on('deadLettered', ({ message, reason }) => {
    deliveries.dead++
    seen(message)
    warn('inventory', `gave up on ${message.key}: ${reason}`)
  })
  inventory.on('failed', ({ message, attempt, error }) => {
    warn('inventory', `attempt ${attempt} for ${message.key} failed: ${describeError(error)}`)
  })
  const runner = createKafkaConsumerRunner({
    kafka,
    groupId: uniqueTopic('demo-inventory'),
    topics: [topic],
    consumer: inventory,
    fromBeginning: true,
    consumerConfig: { maxWaitTimeInMs: 200 },
  })
  await runner.start()
  defer(
    'inventory consumer',
    () => runner.stop(),
    () => 'consumer stopped',
  )
  step('inventory', `consumer group joined; reads ${topic} from the beginning`)

  // ---- the order service: one transaction per order, for the order row and its event
  const progress = new Progress('orders')
  const rejectAfter = Math.floor(total / 3)
  const rejected: Order = { id: 'order-rejected', sku: SKUS[0], qty: 1 }
  let rejectedEventId = ''
  for (let n = 1; n <= total; n++) {
    checkInterrupted()
    const order = makeOrder(n)
    await tracer.startActiveSpan('POST /orders', { attributes: { 'order.id': order.id } }, async (span) => {
      await db.transaction().execute(async (trx) => {
        await trx.insertInto('orders').values(order).execute()
        await outbox.add(trx, { topic, key: order.id, type: 'OrderCreated', payload: order })
      })
      span.end()
    })
    if (n === rejectAfter) {
      try {
        await db.transaction().execute(async (trx) => {
          await trx.insertInto('orders').values(rejected).execute()
          rejectedEventId = await outbox.add(trx, {
            topic,
            key: rejected.id,
            type: 'OrderCreated',
            payload: rejected,
          })
          throw new PaymentDeclined('payment declined')
        })
      } catch (error) {
        if (!(error instanceof PaymentDeclined)) throw error
      }
    }
    progress.update(`${n}/${total} written`)
  }
  progress.clear()
  step('orders', `${total} orders written, each with its OrderCreated event in one transaction`)
  detail(`${rejected.id}: the transaction threw after outbox.add (payment declined) → rolled back`)

  // ---- relay #1 publishes part of the events, then crashes in the worst place
  const crashSize = Math.min(20, Math.max(1, Math.floor(total / 10)))
  const firstShare = Math.floor((total - crashSize) / 2)
  const batchSize = Math.min(25, firstShare)
  let run: RelayRun
  if (exactlyOnce) {
    run = await relayExactlyOnce({ kafka, admin, db, store, topic, total, firstShare, batchSize })
  } else {
    const transport1 = createKafkaTransport({ kafka })
    defer('relay #1 transport', () => transport1.close())
    const relay1 = new Relay({
      store,
      transport: transport1,
      batchSize,
      instrumentation: otelRelayInstrumentation(),
      // Its errors are written by the error listener below.
      logger: false,
    })
    defer(
      'relay #1',
      () => relay1.stop(),
      () => 'relays stopped',
    )
    relay1.on('error', ({ error, retryInMs }) =>
      warn('relay #1', `${describeError(error)} (retry in ${retryInMs} ms)`),
    )
    let published1 = 0
    const relay1Progress = new Progress('relay #1')
    relay1.on('published', ({ count }) => {
      published1 += count
      relay1Progress.update(`${published1}/${total} published`)
      // Stop claiming once the share is out (the stop takes effect before the next claim).
      if (published1 >= firstShare) void relay1.stop()
    })
    await relay1.start()
    const firstShareOut = await waitUntil(() => ({ done: published1 >= firstShare, progress: published1 }))
    await relay1.stop()
    if (!firstShareOut) throw new Error(`relay #1 published nothing for ${STALL_MS / 1000} s`)
    relay1Progress.clear()
    step('relay #1', `published ${published1} of ${total} events and marked them published`)

    // What a relay does for one batch is claim → publish → mark. This one dies after the broker
    // acknowledged the batch and before the mark: the rows stay claimed until the lease ends.
    const claim = await store.claim({ limit: crashSize, leaseMs: 1_000 })
    const outcomes = await transport1.publish(claim.records)
    await transport1.close()
    const acknowledged = outcomes.filter((outcome) => outcome.status === 'published').length
    if (acknowledged < claim.records.length) {
      warn('crash', `only ${acknowledged} of ${claim.records.length} records were acknowledged`)
    }
    step(
      'crash',
      `relay #1 claimed ${claim.records.length} more events (lease 1 s), Kafka acknowledged ${acknowledged},`,
    )
    detail('and the relay died before marking them published: they stay pending until the lease ends')

    // ---- a duplicate delivery: one published record produced again, byte for byte
    const original = await db
      .selectFrom('outbox')
      .select(['id', 'topic', 'key', 'type', 'payload', 'headers'])
      .where('status', '=', 1)
      .orderBy('seq')
      .limit(1)
      .executeTakeFirstOrThrow()
    await produceAgain(kafka, {
      id: original.id,
      topic: original.topic,
      key: original.key,
      type: original.type,
      payload: original.payload,
      headers: storedHeaders(original.headers),
    })
    step(
      'duplicate',
      `${original.key}'s event produced a second time with kafkajs (same key, payload, headers)`,
    )

    // ---- relay #2 picks up everything left, including the crashed relay's batch once its lease ends
    const transport2 = createKafkaTransport({ kafka })
    defer('relay #2 transport', () => transport2.close())
    const relay2 = new Relay({
      store,
      transport: transport2,
      batchSize,
      instrumentation: otelRelayInstrumentation(),
      // Its errors are written by the error listener below.
      logger: false,
    })
    defer(
      'relay #2',
      () => relay2.stop(),
      () => 'relays stopped',
    )
    relay2.on('error', ({ error, retryInMs }) =>
      warn('relay #2', `${describeError(error)} (retry in ${retryInMs} ms)`),
    )
    let published2 = 0
    relay2.on('published', ({ count }) => {
      published2 += count
    })
    await relay2.start()
    const relay2Progress = new Progress('relay #2')
    const drained = await waitUntil(async () => {
      const published = await countOutbox(db, 1)
      relay2Progress.update(`${published}/${total} published`)
      return { done: (await countOutbox(db, 0)) === 0, progress: published }
    })
    await relay2.stop()
    relay2Progress.clear()
    if (drained) {
      step(
        'relay #2',
        `published ${published2} events: the ${total - published1 - claim.records.length} never sent,`,
      )
      detail(
        `and the ${claim.records.length} of the crashed relay again once its lease ended (same message ids)`,
      )
    } else {
      warn('relay #2', `no progress for ${STALL_MS / 1000} s; the outbox did not drain`)
    }

    run = {
      crashed: claim.records.length,
      byHand: 1,
      reconciled: 0,
    }
  }

  // ---- wait until the inventory service has seen every record in the topic
  // What a read_committed consumer finds in the topic: every record, and the copies of a message id.
  const { records, duplicates } = await readCommitted(kafka, admin, topic)
  const inventoryProgress = new Progress('inventory')
  const caughtUp = await waitUntil(() => {
    const handled = deliveries.processed + deliveries.duplicates + deliveries.dead
    inventoryProgress.update(
      `${deliveries.processed}/${total} orders applied, ${deliveries.duplicates} duplicates skipped (${handled}/${records} records)`,
    )
    return { done: handled >= records, progress: handled }
  })
  inventoryProgress.clear()
  if (caughtUp) {
    step('inventory', `${deliveries.processed} orders applied, ${deliveries.duplicates} duplicates skipped`)
  } else {
    warn('inventory', `no progress for ${STALL_MS / 1000} s; did not catch up with the topic`)
  }
  await runner.stop()

  const firstOrder = makeOrder(1).id
  const tree = renderTrace('POST /orders', 'order.id', firstOrder)
  if (tree) {
    console.log('')
    console.log(
      bold(`The trace of ${firstOrder} (outboxkit/otel, one trace from the request to the handler)`),
    )
    console.log(tree)
  }

  return check(database, {
    total,
    records,
    duplicates,
    exactlyOnce,
    ...run,
    rejected,
    rejectedEventId,
    deliveries,
  })
}

/** Produces a record as the relay published it: same key, payload and headers (so the same message id). */
async function produceAgain(
  kafka: Kafka,
  record: {
    id: string
    topic: string
    key: string
    type: string
    payload: Uint8Array
    headers: Record<string, string>
  },
): Promise<void> {
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner })
  await producer.connect()
  try {
    await producer.send({
      topic: record.topic,
      acks: -1,
      messages: [{ key: record.key, value: Buffer.from(record.payload), headers: publishedHeaders(record) }],
    })
  } finally {
    await producer.disconnect()
  }
}

async function countOutbox(db: Kysely<DemoTables>, status: number): Promise<number> {
  const row = await db
    .selectFrom('outbox')
    .select((eb) => eb.fn.countAll().as('n'))
    .where('status', '=', status)
    .executeTakeFirstOrThrow()
  return Number(row.n)
}

/** Reads the database and prints the summary and the invariants. Returns the exit code. */
async function check(
  database: DemoDatabase,
  run: {
    total: number
    records: number
    duplicates: number
    exactlyOnce: boolean
  } & RelayRun & {
      rejected: Order
      rejectedEventId: string
      deliveries: Deliveries
    },
): Promise<number> {
  const { db } = database
  const { deliveries } = run
  const count = (row: { n: number | string | bigint }) => Number(row.n)
  const orders = count(
    await db
      .selectFrom('orders')
      .select((eb) => eb.fn.countAll().as('n'))
      .executeTakeFirstOrThrow(),
  )
  const rejectedRows = count(
    await db
      .selectFrom('orders')
      .select((eb) => eb.fn.countAll().as('n'))
      .where('id', '=', run.rejected.id)
      .executeTakeFirstOrThrow(),
  )
  const rejectedEvents = count(
    await db
      .selectFrom('outbox')
      .select((eb) => eb.fn.countAll().as('n'))
      .where('key', '=', run.rejected.id)
      .executeTakeFirstOrThrow(),
  )
  const pending = await countOutbox(db, 0)
  const published = await countOutbox(db, 1)
  const dead = await countOutbox(db, 2)
  const inboxRows = count(
    await db
      .selectFrom('outbox_inbox')
      .select((eb) => eb.fn.countAll().as('n'))
      .where('consumer', '=', CONSUMER_NAME)
      .executeTakeFirstOrThrow(),
  )
  const stock = await db.selectFrom('stock').select(['sku', 'qty']).execute()
  const ordered = await db
    .selectFrom('orders')
    .select((eb) => ['sku', eb.fn.sum<number | string>('qty').as('qty')])
    .groupBy('sku')
    .execute()
  const orderedBySku = new Map(ordered.map((row) => [row.sku, Number(row.qty)]))
  const wrongSkus = stock.filter(
    (row) => INITIAL_STOCK - Number(row.qty) !== (orderedBySku.get(row.sku) ?? 0),
  )
  const taken = stock.reduce((sum, row) => sum + INITIAL_STOCK - Number(row.qty), 0)
  const orderedUnits = ordered.reduce((sum, row) => sum + Number(row.qty), 0)
  const handed = deliveries.processed + deliveries.duplicates + deliveries.dead
  const rejectedDelivered = deliveries.keys.has(run.rejected.id) || deliveries.ids.has(run.rejectedEventId)

  printSummary('Summary', [
    {
      label: 'orders written (order row + event, one transaction each)',
      value: orders,
      ...(orders === run.total ? {} : { note: `the order service wrote ${run.total}!` }),
    },
    {
      label: 'rolled-back order (threw after outbox.add)',
      value: 1,
      note: `→ ${rejectedEvents} events in the outbox, ${rejectedDelivered ? 'delivered!' : '0 in Kafka'}`,
    },
    { label: 'events published (outbox rows marked published)', value: published },
    { label: 'records in Kafka (read_committed)', value: run.records },
    {
      label: 'duplicate records in the topic (message id seen before)',
      value: run.duplicates,
      ...(run.exactlyOnce
        ? { note: `without --exactly-once the crashed batch (${run.crashed}) is there twice` }
        : {}),
    },
    ...(run.exactlyOnce
      ? [
          { label: 'published by relay #1, then its crash before the mark', value: run.crashed, sub: true },
          { label: 'reconciled by relay #2 from the progress topic', value: run.reconciled, sub: true },
        ]
      : [
          { label: 're-published after the relay crash', value: run.crashed, sub: true },
          { label: 'produced a second time by hand', value: run.byHand, sub: true },
        ]),
    { label: 'deliveries to the inventory service', value: handed },
    {
      label: 'duplicates delivered (message id seen before)',
      value: handed - deliveries.ids.size,
      sub: true,
    },
    { label: 'duplicates skipped by the inbox', value: deliveries.duplicates, sub: true },
    { label: 'side effects applied (stock taken)', value: deliveries.processed, sub: true },
    ...(deliveries.dead > 0 ? [{ label: 'dead letters', value: deliveries.dead, sub: true }] : []),
  ])

  const invariants: Invariant[] = [
    {
      ok: wrongSkus.length === 0 && stock.length === SKUS.length,
      text:
        wrongSkus.length === 0
          ? `stock decreased exactly once per order: ${taken} units taken for ${orderedUnits} ordered, per SKU`
          : `stock decreased exactly once per order: wrong for ${wrongSkus.map((row) => row.sku).join(', ')} (${taken} units taken for ${orderedUnits} ordered)`,
    },
    { ok: inboxRows === orders, text: `inbox rows (${inboxRows}) == orders (${orders})` },
    {
      ok: pending === 0 && dead === 0 && published === orders,
      text: `no outbox row pending (${pending}) or dead (${dead}); ${published} published`,
    },
    run.exactlyOnce
      ? {
          ok: run.duplicates === 0 && run.records === orders,
          text: `${run.duplicates} duplicate records in the topic: Kafka records (${run.records}) == orders (${orders})`,
        }
      : {
          ok: run.records > orders && run.duplicates === run.crashed + run.byHand,
          text: `Kafka records (${run.records}) > orders (${orders}): ${run.duplicates} duplicates were delivered`,
        },
    ...(run.exactlyOnce
      ? [
          {
            ok: run.crashed > 0 && run.reconciled === run.crashed,
            text: `rows reconciled from the progress topic (${run.reconciled}) == rows the crash left unmarked (${run.crashed})`,
          },
        ]
      : []),
    {
      ok: deliveries.processed === orders && deliveries.ids.size === orders && deliveries.dead === 0,
      text: `side effects applied (${deliveries.processed}) == orders (${orders}), despite ${handed - deliveries.ids.size} duplicates`,
    },
    {
      ok: rejectedRows === 0 && rejectedEvents === 0 && !rejectedDelivered,
      text: `rolled-back order left no order row (${rejectedRows}), no event (${rejectedEvents}), nothing in Kafka (${rejectedDelivered ? 1 : 0})`,
    },
  ]
  printInvariants('Invariants', invariants)
  const failed = invariants.filter((invariant) => !invariant.ok).length
  console.log('')
  console.log(
    failed === 0
      ? green(bold('✔ all invariants hold'))
      : red(bold(`✘ ${failed} of ${invariants.length} invariants failed`)),
  )
  return failed === 0 ? 0 : 1
}

// ---------------------------------------------------------------- entry point

let usedLocalBroker = brokersFromEnv().length === 0

// kafkajs 2.2.4 arms a timer with a negative delay when its request queue is not throttled; the
// runtime clamps it to 1 ms and warns. Harmless, and not the demo's business: keep it out of the output.
process.removeAllListeners('warning')
process.on('warning', (warning) => {
  if (warning.name !== 'TimeoutNegativeWarning') console.warn(warning)
})

process.on('SIGINT', () => {
  if (interruption.signal.aborted) process.exit(130)
  console.log('\ninterrupted: cleaning up (Ctrl-C again to quit at once)')
  interruption.abort()
})

startTracing()
let exitCode = 1
try {
  exitCode = await main()
} catch (error) {
  if (error instanceof UsageError) {
    if (error.message) console.error(`${red(error.message)}\n\n${USAGE}`)
    else console.log(USAGE)
    exitCode = error.message ? 2 : 0
    usedLocalBroker = false
  } else if (error instanceof KafkaUnavailable) {
    console.error(red(`✘ ${error.message}`))
    usedLocalBroker = false
  } else if (!(error instanceof Interrupted)) {
    console.error(red(`✘ the demo failed: ${describeError(error)}`))
    if (error instanceof Error && error.stack) console.error(error.stack)
  }
}
await cleanup()
if (cleaned.length > 0) {
  step('cleanup', cleaned.join(', '))
  if (usedLocalBroker)
    detail('the Kafka broker keeps running for the next run (npm run kafka -- stop stops it)')
}
process.exit(interruption.signal.aborted ? 130 : exitCode)
