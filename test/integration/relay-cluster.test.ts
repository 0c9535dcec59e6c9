/**
 * A 3-broker cluster (replication factor 3, min.insync.replicas 2): a partition leader killed
 * and restarted while writers keep the relay sending multi-partition batches. Every event must
 * reach the topic, in key order. (The transport's check of every partition acknowledgement, which
 * guards against a kafkajs send that resolves without writing a partition that changed leader, is
 * proven deterministically in test/unit/kafka-transport.test.ts.)
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { Relay } from '../../src/index.js'
import { postgresJsBackend } from '../support/databases.js'
import { kafkaScript } from '../support/processes.js'
import {
  consumeAll,
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
})
