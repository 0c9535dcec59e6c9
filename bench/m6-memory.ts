/**
 * M6 memory: peak resident set size of a relay draining the outbox at full speed (batch 1000),
 * alone in a child process, with ownership 'rows' and 'shards', against the same for a bare
 * kafkajs producer sending the same number of records in the same batches. All children run on
 * the same runtime as the suite. `--rss-events N` sets the backlog (e.g. 1 000 000).
 */
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import type { RelayOwnership } from '../src/index.js'
import { type Context, type Figure, formatNumber, type MeasurementResult, ofRounds } from './lib/context.js'
import { openDatabase } from './lib/db.js'
import { freshTopic } from './lib/kafka.js'
import { fillOutbox } from './lib/relay.js'
import { median, ratios } from './lib/stats.js'
import { RELAY_KEYS } from './m2-relay.js'

const CHILD = fileURLToPath(new URL('./relay-child.ts', import.meta.url))
const BATCH = 1000
const OWNERSHIPS: readonly RelayOwnership[] = ['rows', 'shards']

interface ChildResult {
  idleRss: number
  peakRss: number
  perSecond: number
}

function child(args: string[]): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, [CHILD, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    proc.stdout.on('data', (d: Buffer) => {
      out += d.toString()
    })
    proc.stderr.on('data', (d: Buffer) => {
      err += d.toString()
    })
    proc.on('error', reject)
    proc.on('exit', (code) => {
      const line = out.trim().split('\n').at(-1) ?? ''
      if (code !== 0 || !line.startsWith('{')) {
        reject(new Error(`relay child exited with ${code}: ${err.trim().slice(-500)}`))
        return
      }
      resolve(JSON.parse(line) as ChildResult)
    })
  })
}

const mb = (bytes: number) => `${formatNumber(bytes / 1024 / 1024, 1)} MiB`

export async function runM6(ctx: Context): Promise<MeasurementResult> {
  const events = ctx.sizes.rssEvents
  const database = await openDatabase('postgres.js')
  const topic = await freshTopic('bench-memory', 3)
  const common = [
    '--topic',
    topic,
    '--events',
    String(events),
    '--batch',
    String(BATCH),
    '--keys',
    String(RELAY_KEYS),
  ]
  const rawRuns: ChildResult[] = []
  const relayRuns: Record<RelayOwnership, ChildResult[]> = { rows: [], shards: [] }
  try {
    // Three rounds at most: each fills and drains the whole backlog twice.
    const repetitions = ctx.quick ? 1 : Math.min(3, ctx.sizes.repetitions)
    for (let round = 1; round <= repetitions; round++) {
      rawRuns.push(await child([...common, '--raw']))
      const line = [`  M6 round ${round}: peak RSS raw ${mb(rawRuns.at(-1)!.peakRss)}`]
      for (const ownership of OWNERSHIPS) {
        await database.resetOutbox()
        await fillOutbox(database, topic, events, RELAY_KEYS)
        const run = await child([...common, '--schema', database.schema, '--ownership', ownership])
        relayRuns[ownership]!.push(run)
        line.push(`relay (${ownership}) ${mb(run.peakRss)} (idle ${mb(run.idleRss)})`)
      }
      ctx.log(line.join(', '))
    }
  } finally {
    await database.close()
  }
  const peak = (runs: ChildResult[]) => median(runs.map((r) => r.peakRss))
  const figures: Figure[] = OWNERSHIPS.map((ownership) => ({
    id: ownership === 'rows' ? 'M6.rss' : 'M6.rss.shards',
    group: 'M6 memory',
    label: `peak RSS, relay (${ownership}) draining ${formatNumber(events)} events at batch ${BATCH} (child process) ÷ raw producer`,
    unit: 'ratio',
    ...ofRounds(
      ratios(
        relayRuns[ownership]!.map((r) => r.peakRss),
        rawRuns.map((r) => r.peakRss),
      ),
    ),
    measured: mb(peak(relayRuns[ownership]!)),
    baseline: `${mb(peak(rawRuns))} raw`,
  }))
  return { figures, raw: { events, batch: BATCH, relay: relayRuns, rawProducer: rawRuns } }
}
