/**
 * Relay throughput against raw kafkajs for one setting, side by side on the same broker and
 * records (the full sweep is M2 of `bun bench/run.ts`; see docs/benchmarks.md).
 *
 *   bun bench/relay-throughput.ts [--events 20000] [--batch 500] [--keys 50]
 *     [--backend postgres.js|mariadb] [--relays 1] [--repetitions 3]
 *
 * Baseline: idempotent kafkajs producers (acks -1, one request in flight), as many as relays,
 * sending the same records in batches of the same size. Measured: the relays draining an outbox
 * table of those records (claim, publish, mark), each with its own pool and transport. Connections
 * are warmed up first; each repetition runs the baseline, then the relays; the median ratio is
 * reported.
 */
import type { BackendName } from './lib/db.js'
import { openDatabase } from './lib/db.js'
import { freshTopic, rawProducer, sendRaw, silenceNegativeTimeoutWarnings, testKafka } from './lib/kafka.js'
import { drain, fillOutbox, openRelayHandle } from './lib/relay.js'
import { median, now, ratios, rounds } from './lib/stats.js'

silenceNegativeTimeoutWarnings()

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 ? (process.argv[i + 1] ?? fallback) : fallback
}
const events = Number(arg('events', '20000'))
const batch = Number(arg('batch', '500'))
const keys = Number(arg('keys', '50'))
const relays = Number(arg('relays', '1'))
const repetitions = Number(arg('repetitions', '3'))
const backend: BackendName = arg('backend', 'postgres.js') === 'mariadb' ? 'mariadb' : 'postgres.js'

const database = await openDatabase(backend)
const topic = await freshTopic('bench-relay', 3)
const handles = Array.from({ length: relays }, () => openRelayHandle(database))
const producers = await Promise.all(handles.map(() => rawProducer(testKafka())))
try {
  const raw = async (): Promise<number> => {
    const share = Math.ceil(events / producers.length)
    const started = now()
    await Promise.all(
      producers.map((p, i) => sendRaw(p, topic, i * share, Math.min(events, (i + 1) * share), batch, keys)),
    )
    return events / ((now() - started) / 1000)
  }
  const relayed = async (): Promise<number> => {
    await database.resetOutbox()
    await fillOutbox(database, topic, events, keys)
    return drain(
      handles.map((h) => h.relay(batch)),
      events,
    )
  }
  const result = await rounds({
    warmup: 1,
    repetitions,
    steps: { raw, relayed },
    onRound: (round, v) =>
      console.log(
        `rep ${round}: raw kafkajs ${v.raw.toFixed(0)} ev/s, relay (${backend}) ${v.relayed.toFixed(0)} ev/s, ratio ${(v.relayed / v.raw).toFixed(2)}`,
      ),
  })
  console.log(
    `median relay/raw = ${median(ratios(result.relayed, result.raw)).toFixed(2)} (events ${events}, batch ${batch}, keys ${keys}, relays ${relays})`,
  )
} finally {
  for (const p of producers) await p.disconnect().catch(() => {})
  for (const h of handles) await h.transport.close().catch(() => {})
  await database.close()
}
process.exit(0)
