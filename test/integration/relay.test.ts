/**
 * The relay against real Kafka and real databases: every committed event is published (G2), in
 * per-key order (G3), with duplicates only as same-id copies (G4).
 */
import { afterAll, describe, expect, test } from 'bun:test'
import { DEFAULT_MAX_PAYLOAD_BYTES, Relay, type RelayEvents } from '../../src/index.js'
import { mysqlBackend, postgresJsBackend } from '../support/databases.js'
import { consumeMessages, createTopic, headerValues, uniqueTopic } from '../support/kafka.js'
import {
  consumeAll,
  events,
  messageId,
  openRelayWorld,
  orderByKey,
  waitFor,
  writeOrderByKey,
} from '../support/relay-world.js'

const BACKENDS = [postgresJsBackend, mysqlBackend]

const running: Relay<unknown>[] = []
afterAll(async () => {
  for (const relay of running) await relay.stop()
})

for (const backend of BACKENDS) {
  describe(`relay to Kafka on ${backend.name}`, () => {
    test('events from many concurrent writers, one committing late, all arrive exactly once in key order', async () => {
      const world = await openRelayWorld(backend)
      try {
        const relay = new Relay({
          store: world.store,
          transport: world.transport(),
          batchSize: 200,
          pollIntervalMs: 20,
        })
        running.push(relay as Relay<unknown>)
        await relay.start()

        // A transaction that begins first and commits last.
        let commitLate!: () => void
        const lateGate = new Promise<void>((r) => (commitLate = r))
        let lateIds: string[] = []
        const late = world.store.transaction(async (trx) => {
          lateIds = await world.outbox.add(trx, [
            { topic: world.topic, key: 'late', type: 'Late', payload: 1 },
          ])
          await lateGate
        })

        const written: string[][] = await Promise.all(
          Array.from({ length: 6 }, (_, writer) =>
            (async () => {
              const ids: string[] = []
              for (let t = 0; t < 25; t++) {
                // Each writer owns its keys: writers of one key must be serialised for the key to
                // have an order (as an application does by updating the aggregate's row first).
                const batch = events(world.topic, 1 + (t % 3), 10, `w${writer}`).map((e) => ({
                  ...e,
                  key: `w${writer}-${e.key}`,
                }))
                ids.push(...(await world.write(batch)))
              }
              return ids
            })(),
          ),
        )
        await waitFor(
          'writers published',
          async () => (await world.counts()).published === written.flat().length,
        )
        commitLate()
        await late
        const all = [...written.flat(), ...lateIds]
        await waitFor('late event published', async () => (await world.counts()).published === all.length)
        await relay.stop()

        const consumed = await consumeAll(world.brokers, world.topic)
        const ids = consumed.map(messageId)
        expect(ids.length).toBe(all.length)
        expect(new Set(ids)).toEqual(new Set(all))

        // Per key, the topic order is the write order.
        const expected = await writeOrderByKey(world)
        expect(orderByKey(consumed)).toEqual(expected)
      } finally {
        await world.close()
      }
    }, 120_000)

    test('three relays on one table keep every key in write order', async () => {
      const world = await openRelayWorld(backend, { partitions: 4 })
      try {
        const peers = await Promise.all([0, 1, 2].map(() => world.database.openPeer()))
        const { createKyselyOutboxStore } = await import('../../src/adapters/kysely/index.js')
        const relays = peers.map(
          (db) =>
            new Relay({
              store: createKyselyOutboxStore({ db, schema: world.database.schema }),
              transport: world.transport(),
              batchSize: 50,
              pollIntervalMs: 10,
            }),
        )
        const claimedBy = relays.map(() => 0)
        relays.forEach((relay, i) => {
          relay.on('claimed', (e) => {
            claimedBy[i]! += e.count
          })
        })
        for (const relay of relays) {
          running.push(relay as Relay<unknown>)
          await relay.start()
        }
        // Writers keep adding while the relays drain: 20 keys, 1 500 events.
        const ids: string[] = []
        for (let t = 0; t < 50; t++) {
          ids.push(...(await world.write(events(world.topic, 30, 20, `t${t}`))))
        }
        await waitFor('all published', async () => (await world.counts()).published === ids.length)
        for (const relay of relays) await relay.stop()
        // Every relay took part.
        expect(claimedBy.filter((n) => n > 0).length).toBeGreaterThan(1)

        const consumed = await consumeAll(world.brokers, world.topic)
        expect(new Set(consumed.map(messageId))).toEqual(new Set(ids))
        expect(orderByKey(consumed)).toEqual(await writeOrderByKey(world))
      } finally {
        await world.close()
      }
    }, 120_000)

    test('an over-size record is dead-lettered with its reason while other keys keep flowing', async () => {
      // The topic accepts records up to ~2 KB; the relay's own limit is higher, so the broker refuses it.
      const world = await openRelayWorld(backend, {
        partitions: 1,
        topicConfig: { 'max.message.bytes': '2048' },
      })
      const dlq = uniqueTopic('relay-dlq')
      await createTopic(world.brokers, dlq, { partitions: 1 })
      try {
        const relay = new Relay({
          store: world.store,
          transport: world.transport(),
          deadLetter: { topic: dlq, transport: world.transport({ maxRecordBytes: 1_000_000 }) },
          pollIntervalMs: 10,
        })
        const dead: RelayEvents['deadLettered'][] = []
        relay.on('deadLettered', (e) => dead.push(e))
        const small = (key: string, n: number) => ({ topic: world.topic, key, type: 'Small', payload: { n } })
        const [before] = await world.write([small('a', 1)])
        const [big] = await world.write([
          { topic: world.topic, key: 'big', type: 'Big', payload: 'x'.repeat(10_000) },
        ])
        const after = await world.write([small('b', 2), small('big', 3), small('a', 4)])
        running.push(relay as Relay<unknown>)
        await relay.start()
        await waitFor('settled', async () => {
          const c = await world.counts()
          return c.published === 4 && c.dead === 1
        })
        await relay.stop()
        expect(dead.map((d) => d.ids[0])).toEqual([big!])
        expect(dead[0]!.error).toContain('MESSAGE_TOO_LARGE')
        const consumed = await consumeAll(world.brokers, world.topic)
        expect(new Set(consumed.map(messageId))).toEqual(new Set([before!, ...after]))
        const [letter] = await consumeMessages(world.brokers, { topic: dlq, count: 1 })
        expect(messageId(letter!)).toBe(big!)
        expect(headerValues(letter!.headers, 'outboxkit-dead-reason')[0]).toContain('MESSAGE_TOO_LARGE')
        expect(headerValues(letter!.headers, 'outboxkit-original-topic')).toEqual([world.topic])
        const rows = await world.database.query<{ last_error: string }>(
          `SELECT last_error FROM ${world.database.dialect === 'mysql' ? `\`${world.database.schema}\`.outbox` : `"${world.database.schema}".outbox`} WHERE status = 2`,
        )
        expect(rows[0]!.last_error).toContain('MESSAGE_TOO_LARGE')
      } finally {
        await world.close()
      }
    }, 120_000)

    test('a payload of the default maximum size passes add and is published with the default limits', async () => {
      const world = await openRelayWorld(backend, { partitions: 1 })
      try {
        const relay = new Relay({ store: world.store, transport: world.transport(), pollIntervalMs: 10 })
        const dead: RelayEvents['deadLettered'][] = []
        relay.on('deadLettered', (e) => dead.push(e))
        const payload = new Uint8Array(DEFAULT_MAX_PAYLOAD_BYTES).fill(7)
        const [id] = await world.write([{ topic: world.topic, key: 'k'.repeat(255), type: 'Max', payload }])
        running.push(relay as Relay<unknown>)
        await relay.start()
        await waitFor('settled', async () => {
          const c = await world.counts()
          return c.published + c.dead === 1
        })
        await relay.stop()
        expect(dead).toEqual([])
        expect(await world.counts()).toMatchObject({ published: 1, dead: 0 })
        const [message] = await consumeMessages(world.brokers, { topic: world.topic, count: 1 })
        expect(messageId(message!)).toBe(id!)
        expect(message!.value?.byteLength).toBe(DEFAULT_MAX_PAYLOAD_BYTES)
      } finally {
        await world.close()
      }
    }, 120_000)

    test('stop() under load returns and leaves no row claimed', async () => {
      const world = await openRelayWorld(backend)
      try {
        const ids: string[] = []
        for (let t = 0; t < 10; t++) ids.push(...(await world.write(events(world.topic, 300, 50, 'load'))))
        const relay = new Relay({
          store: world.store,
          transport: world.transport(),
          batchSize: 250,
          pollIntervalMs: 10,
        })
        running.push(relay as Relay<unknown>)
        await relay.start()
        await waitFor('publishing under way', async () => (await world.counts()).published > 0)
        await relay.stop()
        const counts = await world.counts()
        expect(counts.claimed).toBe(0)
        expect(counts.published + counts.pending).toBe(ids.length)
        expect(counts.pending).toBeGreaterThan(0)
        // What was published is exactly what the table says was published.
        const consumed = await consumeAll(world.brokers, world.topic)
        expect(consumed.length).toBe(counts.published)
      } finally {
        await world.close()
      }
    }, 120_000)
  })
}
