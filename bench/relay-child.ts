/**
 * A relay (or, with --raw, a bare kafkajs producer) alone in its own process, for memory
 * figures: it samples its own resident set size every 20 ms while it drains, and prints one JSON
 * line with the peak. Started by the suite (M6); not meant to be run by hand.
 *
 *   bun bench/relay-child.ts --schema <schema> --topic <topic> --events <n> --batch <n>
 *     [--ownership rows|shards] [--raw]
 */
import { createKafkaTransport } from '../src/adapters/kafka/index.js'
import { createKyselyOutboxStore } from '../src/adapters/kysely/index.js'
import { Relay, type RelayOwnership } from '../src/index.js'
import { openPool } from './lib/db.js'
import { rawProducer, sendRaw, silenceNegativeTimeoutWarnings, testKafka } from './lib/kafka.js'
import { now, sleep } from './lib/stats.js'

silenceNegativeTimeoutWarnings()

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 ? process.argv[i + 1] : undefined
}

const schema = arg('schema') ?? ''
const topic = arg('topic') ?? ''
const events = Number(arg('events') ?? '0')
const batch = Number(arg('batch') ?? '1000')
const keys = Number(arg('keys') ?? '10000')
const raw = process.argv.includes('--raw')
const ownership = (arg('ownership') ?? 'rows') as RelayOwnership

let peak = 0
const sampler = setInterval(() => {
  peak = Math.max(peak, process.memoryUsage().rss)
}, 20)

let drained: number
let idle: number
if (raw) {
  const producer = await rawProducer(testKafka())
  idle = process.memoryUsage().rss
  peak = idle
  const started = now()
  await sendRaw(producer, topic, 0, events, batch, keys)
  drained = events / ((now() - started) / 1000)
  await producer.disconnect()
} else {
  const db = openPool('postgres.js', { max: 4 })
  const store = createKyselyOutboxStore({ db, schema })
  const transport = createKafkaTransport({ kafka: testKafka() })
  const relay = new Relay({ store, transport, batchSize: batch, ownership, pollIntervalMs: 2 })
  await store.stats() // connect
  idle = process.memoryUsage().rss
  peak = idle
  let published = 0
  relay.on('published', (e) => {
    published += e.count
  })
  const started = now()
  if (ownership === 'shards') {
    // The pipelined loop is what shards mode runs; runOnce would claim one batch at a time.
    await relay.start()
    while (published < events) await sleep(5)
    await relay.stop()
  } else {
    while (published < events) if ((await relay.runOnce()) === 0) await sleep(2)
  }
  drained = events / ((now() - started) / 1000)
  await transport.close()
  await db.destroy()
}
clearInterval(sampler)
peak = Math.max(peak, process.memoryUsage().rss)
console.log(JSON.stringify({ idleRss: idle, peakRss: peak, perSecond: drained }))
process.exit(0)
