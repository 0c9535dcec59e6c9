/**
 * M11 other keys' latency next to a poison key, a hot key and a topic that does not exist yet.
 *
 * One polling relay (Postgres, ownership 'rows', LISTEN/NOTIFY) publishes 50 ordinary keys
 * written at a fixed rate; the figure is their commit → broker acknowledgement latency (p50, p99)
 * in a phase with a disturbance, minus the same in an undisturbed phase of the same round:
 * - poison: a key whose head keeps failing retriably (the transport refuses its records), one new
 *   event of it per 100 ms;
 * - hot: one key with a backlog of `relayEvents[1000]` rows (10 000; quick 3 000) written just
 *   before the phase, drained while it runs;
 * - new topic: every 100 ms an event for a topic that does not exist yet (the broker creates it
 *   on first use).
 * Goal: p99 added ≤ 20 ms for each (the disturbance must not hold the other keys back).
 */
import { createKafkaTransport } from '../src/adapters/kafka/index.js'
import { createKyselyOutboxStore, postgresJsListener } from '../src/adapters/kysely/index.js'
import {
  type ClaimedRecord,
  Outbox,
  type OutboxMessageInput,
  type PublishOutcome,
  Relay,
  type Transport,
} from '../src/index.js'
import { type Context, type Figure, type MeasurementResult, ms, ofRounds } from './lib/context.js'
import { listenConnection, openDatabase } from './lib/db.js'
import { freshTopic, PAYLOAD, testKafka, uniqueName } from './lib/kafka.js'
import { median, now, percentile, sleep } from './lib/stats.js'

const RATE = 100
const KEYS = 50
const DISTURBANCE_EVERY_MS = 100
const POISON_KEY = 'poison'
const HOT_KEY = 'hot'

type Phase = 'baseline' | 'poison' | 'hot' | 'newTopic'
const DISTURBED: readonly Exclude<Phase, 'baseline'>[] = ['poison', 'hot', 'newTopic']
const LABELS: Record<Exclude<Phase, 'baseline'>, string> = {
  poison: 'a poison key (its head fails retriably)',
  hot: 'a hot key draining a backlog',
  newTopic: 'events for topics that do not exist yet',
}

export async function runM11(ctx: Context): Promise<MeasurementResult> {
  const seconds = Math.max(1, ctx.sizes.latencySeconds)
  const backlog = ctx.sizes.relayEvents[1000] ?? 10_000
  const database = await openDatabase('postgres.js')
  const topic = await freshTopic('bench-iso', 3)
  const listenSql = listenConnection()
  const acked = new Map<string, number>()
  const inner = createKafkaTransport({ kafka: testKafka() })
  // Notes when the broker acknowledged each record; refuses the poison key's records.
  const transport: Transport = {
    name: inner.name,
    capabilities: inner.capabilities,
    close: () => inner.close(),
    async publish(records: readonly ClaimedRecord[]): Promise<readonly PublishOutcome[]> {
      const outcomes: PublishOutcome[] = new Array(records.length)
      const sent: ClaimedRecord[] = []
      const at: number[] = []
      records.forEach((record, i) => {
        if (record.key === POISON_KEY) outcomes[i] = { status: 'failed', error: 'poison', retriable: true }
        else {
          sent.push(record)
          at.push(i)
        }
      })
      const results = sent.length > 0 ? await inner.publish(sent) : []
      const t = now()
      results.forEach((outcome, j) => {
        outcomes[at[j]!] = outcome
        if (outcome.status === 'published') acked.set(sent[j]!.id, t)
      })
      return outcomes
    },
  }
  const relay = new Relay({
    store: createKyselyOutboxStore({
      db: database.pool({ max: 4 }),
      schema: database.schema,
      notify: true,
      listener: postgresJsListener(listenSql),
    }),
    transport,
    batchSize: 500,
    // The poison key's head retries quickly, for as long as the phase runs.
    backoff: { initialMs: 50, maxMs: 200 },
    maxAttempts: 1_000_000,
    logger: false,
  })
  const store = createKyselyOutboxStore({ db: database.db, schema: database.schema, notify: true })
  const outbox = new Outbox({ store })
  const write = (messages: OutboxMessageInput[]) => store.transaction((trx) => outbox.add(trx, messages))

  const phase = async (name: Phase) => {
    if (name === 'hot') {
      for (let start = 0; start < backlog; start += 1000) {
        const size = Math.min(1000, backlog - start)
        await write(
          Array.from({ length: size }, (_, i) => ({
            topic,
            key: HOT_KEY,
            type: 'E',
            payload: { n: start + i },
          })),
        )
      }
    }
    const total = Math.round(RATE * seconds)
    const committed = new Map<string, number>()
    const started = now()
    let nextDisturbance = started
    const writes: Promise<void>[] = []
    for (let n = 0; n < total; n++) {
      const wait = started + (n * 1000) / RATE - now()
      if (wait > 0) await sleep(wait)
      writes.push(
        write([{ topic, key: `k${n % KEYS}`, type: 'E', payload: { ...PAYLOAD, n } }]).then(([id]) => {
          committed.set(id!, now())
        }),
      )
      if ((name === 'poison' || name === 'newTopic') && now() >= nextDisturbance) {
        nextDisturbance += DISTURBANCE_EVERY_MS
        writes.push(
          write([
            name === 'poison'
              ? { topic, key: POISON_KEY, type: 'E', payload: { n } }
              : { topic: uniqueName('bench-iso-new'), key: `new-${n}`, type: 'E', payload: { n } },
          ]).then(() => {}),
        )
      }
    }
    await Promise.all(writes)
    const ids = [...committed.keys()]
    const deadline = now() + 60_000
    while (ids.some((id) => !acked.has(id))) {
      if (now() > deadline) throw new Error(`M11 ${name}: ordinary events not acknowledged within 60 s`)
      await sleep(5)
    }
    const latencies = ids.map((id) => acked.get(id)! - committed.get(id)!)
    for (const id of ids) acked.delete(id)
    return { p50: percentile(latencies, 50), p99: percentile(latencies, 99) }
  }

  const results: Record<Phase, { p50: number; p99: number }[]> = {
    baseline: [],
    poison: [],
    hot: [],
    newTopic: [],
  }
  try {
    await relay.start()
    ctx.log('  M11: warm-up')
    await phase('baseline')
    for (let round = 1; round <= ctx.sizes.latencyRepetitions; round++) {
      for (const name of ['baseline', ...DISTURBED] as const) {
        results[name].push(await phase(name))
        // The poison key's rows stay pending: drop them so the next phase starts clean.
        if (name === 'poison') {
          await database.query(`DELETE FROM ${database.table('outbox')} WHERE "key" = '${POISON_KEY}'`)
        }
      }
      ctx.log(
        `  M11 round ${round}: p50/p99 ${(['baseline', ...DISTURBED] as const).map((p) => `${p} ${results[p].at(-1)!.p50.toFixed(1)}/${results[p].at(-1)!.p99.toFixed(1)} ms`).join(', ')}`,
      )
    }
  } finally {
    await relay.stop().catch(() => {})
    await inner.close().catch(() => {})
    await listenSql.end({ timeout: 1 }).catch(() => {})
    await database.close()
  }

  const figures: Figure[] = []
  for (const name of DISTURBED) {
    for (const p of ['p50', 'p99'] as const) {
      figures.push({
        id: `M11.${name}.${p}`,
        group: 'M11 other keys next to a disturbance',
        label: `${LABELS[name]}: other keys' commit → ack ${p}, added over an undisturbed phase`,
        unit: 'ms',
        ...ofRounds(results[name].map((r, i) => r[p] - results.baseline[i]![p])),
        measured: ms(median(results[name].map((r) => r[p]))),
        baseline: `${ms(median(results.baseline.map((r) => r[p])))} undisturbed`,
        ...(p === 'p99' ? { target: { op: '<=', value: 20 } } : {}),
      })
    }
  }
  return { figures, raw: { rate: RATE, keys: KEYS, seconds, backlog, results } }
}
