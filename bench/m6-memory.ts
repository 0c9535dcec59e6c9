/**
 * M6 memory: peak resident set size of a relay draining the outbox at full speed (batch 1000),
 * alone in a child process, against the same for a bare kafkajs producer sending the same number
 * of records in the same batches. Both children run on the same runtime as the suite.
 */
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { type Context, type Figure, formatNumber, type MeasurementResult, ofRounds } from './lib/context.js'
import { openDatabase } from './lib/db.js'
import { freshTopic } from './lib/kafka.js'
import { fillOutbox } from './lib/relay.js'
import { median, ratios } from './lib/stats.js'
import { RELAY_KEYS } from './m2-relay.js'

const CHILD = fileURLToPath(new URL('./relay-child.ts', import.meta.url))
const BATCH = 1000

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
  const relayRuns: ChildResult[] = []
  try {
    const repetitions = ctx.quick ? 1 : 3
    for (let round = 1; round <= repetitions; round++) {
      rawRuns.push(await child([...common, '--raw']))
      await database.resetOutbox()
      await fillOutbox(database, topic, events, RELAY_KEYS)
      relayRuns.push(await child([...common, '--schema', database.schema]))
      ctx.log(
        `  M6 round ${round}: peak RSS raw ${mb(rawRuns.at(-1)!.peakRss)}, relay ${mb(relayRuns.at(-1)!.peakRss)} (relay idle ${mb(relayRuns.at(-1)!.idleRss)})`,
      )
    }
  } finally {
    await database.close()
  }
  const peak = (runs: ChildResult[]) => median(runs.map((r) => r.peakRss))
  const figures: Figure[] = [
    {
      id: 'M6.rss',
      group: 'M6 memory',
      label: `peak RSS, relay draining ${formatNumber(events)} events at batch ${BATCH} (child process) ÷ raw producer`,
      unit: 'ratio',
      ...ofRounds(
        ratios(
          relayRuns.map((r) => r.peakRss),
          rawRuns.map((r) => r.peakRss),
        ),
      ),
      measured: mb(peak(relayRuns)),
      baseline: `${mb(peak(rawRuns))} raw`,
    },
  ]
  return { figures, raw: { events, batch: BATCH, relay: relayRuns, rawProducer: rawRuns } }
}
