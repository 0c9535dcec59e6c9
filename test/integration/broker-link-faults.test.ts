/**
 * The relay and the consumer runner when the link to the broker fails under them: connections
 * cut (reset mid-request) at seeded random moments, blackholed (open, nothing passes) for longer
 * than the request timeout, and slowed. Every connection of the client under test goes through
 * a TCP proxy of the test's own (test/support/broker-faults.ts); the checks read the topic and
 * the tables directly, on a clean connection. Relay: every row reaches the topic, copies are
 * identical, each key keeps its order, and it drains by itself once the link heals. Consumer:
 * every message's side effect is applied exactly once.
 *
 * The seed is printed; OUTBOXKIT_FAULT_SEED=<seed> runs the same sequence of cut intervals again.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import type { Kysely } from 'kysely'
import { createKafkaTransport } from '../../src/adapters/kafka/index.js'
import { createKyselyOutboxStore } from '../../src/adapters/kysely/index.js'
import { createKafkaConsumerRunner } from '../../src/consumers/index.js'
import { Relay, type RelayOwnership } from '../../src/index.js'
import { type BrokerFaults, startBrokerFaults } from '../support/broker-faults.js'
import { openConsumerWorld } from '../support/consumer-world.js'
import { type AnyDB, type Backend, mysqlBackend, postgresJsBackend } from '../support/databases.js'
import { testKafka, uniqueName } from '../support/kafka.js'
import {
  consumeAll,
  events,
  expectDuplicatesIdentical,
  messageId,
  openRelayWorld,
  orderByKey,
  waitFor,
  writeOrderByKey,
} from '../support/relay-world.js'

const seed = Number(process.env['OUTBOXKIT_FAULT_SEED'] ?? Math.floor(Math.random() * 2 ** 31))

/** A small seeded generator (mulberry32), so a failing run's intervals can be replayed. */
function seeded(value: number): () => number {
  let a = value >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

let faults: BrokerFaults
beforeAll(async () => {
  faults = await startBrokerFaults()
  console.log(`broker link faults: OUTBOXKIT_FAULT_SEED=${seed}`)
})
afterAll(async () => {
  await faults.close()
})

type Fault = 'cut' | 'blackhole' | 'slow'

/** Runs `fault` on the link for about `ms` while `work` keeps going; returns what it did. */
async function inject(fault: Fault, ms: number, random: () => number): Promise<{ cuts: number }> {
  let cuts = 0
  const until = Date.now() + ms
  if (fault === 'cut') {
    while (Date.now() < until) {
      await sleep(100 + random() * 400)
      cuts += faults.cut()
    }
  } else if (fault === 'blackhole') {
    faults.setMode('blackhole')
    await sleep(ms)
  } else {
    faults.setMode('slow', 40)
    await sleep(ms)
  }
  faults.setMode('pass')
  return { cuts }
}

const RELAY_CASES: readonly { backend: Backend; ownership: RelayOwnership; fault: Fault }[] = [
  { backend: postgresJsBackend, ownership: 'shards', fault: 'cut' },
  { backend: mysqlBackend, ownership: 'rows', fault: 'cut' },
  { backend: postgresJsBackend, ownership: 'shards', fault: 'blackhole' },
  { backend: mysqlBackend, ownership: 'rows', fault: 'blackhole' },
  { backend: mysqlBackend, ownership: 'shards', fault: 'slow' },
]

const CONSUMER_CASES: readonly { backend: Backend; fault: Fault }[] = [
  { backend: postgresJsBackend, fault: 'cut' },
  { backend: mysqlBackend, fault: 'blackhole' },
]

describe('relay with a failing link to the broker', () => {
  for (const { backend, ownership, fault } of RELAY_CASES) {
    test(`${backend.name}, ownership '${ownership}', link ${fault}: nothing lost, copies identical, key order kept`, async () => {
      const random = seeded(seed)
      const world = await openRelayWorld(backend, { partitions: 3 })
      const relay = new Relay({
        store: world.store,
        transport: world.transport({
          kafka: faults.kafka(uniqueName('relay')),
          // A blackholed send must give up well within the test.
          requestTimeoutMs: 1_500,
        }),
        ownership,
        batchSize: 100,
        pollIntervalMs: 50,
        leaseMs: 3_000,
        backoff: { initialMs: 20, maxMs: 300 },
      })
      let relayErrors = 0
      relay.on('error', () => {
        relayErrors++
      })
      try {
        await world.write(events(world.topic, 1_000, 20, 'backlog'))
        await relay.start()
        await waitFor('the relay to start publishing', async () => (await world.counts()).published > 0)
        let writing = true
        let written = 0
        const writer = (async () => {
          while (writing) {
            await world.write(events(world.topic, 10, 20, `live${written}`))
            written += 10
            await sleep(40)
          }
        })()
        const opened = faults.opened
        const { cuts } = await inject(fault, 4_000, random)
        writing = false
        await writer
        const total = 1_000 + written
        await waitFor(
          'the relay to drain once the link heals',
          async () => (await world.counts()).published === total,
          90_000,
        )
        await relay.stop()

        const consumed = await consumeAll(world.brokers, world.topic)
        const duplicates = expectDuplicatesIdentical(consumed)
        expect(consumed.length).toBe(total + duplicates)
        expect(new Set(consumed.map(messageId)).size).toBe(total)
        expect(orderByKey(consumed)).toEqual(await writeOrderByKey(world))
        // The fault reached the relay's client.
        if (fault === 'cut') {
          expect(cuts).toBeGreaterThan(0)
          expect(faults.opened).toBeGreaterThan(opened)
        }
        if (fault === 'blackhole') expect(relayErrors).toBeGreaterThan(0)
        console.log(
          `  ${backend.name} ${ownership} ${fault}: ${cuts} connections cut, ${faults.opened - opened} opened, ${relayErrors} relay errors, ${duplicates} duplicates of ${total}`,
        )
      } finally {
        faults.setMode('pass')
        await relay.stop().catch(() => {})
        await world.close()
      }
    }, 150_000)
  }
})

describe('consumer runner with a failing link to the broker', () => {
  for (const { backend, fault } of CONSUMER_CASES) {
    test(`${backend.name}, link ${fault}: every side effect applied exactly once`, async () => {
      const random = seeded(seed + 1)
      const world = await openConsumerWorld(backend, { partitions: 2 })
      const count = 600
      await world.database.db.transaction().execute((tx: Kysely<AnyDB>) =>
        world.outbox.add(
          tx,
          Array.from({ length: count }, (_, i) => ({
            topic: world.topic,
            key: `k${i % 12}`,
            type: 'E',
            payload: { i },
          })),
        ),
      )
      // Published on a clean link; only the consumer's link fails.
      const transport = createKafkaTransport({ kafka: testKafka(world.brokers) })
      const relay = new Relay({
        store: createKyselyOutboxStore({ db: world.database.db, schema: world.database.schema }),
        transport,
        pollIntervalMs: 50,
      })
      await relay.start()
      const consumer = world.consumer({
        // Slow enough that the fault lands while messages are in hand.
        handler: async (message, tx) => {
          await world.applyEffect(tx, message)
          await sleep(2)
        },
      })
      const runner = createKafkaConsumerRunner({
        kafka: faults.kafka(uniqueName('consumer')),
        groupId: uniqueName('group'),
        topics: [world.topic],
        consumer,
        fromBeginning: true,
        consumerConfig: { maxWaitTimeInMs: 200, sessionTimeout: 10_000, heartbeatInterval: 1_000 },
      })
      try {
        await runner.start()
        const applied = async () => [...(await world.effects()).values()].reduce((a, b) => a + b, 0)
        await waitFor('the consumer to start', async () => (await applied()) > 0, 60_000)
        const { cuts } = await inject(fault, 3_000, random)
        await waitFor('every message applied', async () => (await world.effects()).size === count, 120_000)
        // Let a redelivery, if any, arrive before counting.
        await sleep(1_000)
        const effects = await world.effects()
        expect(effects.size).toBe(count)
        expect([...effects.values()].every((n) => n === 1)).toBe(true)
        expect(await world.inboxCount('inventory')).toBe(count)
        if (fault === 'cut') expect(cuts).toBeGreaterThan(0)
        console.log(
          `  consumer ${backend.name} ${fault}: ${cuts} connections cut, ${count} effects once each`,
        )
      } finally {
        faults.setMode('pass')
        await runner.stop().catch(() => {})
        await relay.stop().catch(() => {})
        await transport.close().catch(() => {})
        await world.close()
      }
    }, 180_000)
  }
})
