/**
 * The relay when things break: a relay process killed with SIGKILL mid-batch, a broker stopped
 * and restarted, and Kafka transactions with aborts and fencing. Real processes, real services.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { ErrorCode, isOutboxKitError, Relay, type RelayEvents } from '../../src/index.js'
import { mysqlBackend, postgresJsBackend } from '../support/databases.js'
import { consumeMessages, headerValues, uniqueName } from '../support/kafka.js'
import { kafkaScript, startWorker, type Worker } from '../support/processes.js'
import {
  consumeAll,
  events,
  expectDuplicatesIdentical,
  messageId,
  openRelayWorld,
  orderByKey,
  stalled,
  waitFor,
  writeOrderByKey,
} from '../support/relay-world.js'

const BACKENDS = [postgresJsBackend, mysqlBackend]

for (const backend of BACKENDS) {
  describe(`relay failures on ${backend.name}`, () => {
    test('a relay process killed with SIGKILL mid-batch, then restarted, loses nothing', async () => {
      const world = await openRelayWorld(backend, { partitions: 3 })
      const workers: Worker[] = []
      try {
        const ids: string[] = []
        for (let t = 0; t < 8; t++) ids.push(...(await world.write(events(world.topic, 500, 25, `t${t}`))))
        const env = {
          BACKEND: backend.name,
          SCHEMA: world.database.schema,
          BROKERS: world.brokers.join(','),
          BATCH_SIZE: '200',
          LEASE_MS: '1500',
        }
        // Three times: start a relay, let it publish part of the backlog, kill it without warning.
        for (let round = 1; round <= 3; round++) {
          const worker = await startWorker('relay-worker', env)
          workers.push(worker)
          const target = Math.min(ids.length - 500, round * 900)
          await waitFor(
            `round ${round} progress`,
            async () => (await world.counts()).published >= target,
            60_000,
          )
          await worker.kill('SIGKILL')
        }
        const claimedAtKill = (await world.counts()).claimed
        const last = await startWorker('relay-worker', env)
        workers.push(last)
        await waitFor(
          'everything published',
          async () => (await world.counts()).published === ids.length,
          90_000,
        )
        await last.kill('SIGTERM')

        const consumed = await consumeAll(world.brokers, world.topic)
        expect(new Set(consumed.map(messageId))).toEqual(new Set(ids))
        const duplicates = expectDuplicatesIdentical(consumed)
        expect(consumed.length).toBe(ids.length + duplicates)
        expect(orderByKey(consumed)).toEqual(await writeOrderByKey(world))
        // Informational: how much the kills cost.
        console.log(
          `${backend.name}: ${duplicates} duplicates after 3 kills (${claimedAtKill} rows claimed at the last kill)`,
        )
      } finally {
        for (const worker of workers) await worker.kill('SIGKILL')
        await world.close()
      }
    }, 240_000)

    test('a relay stalled mid-publish past its lease: another takes over, the late marks are fenced, no key is reordered', async () => {
      const world = await openRelayWorld(backend, { partitions: 2 })
      try {
        const first = await world.write(events(world.topic, 24, 4, 'first'))
        // Relay A claims everything, then freezes in its publish, lease renewals included.
        const transport = stalled(world.transport(), ['publish'])
        const store = stalled(world.store, ['extendLease'])
        const relayA = new Relay({ store: store.view, transport: transport.view, leaseMs: 1_000 })
        const lostByA: RelayEvents['leaseLost'][] = []
        relayA.on('leaseLost', (e) => lostByA.push(e))
        const cycleA = relayA.runOnce()
        await transport.entered

        // Relay B, on its own connection, waits out A's lease and publishes A's rows and newer ones.
        const { createKyselyOutboxStore } = await import('../../src/adapters/kysely/index.js')
        const peer = await world.database.openPeer()
        const relayB = new Relay({
          store: createKyselyOutboxStore({ db: peer, schema: world.database.schema }),
          transport: world.transport(),
          pollIntervalMs: 20,
        })
        let claimedByB = 0
        relayB.on('claimed', (e) => {
          claimedByB += e.count
        })
        await relayB.start()
        const later = await world.write(events(world.topic, 8, 4, 'later'))
        const all = [...first, ...later]
        await waitFor('B published everything', async () => (await world.counts()).published === all.length)
        await relayB.stop()
        expect(claimedByB).toBe(all.length)

        // A wakes up: it publishes its stale batch (duplicates) and every mark it makes is fenced.
        transport.release()
        store.release()
        expect(await cycleA).toBe(first.length)
        expect(lostByA.flatMap((e) => e.ids).sort()).toEqual([...first].sort())
        expect(await world.counts()).toMatchObject({ published: all.length, pending: 0, claimed: 0 })

        const consumed = await consumeAll(world.brokers, world.topic)
        expect(new Set(consumed.map(messageId))).toEqual(new Set(all))
        // Duplicates only as same-id copies of the same record: A's whole batch once more.
        expect(expectDuplicatesIdentical(consumed)).toBe(first.length)
        expect(orderByKey(consumed)).toEqual(await writeOrderByKey(world))
      } finally {
        await world.close()
      }
    }, 120_000)

    test('transactional mode: read_committed never sees an aborted batch, and each record commits once', async () => {
      const world = await openRelayWorld(backend, {
        partitions: 4,
        topicConfig: { 'max.message.bytes': '2048' },
      })
      try {
        const transport = world.transport({ transactionalId: uniqueName('relay-tx') })
        const relay = new Relay({ store: world.store, transport, pollIntervalMs: 10 })
        // The big record makes the broker refuse its partition's part of the first transaction;
        // the small records on other partitions were written, and the transaction is aborted.
        // They are then published one by one, each in a transaction that commits.
        const good = await world.write(events(world.topic, 12, 6, 'good'))
        const [big] = await world.write([
          { topic: world.topic, key: 'big', type: 'Big', payload: 'x'.repeat(5_000) },
        ])
        await relay.start()
        await waitFor('settled', async () => {
          const c = await world.counts()
          return c.published === good.length && c.dead === 1
        })
        await relay.stop()

        const committed = await consumeMessages(world.brokers, { topic: world.topic, count: good.length })
        expect(committed.map(messageId).sort()).toEqual([...good].sort())
        // Nothing more is visible to read_committed: no aborted copy, and not the big record.
        const more = await consumeMessages(world.brokers, {
          topic: world.topic,
          count: good.length + 1,
          timeoutMs: 3_000,
        }).catch((error: Error) => error)
        expect(more instanceof Error && more.message.includes(`received ${good.length} of`)).toBe(true)
        // The aborted copies are in the log: read_uncommitted sees some records twice.
        const uncommitted = await consumeMessages(world.brokers, {
          topic: world.topic,
          count: good.length + 1,
          readUncommitted: true,
        })
        const ids = uncommitted.map(messageId)
        expect(new Set(ids).size).toBeLessThan(ids.length)
        expect(ids).not.toContain(big!)
      } finally {
        await world.close()
      }
    }, 120_000)

    test('a second relay with the same transactional id fences the first, which stops', async () => {
      const world = await openRelayWorld(backend, { partitions: 1 })
      try {
        const transactionalId = uniqueName('relay-fence')
        const first = world.transport({ transactionalId })
        const firstRelay = new Relay({ store: world.store, transport: first, pollIntervalMs: 10 })
        const errors: RelayEvents['error'][] = []
        firstRelay.on('error', (e) => errors.push(e))
        await world.write(events(world.topic, 3, 1, 'before'))
        expect(await firstRelay.runOnce()).toBe(3)

        const second = world.transport({ transactionalId })
        const secondRelay = new Relay({ store: world.store, transport: second, pollIntervalMs: 10 })
        await world.write(events(world.topic, 2, 1, 'second'))
        expect(await secondRelay.runOnce()).toBe(2)

        // The zombie tries again: it is fenced, releases its rows unpublished, and stops.
        await world.write(events(world.topic, 2, 1, 'zombie'))
        await firstRelay.start()
        await waitFor('first relay stopped', () => !firstRelay.running, 30_000)
        expect(isOutboxKitError(errors.at(-1)?.error, ErrorCode.Fenced)).toBe(true)
        expect(errors.at(-1)?.retryInMs).toBe(-1)
        expect((await world.counts()).claimed).toBe(0)

        // The new owner publishes what the zombie could not.
        await secondRelay.runOnce()
        const counts = await world.counts()
        expect([counts.published, counts.pending]).toEqual([7, 0])
        const consumed = await consumeMessages(world.brokers, { topic: world.topic, count: 7 })
        expect(consumed.map((m) => JSON.parse(m.value!.toString()).tag)).toEqual([
          'before',
          'before',
          'before',
          'second',
          'second',
          'zombie',
          'zombie',
        ])
      } finally {
        await world.close()
      }
    }, 120_000)
  })
}

describe('relay and a broker restart', () => {
  // A broker of its own, so stopping it disturbs no other test.
  const port = 9392
  const env = { KAFKA_PORT: String(port) }
  beforeAll(() => {
    kafkaScript(['start'], env)
  })
  afterAll(() => {
    kafkaScript(['stop'], env)
  })

  // The broker's outage is the fault here; the database plays no part in it, so one backend is
  // enough (the relay's own failures above run on both).
  for (const backend of [postgresJsBackend]) {
    test(`${backend.name}: the broker SIGKILLed under load and down past the producer's retries: the relay recovers by itself when it comes back, losing nothing`, async () => {
      const world = await openRelayWorld(backend, { partitions: 2, brokers: [`127.0.0.1:${port}`] })
      try {
        const relay = new Relay({
          store: world.store,
          transport: world.transport({ requestTimeoutMs: 5_000 }),
          pollIntervalMs: 20,
          backoff: { initialMs: 100, maxMs: 1_000 },
        })
        const errors: unknown[] = []
        relay.on('error', (e) => errors.push(e.error))
        await relay.start()
        const ids = await world.write(events(world.topic, 300, 10, 'before'))
        await waitFor('first events published', async () => (await world.counts()).published === ids.length)

        // Writers keep going through the outage, so the kill lands mid-batch.
        let writing = true
        const writer = (async () => {
          for (let round = 0; writing; round++) {
            ids.push(...(await world.write(events(world.topic, 10, 10, `during${round}`))))
            await new Promise((r) => setTimeout(r, 50))
          }
        })()
        await new Promise((r) => setTimeout(r, 300))
        kafkaScript(['kill', '1'], env)
        await waitFor('the relay noticing the outage', () => errors.length > 0, 60_000)
        // Down longer than the producer's own retries (requestTimeoutMs 5 s, kafkajs's retry
        // budget): the relay's loop must keep trying on its own.
        await new Promise((r) => setTimeout(r, 15_000))
        writing = false
        await writer
        kafkaScript(['restart-node', '1'], env)

        await waitFor(
          'everything published',
          async () => (await world.counts()).published === ids.length,
          120_000,
        )
        await relay.stop()
        const counts = await world.counts()
        expect([counts.dead, counts.claimed]).toEqual([0, 0])
        const consumed = await consumeAll(world.brokers, world.topic)
        expect(new Set(consumed.map(messageId))).toEqual(new Set(ids))
        expectDuplicatesIdentical(consumed)
        expect(orderByKey(consumed)).toEqual(await writeOrderByKey(world))
        expect(headerValues(consumed[0]!.headers, 'outboxkit-type')).toEqual(['E'])
      } finally {
        await world.close()
      }
    }, 240_000)
  }
})
