/**
 * Log-tailing relays killed at random, every part its own process: writer processes
 * (test/fixtures/writer-worker.ts) commit events on disjoint keys; two relay processes on the
 * same feed (the Postgres slot, or the MariaDB binlog with its reader lock), one reading and one
 * standby; two consumer processes in one group feeding an IdempotentConsumer that records each
 * side effect. A seeded killer SIGKILLs relays (often right after the broker acknowledged a batch
 * and before the feed confirmed it) and consumers, and starts them again. Then the checker reads
 * the outbox table, the topic and the effects table directly: every committed event is in the
 * topic (L) and applied once (D), each key's records and effects are in write order (O), and a
 * copy in the topic is byte-identical to the first.
 *
 * Run by test/integration/log-relay-kill.test.ts.
 */
import { sql } from 'kysely'
import type { Backend } from '../support/databases.js'
import { groupSessionTimeoutMs, uniqueName } from '../support/kafka.js'
import { startWorker, type Worker } from '../support/processes.js'
import { consumeAll, openRelayWorld, recordCount, waitFor } from '../support/relay-world.js'
import { compareTopic, type TopicCheck, tableRows } from './checker.js'
import { seeded } from './scenarios.js'

export interface LogKillOptions {
  readonly backend: Backend
  readonly seed: number
  /** SIGKILLs to send, relays and consumers together. */
  readonly kills: number
  log(line: string): void
}

export interface LogKillResult extends Omit<TopicCheck, 'unsettled'> {
  readonly seed: number
  readonly relayKills: number
  /** Relay kills sent right after the relay printed that the broker acknowledged a batch. */
  readonly ackWindowKills: number
  readonly consumerKills: number
  /** Committed events with no side effect. */
  readonly effectsLost: number
  /** Side effects applied more than once. */
  readonly effectDuplicates: number
  /** Keys whose side effects were applied in another order than written. */
  readonly effectOrderViolations: number
  /** From the last fault until every event was applied. */
  readonly recoveryMs: number
  readonly durationMs: number
}

const WRITERS = 2
const EVENTS_PER_WRITER = 600
const KEYS_PER_WRITER = 8
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

export async function runLogKill(options: LogKillOptions): Promise<LogKillResult> {
  const { backend, seed, log } = options
  const started = Date.now()
  const random = seeded(seed)
  const world = await openRelayWorld(backend, { partitions: 3 })
  const { database } = world
  const mysql = database.dialect === 'mysql'
  const q = (name: string) => (mysql ? `\`${name}\`` : `"${name}"`)
  const table = (name: string) => `${q(database.schema)}.${q(name)}`
  await database.query(
    mysql
      ? `CREATE TABLE ${table('orders')} (id BIGINT AUTO_INCREMENT PRIMARY KEY, writer VARCHAR(32) NOT NULL, n INT NOT NULL)`
      : `CREATE TABLE ${table('orders')} (id bigserial PRIMARY KEY, writer text NOT NULL, n int NOT NULL)`,
  )
  // The consumer fixture's side effects, numbered in the order they committed.
  await database.query(
    mysql
      ? `CREATE TABLE ${table('effects')} (n BIGINT AUTO_INCREMENT PRIMARY KEY, message_id VARCHAR(64) NOT NULL, detail VARCHAR(255) NOT NULL)`
      : `CREATE TABLE ${table('effects')} (n bigserial PRIMARY KEY, message_id text NOT NULL, detail text NOT NULL)`,
  )
  const slot = uniqueName('lk').replaceAll('-', '_').toLowerCase()
  let serverId = 20_000 + Math.floor(random() * 10_000)
  const relayEnv = (): Record<string, string> =>
    mysql
      ? {
          SCHEMA: database.schema,
          BROKERS: world.brokers.join(','),
          SERVER_ID: String(serverId++),
          BATCH_SIZE: '50',
          ACK_PAUSE_MS: '30',
        }
      : {
          SCHEMA: database.schema,
          SLOT: slot,
          BROKERS: world.brokers.join(','),
          BATCH_SIZE: '50',
          PUBLISH_DELAY_MS: '30',
        }
  const relayWorker = mysql ? 'binlog-relay-worker' : 'log-relay-worker'
  const consumerEnv = {
    BACKEND: backend.name,
    SCHEMA: database.schema,
    BROKERS: world.brokers.join(','),
    TOPIC: world.topic,
    GROUP: uniqueName('logkill'),
    SESSION_TIMEOUT_MS: String(await groupSessionTimeoutMs()),
  }
  const every: Worker[] = []
  const start = async (name: string, env: Record<string, string>) => {
    const worker = await startWorker(name, env)
    every.push(worker)
    return worker
  }
  let relayKills = 0
  let ackWindowKills = 0
  let consumerKills = 0
  let lastFault = Date.now()
  try {
    // The feed exists before the first write: one relay opens it and is killed at once.
    const first = await start(relayWorker, relayEnv())
    await waitFor('the feed opened', () => first.output().includes('opened'), 30_000)
    const relays: Worker[] = [first, await start(relayWorker, relayEnv())]
    const consumers: Worker[] = [
      await start('consumer-worker', consumerEnv),
      await start('consumer-worker', consumerEnv),
    ]
    const writers = await Promise.all(
      Array.from({ length: WRITERS }, (_, w) =>
        start('writer-worker', {
          BACKEND: backend.name,
          SCHEMA: database.schema,
          TOPIC: world.topic,
          PREFIX: `w${w}`,
          KEYS: String(KEYS_PER_WRITER),
          EVENTS: String(EVENTS_PER_WRITER),
          SEED: String(seed * 7 + w),
        }),
      ),
    )
    const writing = () => writers.some((w) => !w.output().includes('done '))
    const ackWord = mysql ? 'acked ' : 'published '
    for (let k = 0; k < options.kills; k++) {
      await sleep(100 + Math.floor(random() * 300))
      // Two relay kills for each consumer kill.
      if (k % 3 !== 2) {
        // The reading relay, if one reads; else either.
        const reading = relays.findIndex((r) => r.output().includes('opened'))
        const index = reading >= 0 && random() < 0.8 ? reading : Math.floor(random() * relays.length)
        const victim = relays[index]!
        // Often right after the broker acknowledged a batch, before the feed confirmed it.
        if (random() < 0.6) {
          const from = victim.output().length
          const deadline = Date.now() + 1_500
          while (Date.now() < deadline && !victim.output().slice(from).includes(ackWord)) await sleep(2)
          if (victim.output().slice(from).includes(ackWord)) ackWindowKills++
        }
        await victim.kill('SIGKILL')
        relayKills++
        log(`  kill relay ${index}`)
        await sleep(Math.floor(random() * 300))
        relays[index] = await start(relayWorker, relayEnv())
      } else {
        const index = Math.floor(random() * consumers.length)
        await consumers[index]!.kill('SIGKILL')
        consumerKills++
        log(`  kill consumer ${index}`)
        await sleep(Math.floor(random() * 300))
        consumers[index] = await start('consumer-worker', consumerEnv)
      }
      lastFault = Date.now()
    }
    await waitFor('the writers to finish', () => !writing(), 120_000)
    const events = (await tableRows(world)).length
    const applied = async () =>
      Number(
        (
          await database.query<{ n: unknown }>(
            `SELECT count(DISTINCT message_id) AS n FROM ${table('effects')}`,
          )
        )[0]?.n,
      )
    // What never arrives is reported by the checks below as lost, not as a timeout.
    await waitFor(
      `${events} events in the topic and applied`,
      async () => (await recordCount(world.brokers, world.topic)) >= events && (await applied()) >= events,
      60_000,
    ).catch((error: unknown) => log(`  ${String(error)}`))
    const recoveryMs = Date.now() - lastFault
    // Let redeliveries after the last kill settle before reading the effects.
    await sleep(500)

    const rows = await tableRows(world)
    const { unsettled: _unsettled, ...topic } = compareTopic(
      rows,
      await consumeAll(world.brokers, world.topic),
    )
    const effects = await database.query<{ message_id: unknown }>(
      `SELECT message_id FROM ${table('effects')} ORDER BY n`,
    )
    const keyOf = new Map(rows.map((r) => [r.id, r.key]))
    const counts = new Map<string, number>()
    const appliedByKey = new Map<string, string[]>()
    for (const { message_id } of effects) {
      const id = String(message_id)
      counts.set(id, (counts.get(id) ?? 0) + 1)
      if (counts.get(id) === 1) {
        const key = keyOf.get(id) ?? ''
        appliedByKey.set(key, [...(appliedByKey.get(key) ?? []), id])
      }
    }
    const writtenByKey = new Map<string, string[]>()
    for (const row of rows) writtenByKey.set(row.key, [...(writtenByKey.get(row.key) ?? []), row.id])
    let effectOrderViolations = 0
    for (const [key, ids] of writtenByKey) {
      const seen = appliedByKey.get(key) ?? []
      if (seen.length !== ids.length || seen.some((id, i) => id !== ids[i])) effectOrderViolations++
    }
    return {
      seed,
      ...topic,
      relayKills,
      ackWindowKills,
      consumerKills,
      effectsLost: rows.filter((r) => !counts.has(r.id)).length,
      effectDuplicates: [...counts.values()].reduce((sum, n) => sum + n - 1, 0),
      effectOrderViolations,
      recoveryMs,
      durationMs: Date.now() - started,
    }
  } finally {
    for (const worker of every) await worker.kill('SIGKILL')
    if (!mysql) {
      // A killed relay's walsender may hold the slot for a moment after the process died.
      for (let attempt = 0; attempt < 50; attempt++) {
        const dropped =
          await sql`SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = ${slot}`
            .execute(database.db)
            .then(
              () => true,
              () => false,
            )
        if (dropped) break
        await sleep(100)
      }
      await database.query(`DROP PUBLICATION IF EXISTS "${slot}"`).catch(() => {})
    }
    await world.close()
  }
}
