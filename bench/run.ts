/**
 * The benchmark suite: what outboxkit costs against the same work done without it, on the local
 * PostgreSQL, MariaDB and Kafka. See docs/benchmarks.md.
 *
 *   bun bench/run.ts [--quick | --smoke] [--only m1,m2,m4,m5,m6,m7,m8,m9,m10,m11] [--skip m8,m10] [--repetitions N] [--rss-events N] [--no-save]
 *
 * Prints one table (each figure a ratio against its baseline, or milliseconds added over it,
 * with the absolute numbers beside it) and writes everything measured to
 * bench/results/<ISO date>.json. Exits 0 when every measurement ran, 1 when one failed; the
 * figures are reported, never asserted.
 */

import {
  type Context,
  type Figure,
  FULL,
  type MeasurementResult,
  QUICK,
  type Sizes,
  SMOKE,
} from './lib/context.js'
import { silenceNegativeTimeoutWarnings, testKafka } from './lib/kafka.js'
import { describeMachine, loadAverage } from './lib/machine.js'
import { figuresTable, machineLines, writeResults } from './lib/report.js'
import { runM1 } from './m1-write.js'
import { runRelaySuite } from './m2-relay.js'
import { runM4 } from './m4-latency.js'
import { runM5 } from './m5-consumer.js'
import { runM6 } from './m6-memory.js'
import { runM7 } from './m7-limits.js'
import { runM8 } from './m8-exactly-once.js'
import { runM9 } from './m9-log-relay.js'
import { runM10 } from './m10-cdc.js'
import { runM11 } from './m11-isolation.js'

interface Measurement {
  readonly id: string
  readonly title: string
  run(ctx: Context): Promise<MeasurementResult>
}

const MEASUREMENTS: readonly Measurement[] = [
  { id: 'm1', title: 'M1 write overhead', run: runM1 },
  { id: 'm2', title: 'M2 relay throughput and M3 transactional cost', run: runRelaySuite },
  { id: 'm4', title: 'M4 commit → handler latency', run: runM4 },
  { id: 'm5', title: 'M5 consumer overhead', run: runM5 },
  { id: 'm6', title: 'M6 relay memory', run: runM6 },
  { id: 'm7', title: 'M7 relay against its limits', run: runM7 },
  { id: 'm8', title: 'M8 exactly-once cost', run: runM8 },
  { id: 'm9', title: 'M9 log-tailing relay throughput', run: runM9 },
  { id: 'm10', title: 'M10 change data capture vs Debezium', run: runM10 },
  { id: 'm11', title: 'M11 other keys next to a poison key, a hot key, a new topic', run: runM11 },
]

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 ? process.argv[i + 1] : undefined
}

silenceNegativeTimeoutWarnings()

const smoke = process.argv.includes('--smoke')
const quick = smoke || process.argv.includes('--quick')
const save = !process.argv.includes('--no-save')
const measurementIds = (list: string | undefined) =>
  new Set(
    (list ?? '')
      .split(',')
      .map((s) => s.trim().toLowerCase().replace('m3', 'm2'))
      .filter(Boolean),
  )
const only = measurementIds(arg('only'))
const skip = measurementIds(arg('skip'))
const repetitions = arg('repetitions')
const rssEvents = arg('rss-events')
const sizes: Sizes = {
  ...(smoke ? SMOKE : quick ? QUICK : FULL),
  ...(repetitions ? { repetitions: Math.max(1, Number(repetitions)) } : {}),
  ...(rssEvents ? { rssEvents: Math.max(1, Number(rssEvents)) } : {}),
}
const log = (line: string) => process.stderr.write(`${line}\n`)
const ctx: Context = { quick, sizes, log }

// A hung broker or database must not hang CI: give up well past the expected duration.
const watchdog = setTimeout(
  () => {
    log(`bench: gave up after ${quick ? 5 : 15} minutes`)
    process.exit(3)
  },
  (quick ? 5 : 15) * 60_000,
)
watchdog.unref()

async function checkKafka(): Promise<void> {
  const admin = testKafka().admin()
  await admin.connect()
  try {
    await admin.listTopics()
  } finally {
    await admin.disconnect()
  }
}

async function main(): Promise<number> {
  const date = new Date()
  const started = performance.now()
  const load = [loadAverage()]
  const machine = await describeMachine()
  const services: [name: string, version: string, variable: string][] = [
    ['PostgreSQL', machine.postgres, 'OUTBOXKIT_POSTGRES_URL'],
    ['MariaDB', machine.mariadb, 'OUTBOXKIT_MYSQL_URL'],
  ]
  const unreachable = services
    .filter(([, version]) => version.startsWith('unreachable'))
    .map(([name, version, variable]) => `${name} ${version}; start it or set ${variable}`)
  try {
    await checkKafka()
  } catch (error) {
    unreachable.push(`Kafka unreachable (${String(error)}); start it with: bash scripts/kafka start`)
  }
  if (unreachable.length > 0) {
    for (const line of unreachable) log(`bench: ${line}`)
    return 1
  }
  log(machineLines(machine, load))
  log(
    `Sizes: ${smoke ? 'smoke' : quick ? 'quick' : 'full'}, ${sizes.repetitions} repetitions after ${sizes.warmup} warm-up`,
  )

  const figures: Figure[] = []
  const details: string[] = []
  const raw: Record<string, unknown> = {}
  const timings: Record<string, number> = {}
  const errors: { measurement: string; error: string }[] = []
  for (const measurement of MEASUREMENTS) {
    if ((only.size > 0 && !only.has(measurement.id)) || skip.has(measurement.id)) continue
    log(`${measurement.title} (load ${loadAverage()[0].toFixed(2)})`)
    const t = performance.now()
    try {
      const result = await measurement.run(ctx)
      figures.push(...result.figures)
      raw[measurement.id] = result.raw
      if (result.details) details.push(result.details)
    } catch (error) {
      const text = error instanceof Error ? (error.stack ?? error.message) : String(error)
      errors.push({ measurement: measurement.id, error: text })
      log(`bench: ${measurement.title} failed: ${text}`)
    }
    timings[measurement.id] = (performance.now() - t) / 1000
    load.push(loadAverage())
    log(`  ${timings[measurement.id]!.toFixed(1)} s`)
  }

  const seconds = (performance.now() - started) / 1000
  const output = [
    '',
    `outboxkit benchmarks, ${date.toISOString()} (${quick ? 'quick' : 'full'}, ${seconds.toFixed(0)} s)`,
    machineLines(machine, load),
    '',
    figuresTable(figures),
  ]
  for (const block of details) output.push('', block)
  if (errors.length > 0) output.push('', `Failed: ${errors.map((e) => e.measurement).join(', ')}`)
  console.log(output.join('\n'))

  if (save) {
    const file = writeResults(
      {
        date: date.toISOString(),
        command: ['bun', 'bench/run.ts', ...process.argv.slice(2)].join(' '),
        quick,
        sizes,
        seconds,
        timings,
        machine,
        loadAverage: load,
        figures,
        raw,
        errors,
      },
      date,
      quick,
    )
    log(`Results: ${file}`)
  }
  return errors.length > 0 ? 1 : 0
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    log(`bench: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`)
    process.exit(1)
  },
)
