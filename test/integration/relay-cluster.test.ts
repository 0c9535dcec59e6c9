/**
 * A 3-broker cluster (replication factor 3, min.insync.replicas 2): a partition leader killed
 * and restarted while writers keep the relay sending multi-partition batches; a partition's only
 * broker down; a leader killed while a transactional relay's batches are in their transactions.
 * Every event must reach the topic, in key order. (The transport's check of every partition acknowledgement, which
 * guards against a kafkajs send that resolves without writing a partition that changed leader, is
 * proven deterministically in test/unit/kafka-transport.test.ts.)
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { Partitioners, type PartitionMetadata } from 'kafkajs'
import { Relay } from '../../src/index.js'
import { compareTopic, tableRows } from '../faults/checker.js'
import { postgresJsBackend } from '../support/databases.js'
import { type ConsumedMessage, testKafka, uniqueName } from '../support/kafka.js'
import { kafkaScript } from '../support/processes.js'
import {
  consumeAll,
  events,
  messageId,
  openRelayWorld,
  orderByKey,
  waitFor,
  writeOrderByKey,
} from '../support/relay-world.js'

const CLUSTER = ['127.0.0.1:19092', '127.0.0.1:19094', '127.0.0.1:19096']

describe('relay on a 3-broker cluster', () => {
  beforeAll(() => {
    kafkaScript(['start', '--brokers', '3'])
  }, 180_000)
  afterAll(() => {
    kafkaScript(['stop', '--brokers', '3'])
  }, 120_000)

  test('a partition leader killed mid-publish loses nothing', async () => {
    const world = await openRelayWorld(postgresJsBackend, {
      partitions: 6,
      brokers: CLUSTER,
      replicationFactor: 3,
    })
    const admin = testKafka(CLUSTER).admin()
    await admin.connect()
    const [metadata] = (await admin.fetchTopicMetadata({ topics: [world.topic] })).topics
    await admin.disconnect()
    expect(metadata!.partitions.every((p) => p.replicas.length === 3)).toBe(true)
    try {
      const ids: string[] = []
      const write = async (round: number) => {
        ids.push(
          ...(await world.write(
            Array.from({ length: 300 }, (_, i) => ({
              topic: world.topic,
              key: `key-${i % 60}`,
              type: 'E',
              payload: { round, i },
            })),
          )),
        )
      }
      const relay = new Relay({
        store: world.store,
        transport: world.transport({ requestTimeoutMs: 10_000 }),
        batchSize: 300,
        pollIntervalMs: 5,
        backoff: { initialMs: 100, maxMs: 1_000 },
      })
      let unacknowledged = 0
      relay.on('failed', () => unacknowledged++)
      await relay.start()
      // Writers keep the relay sending multi-partition batches the whole time.
      let writing = true
      const writers = (async () => {
        for (let round = 0; writing && round < 60; round++) {
          await write(round)
          await new Promise((r) => setTimeout(r, 50))
        }
      })()
      await waitFor('publishing under way', async () => (await world.counts()).published >= 3_000)
      kafkaScript(['kill', '2', '--brokers', '3'])
      await new Promise((r) => setTimeout(r, 3_000))
      kafkaScript(['restart-node', '2', '--brokers', '3'])
      await new Promise((r) => setTimeout(r, 2_000))
      writing = false
      await writers
      await waitFor(
        'everything published',
        async () => (await world.counts()).published === ids.length,
        180_000,
      )
      await relay.stop()

      const consumed = await consumeAll(CLUSTER, world.topic)
      const seen = new Set(consumed.map(messageId))
      const missing = ids.filter((id) => !seen.has(id))
      expect(missing).toEqual([])
      expect(orderByKey(consumed)).toEqual(await writeOrderByKey(world))
      console.log(
        `cluster: ${ids.length} events, ${consumed.length - ids.length} duplicates, ${unacknowledged} record retries`,
      )
    } finally {
      await world.close()
    }
  }, 300_000)

  test("while a partition's only broker is down, every round of the other partitions is published promptly, once; the rest follows its return", async () => {
    // Replication factor 1: each broker leads one of the three partitions, and nobody can take over.
    const world = await openRelayWorld(postgresJsBackend, {
      partitions: 3,
      brokers: CLUSTER,
      replicationFactor: 1,
    })
    const admin = testKafka(CLUSTER).admin()
    await admin.connect()
    const [metadata] = (await admin.fetchTopicMetadata({ topics: [world.topic] })).topics
    await admin.disconnect()
    expect(metadata!.partitions.every((p) => p.replicas.length === 1)).toBe(true)
    expect(new Set(metadata!.partitions.map((p) => p.leader)).size).toBe(3)
    const victim = metadata!.partitions.find((p) => p.leader === 2)!
    const keys = keysPerPartition(world.topic, 3, 4)
    const deadKeys = keys[victim.partitionId]!
    const liveKeys = keys.filter((_, partition) => partition !== victim.partitionId).flat()
    let restarted = false
    try {
      const relay = new Relay({
        store: world.store,
        transport: world.transport({ requestTimeoutMs: 5_000 }),
        pollIntervalMs: 20,
        maxAttempts: 1_000,
        backoff: { initialMs: 200, maxMs: 1_000 },
      })
      const deadIds = new Set<string>()
      const failures: string[] = []
      relay.on('failed', ({ ids, error }) => {
        if (ids.some((id) => deadIds.has(id))) failures.push(error)
      })
      await relay.start()
      const event = (key: string, round: number) => ({
        topic: world.topic,
        key,
        type: 'E',
        payload: { round },
      })
      const all = await world.write([...liveKeys, ...deadKeys].map((key) => event(key, 0)))
      await waitFor('round 0 published', async () => (await world.counts()).published === all.length)

      // Killed between rounds, while no request to it is in flight.
      kafkaScript(['kill', String(victim.leader), '--brokers', '3'])
      const ROUNDS = 5
      let published = all.length
      const took: number[] = []
      for (let round = 1; round <= ROUNDS; round++) {
        // Each round is one batch spanning every partition.
        const began = Date.now()
        const ids = await world.write([...liveKeys, ...deadKeys].map((key) => event(key, round)))
        for (const id of ids.slice(liveKeys.length)) deadIds.add(id)
        all.push(...ids)
        published += liveKeys.length
        await waitFor(
          `the live partitions of round ${round} published`,
          async () => (await world.counts()).published === published,
          20_000,
        )
        took.push(Date.now() - began)
        await new Promise((r) => setTimeout(r, 500))
      }
      const counts = await world.counts()
      expect([counts.pending, counts.dead]).toEqual([deadKeys.length * ROUNDS, 0])
      // The dead partition's records fail retriably (none is dead), and say why.
      expect(failures.some((error) => error.includes('LEADER_NOT_AVAILABLE'))).toBe(true)

      kafkaScript(['restart-node', String(victim.leader), '--brokers', '3'])
      restarted = true
      await waitFor(
        'everything published',
        async () => (await world.counts()).published === all.length,
        120_000,
      )
      await relay.stop()

      const consumed = await consumeAll(CLUSTER, world.topic)
      const copies = new Map<string, number>()
      for (const m of consumed) copies.set(messageId(m), (copies.get(messageId(m)) ?? 0) + 1)
      expect(all.filter((id) => !copies.has(id))).toEqual([])
      // Records of the live partitions were acknowledged once and never sent again.
      const live = consumed.filter((m) => m.partition !== victim.partitionId).map(messageId)
      expect(live.filter((id) => copies.get(id)! > 1)).toEqual([])
      expect(orderByKey(consumed)).toEqual(await writeOrderByKey(world))
      console.log(
        `leaderless partition: rounds took ${took.join(', ')} ms; ${consumed.length - all.length} duplicates on the dead partition; first failure: ${failures[0]}`,
      )
    } finally {
      if (!restarted) kafkaScript(['restart-node', String(victim.leader), '--brokers', '3'])
      await world.close()
    }
  }, 300_000)

  test('transactional relay, a partition leader SIGKILLed mid-transaction: read_committed sees every event, in key order, no altered copy', async () => {
    const world = await openRelayWorld(postgresJsBackend, {
      partitions: 6,
      brokers: CLUSTER,
      replicationFactor: 3,
    })
    const relay = new Relay({
      store: world.store,
      transport: world.transport({ transactionalId: uniqueName('cluster-tx'), requestTimeoutMs: 10_000 }),
      batchSize: 300,
      pollIntervalMs: 5,
      maxAttempts: 1_000,
      backoff: { initialMs: 100, maxMs: 1_000 },
    })
    let killed: string | undefined
    try {
      await relay.start()
      const ids: string[] = []
      let writing = true
      const writers = (async () => {
        for (let round = 0; writing && round < 40; round++) {
          ids.push(...(await world.write(events(world.topic, 300, 60, `r${round}`))))
          await new Promise((r) => setTimeout(r, 50))
        }
      })()
      await waitFor('publishing under way', async () => (await world.counts()).published >= 1_500)
      const admin = testKafka(CLUSTER).admin()
      await admin.connect()
      const [metadata] = (await admin.fetchTopicMetadata({ topics: [world.topic] })).topics
      await admin.disconnect()
      // A leader other than the first bootstrap broker, while batches are in their transactions.
      killed = String(metadata!.partitions.map((p) => p.leader).find((leader) => leader !== 1) ?? 2)
      kafkaScript(['kill', killed, '--brokers', '3'])
      await new Promise((r) => setTimeout(r, 3_000))
      kafkaScript(['restart-node', killed, '--brokers', '3'])
      killed = undefined
      writing = false
      await writers
      await waitFor(
        'everything published',
        async () => (await world.counts()).published === ids.length,
        180_000,
      )
      await relay.stop()
      const consumed = await consumeCommitted(CLUSTER, world.topic, new Set(ids))
      const check = compareTopic(await tableRows(world), consumed)
      expect({ lost: check.lost, altered: check.alteredCopies, order: check.orderViolations }).toEqual({
        lost: 0,
        altered: 0,
        order: 0,
      })
      console.log(
        `leader killed mid-transaction: ${ids.length} events, ${check.topicDuplicates} committed duplicates`,
      )
    } finally {
      if (killed) kafkaScript(['restart-node', killed, '--brokers', '3'])
      await relay.stop().catch(() => {})
      await world.close()
    }
  }, 300_000)
})

/**
 * Reads a topic with read_committed until every id of `expected` arrived, then two seconds more
 * for any duplicate. A record delivered again by the test's own consumer group (a rebalance while
 * brokers come back) is kept once: it is the same offset, not a duplicate in the topic.
 */
async function consumeCommitted(
  brokers: string[],
  topic: string,
  expected: ReadonlySet<string>,
): Promise<ConsumedMessage[]> {
  const consumer = testKafka(brokers).consumer({ groupId: uniqueName('committed'), maxWaitTimeInMs: 200 })
  const received: ConsumedMessage[] = []
  const seen = new Set<string>()
  const positions = new Set<string>()
  await consumer.connect()
  try {
    await consumer.subscribe({ topics: [topic], fromBeginning: true })
    await consumer.run({
      eachMessage: async ({ partition, message }) => {
        const record = {
          topic,
          partition,
          offset: message.offset,
          key: message.key,
          value: message.value,
          headers: message.headers ?? {},
        }
        const position = `${partition}:${message.offset}`
        if (positions.has(position)) return
        positions.add(position)
        received.push(record)
        seen.add(messageId(record))
      },
    })
    await waitFor('every committed event', () => [...expected].every((id) => seen.has(id)), 90_000)
    await new Promise((r) => setTimeout(r, 2_000))
    return received
  } finally {
    await consumer.disconnect()
  }
}

/** `count` keys for each partition of a topic, by the Java client's murmur2 partitioner. */
function keysPerPartition(topic: string, partitions: number, count: number): string[][] {
  const partitioner = Partitioners.DefaultPartitioner()
  const partitionMetadata: PartitionMetadata[] = Array.from({ length: partitions }, (_, partitionId) => ({
    partitionErrorCode: 0,
    partitionId,
    leader: 0,
    replicas: [0],
    isr: [0],
  }))
  const result: string[][] = Array.from({ length: partitions }, () => [])
  for (let i = 0; result.some((keys) => keys.length < count); i++) {
    const key = `key-${i}`
    const partition = partitioner({ topic, partitionMetadata, message: { key, value: null } })
    if (result[partition]!.length < count) result[partition]!.push(key)
  }
  return result
}
