/**
 * Relays with ownership 'shards' on the real databases and Kafka: several relay processes split
 * the shards and one is killed mid-stream; a relay paused past its shard lease is taken over and
 * its late marks are fenced; a relay in-process frozen in its publish is fenced the same way.
 */
import { describe, expect, test } from 'bun:test'
import { createKyselyOutboxStore } from '../../src/adapters/kysely/index.js'
import { Relay, type RelayEvents } from '../../src/index.js'
import { mysqlBackend, postgresJsBackend } from '../support/databases.js'
import { startWorker, type Worker } from '../support/processes.js'
import {
  consumeAll,
  events,
  expectDuplicatesIdentical,
  messageId,
  openRelayWorld,
  orderByKey,
  type RelayWorld,
  stalled,
  waitFor,
  writeOrderByKey,
} from '../support/relay-world.js'

const BACKENDS = [postgresJsBackend, mysqlBackend]

/** Shards with an owner, and registered relays, read directly from the database. */
async function ownership(world: RelayWorld): Promise<{ owned: number; relays: number }> {
  const q = (name: string) => (world.database.dialect === 'mysql' ? `\`${name}\`` : `"${name}"`)
  const table = (name: string) => `${q(world.database.schema)}.${q(name)}`
  const [owned] = await world.database.query<{ n: unknown }>(
    `SELECT count(*) AS n FROM ${table('outbox_shards')} WHERE owner IS NOT NULL`,
  )
  const [relays] = await world.database.query<{ n: unknown }>(
    `SELECT count(*) AS n FROM ${table('outbox_relays')}`,
  )
  return { owned: Number(owned?.n), relays: Number(relays?.n) }
}

async function expectEachOnceInOrder(world: RelayWorld, ids: readonly string[]): Promise<number> {
  const consumed = await consumeAll(world.brokers, world.topic)
  expect(new Set(consumed.map(messageId))).toEqual(new Set(ids))
  const duplicates = expectDuplicatesIdentical(consumed)
  expect(consumed.length).toBe(ids.length + duplicates)
  expect(orderByKey(consumed)).toEqual(await writeOrderByKey(world))
  return duplicates
}

for (const backend of BACKENDS) {
  describe(`relays with ownership 'shards' on ${backend.name}`, () => {
    test('three relay processes share the shards; one killed with SIGKILL mid-stream loses nothing and reorders no key', async () => {
      const world = await openRelayWorld(backend, { partitions: 3 })
      const workers: Worker[] = []
      try {
        const ids: string[] = []
        for (let t = 0; t < 6; t++) ids.push(...(await world.write(events(world.topic, 500, 50, `t${t}`))))
        const env = {
          BACKEND: backend.name,
          SCHEMA: world.database.schema,
          BROKERS: world.brokers.join(','),
          BATCH_SIZE: '100',
          LEASE_MS: '1500',
          OWNERSHIP: 'shards',
        }
        for (let i = 0; i < 3; i++) workers.push(await startWorker('relay-worker', env))
        await waitFor('a third published', async () => (await world.counts()).published >= 1_000, 60_000)
        await workers[0]!.kill('SIGKILL')
        // More work after the kill: the survivors share it (each owns a third of the shards, then
        // half once the killed relay's lease runs out), however fast the first backlog went.
        for (let t = 0; t < 6; t++) ids.push(...(await world.write(events(world.topic, 500, 50, `u${t}`))))
        await waitFor(
          'everything published',
          async () => (await world.counts()).published === ids.length,
          90_000,
        )
        // Each survivor published part of the backlog: the work was shared.
        for (const worker of workers.slice(1)) expect(worker.output()).toContain('published')
        for (const worker of workers.slice(1)) await worker.kill('SIGTERM')
        // A graceful stop gives the shards and the registration up; the killed relay's registration
        // was swept by the survivors once expired, and its shards are now free too.
        expect((await ownership(world)).owned).toBe(0)
        const duplicates = await expectEachOnceInOrder(world, ids)
        console.log(`${backend.name}: ${duplicates} duplicates after killing one of three shard relays`)
      } finally {
        for (const worker of workers) await worker.kill('SIGKILL')
        await world.close()
      }
    }, 240_000)

    test('a relay process paused (SIGSTOP) past its lease is taken over; resumed, it reorders nothing', async () => {
      const world = await openRelayWorld(backend, { partitions: 2 })
      const workers: Worker[] = []
      try {
        const ids = await world.write(events(world.topic, 2_000, 20, 'before'))
        const env = {
          BACKEND: backend.name,
          SCHEMA: world.database.schema,
          BROKERS: world.brokers.join(','),
          BATCH_SIZE: '50',
          LEASE_MS: '1000',
          OWNERSHIP: 'shards',
        }
        const zombie = await startWorker('relay-worker', env)
        workers.push(zombie)
        await waitFor('progress', async () => (await world.counts()).published >= 200, 60_000)
        zombie.process.kill('SIGSTOP')
        const heir = await startWorker('relay-worker', env)
        workers.push(heir)
        ids.push(...(await world.write(events(world.topic, 400, 20, 'after'))))
        await waitFor(
          'the heir published everything',
          async () => (await world.counts()).published === ids.length,
          90_000,
        )
        // The zombie wakes: what it had in flight is published again at most, its marks are fenced.
        zombie.process.kill('SIGCONT')
        await new Promise((r) => setTimeout(r, 1_500))
        for (const worker of workers) await worker.kill('SIGTERM')
        expect(await world.counts()).toMatchObject({ published: ids.length, pending: 0 })
        expect(await ownership(world)).toEqual({ owned: 0, relays: 0 })
        await expectEachOnceInOrder(world, ids)
      } finally {
        for (const worker of workers) {
          worker.process.kill('SIGCONT')
          await worker.kill('SIGKILL')
        }
        await world.close()
      }
    }, 240_000)

    test('a transaction that commits after later ones were published is published too, in its key order', async () => {
      const world = await openRelayWorld(backend, { partitions: 2 })
      const peer = await world.database.openPeer()
      const relay = new Relay({
        store: createKyselyOutboxStore({ db: peer, schema: world.database.schema }),
        transport: world.transport(),
        ownership: 'shards',
        leaseMs: 2_000,
        pollIntervalMs: 20,
      })
      try {
        await relay.start()
        let commit!: () => void
        const held = new Promise<void>((resolve) => {
          commit = resolve
        })
        let lateIds: string[] = []
        // Takes its seq first, commits last (its keys are its own: two writers of one key are
        // ordered by the application's own row locks, not by the outbox).
        const late = world.store.transaction(async (trx) => {
          const messages = events(world.topic, 5, 5, 'late').map((m, i) => ({ ...m, key: `late-${i}` }))
          lateIds = await world.outbox.add(trx, messages)
          await held
        })
        const early = await world.write(events(world.topic, 20, 5, 'early'))
        await waitFor('early published', async () => (await world.counts()).published === early.length)
        commit()
        await late
        await waitFor('late published', async () => (await world.counts()).published === early.length + 5)
        await relay.stop()
        await expectEachOnceInOrder(world, [...early, ...lateIds])
      } finally {
        await relay.stop()
        await world.close()
      }
    }, 120_000)

    test('a relay frozen in its publish past its lease: the new owner publishes, the late marks are fenced', async () => {
      const world = await openRelayWorld(backend, { partitions: 2 })
      try {
        const first = await world.write(events(world.topic, 24, 4, 'first'))
        // Relay A takes every shard in one runOnce, then freezes in its publish: nothing renews.
        const transport = stalled(world.transport(), ['publish'])
        const relayA = new Relay({
          store: world.store,
          transport: transport.view,
          ownership: 'shards',
          leaseMs: 800,
        })
        const lostByA: RelayEvents['leaseLost'][] = []
        relayA.on('leaseLost', (e) => lostByA.push(e))
        const cycleA = relayA.runOnce()
        await transport.entered

        const peer = await world.database.openPeer()
        const relayB = new Relay({
          store: createKyselyOutboxStore({ db: peer, schema: world.database.schema }),
          transport: world.transport(),
          ownership: 'shards',
          leaseMs: 800,
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

        transport.release()
        expect(await cycleA).toBe(first.length)
        expect(lostByA.flatMap((e) => e.ids).sort()).toEqual([...first].sort())
        expect(await world.counts()).toMatchObject({ published: all.length, pending: 0 })
        // Duplicates only as same-id copies: A's whole stale batch once more.
        expect(await expectEachOnceInOrder(world, all)).toBe(first.length)
      } finally {
        await world.close()
      }
    }, 120_000)
  })
}
