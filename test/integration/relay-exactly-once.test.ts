/**
 * `exactlyOnce` relays in-process on the real databases and Kafka: a relay that dies between the
 * Kafka commit and the database mark leaves no duplicate (the next owner reconciles from the
 * progress topic), the same scenario without exactlyOnce does leave one, a frozen relay taken
 * over cannot commit afterwards, a transaction that outlives transactionTimeout is retried on a new
 * session, and a progress topic that cannot prove anything stops the relay.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import type { Kafka, Producer, Transaction } from 'kafkajs'
import { createKafkaTransport, type KafkaTransport } from '../../src/adapters/kafka/index.js'
import type { KyselyOutboxStore } from '../../src/adapters/kysely/index.js'
import { ErrorCode, isOutboxKitError, Relay, type RelayEvents } from '../../src/index.js'
import { type BrokerFaults, startBrokerFaults } from '../support/broker-faults.js'
import { type AnyDB, mysqlBackend, postgresJsBackend } from '../support/databases.js'
import { createTopic, testKafka, uniqueTopic } from '../support/kafka.js'
import {
  consumeCommitted,
  events,
  messageId,
  openRelayWorld,
  orderByKey,
  type RelayWorld,
  waitFor,
  writeOrderByKey,
} from '../support/relay-world.js'

/** Copies of each message id beyond the first. */
function duplicates(ids: readonly string[]): number {
  return ids.length - new Set(ids).size
}

/**
 * A store whose `crashAtMark`-th mark never reaches the database: the relay's process "died" right
 * after Kafka committed that batch, before its mark. Its heartbeats and claims stop too, so its
 * shards expire and another relay takes them.
 */
function crashingAtMark(store: KyselyOutboxStore<AnyDB>, crashAtMark: number) {
  let marks = 0
  let crashed = false
  const hang = new Promise<never>(() => {})
  const view = new Proxy(store, {
    get(target, name, receiver) {
      const value = Reflect.get(target, name, receiver)
      if (typeof value !== 'function') return value
      if (name === 'markPublished') {
        return (...args: unknown[]) => {
          if (!crashed && ++marks === crashAtMark) crashed = true
          return crashed ? hang : value.apply(target, args)
        }
      }
      if (name === 'syncShards' || name === 'claimOwned') {
        return (...args: unknown[]) => (crashed ? hang : value.apply(target, args))
      }
      return value.bind(target)
    },
  })
  return { view, crashed: () => crashed }
}

function relayOptions(world: RelayWorld, transport: KafkaTransport, relayId: string) {
  return {
    store: world.store,
    transport,
    ownership: 'shards' as const,
    exactlyOnce: true,
    relayId,
    batchSize: 50,
    leaseMs: 1_500,
    pollIntervalMs: 20,
    backoff: { initialMs: 50, maxMs: 500 },
  }
}

for (const backend of [postgresJsBackend, mysqlBackend]) {
  describe(`exactlyOnce relays on ${backend.name}`, () => {
    let world: RelayWorld
    let progressTopic: string
    beforeAll(async () => {
      world = await openRelayWorld(backend, { partitions: 3 })
      progressTopic = uniqueTopic('progress')
    })
    afterAll(async () => {
      await world.close()
    })

    test('a relay killed between the Kafka commit and the mark leaves no duplicate: the next owner reconciles', async () => {
      const ids = await world.write(events(world.topic, 400, 20, 'crash'))
      const exactlyOnce = { progressTopic }
      const { view, crashed } = crashingAtMark(world.store, 3)
      const first = new Relay({
        ...relayOptions(world, world.transport({ exactlyOnce }), 'eos-first'),
        store: view,
      })
      await first.start()
      await waitFor('the first relay to crash', crashed, 30_000)

      const reconciled: RelayEvents['reconciled'][] = []
      const second = new Relay(relayOptions(world, world.transport({ exactlyOnce }), 'eos-second'))
      second.on('reconciled', (e) => reconciled.push(e))
      await second.start()
      await waitFor(
        'everything published',
        async () => (await world.counts()).published === ids.length,
        60_000,
      )
      await second.stop()
      void first.stop()

      const consumed = await consumeCommitted(world.brokers, world.topic)
      const consumedIds = consumed.map(messageId)
      expect(new Set(consumedIds)).toEqual(new Set(ids))
      expect(duplicates(consumedIds)).toBe(0)
      expect(orderByKey(consumed)).toEqual(await writeOrderByKey(world))
      // The rows of the crashed batch were in Kafka, pending in the table: the second relay marked
      // them from the progress topic, after fencing the first.
      const marked = reconciled.reduce((sum, e) => sum + e.marked, 0)
      expect(marked).toBeGreaterThan(0)
      expect(reconciled.some((e) => e.fenced.includes('eos-first'))).toBe(true)
    }, 120_000)

    test('a mark that fails (its connection lost) while the relay goes on leaves no duplicate: its rows are marked from the progress topic', async () => {
      const topic = uniqueTopic('relay-mark-failed')
      await createTopic(world.brokers, topic, { partitions: 3, replicationFactor: 1 })
      const ids = await world.write(events(topic, 300, 20, 'mark-failed'))
      // The second mark of published rows fails before it reaches the database, as a statement on
      // a killed connection does; the relay, its session and its shards go on.
      let marks = 0
      const store = new Proxy(world.store, {
        get(target, name, receiver) {
          const value = Reflect.get(target, name, receiver)
          if (typeof value !== 'function') return value
          if (name === 'markPublished') {
            return (...args: unknown[]) =>
              ++marks === 2
                ? Promise.reject(new Error('Connection terminated unexpectedly'))
                : value.apply(target, args)
          }
          return value.bind(target)
        },
      })
      const reconciled: RelayEvents['reconciled'][] = []
      const relay = new Relay({
        ...relayOptions(world, world.transport({ exactlyOnce: { progressTopic } }), 'eos-mark-failed'),
        store,
      })
      relay.on('reconciled', (e) => reconciled.push(e))
      relay.on('error', () => {})
      await relay.start()
      await waitFor('everything published', async () => (await world.counts()).pending === 0, 60_000)
      await relay.stop()
      expect(marks).toBeGreaterThan(2)
      const consumed = await consumeCommitted(world.brokers, topic)
      const consumedIds = consumed.map(messageId)
      expect(new Set(consumedIds)).toEqual(new Set(ids))
      expect(duplicates(consumedIds)).toBe(0)
      const written: Record<string, string[]> = {}
      ids.forEach((id, i) => {
        written[`key-${i % 20}`] = [...(written[`key-${i % 20}`] ?? []), id]
      })
      expect(orderByKey(consumed)).toEqual(written)
      // The batch whose mark failed was in Kafka: the relay marked it from the progress topic.
      expect(reconciled.reduce((sum, e) => sum + e.marked, 0)).toBeGreaterThan(0)
    }, 120_000)

    test('without exactlyOnce the same crash leaves duplicates in the topic', async () => {
      const topic = uniqueTopic('relay-plain')
      await createTopic(world.brokers, topic, { partitions: 3, replicationFactor: 1 })
      const ids = await world.write(events(topic, 200, 20, 'plain'))
      const { view, crashed } = crashingAtMark(world.store, 2)
      const options = (relayId: string, transactionalId: string) => ({
        ...relayOptions(world, world.transport({ transactionalId }), relayId),
        exactlyOnce: false,
      })
      const first = new Relay({ ...options('plain-first', 'plain-first'), store: view })
      await first.start()
      await waitFor('the first relay to crash', crashed, 30_000)
      const second = new Relay(options('plain-second', 'plain-second'))
      await second.start()
      await waitFor(
        'everything published',
        async () => {
          const rows = await world.database.query<{ n: unknown }>(
            world.database.dialect === 'mysql'
              ? `SELECT count(*) AS n FROM \`${world.database.schema}\`.\`outbox\` WHERE topic = '${topic}' AND status = 1`
              : `SELECT count(*) AS n FROM "${world.database.schema}"."outbox" WHERE topic = '${topic}' AND status = 1`,
          )
          return Number(rows[0]?.n) === ids.length
        },
        60_000,
      )
      await second.stop()
      void first.stop()
      const consumed = (await consumeCommitted(world.brokers, topic)).map(messageId)
      expect(new Set(consumed)).toEqual(new Set(ids))
      expect(duplicates(consumed)).toBeGreaterThan(0)
    }, 120_000)
  })
}

describe('exactlyOnce and the progress topic (Postgres)', () => {
  let world: RelayWorld
  beforeAll(async () => {
    world = await openRelayWorld(postgresJsBackend, { partitions: 1 })
  })
  afterAll(async () => {
    await world.close()
  })

  async function firstError(relay: Relay<unknown>): Promise<RelayEvents['error']> {
    const errors: RelayEvents['error'][] = []
    relay.on('error', (e) => errors.push(e))
    await relay.start()
    await waitFor('an error', () => errors.length > 0, 30_000)
    return errors[0]!
  }

  test('a progress topic with time retention (cleanup.policy=delete) stops the relay with PROGRESS_UNAVAILABLE', async () => {
    const progressTopic = uniqueTopic('progress-delete')
    await createTopic(world.brokers, progressTopic, { partitions: 1, replicationFactor: 1 })
    await world.write(events(world.topic, 5, 1, 'misconfigured'))
    const relay = new Relay(
      relayOptions(world, world.transport({ exactlyOnce: { progressTopic } }), 'eos-misconfigured'),
    )
    const { error, retryInMs } = await firstError(relay)
    expect(isOutboxKitError(error, ErrorCode.ProgressUnavailable)).toBe(true)
    expect(String(error)).toContain('cleanup.policy=delete')
    expect(retryInMs).toBe(-1)
    await relay.stop()
    expect(relay.running).toBe(false)
  }, 60_000)

  test('a progress topic that holds records but no genesis (recreated, or foreign) is refused', async () => {
    const progressTopic = uniqueTopic('progress-foreign')
    await createTopic(world.brokers, progressTopic, {
      partitions: 1,
      replicationFactor: 1,
      configEntries: { 'cleanup.policy': 'compact' },
    })
    const producer = testKafka(world.brokers).producer()
    await producer.connect()
    await producer.send({ topic: progressTopic, messages: [{ key: 'unrelated', value: 'not progress' }] })
    await producer.disconnect()
    const relay = new Relay(
      relayOptions(world, world.transport({ exactlyOnce: { progressTopic } }), 'eos-foreign'),
    )
    const { error, retryInMs } = await firstError(relay)
    expect(isOutboxKitError(error, ErrorCode.ProgressUnavailable)).toBe(true)
    expect(String(error)).toContain('genesis')
    expect(retryInMs).toBe(-1)
    await relay.stop()
  }, 60_000)

  test('the progress topic deleted under a running relay stops it; it is not recreated', async () => {
    const progressTopic = uniqueTopic('progress-deleted')
    const relay = new Relay(
      relayOptions(world, world.transport({ exactlyOnce: { progressTopic } }), 'eos-deleted'),
    )
    const errors: RelayEvents['error'][] = []
    relay.on('error', (e) => errors.push(e))
    await world.write(events(world.topic, 20, 2, 'before-delete'))
    await relay.start()
    await waitFor('the first records published', async () => (await world.counts()).pending === 0, 30_000)
    const admin = testKafka(world.brokers).admin()
    await admin.connect()
    await admin.deleteTopics({ topics: [progressTopic] })
    await world.write(events(world.topic, 20, 2, 'after-delete'))
    await waitFor('the relay to stop', () => !relay.running, 60_000)
    const fatal = errors.find((e) => e.retryInMs === -1)
    expect(isOutboxKitError(fatal?.error, ErrorCode.ProgressUnavailable)).toBe(true)
    expect((await admin.listTopics()).includes(progressTopic)).toBe(false)
    await admin.disconnect()
  }, 90_000)
})

describe('an exactlyOnce relay frozen past its lease (MariaDB)', () => {
  let world: RelayWorld
  beforeAll(async () => {
    world = await openRelayWorld(mysqlBackend, { partitions: 3 })
  })
  afterAll(async () => {
    await world.close()
  })

  test('cannot commit once another relay took its shards, and both then share the work without a duplicate', async () => {
    const progressTopic = uniqueTopic('progress-zombie')
    const ids = await world.write(events(world.topic, 300, 30, 'zombie'))
    // The frozen relay: its second publish waits at a gate (a paused process), and meanwhile its
    // heartbeats do not reach the database, so its shards expire.
    let frozen = false
    let thaw!: () => void
    const thawed = new Promise<void>((resolve) => (thaw = resolve))
    let entered!: () => void
    const enteredPublish = new Promise<void>((resolve) => (entered = resolve))
    let publishes = 0
    const store = new Proxy(world.store, {
      get(target, name, receiver) {
        const value = Reflect.get(target, name, receiver)
        if (typeof value !== 'function') return value
        if (name === 'syncShards') {
          return async (...args: unknown[]) => {
            if (frozen) await thawed
            return value.apply(target, args)
          }
        }
        return value.bind(target)
      },
    })
    const zombie = new Relay({
      ...relayOptions(world, world.transport({ exactlyOnce: { progressTopic } }), 'eos-zombie'),
      store,
      instrumentation: {
        async tracePublish(_records, publish) {
          if (++publishes === 2) {
            frozen = true
            entered()
            await thawed
          }
          return publish()
        },
      },
    })
    const zombieErrors: RelayEvents['error'][] = []
    zombie.on('error', (e) => zombieErrors.push(e))
    await zombie.start()
    await enteredPublish

    const survivor = new Relay(
      relayOptions(world, world.transport({ exactlyOnce: { progressTopic } }), 'eos-survivor'),
    )
    const reconciled: RelayEvents['reconciled'][] = []
    survivor.on('reconciled', (e) => reconciled.push(e))
    await survivor.start()
    await waitFor(
      'the survivor to publish everything',
      async () => (await world.counts()).published === ids.length,
      60_000,
    )
    expect(reconciled.some((e) => e.fenced.includes('eos-zombie'))).toBe(true)

    // The zombie wakes up: its transaction is refused (fenced), it opens a new session, and the two
    // relays split the shards again.
    thaw()
    await waitFor('the zombie to be refused', () => zombieErrors.length > 0, 30_000)
    expect(zombieErrors.some((e) => isOutboxKitError(e.error))).toBe(true)
    const more = await world.write(events(world.topic, 300, 30, 'after'))
    await waitFor(
      'the new events published',
      async () => (await world.counts()).published === ids.length + more.length,
      60_000,
    )
    await waitFor(
      'both relays to own shards',
      () => zombie.ownedShards.length > 0 && survivor.ownedShards.length > 0,
      30_000,
    )
    await zombie.stop()
    await survivor.stop()
    const consumed = await consumeCommitted(world.brokers, world.topic)
    const consumedIds = consumed.map(messageId)
    expect(new Set(consumedIds)).toEqual(new Set([...ids, ...more]))
    expect(duplicates(consumedIds)).toBe(0)
    expect(orderByKey(consumed)).toEqual(await writeOrderByKey(world))
  }, 180_000)
})

/**
 * A Kafka whose producers hold the first commit of a transaction that sent records to `topic`
 * until the coordinator has aborted it (its abort marker moves the topic's end offset past the
 * records sent): the transaction outlived `transactionTimeout`.
 */
function holdingFirstCommitPastTimeout(kafka: Kafka, topic: string): { kafka: Kafka; held: () => boolean } {
  let held = false
  const waitForAbortMarker = async (sent: number) => {
    const admin = kafka.admin()
    await admin.connect()
    try {
      for (;;) {
        const offsets = await admin.fetchTopicOffsets(topic)
        if (offsets.reduce((sum, p) => sum + Number(p.high), 0) > sent) return
        await new Promise((r) => setTimeout(r, 250))
      }
    } finally {
      await admin.disconnect()
    }
  }
  const producer = (config?: Parameters<Kafka['producer']>[0]): Producer => {
    const real = kafka.producer(config)
    return {
      ...real,
      transaction: async (): Promise<Transaction> => {
        const transaction = await real.transaction()
        let sent = 0
        return {
          ...transaction,
          send: async (record) => {
            if (record.topic === topic) sent += record.messages.length
            return transaction.send(record)
          },
          sendBatch: async (batch) => {
            for (const r of batch.topicMessages ?? []) if (r.topic === topic) sent += r.messages.length
            return transaction.sendBatch(batch)
          },
          commit: async () => {
            if (!held && sent > 0) {
              held = true
              await waitForAbortMarker(sent)
            }
            await transaction.commit()
          },
        }
      },
    }
  }
  const wrapped = new Proxy(kafka, {
    get: (target, name, receiver) =>
      name === 'producer' ? producer : Reflect.get(target, name, receiver)?.bind?.(target),
  })
  return { kafka: wrapped, held: () => held }
}

describe('an exactlyOnce transaction that outlives transactionTimeout (Postgres)', () => {
  let world: RelayWorld
  beforeAll(async () => {
    world = await openRelayWorld(postgresJsBackend, { partitions: 1 })
  })
  afterAll(async () => {
    await world.close()
  })

  test('is expiry, not fencing: the relay opens a new session and publishes every row once', async () => {
    const ids = await world.write(events(world.topic, 60, 3, 'expiry'))
    const { kafka, held } = holdingFirstCommitPastTimeout(testKafka(world.brokers), world.topic)
    const relay = new Relay(
      relayOptions(
        world,
        world.transport({
          kafka,
          exactlyOnce: { progressTopic: uniqueTopic('progress-expiry') },
          producer: { transactionTimeout: 1_000 },
        }),
        'eos-expiry',
      ),
    )
    const errors: RelayEvents['error'][] = []
    relay.on('error', (e) => errors.push(e))

    await relay.start()
    await waitFor('everything published', async () => (await world.counts()).published === ids.length, 90_000)
    expect(held()).toBe(true)
    expect(relay.running).toBe(true)
    const expired = errors.find((e) => String(e.error).includes('transactionTimeout'))
    expect(isOutboxKitError(expired?.error, ErrorCode.TransportFailed)).toBe(true)
    expect(errors.some((e) => isOutboxKitError(e.error, ErrorCode.Fenced))).toBe(false)
    await relay.stop()
    const consumed = await consumeCommitted(world.brokers, world.topic)
    const consumedIds = consumed.map(messageId)
    expect(new Set(consumedIds)).toEqual(new Set(ids))
    expect(duplicates(consumedIds)).toBe(0)
    expect(orderByKey(consumed)).toEqual(await writeOrderByKey(world))
  }, 120_000)
})

/**
 * A Kafka (through the fault proxy) whose first transaction sending two requests of records to
 * `topic` blackholes the broker link at the second: the send and then the abort get no answer, so the real producer is
 * left in ABORTING. `stuck()` asks that producer for a new transaction and returns kafkajs' refusal.
 */
function blackholingFirstSend(faults: BrokerFaults, topic: string) {
  const kafka = faults.kafka('eos-aborting')
  let victim: Producer | undefined
  const producer = (config?: Parameters<Kafka['producer']>[0]): Producer => {
    const real = kafka.producer(config)
    return {
      ...real,
      transaction: async (): Promise<Transaction> => {
        const transaction = await real.transaction()
        let sends = 0
        return {
          ...transaction,
          sendBatch: async (batch) => {
            // At the second request: the first one added its partition to the transaction, so
            // the abort has a transaction to end (with none, kafkajs aborts without asking).
            if (!victim && (batch.topicMessages ?? []).some((r) => r.topic === topic) && ++sends === 2) {
              victim = real
              faults.setMode('blackhole')
            }
            return transaction.sendBatch(batch)
          },
        }
      },
    }
  }
  const wrapped = new Proxy(kafka, {
    get: (target, name, receiver) =>
      name === 'producer' ? producer : Reflect.get(target, name, receiver)?.bind?.(target),
  })
  const stuck = async (): Promise<string | undefined> => {
    if (!victim) return undefined
    return victim.transaction().then(
      async (t) => {
        await t.abort()
        return undefined
      },
      (error: unknown) => String(error),
    )
  }
  return { kafka: wrapped, blackholed: () => victim !== undefined, stuck }
}

describe('an exactlyOnce producer left in ABORTING (Postgres)', () => {
  let world: RelayWorld
  let faults: BrokerFaults
  beforeAll(async () => {
    world = await openRelayWorld(postgresJsBackend, { partitions: 1 })
    faults = await startBrokerFaults()
  })
  afterAll(async () => {
    faults.setMode('pass')
    await world.close()
    await faults.close()
  })

  test('a send and its abort that never come back: the producer is replaced and every row goes out once', async () => {
    const ids = await world.write(events(world.topic, 60, 3, 'aborting'))
    const { kafka, blackholed, stuck } = blackholingFirstSend(faults, world.topic)
    const relay = new Relay(
      relayOptions(
        world,
        world.transport({
          kafka,
          exactlyOnce: { progressTopic: uniqueTopic('progress-aborting') },
          requestTimeoutMs: 1_500,
          // Several requests per transaction.
          maxRequestBytes: 1_000,
        }),
        'eos-aborting',
      ),
    )
    const errors: RelayEvents['error'][] = []
    relay.on('error', (e) => errors.push(e))
    await relay.start()
    try {
      // The transaction's send and then its abort each wait requestTimeoutMs, not kafkajs' own
      // 30 s request timeout and its retries.
      await waitFor(
        'the blackholed send to fail',
        () => errors.some((e) => String(e.error).includes('did not answer a send')),
        20_000,
      )
      expect(blackholed()).toBe(true)
      // The old producer really is stuck: its abort is still unanswered.
      expect(await stuck()).toContain('ABORTING')
    } finally {
      faults.setMode('pass')
    }
    await waitFor('everything published', async () => (await world.counts()).published === ids.length, 60_000)
    expect(relay.running).toBe(true)
    await relay.stop()
    const consumed = await consumeCommitted(world.brokers, world.topic)
    const consumedIds = consumed.map(messageId)
    expect(new Set(consumedIds)).toEqual(new Set(ids))
    expect(duplicates(consumedIds)).toBe(0)
    expect(orderByKey(consumed)).toEqual(await writeOrderByKey(world))
  }, 120_000)
})

describe('an exactlyOnce progress read on a link that keeps failing', () => {
  test('a read whose consumer crashed fails at once (retriable), not after readTimeoutMs', async () => {
    const faults = await startBrokerFaults()
    const transport = createKafkaTransport({
      kafka: faults.kafka('progress-reader'),
      exactlyOnce: { progressTopic: uniqueTopic('progress-cut'), readTimeoutMs: 60_000 },
      requestTimeoutMs: 1_500,
    })
    try {
      const session = await transport.exactlyOnce!.open('eos-reader')
      await session.readProgress([0])
      // Reads while every connection is reset every 100 ms for 12 s: kafkajs's consumer gives up
      // on its retries (about 10 s) and crashes, and would restart only after its own backoff.
      let cutting = true
      const cutter = (async () => {
        while (cutting) {
          await new Promise((r) => setTimeout(r, 100))
          faults.cut()
        }
      })()
      const cutsEnd = Date.now() + 12_000
      let settledAfterCuts = 0
      while (Date.now() < cutsEnd) {
        await session.readProgress([0]).catch(() => {})
        settledAfterCuts = Date.now() - cutsEnd
      }
      cutting = false
      await cutter
      // No read outlived the cuts by more than a moment (before, a crashed read sat until
      // readTimeoutMs, or until kafkajs restarted it).
      expect(settledAfterCuts).toBeLessThan(3_000)
    } finally {
      await transport.close()
      await faults.close()
    }
  }, 120_000)
})
