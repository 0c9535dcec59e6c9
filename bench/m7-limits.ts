/**
 * M7 relay against its limits: how close the relay comes to what the database and Kafka can do on
 * their own, with ownership 'rows' and 'shards', at 50 and 5 000 distinct keys, batch 500.
 *
 * - Database limit: a plain SQL loop on the outbox table that claims and marks 500 rows per batch
 *   with FOR UPDATE SKIP LOCKED in as few statements as the database allows (no lease, no
 *   per-key order): the fastest a relay could take rows out of this table.
 * - Relay with an acknowledging sink (no broker) ÷ that limit: what the relay's own claiming and
 *   marking cost.
 * - Kafka limit: raw kafkajs producing the same records at the same batch size and settings.
 * - Relay with the Kafka transport ÷ min(database limit, Kafka limit).
 * - 3 relays on one table (each its own pool and sink) ÷ 1 relay, checking that every key arrived
 *   in order.
 *
 * Relays run their loop (start/stop), so 'shards' pipelines claim, publish and mark as it does in
 * production. They are started on an empty table (and, with shards, left to split the shards),
 * then the backlog is committed in one transaction; the clock starts at that commit.
 */

import type { Producer } from 'kafkajs'
import { type Kysely, type LogEvent, sql } from 'kysely'
import { createKafkaTransport } from '../src/adapters/kafka/index.js'
import { createKyselyOutboxStore } from '../src/adapters/kysely/index.js'
import {
  type ClaimedRecord,
  Outbox,
  type OutboxMessageInput,
  type OutboxStore,
  type PublishOutcome,
  Relay,
  type Transport,
} from '../src/index.js'
import {
  type Context,
  type Figure,
  formatNumber,
  type MeasurementResult,
  ofRounds,
  rate,
} from './lib/context.js'
import { type BackendName, type BenchDatabase, type BenchTables, openDatabase } from './lib/db.js'
import { freshTopic, keyOf, PAYLOAD, rawProducer, sendRaw, testKafka } from './lib/kafka.js'
import { PhaseProfile, ProfiledStore, ProfiledTransport } from './lib/relay.js'
import { median, now, ratios, rounds, sleep } from './lib/stats.js'

type Tx = Kysely<BenchTables>
type RelayOwnership = 'rows' | 'shards'

const BACKENDS: readonly BackendName[] = ['postgres.js', 'mariadb']
const KEY_COUNTS = [50, 5_000] as const
const BATCH = 500
const PARTITIONS = 3
const SCALE_OUT = 3
/** Header carrying the record's write order, for the per-key order check. */
const ORDER_HEADER = 'bench-n'
/** A drain that takes longer than this has stalled. */
const DRAIN_TIMEOUT_MS = 120_000
/** How long relays in shards mode may take to split the shards between them. */
const BALANCE_TIMEOUT_MS = 20_000

const PUBLISHED: PublishOutcome = { status: 'published' }

/** What the acknowledging sinks received, batch by batch, in the order publish was called. */
class Received {
  batches: (readonly ClaimedRecord[])[] = []

  reset(): void {
    this.batches = []
  }

  /**
   * Throws if a record is missing or a record arrived before an earlier record of its key had
   * been received. A record received again (published, then its mark failed, so it was claimed
   * and published again: at least once) is counted, not refused. Returns that count.
   */
  check(expected: number, label: string): number {
    const highest = new Map<string, number>()
    const seen = new Set<number>()
    let redelivered = 0
    const violations: string[] = []
    for (const batch of this.batches) {
      for (const record of batch) {
        const n = Number(record.headers[ORDER_HEADER])
        if (seen.has(n)) {
          redelivered++
          continue
        }
        seen.add(n)
        const before = highest.get(record.key)
        if (before !== undefined && n < before && violations.length < 5)
          violations.push(`${record.key}: #${n} after #${before}`)
        if (before === undefined || n > before) highest.set(record.key, n)
      }
    }
    if (violations.length > 0) throw new Error(`M7 ${label}: key order violated (${violations.join('; ')})`)
    if (seen.size !== expected)
      throw new Error(`M7 ${label}: the sinks received ${seen.size} distinct records, expected ${expected}`)
    return redelivered
  }
}

/** A transport that acknowledges every record at once: the relay without a broker. */
class AckSink implements Transport {
  readonly name = 'ack-sink'
  readonly capabilities = { transactions: false }
  readonly #received: Received

  constructor(received: Received) {
    this.#received = received
  }

  async publish(records: readonly ClaimedRecord[]): Promise<readonly PublishOutcome[]> {
    this.#received.batches.push(records)
    return records.map(() => PUBLISHED)
  }

  async close(): Promise<void> {}
}

interface Handle {
  readonly relayId: string
  readonly store: OutboxStore<Tx>
  relay(ownership: RelayOwnership): Relay<Tx>
}

/** A relay's own pool and store, on the given transport; profiled when `profile` is set. */
function openHandle(
  database: BenchDatabase,
  transport: Transport,
  relayId: string,
  profile?: PhaseProfile,
): Handle {
  const db = database.pool({ max: 4, ...(profile ? { log: (e: LogEvent) => profile.log(e) } : {}) })
  const inner = createKyselyOutboxStore({ db, schema: database.schema })
  const store: OutboxStore<Tx> = profile ? new ProfiledStore(inner, profile) : inner
  const published = profile ? new ProfiledTransport(transport, profile) : transport
  return {
    relayId,
    store,
    relay: (ownership) =>
      new Relay({ store, transport: published, batchSize: BATCH, ownership, relayId, pollIntervalMs: 2 }),
  }
}

/** The backlog, written in one transaction so it becomes claimable all at once. */
async function commitBacklog(
  database: BenchDatabase,
  topic: string,
  count: number,
  keys: number,
): Promise<void> {
  const store = createKyselyOutboxStore({ db: database.db, schema: database.schema })
  const outbox = new Outbox({ store })
  await store.transaction(async (trx) => {
    for (let start = 0; start < count; start += 1000) {
      const messages: OutboxMessageInput[] = []
      for (let i = start; i < Math.min(start + 1000, count); i++)
        messages.push({
          topic,
          key: keyOf(i, keys),
          type: 'OrderCreated',
          payload: PAYLOAD,
          headers: { [ORDER_HEADER]: String(i) },
        })
      await outbox.add(trx, messages)
    }
  })
}

/** Waits until the relays (shards mode) own every shard between them, none draining. */
async function balanced(
  relays: readonly Relay<Tx>[],
  last: readonly ({ liveRelays: number; draining: readonly number[] } | undefined)[],
  shardCount: number,
): Promise<void> {
  const deadline = now() + BALANCE_TIMEOUT_MS
  for (;;) {
    const owned = relays.reduce((sum, relay) => sum + relay.ownedShards.length, 0)
    const settled = last.every(
      (c) => c !== undefined && c.liveRelays === relays.length && c.draining.length === 0,
    )
    if (settled && owned === shardCount) return
    if (now() > deadline)
      throw new Error(`M7: ${relays.length} relays did not split the ${shardCount} shards (own ${owned})`)
    await sleep(20)
  }
}

interface DrainOptions {
  readonly handles: readonly Handle[]
  readonly ownership: RelayOwnership
  readonly count: number
  /** Commits the backlog; the clock starts when it returns. */
  readonly fill: () => Promise<void>
  /** Shards in the table, once known: the relays must own all of them before the fill. */
  readonly shardCount?: number
}

interface Drained {
  readonly perSecond: number
  readonly wallMs: number
  /** Shards the relays owned between them (shards mode). */
  readonly shards: number
  /** What the relays' `error` events reported (each retried by the relay; the drain went on). */
  readonly errors: readonly string[]
}

/** Starts a relay per handle, commits the backlog, and times until every record is published and marked. */
async function drainWith(options: DrainOptions): Promise<Drained> {
  const relays = options.handles.map((h) => h.relay(options.ownership))
  const changes: ({ liveRelays: number; draining: readonly number[] } | undefined)[] = relays.map(
    () => undefined,
  )
  const errors: string[] = []
  let published = 0
  let done: () => void = () => {}
  const finished = new Promise<void>((resolve) => {
    done = resolve
  })
  relays.forEach((relay, i) => {
    relay.on('published', (event) => {
      published += event.count
      if (published >= options.count) done()
    })
    relay.on('shardsChanged', (change) => {
      changes[i] = change
    })
    relay.on('error', (event) => {
      errors.push(event.error instanceof Error ? event.error.message : String(event.error))
    })
  })
  try {
    for (const relay of relays) await relay.start()
    let shards = 0
    if (options.ownership === 'shards') {
      if (options.shardCount === undefined) {
        // The first relay of a table owns every shard: that tells how many there are.
        const deadline = now() + BALANCE_TIMEOUT_MS
        while (!(changes[0] && changes[0].liveRelays === 1 && relays[0]!.ownedShards.length > 0)) {
          if (now() > deadline) throw new Error('M7: the relay took no shards')
          await sleep(10)
        }
        // A later sync may still take shards that another relay just gave up.
        await sleep(50)
      } else {
        await balanced(relays, changes, options.shardCount)
      }
      shards = relays.reduce((sum, relay) => sum + relay.ownedShards.length, 0)
    }
    await options.fill()
    const started = now()
    const timeout = sleep(DRAIN_TIMEOUT_MS).then(() => 'timeout' as const)
    if ((await Promise.race([finished, timeout])) === 'timeout')
      throw new Error(`M7: drain stalled at ${published} of ${options.count} (${errors.length} relay errors)`)
    const wallMs = now() - started
    return { perSecond: options.count / (wallMs / 1000), wallMs, shards, errors }
  } finally {
    await Promise.all(relays.map((relay) => relay.stop()))
  }
}

/**
 * The database limit: one connection claiming and marking batches of 500 with SKIP LOCKED, reading
 * the columns a relay reads. Postgres: one UPDATE … RETURNING per batch. MariaDB (no RETURNING on
 * UPDATE): a transaction of SELECT … FOR UPDATE SKIP LOCKED and UPDATE by seq.
 */
async function sqlLoop(database: BenchDatabase, db: Tx, count: number): Promise<number> {
  const t = database.table('outbox')
  let done = 0
  const started = now()
  while (done < count) {
    let rows: number
    if (database.dialect === 'postgres') {
      const result = await sql
        .raw(`UPDATE ${t} SET status = 1, published_at = now(), attempts = attempts + 1
          WHERE seq IN (SELECT seq FROM ${t} WHERE status = 0 AND available_at <= now()
            ORDER BY seq LIMIT ${BATCH} FOR UPDATE SKIP LOCKED)
          RETURNING id, topic, key, type, payload, headers, attempts, created_at`)
        .execute(db)
      rows = result.rows.length
    } else {
      rows = await db.transaction().execute(async (trx) => {
        const selected = await sql
          .raw<{
            seq: number | string
          }>(`SELECT seq, id, topic, \`key\`, type, payload, headers, attempts, created_at
            FROM ${t} WHERE status = 0 AND available_at <= NOW(6)
            ORDER BY seq LIMIT ${BATCH} FOR UPDATE SKIP LOCKED`)
          .execute(trx)
        if (selected.rows.length === 0) return 0
        const seqs = selected.rows.map((r) => String(r.seq)).join(',')
        await sql
          .raw(
            `UPDATE ${t} SET status = 1, published_at = NOW(6), attempts = attempts + 1 WHERE seq IN (${seqs})`,
          )
          .execute(trx)
        return selected.rows.length
      })
    }
    if (rows === 0) throw new Error(`M7: the SQL loop found nothing after ${done} of ${count} rows`)
    done += rows
  }
  return count / ((now() - started) / 1000)
}

interface Setup {
  readonly database: BenchDatabase
  readonly topic: string
  readonly sqlPool: Tx
  readonly received: Received
  /** Acknowledging handles: the first alone, all of them for the scale-out. */
  readonly ack: readonly Handle[]
  readonly kafka: Handle
  readonly producer: Producer
  readonly shards: boolean
  shardCount: number | undefined
  /** Errors the relays reported and recovered from, by step. */
  readonly relayErrors: { step: string; error: string }[]
  close(): Promise<void>
}

async function open(backend: BackendName): Promise<Setup> {
  const database = await openDatabase(backend)
  const closers: (() => Promise<void>)[] = []
  try {
    const topic = await freshTopic(`bench-limits-${backend.replace('.', '')}`, PARTITIONS)
    const received = new Received()
    const ack = Array.from({ length: SCALE_OUT }, (_, i) =>
      openHandle(database, new AckSink(received), `m7-ack-${i}`),
    )
    const transport = createKafkaTransport({ kafka: testKafka() })
    closers.push(() => transport.close())
    const kafka = openHandle(database, transport, 'm7-kafka')
    const producer = await rawProducer(testKafka())
    closers.push(() => producer.disconnect())
    return {
      database,
      topic,
      sqlPool: database.pool({ max: 4 }),
      received,
      ack,
      kafka,
      producer,
      shards: ack[0]!.store.capabilities.shards === true,
      shardCount: undefined,
      relayErrors: [],
      async close() {
        for (const close of closers) await close().catch(() => {})
        await database.close()
      },
    }
  } catch (error) {
    for (const close of closers) await close().catch(() => {})
    await database.close()
    throw error
  }
}

/** One step of a round: a drain by `handles` of a fresh backlog over `keys` keys; rows/s. */
async function relayStep(
  setup: Setup,
  handles: readonly Handle[],
  ownership: RelayOwnership,
  count: number,
  keys: number,
  /** Names the step in relay errors and order violations. */
  name: string,
  /** The acknowledging sinks received the records: check each key's order. */
  checkOrder: boolean,
): Promise<number> {
  await setup.database.resetOutbox()
  setup.received.reset()
  const result = await drainWith({
    handles,
    ownership,
    count,
    fill: () => commitBacklog(setup.database, setup.topic, count, keys),
    ...(ownership === 'shards' && setup.shardCount !== undefined ? { shardCount: setup.shardCount } : {}),
  })
  if (ownership === 'shards') setup.shardCount ??= result.shards
  for (const error of result.errors) setup.relayErrors.push({ step: name, error })
  if (checkOrder) {
    const redelivered = setup.received.check(count, name)
    if (redelivered > 0)
      setup.relayErrors.push({ step: name, error: `${redelivered} records received twice` })
  }
  return result.perSecond
}

async function sqlStep(setup: Setup, count: number, keys: number): Promise<number> {
  await setup.database.resetOutbox()
  await commitBacklog(setup.database, setup.topic, count, keys)
  return sqlLoop(setup.database, setup.sqlPool, count)
}

async function rawStep(setup: Setup, count: number, keys: number): Promise<number> {
  const started = now()
  await sendRaw(setup.producer, setup.topic, 0, count, BATCH, keys)
  return count / ((now() - started) / 1000)
}

/** One profiled drain through the Kafka transport: where a batch's time goes. */
async function profile(
  setup: Setup,
  ownership: RelayOwnership,
  count: number,
  keys: number,
): Promise<Record<string, unknown>> {
  const phases = new PhaseProfile()
  const transport = createKafkaTransport({ kafka: testKafka() })
  try {
    const handle = openHandle(setup.database, transport, `m7-profile-${ownership}`, phases)
    // Warm this pool and producer.
    await setup.database.resetOutbox()
    await drainWith({
      handles: [handle],
      ownership,
      count: 1000,
      fill: () => commitBacklog(setup.database, setup.topic, 1000, keys),
    })
    await setup.database.resetOutbox()
    phases.reset()
    const result = await drainWith({
      handles: [handle],
      ownership,
      count,
      ...(ownership === 'shards' && setup.shardCount !== undefined ? { shardCount: setup.shardCount } : {}),
      fill: async () => {
        await commitBacklog(setup.database, setup.topic, count, keys)
        phases.reset() // what ran while the table was empty is not a batch's cost
      },
    })
    for (const error of result.errors)
      setup.relayErrors.push({ step: `${setup.database.backend} ${keys} keys profile ${ownership}`, error })
    const summary = phases.summary()
    const statements = Object.values(phases.statements).reduce((a, b) => a + b, 0)
    return {
      ownership,
      keys,
      events: count,
      eventsPerSecond: result.perSecond,
      wallMsPerBatch: phases.batches === 0 ? 0 : result.wallMs / phases.batches,
      ...summary,
      // All statements per batch (summary() splits them by phase, which overlap in shards mode).
      statementsPerBatchTotal: phases.batches === 0 ? 0 : statements / phases.batches,
    }
  } finally {
    await transport.close()
  }
}

const NA = 'n/a (store without shard ownership)'

function notAvailable(id: string, group: string, label: string): Figure {
  return { id, group, label, unit: 'ratio', value: Number.NaN, measured: NA, baseline: '' }
}

export async function runM7(ctx: Context): Promise<MeasurementResult> {
  const count = ctx.sizes.limitsEvents
  const figures: Figure[] = []
  const raw: Record<string, unknown> = {}
  const profiles: Record<string, unknown>[] = []
  const relayErrors: { backend: string; step: string; error: string }[] = []
  for (const backend of BACKENDS) {
    const setup = await open(backend)
    const backendRaw: Record<string, unknown> = { shards: setup.shards }
    raw[backend] = backendRaw
    try {
      if (!setup.shards) ctx.log(`  M7 ${backend}: the store has no shard ownership; shard variants are n/a`)
      ctx.log(`  M7 ${backend}: warm-up`)
      await rawStep(setup, 500, 50)
      await sqlStep(setup, 1000, 50)
      await setup.database.analyze('outbox')
      for (const handle of [...setup.ack, setup.kafka])
        await relayStep(setup, [handle], 'rows', 1000, 50, 'warm-up', handle !== setup.kafka)
      if (setup.shards) await relayStep(setup, setup.ack.slice(0, 1), 'shards', 1000, 50, 'warm-up', true)

      for (const keys of KEY_COUNTS) {
        const one = setup.ack.slice(0, 1)
        const steps: Record<string, () => Promise<number>> = {
          sql: () => sqlStep(setup, count, keys),
          raw: () => rawStep(setup, count, keys),
          ackRows: () =>
            relayStep(setup, one, 'rows', count, keys, `${backend} ${keys} keys 1 relay rows`, true),
          ack3Rows: () =>
            relayStep(setup, setup.ack, 'rows', count, keys, `${backend} ${keys} keys 3 relays rows`, true),
          kafkaRows: () =>
            relayStep(setup, [setup.kafka], 'rows', count, keys, `${backend} ${keys} keys Kafka rows`, false),
        }
        if (setup.shards) {
          steps['ackShards'] = () =>
            relayStep(setup, one, 'shards', count, keys, `${backend} ${keys} keys 1 relay shards`, true)
          steps['ack3Shards'] = () =>
            relayStep(
              setup,
              setup.ack,
              'shards',
              count,
              keys,
              `${backend} ${keys} keys 3 relays shards`,
              true,
            )
          steps['kafkaShards'] = () =>
            relayStep(
              setup,
              [setup.kafka],
              'shards',
              count,
              keys,
              `${backend} ${keys} keys Kafka shards`,
              false,
            )
        }
        const result = await rounds({
          warmup: 0,
          repetitions: ctx.sizes.repetitions,
          steps,
          onRound: (round, v) =>
            ctx.log(
              `  M7 ${backend} ${keys} keys round ${round}: ${Object.entries(v)
                .map(([k, x]) => `${k} ${x.toFixed(0)}`)
                .join(', ')} rows/s`,
            ),
        })
        backendRaw[`keys${keys}`] = { events: count, batch: BATCH, partitions: PARTITIONS, ...result }
        figures.push(...keyFigures(backend, keys, result))
        backendRaw['shardCount'] = setup.shardCount
      }

      ctx.log(`  M7 ${backend}: phase profile`)
      for (const keys of KEY_COUNTS) {
        for (const ownership of ['rows', 'shards'] as const) {
          if (ownership === 'shards' && !setup.shards) continue
          profiles.push({ backend, ...(await profile(setup, ownership, count, keys)) })
        }
      }
    } finally {
      for (const e of setup.relayErrors) {
        ctx.log(`  M7 relay error (retried by the relay): ${e.step}: ${e.error}`)
        relayErrors.push({ backend, ...e })
      }
      await setup.close()
    }
  }
  raw['profiles'] = profiles
  raw['relayErrors'] = relayErrors
  const errorLines =
    relayErrors.length === 0
      ? 'Relay errors during the drains: none.'
      : `Relay errors during the drains (each reported by an \`error\` event and retried by the relay; the drain and its timing went on): ${relayErrors.length}\n${relayErrors
          .slice(0, 10)
          .map((e) => `- ${e.step}: ${e.error}`)
          .join('\n')}`
  return {
    figures,
    raw,
    details: `Where an M7 batch goes (one profiled drain each, 1 relay, Kafka transport, batch ${BATCH}; in shards mode the phases overlap, so claim + publish + mark exceed the wall time per batch):\n\n${phaseTable(profiles)}\n\n${errorLines}`,
  }
}

function keyFigures(backend: string, keys: number, r: Record<string, number[]>): Figure[] {
  const figures: Figure[] = []
  const at = `${backend}, ${formatNumber(keys)} keys`
  const id = (suffix: string) => `M7.${backend}.k${keys}.${suffix}`
  const sqlRate = rate(median(r['sql']!), 'rows/s SQL')
  const group = 'M7 relay against its limits'
  figures.push({
    id: id('kafkaLimit'),
    group,
    label: `${at}: Kafka limit ÷ database limit`,
    unit: 'ratio',
    ...ofRounds(ratios(r['raw']!, r['sql']!)),
    measured: rate(median(r['raw']!), 'rows/s raw kafkajs'),
    baseline: sqlRate,
  })
  for (const mode of ['Rows', 'Shards'] as const) {
    const ack = r[`ack${mode}`]
    if (!ack) {
      figures.push(
        notAvailable(id(`ack.${mode.toLowerCase()}`), group, `${at}: ack relay (shards) ÷ database limit`),
      )
      continue
    }
    figures.push({
      id: id(`ack.${mode.toLowerCase()}`),
      group,
      label: `${at}: ack relay (${mode.toLowerCase()}) ÷ database limit`,
      unit: 'ratio',
      ...ofRounds(ratios(ack, r['sql']!)),
      measured: rate(median(ack), 'rows/s'),
      baseline: sqlRate,
    })
  }
  const limit = r['sql']!.map((s, i) => Math.min(s, r['raw']![i]!))
  const limitName = median(r['sql']!) <= median(r['raw']!) ? 'SQL' : 'raw'
  for (const mode of ['Rows', 'Shards'] as const) {
    const kafka = r[`kafka${mode}`]
    if (!kafka) {
      figures.push(notAvailable(id('kafka.shards'), group, `${at}: Kafka relay (shards) ÷ min(limits)`))
      continue
    }
    figures.push({
      id: id(`kafka.${mode.toLowerCase()}`),
      group,
      label: `${at}: Kafka relay (${mode.toLowerCase()}) ÷ min(limits)`,
      unit: 'ratio',
      ...ofRounds(ratios(kafka, limit)),
      measured: rate(median(kafka), 'rows/s'),
      baseline: rate(median(limit), `rows/s min (mostly ${limitName})`),
    })
  }
  for (const mode of ['Rows', 'Shards'] as const) {
    const three = r[`ack3${mode}`]
    const single = r[`ack${mode}`]
    if (!three || !single) {
      figures.push(notAvailable(id('scale.shards'), group, `${at}: 3 ack relays ÷ 1 (shards), order checked`))
      continue
    }
    figures.push({
      id: id(`scale.${mode.toLowerCase()}`),
      group,
      label: `${at}: 3 ack relays ÷ 1 (${mode.toLowerCase()}), order checked`,
      unit: 'ratio',
      ...ofRounds(ratios(three, single)),
      measured: rate(median(three), 'rows/s ×3'),
      baseline: rate(median(single), 'rows/s ×1'),
    })
  }
  return figures
}

function phaseTable(profiles: readonly Record<string, unknown>[]): string {
  const header = [
    'Backend',
    'Keys',
    'Ownership',
    'rows/s',
    'Wall ms/batch',
    'Claim ms',
    'Publish ms',
    'Mark ms',
    'Stmts/batch',
  ]
  const rows = profiles.map((p) => {
    const ms = (p['msPerBatch'] ?? {}) as Record<string, number>
    return [
      String(p['backend']),
      formatNumber(Number(p['keys'])),
      String(p['ownership']),
      formatNumber(Number(p['eventsPerSecond'])),
      Number(p['wallMsPerBatch']).toFixed(1),
      (ms['claim'] ?? 0).toFixed(1),
      (ms['publish'] ?? 0).toFixed(1),
      (ms['mark'] ?? 0).toFixed(1),
      Number(p['statementsPerBatchTotal']).toFixed(1),
    ]
  })
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)))
  const line = (cells: readonly string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`
  return [line(header), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.map(line)].join('\n')
}
