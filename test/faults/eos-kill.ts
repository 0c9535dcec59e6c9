/**
 * Exactly-once relays killed at random: three relay processes (test/fixtures/relay-worker.ts) with
 * `exactlyOnce: true` share a table while writers commit events; a seeded killer SIGKILLs one relay
 * after another (often right inside the window between the broker's commit and the database mark,
 * widened by MARK_DELAY_MS), restarts it under the same relay id or a new one, and once freezes
 * one (SIGSTOP) past its shard lease and resumes it. Then every relay must be healthy, every row
 * published, and a `read_committed` reader must see each event exactly once, in key order.
 *
 * The same run with `exactlyOnce: false` (each relay transactional under its own id) shows what the
 * scenario catches: every kill inside the window leaves a batch that the next owner publishes again.
 *
 * Run by test/integration/relay-exactly-once-kill.test.ts and, round after round, by
 * `npm run soak:eos` (test/faults/soak-eos.ts).
 */
import type { Backend } from '../support/databases.js'
import { uniqueTopic } from '../support/kafka.js'
import { startWorker, type Worker } from '../support/processes.js'
import { consumeCommitted, openRelayWorld, type RelayWorld, waitFor } from '../support/relay-world.js'
import { compareTopic, type TopicCheck, tableRows } from './checker.js'
import { seeded } from './scenarios.js'

export interface EosKillOptions {
  readonly backend: Backend
  readonly seed: number
  /** false: the same faults on relays without exactlyOnce (transactional, one id per relay). */
  readonly exactlyOnce: boolean
  /** SIGKILLs to send (the writers write until they are done, and the one pause). */
  readonly kills: number
  log(line: string): void
}

export interface EosKillResult extends TopicCheck {
  readonly seed: number
  readonly exactlyOnce: boolean
  readonly keys: number
  readonly markDelayMs: number
  /** SIGKILLs, and of them those sent right after the relay printed "marking" (in the window). */
  readonly kills: number
  readonly windowKills: number
  /** Restarts under a new relay id (the others reused the killed relay's id). */
  readonly newIds: number
  /** SIGSTOPs held past the lease, then SIGCONT. */
  readonly pauses: number
  /** Rows marked from the progress topic ("reconciled <n>" lines, summed over every process). */
  readonly reconciledMarked: number
  readonly reconciliations: number
  /** Marks fenced because the shard had moved on ("leaseLost <n>" lines, summed). */
  readonly leaseLost: number
  /** From the end of the faults until every row was published. */
  readonly recoveryMs: number
  readonly durationMs: number
}

const LEASE_MS = 1_500
const RELAYS = 3
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** Sums the first number of every output line starting with `word `. */
function sumLines(outputs: readonly string[], word: string): { lines: number; total: number } {
  let lines = 0
  let total = 0
  const pattern = new RegExp(`^${word} (\\d+)`, 'gm')
  for (const output of outputs) {
    for (const match of output.matchAll(pattern)) {
      lines++
      total += Number(match[1])
    }
  }
  return { lines, total }
}

/** Waits until `worker` prints a line starting with `word ` after output position `from`. */
async function printed(worker: Worker, word: string, from: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    const rest = worker.output().slice(from)
    if (rest.startsWith(`${word} `) || rest.includes(`\n${word} `)) return true
    if (worker.process.exitCode !== null) return false
    await sleep(2)
  }
  return false
}

/** Relay ids owning shards, read directly. */
async function shardOwners(world: RelayWorld): Promise<Set<string>> {
  const q = (name: string) => (world.database.dialect === 'mysql' ? `\`${name}\`` : `"${name}"`)
  const rows = await world.database.query<{ owner: unknown }>(
    `SELECT DISTINCT owner FROM ${q(world.database.schema)}.${q('outbox_shards')} WHERE owner IS NOT NULL`,
  )
  return new Set(rows.map((r) => String(r.owner)))
}

export async function runEosKill(options: EosKillOptions): Promise<EosKillResult> {
  const { backend, seed, exactlyOnce, log } = options
  const killsWanted = Math.max(2, options.kills)
  const started = Date.now()
  const random = seeded(seed)
  const keys = 20 + Math.floor(random() * 21)
  const markDelayMs = 200 + Math.floor(random() * 301)
  const world = await openRelayWorld(backend, { partitions: 3 })
  const progressTopic = uniqueTopic('progress')
  // Unique per run: transactional ids outlive a run on the broker.
  const tag = crypto.randomUUID().slice(0, 6)
  const env = (relayId: string): Record<string, string> => ({
    BACKEND: backend.name,
    SCHEMA: world.database.schema,
    BROKERS: world.brokers.join(','),
    BATCH_SIZE: '50',
    LEASE_MS: String(LEASE_MS),
    MARK_DELAY_MS: String(markDelayMs),
    OWNERSHIP: 'shards',
    RELAY_ID: relayId,
    ...(exactlyOnce ? { EXACTLY_ONCE: '1', PROGRESS_TOPIC: progressTopic } : { TRANSACTIONAL_ID: relayId }),
  })
  const everyWorker: Worker[] = []
  const start = async (relayId: string) => {
    const worker = await startWorker('relay-worker', env(relayId))
    everyWorker.push(worker)
    return worker
  }
  const relayIds = Array.from({ length: RELAYS }, (_, slot) => `eos-${tag}-${slot}-0`)
  const slots: Worker[] = []
  let writing = true
  const writers: Promise<number>[] = []
  try {
    // A backlog, so the first batches are full, then writers on disjoint keys (two writers of one
    // key would be ordered by the application's own locks, not by the outbox).
    await world.write(
      Array.from({ length: 300 }, (_, i) => ({
        topic: world.topic,
        key: `w${i % 2}-k${(i >> 1) % (keys >> 1)}`,
        type: 'E',
        payload: { backlog: i },
      })),
    )
    slots.push(...(await Promise.all(relayIds.map((id) => start(id)))))
    for (let w = 0; w < 2; w++) {
      const next = seeded(seed * 31 + w + 1)
      writers.push(
        (async () => {
          let written = 0
          while (writing) {
            const count = 1 + Math.floor(next() * 10)
            await world.write(
              Array.from({ length: count }, (_, i) => ({
                topic: world.topic,
                key: `w${w}-k${Math.floor(next() * (keys >> 1))}`,
                type: 'E',
                payload: { writer: w, n: written + i },
              })),
            )
            written += count
            await sleep(15 + next() * 45)
          }
          return written
        })(),
      )
    }

    let kills = 0
    let windowKills = 0
    let newIds = 0
    let pauses = 0
    // The pause happens once, after a seeded number of kills (at least one before and after it).
    const pauseAfter = 1 + Math.floor(random() * (killsWanted - 1))
    let generation = 0
    while (kills < killsWanted || pauses === 0) {
      await sleep(200 + random() * 900)
      const slot = Math.floor(random() * RELAYS)
      const worker = slots[slot]!
      const pause = pauses === 0 && kills >= pauseAfter
      // The first kill always lands in the window; later ones in it, after a mark, or anywhere.
      const when = kills === 0 && !pause ? 0 : random()
      const from = worker.output().length
      let inWindow = false
      if (when < 0.5) inWindow = await printed(worker, 'marking', from, 3_000)
      else if (when < 0.75) await printed(worker, 'published', from, 3_000)
      if (pause) {
        // Frozen past its lease (sometimes inside the window): the others take its shards and fence
        // it; resumed, its transaction and its marks are refused, and it rejoins.
        worker.process.kill('SIGSTOP')
        await sleep(LEASE_MS * 2 + 1_000)
        worker.process.kill('SIGCONT')
        pauses++
        log(
          `  paused ${relayIds[slot]} for ${LEASE_MS * 2 + 1_000} ms${inWindow ? ' inside the window' : ''}`,
        )
        continue
      }
      await worker.kill('SIGKILL')
      kills++
      if (inWindow) windowKills++
      if (random() < 0.3) {
        relayIds[slot] = `eos-${tag}-${slot}-${++generation}`
        newIds++
      }
      slots[slot] = await start(relayIds[slot]!)
    }
    writing = false
    const written = 300 + (await Promise.all(writers)).reduce((a, b) => a + b, 0)
    const healed = Date.now()
    await waitFor(
      'every row published',
      async () => (await world.counts()).published === written,
      90_000,
    ).catch(async (error) => {
      throw new Error(
        `${error instanceof Error ? error.message : error} (${JSON.stringify(await world.counts())}); seed ${seed}; last output:\n${slots.map((w, i) => `--- ${relayIds[i]}\n${w.output().slice(-1_500)}`).join('\n')}`,
      )
    })
    const recoveryMs = Date.now() - healed
    // Every relay healthy: alive, and owning shards (a resumed or restarted one rejoined).
    await waitFor(
      'every relay to own shards',
      async () => {
        const owners = await shardOwners(world)
        return relayIds.every((id) => owners.has(id)) && owners.size === RELAYS
      },
      30_000,
    )
    for (const [i, worker] of slots.entries()) {
      if (worker.process.exitCode !== null || worker.process.signalCode !== null)
        throw new Error(`relay ${relayIds[i]} is not running:\n${worker.output().slice(-2_000)}`)
    }
    for (const worker of slots) await worker.kill('SIGTERM')
    const check = compareTopic(await tableRows(world), await consumeCommitted(world.brokers, world.topic))
    const outputs = everyWorker.map((w) => w.output())
    const reconciled = sumLines(outputs, 'reconciled')
    return {
      ...check,
      seed,
      exactlyOnce,
      keys,
      markDelayMs,
      kills,
      windowKills,
      newIds,
      pauses,
      reconciledMarked: reconciled.total,
      reconciliations: reconciled.lines,
      leaseLost: sumLines(outputs, 'leaseLost').total,
      recoveryMs,
      durationMs: Date.now() - started,
    }
  } finally {
    writing = false
    await Promise.allSettled(writers)
    for (const worker of everyWorker) {
      worker.process.kill('SIGCONT')
      await worker.kill('SIGKILL')
    }
    await world.close()
  }
}

/** Whether a run broke a promise of its mode (exactlyOnce: any duplicate too). */
export function violations(result: EosKillResult): string[] {
  const broken: string[] = []
  if (result.lost > 0) broken.push(`${result.lost} lost`)
  if (result.unsettled > 0) broken.push(`${result.unsettled} unsettled`)
  if (result.alteredCopies > 0) broken.push(`${result.alteredCopies} altered copies`)
  if (result.unknown > 0) broken.push(`${result.unknown} unknown records`)
  if (result.orderViolations > 0) broken.push(`${result.orderViolations} keys out of order`)
  if (result.exactlyOnce && result.topicDuplicates > 0) broken.push(`${result.topicDuplicates} duplicates`)
  return broken
}

/** One line for a run. */
export function describeRun(backend: string, result: EosKillResult): string {
  return `${backend}, ${result.exactlyOnce ? 'exactlyOnce' : 'without exactlyOnce'}, seed ${result.seed}: ${result.events} events over ${result.keys} keys, lost ${result.lost}, duplicates ${result.topicDuplicates}, altered ${result.alteredCopies}, order ${result.orderViolations}, unsettled ${result.unsettled}; ${result.kills} kills (${result.windowKills} in the commit→mark window of ${result.markDelayMs} ms, ${result.newIds} under a new id), ${result.pauses} pause past the lease; reconciled ${result.reconciledMarked} rows in ${result.reconciliations} reconciliations, ${result.leaseLost} marks fenced; recovery ${result.recoveryMs} ms, ${(result.durationMs / 1000).toFixed(1)} s`
}
