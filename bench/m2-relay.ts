/**
 * M2 relay throughput and M3 transactional cost.
 *
 * M2: events/s from the outbox table to Kafka (claim, publish, mark) ÷ raw kafkajs producing the
 * same records with the same producer settings, at batch sizes 1, 100 and 1000, with 1 relay and
 * with 3 relays (3 Relay instances, each with its own pool and transport) against 3 raw producers.
 *
 * M3: a transactional relay (one Kafka transaction per batch) ÷ the idempotent relay, in the same
 * rounds; and one raw kafkajs transaction (begin, send 100, commit) against one idempotent send
 * of the same 100 records.
 */
import type { Producer } from 'kafkajs'
import { type Context, type Figure, type MeasurementResult, ms, ofRounds, rate } from './lib/context.js'
import type { BackendName, BenchDatabase } from './lib/db.js'
import { openDatabase } from './lib/db.js'
import { freshTopic, rawMessage, rawProducer, sendRaw, testKafka, uniqueName } from './lib/kafka.js'
import { drain, fillOutbox, openRelayHandle, PhaseProfile, type RelayHandle } from './lib/relay.js'
import { profileTable } from './lib/report.js'
import { median, now, percentile, ratios, rounds } from './lib/stats.js'

/** Distinct keys, written round-robin: enough for three relays to hold different keys at batch 1000. */
export const RELAY_KEYS = 10_000
const PARTITIONS = 3

interface Plan {
  readonly backend: BackendName
  readonly batches: readonly number[]
  /** Also run 3 relays against 3 raw producers. */
  readonly scaleOut: boolean
  /** Also run a transactional relay (M3) at these batch sizes. */
  readonly transactional: readonly number[]
}

const PLANS: readonly Plan[] = [
  { backend: 'postgres.js', batches: [1, 100, 1000], scaleOut: true, transactional: [100, 1000] },
  { backend: 'mariadb', batches: [100, 1000], scaleOut: false, transactional: [] },
]

interface Setup {
  readonly database: BenchDatabase
  readonly topic: string
  readonly relays: readonly RelayHandle[]
  readonly transactional: RelayHandle | undefined
  readonly producers: readonly Producer[]
  close(): Promise<void>
}

async function open(plan: Plan): Promise<Setup> {
  const database = await openDatabase(plan.backend)
  const topic = await freshTopic(`bench-relay-${plan.backend.replace('.', '')}`, PARTITIONS)
  const relays = Array.from({ length: plan.scaleOut ? 3 : 1 }, () => openRelayHandle(database))
  const transactional =
    plan.transactional.length > 0
      ? openRelayHandle(database, { transactionalId: uniqueName('bench-relay-tx') })
      : undefined
  const producers: Producer[] = []
  for (let i = 0; i < relays.length; i++) producers.push(await rawProducer(testKafka()))
  return {
    database,
    topic,
    relays,
    transactional,
    producers,
    async close() {
      for (const producer of producers) await producer.disconnect().catch(() => {})
      for (const handle of [...relays, ...(transactional ? [transactional] : [])])
        await handle.transport.close().catch(() => {})
      await database.close()
    },
  }
}

/** Raw producers sending `events` between them, each its share in batches; events/s. */
async function produced(setup: Setup, producers: number, events: number, batch: number): Promise<number> {
  const share = Math.ceil(events / producers)
  const started = now()
  await Promise.all(
    setup.producers
      .slice(0, producers)
      .map((producer, p) =>
        sendRaw(producer, setup.topic, p * share, Math.min(events, (p + 1) * share), batch, RELAY_KEYS),
      ),
  )
  return events / ((now() - started) / 1000)
}

/** Fills the outbox (not timed), then drains it with the given relays; events/s. */
async function relayed(
  setup: Setup,
  handles: readonly RelayHandle[],
  events: number,
  batch: number,
): Promise<number> {
  await setup.database.resetOutbox()
  await fillOutbox(setup.database, setup.topic, events, RELAY_KEYS)
  return drain(
    handles.map((h) => h.relay(batch)),
    events,
  )
}

async function warmUp(setup: Setup, ctx: Context): Promise<void> {
  ctx.log('  warm-up')
  for (const producer of setup.producers) await sendRaw(producer, setup.topic, 0, 200, 100, RELAY_KEYS)
  for (const handle of [...setup.relays, ...(setup.transactional ? [setup.transactional] : [])]) {
    await relayed(setup, [handle], 500, 100)
  }
}

/** One profiled drain: where a batch's time goes, and how many statements it runs. */
async function profile(
  setup: Setup,
  batch: number,
  events: number,
  keys: number,
): Promise<Record<string, unknown>> {
  const phases = new PhaseProfile()
  const handle = openRelayHandle(setup.database, { log: phases.log, profile: phases })
  try {
    await relayed(setup, [handle], Math.min(events, batch * 2), batch) // warm this pool and producer
    await setup.database.resetOutbox()
    await fillOutbox(setup.database, setup.topic, events, keys)
    phases.reset()
    const started = now()
    const perSecond = await drain([handle.relay(batch)], events)
    return { batch, events, keys, eventsPerSecond: perSecond, wallMs: now() - started, ...phases.summary() }
  } finally {
    await handle.transport.close()
  }
}

/** p50 of one raw Kafka transaction of 100 records, and of one idempotent send of the same. */
async function rawTransactions(ctx: Context, topic: string): Promise<Record<string, number[]>> {
  const idempotent = await rawProducer(testKafka())
  const transactional = await rawProducer(testKafka(), uniqueName('bench-raw-tx'))
  const count = ctx.quick ? 20 : 60
  const send: number[] = []
  const transaction: number[] = []
  try {
    for (let i = -5; i < count; i++) {
      const messages = Array.from({ length: 100 }, (_, j) => rawMessage(i * 100 + j, RELAY_KEYS))
      let started = now()
      await idempotent.sendBatch({ topicMessages: [{ topic, messages }], acks: -1 })
      if (i >= 0) send.push(now() - started)
      started = now()
      const tx = await transactional.transaction()
      await tx.sendBatch({ topicMessages: [{ topic, messages }], acks: -1 })
      await tx.commit()
      if (i >= 0) transaction.push(now() - started)
    }
  } finally {
    await idempotent.disconnect()
    await transactional.disconnect()
  }
  return { send, transaction }
}

export async function runRelaySuite(ctx: Context): Promise<MeasurementResult> {
  const figures: Figure[] = []
  const raw: Record<string, unknown> = {}
  for (const plan of PLANS) {
    const setup = await open(plan)
    const planRaw: Record<string, unknown> = {}
    raw[plan.backend] = planRaw
    try {
      await warmUp(setup, ctx)
      for (const batch of plan.batches) {
        const events = ctx.sizes.relayEvents[batch] ?? 1000
        const steps: Record<string, () => Promise<number>> = {
          raw1: () => produced(setup, 1, events, batch),
          relay1: () => relayed(setup, setup.relays.slice(0, 1), events, batch),
        }
        if (plan.transactional.includes(batch) && setup.transactional) {
          const handle = setup.transactional
          steps['relayTx'] = () => relayed(setup, [handle], events, batch)
        }
        if (plan.scaleOut) {
          steps['raw3'] = () => produced(setup, 3, events, batch)
          steps['relay3'] = () => relayed(setup, setup.relays, events, batch)
        }
        const result = await rounds({
          warmup: 0,
          repetitions: ctx.sizes.repetitions,
          steps,
          onRound: (round, v) =>
            ctx.log(
              `  M2 ${plan.backend} batch ${batch} round ${round}: ${Object.entries(v)
                .map(([k, x]) => `${k} ${x.toFixed(0)}`)
                .join(', ')} events/s`,
            ),
        })
        planRaw[`batch${batch}`] = { events, keys: RELAY_KEYS, partitions: PARTITIONS, ...result }
        const r1 = result['raw1']!
        const v1 = result['relay1']!
        figures.push({
          id: `M2.${plan.backend}.b${batch}.r1`,
          group: 'M2 relay throughput',
          label: `${plan.backend}, batch ${batch}, 1 relay`,
          unit: 'ratio',
          ...ofRounds(ratios(v1, r1)),
          measured: rate(median(v1), 'ev/s'),
          baseline: rate(median(r1), 'ev/s raw'),
          ...(batch >= 500 ? { target: { op: '>=', value: 0.9 } } : {}),
        })
        if (result['relay3'] && result['raw3']) {
          figures.push({
            id: `M2.${plan.backend}.b${batch}.r3`,
            group: 'M2 relay throughput',
            label: `${plan.backend}, batch ${batch}, 3 relays`,
            unit: 'ratio',
            ...ofRounds(ratios(result['relay3'], result['raw3'])),
            measured: rate(median(result['relay3']), 'ev/s'),
            baseline: rate(median(result['raw3']), 'ev/s raw ×3'),
            ...(batch >= 500 ? { target: { op: '>=', value: 0.9 } } : {}),
          })
        }
        if (result['relayTx']) {
          figures.push({
            id: `M3.${plan.backend}.b${batch}`,
            group: 'M3 transactional cost',
            label: `${plan.backend}, batch ${batch}: transactional ÷ idempotent relay`,
            unit: 'ratio',
            ...ofRounds(ratios(result['relayTx'], v1)),
            measured: rate(median(result['relayTx']), 'ev/s'),
            baseline: rate(median(v1), 'ev/s'),
            ...(batch >= 1000 ? { target: { op: '>=', value: 0.9 } } : {}),
          })
        }
      }
      ctx.log(`  M2 ${plan.backend}: phase profile`)
      const profiles: Record<string, unknown>[] = []
      for (const batch of plan.batches.filter((b) => b > 1)) {
        profiles.push(await profile(setup, batch, ctx.sizes.relayEvents[batch] ?? 1000, RELAY_KEYS))
      }
      // Few keys: every head of the window is locked in a few statements' worth of rows.
      if (!ctx.quick) profiles.push(await profile(setup, 1000, ctx.sizes.relayEvents[1000] ?? 1000, 50))
      planRaw['profiles'] = profiles
      if (plan.transactional.length > 0) {
        ctx.log('  M3 raw Kafka transactions')
        const samples = await rawTransactions(ctx, setup.topic)
        planRaw['rawTransactions'] = samples
        const tx = percentile(samples['transaction']!, 50)
        const send = percentile(samples['send']!, 50)
        figures.push({
          id: 'M3.raw.tx100',
          group: 'M3 transactional cost',
          label: 'raw kafkajs: begin, send 100, commit (p50) ÷ one send of 100',
          unit: 'ratio',
          value: tx / send,
          measured: ms(tx),
          baseline: ms(send),
        })
      }
    } finally {
      await setup.close()
    }
  }
  const profiles = profileTable(raw)
  return {
    figures,
    raw,
    ...(profiles
      ? { details: `Where a relay batch goes (one profiled drain, 1 relay):\n\n${profiles}` }
      : {}),
  }
}
