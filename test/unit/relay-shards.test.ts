import { describe, expect, test } from 'bun:test'
import {
  MEMORY_SHARD_COUNT,
  MemoryDatabase,
  MemoryOutboxStore,
  MemoryTransport,
  memoryShardOf,
} from '../../src/adapters/memory/index.js'
import {
  type ClaimedRecord,
  ErrorCode,
  isOutboxKitError,
  Outbox,
  Relay,
  type RelayEvents,
} from '../../src/index.js'

const fast = { pollIntervalMs: 5, backoff: { initialMs: 1, maxMs: 5 } }

function world() {
  const db = new MemoryDatabase()
  const store = new MemoryOutboxStore(db)
  const outbox = new Outbox({ store })
  const add = (key: string, type: string) =>
    store.transaction((tx) => outbox.add(tx, { topic: 'orders', key, type, payload: { type } }))
  const addMany = (keys: number, perKey: number) =>
    store.transaction(async (tx) => {
      for (let i = 0; i < perKey; i++)
        for (let k = 0; k < keys; k++)
          await outbox.add(tx, { topic: 'orders', key: `k${k}`, type: `e${i}`, payload: { i } })
    })
  const relay = (transport: MemoryTransport, options: Partial<ConstructorParameters<typeof Relay>[0]> = {}) =>
    new Relay({ store, transport, ownership: 'shards', leaseMs: 300, ...fast, ...options })
  return { db, store, outbox, add, addMany, relay }
}

async function until(condition: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time')
    await new Promise((r) => setTimeout(r, 2))
  }
}

/** The types each key was delivered with, in delivery order. */
function byKey(delivered: readonly { key: string; type: string }[]): Map<string, string[]> {
  const keys = new Map<string, string[]>()
  for (const d of delivered) keys.set(d.key, [...(keys.get(d.key) ?? []), d.type])
  return keys
}

/**
 * Holds the transport's first publish until `release()` is true (a later batch was claimed
 * behind it), and records every batch the transport is given.
 */
function holdFirstPublish(transport: MemoryTransport, release: () => boolean): ClaimedRecord[][] {
  const batches: ClaimedRecord[][] = []
  const publish = transport.publish.bind(transport)
  transport.publish = async (records) => {
    batches.push([...records])
    if (batches.length === 1) await until(release)
    return publish(records)
  }
  return batches
}

describe("Relay with ownership 'shards'", () => {
  test('drains the table in per-key order, then gives its shards up on stop', async () => {
    const w = world()
    await w.addMany(20, 10)
    const transport = new MemoryTransport()
    const relay = w.relay(transport, { batchSize: 7 })
    await relay.start()
    await until(() => transport.delivered.length === 200)
    expect(relay.ownedShards.length).toBe(MEMORY_SHARD_COUNT)
    await relay.stop()
    const expected = Array.from({ length: 10 }, (_, i) => `e${i}`)
    for (const types of byKey(transport.delivered).values()) expect(types).toEqual(expected)
    expect(w.db.rows.every((r) => r.status === 'published' && r.attempts === 1)).toBe(true)
    expect(w.db.shards.every((s) => s.owner === null)).toBe(true)
    expect(w.db.relays.size).toBe(0)
    expect(relay.ownedShards).toEqual([])
  })

  test('claims the next batch while one is published: its keys go on after the records in flight', async () => {
    const w = world()
    await w.addMany(10, 2)
    const transport = new MemoryTransport()
    const claimed: RelayEvents['claimed'][] = []
    const batches = holdFirstPublish(transport, () => claimed.length >= 2)
    const relay = w.relay(transport, { batchSize: 6 })
    relay.on('claimed', (e) => claimed.push(e))
    await relay.start()
    await until(() => transport.delivered.length === 20)
    await relay.stop()
    // The second batch was claimed while the first was held at the transport, and took the next
    // six records: the rest of k0–k5's first records and the start of their second ones.
    expect(batches[1]!.map((r) => `${r.key}:${r.type}`)).toEqual([
      'k6:e0',
      'k7:e0',
      'k8:e0',
      'k9:e0',
      'k0:e1',
      'k1:e1',
    ])
    const ids = batches.flatMap((b) => b.map((r) => r.id))
    expect(new Set(ids).size).toBe(20)
    for (const types of byKey(transport.delivered).values()) expect(types).toEqual(['e0', 'e1'])
  })

  describe('a key the transport did not publish is held back in the batch claimed behind it', () => {
    const expected = Array.from({ length: 6 }, (_, i) => `e${i}`)

    test('a retriable failure: the key goes on from the failed record, in order', async () => {
      const w = world()
      await w.addMany(3, 6)
      const transport = new MemoryTransport()
      let failures = 0
      transport.failWith = (r) =>
        r.key === 'k1' && r.type === 'e1' && failures++ === 0
          ? { status: 'failed', error: 'leader moved', retriable: true }
          : undefined
      const claimed: RelayEvents['claimed'][] = []
      const batches = holdFirstPublish(transport, () => claimed.length >= 2)
      const relay = w.relay(transport, { batchSize: 6 })
      relay.on('claimed', (e) => claimed.push(e))
      await relay.start()
      await until(() => transport.delivered.length === 18)
      await relay.stop()
      // The batch claimed behind the failure carried k1's e2 and e3, and did not send them.
      expect(batches[1]!.filter((r) => r.key === 'k1').map((r) => r.type)).toEqual([])
      for (const types of byKey(transport.delivered).values()) expect(types).toEqual(expected)
    })

    test('a claim made while the failure was being marked holds the key too', async () => {
      // b fails k:e1; c (claimed behind b) holds k back and ends; d is claimed while b's marks are
      // still being written, so it reads k's records after b's (still in flight) as ready. The
      // marks land before d publishes: d must hold k back all the same.
      const w = world()
      for (let i = 0; i < 20; i++) await w.add('k', `e${i}`)
      const transport = new MemoryTransport()
      let failures = 0
      transport.failWith = (r) =>
        r.type === 'e1' && failures++ === 0
          ? { status: 'failed', error: 'leader moved', retriable: true }
          : undefined
      const claimed: RelayEvents['claimed'][] = []
      holdFirstPublish(transport, () => claimed.length >= 2)
      let claims = 0
      let marked = false
      let thirdClaimStarted = false
      const claimOwned = w.store.claimOwned.bind(w.store)
      w.store.claimOwned = async (relayId, options) => {
        const claim = await claimOwned(relayId, options)
        if (++claims === 3) {
          thirdClaimStarted = true
          await until(() => marked)
          await new Promise((r) => setTimeout(r, 10))
        }
        return claim
      }
      const markFailed = w.store.markFailed.bind(w.store)
      w.store.markFailed = async (token, failed) => {
        await until(() => thirdClaimStarted)
        const result = await markFailed(token, failed)
        marked = true
        return result
      }
      const relay = w.relay(transport, { batchSize: 5, backoff: { initialMs: 1, maxMs: 1 } })
      relay.on('claimed', (e) => claimed.push(e))
      await relay.start()
      await until(() => transport.delivered.length === 20)
      await relay.stop()
      expect(byKey(transport.delivered).get('k')).toEqual(Array.from({ length: 20 }, (_, i) => `e${i}`))
    })

    test('a whole publish that throws: every key of that batch waits', async () => {
      const w = world()
      await w.addMany(3, 6)
      const transport = new MemoryTransport()
      let throws = 0
      transport.throwWith = () => (throws++ === 0 ? new Error('broker unreachable') : undefined)
      const claimed: RelayEvents['claimed'][] = []
      holdFirstPublish(transport, () => claimed.length >= 2)
      const relay = w.relay(transport, { batchSize: 6 })
      relay.on('claimed', (e) => claimed.push(e))
      relay.on('error', () => {})
      await relay.start()
      await until(() => transport.delivered.length === 18)
      await relay.stop()
      expect(transport.delivered.length).toBe(18)
      for (const types of byKey(transport.delivered).values()) expect(types).toEqual(expected)
    })

    test('a dead record: the key goes on from the record after it, in order', async () => {
      const w = world()
      await w.addMany(3, 6)
      const transport = new MemoryTransport()
      transport.failWith = (r) =>
        r.key === 'k1' && r.type === 'e1'
          ? { status: 'failed', error: 'too large', retriable: false }
          : undefined
      const claimed: RelayEvents['claimed'][] = []
      holdFirstPublish(transport, () => claimed.length >= 2)
      // The first batch holds e0–e2 of each key: k1's e2 is a follower of the dead e1.
      const relay = w.relay(transport, { batchSize: 9 })
      relay.on('claimed', (e) => claimed.push(e))
      await relay.start()
      await until(() => transport.delivered.length === 17)
      await relay.stop()
      const delivered = byKey(transport.delivered)
      expect(delivered.get('k1')).toEqual(['e0', 'e2', 'e3', 'e4', 'e5'])
      expect(delivered.get('k0')).toEqual(expected)
      expect(delivered.get('k2')).toEqual(expected)
    })
  })

  test('three relays split the shards fairly, never own one shard twice, and publish each record once', async () => {
    const w = world()
    const transport = new MemoryTransport()
    const relays = [w.relay(transport), w.relay(transport), w.relay(transport)]
    for (const relay of relays) await relay.start()
    // Rebalanced: none owns more than its fair share, ceil(64 / 3) = 22, and every shard is owned.
    const all = () => relays.flatMap((r) => [...r.ownedShards])
    await until(() => all().length === MEMORY_SHARD_COUNT && relays.every((r) => r.ownedShards.length <= 22))
    expect(relays.every((r) => r.ownedShards.length >= 20)).toBe(true)
    expect(new Set(all()).size).toBe(MEMORY_SHARD_COUNT)
    await w.addMany(50, 8)
    await until(() => transport.delivered.length >= 400)
    for (const relay of relays) await relay.stop()
    expect(transport.delivered.length).toBe(400)
    expect(new Set(transport.delivered.map((d) => d.id)).size).toBe(400)
    const expected = Array.from({ length: 8 }, (_, i) => `e${i}`)
    for (const types of byKey(transport.delivered).values()) expect(types).toEqual(expected)
  })

  test('a relay that joins gets shards given up by the owner only once their records are marked', async () => {
    const w = world()
    const transport = new MemoryTransport()
    const first = w.relay(transport)
    const changes: RelayEvents['shardsChanged'][] = []
    first.on('shardsChanged', (e) => changes.push(e))
    await first.start()
    await until(() => first.ownedShards.length === MEMORY_SHARD_COUNT)
    const second = w.relay(transport)
    await second.start()
    await until(() => first.ownedShards.length === 32 && second.ownedShards.length === 32)
    // The first relay drained its surplus before releasing it.
    expect(changes.some((c) => c.draining.length === 32)).toBe(true)
    await first.stop()
    await until(() => second.ownedShards.length === MEMORY_SHARD_COUNT)
    await second.stop()
  })

  test('a failing record holds back only its key, is retried, and is dead after maxAttempts', async () => {
    const w = world()
    const transport = new MemoryTransport()
    const poison = 'k-poison'
    transport.failWith = (r) =>
      r.key === poison && r.type === 'bad'
        ? { status: 'failed', error: 'refused', retriable: true }
        : undefined
    await w.add(poison, 'bad')
    await w.add(poison, 'after')
    for (let i = 0; i < 5; i++) await w.add(`k${i}`, 'ok')
    const dead: string[] = []
    const relay = w.relay(transport, { maxAttempts: 3 })
    relay.on('deadLettered', (e) => dead.push(...e.ids))
    await relay.start()
    await until(() => dead.length === 1 && transport.delivered.length === 6)
    await relay.stop()
    const poisonRow = w.db.rows.find((r) => r.record.type === 'bad')!
    expect(poisonRow.status).toBe('dead')
    expect(poisonRow.attempts).toBe(3)
    // Its follower waited for it, then went out once.
    expect(transport.delivered.filter((d) => d.key === poison).map((d) => d.type)).toEqual(['after'])
    expect(w.db.rows.find((r) => r.record.type === 'after')!.attempts).toBe(1)
  })

  test('a relay that stops renewing loses its shards; its late marks are fenced and the new owner publishes', async () => {
    const w = world()
    await w.add('order-1', 'created')
    const slow = new MemoryTransport()
    let releasePublish!: () => void
    const gate = new Promise<void>((resolve) => {
      releasePublish = resolve
    })
    const publish = slow.publish.bind(slow)
    slow.publish = async (records) => {
      await gate
      return publish(records)
    }
    // The first relay's heartbeats stop (a paused process) once it has claimed.
    const stalled = new MemoryOutboxStore(w.db)
    let paused = false
    let resume!: () => void
    const resumed = new Promise<void>((resolve) => {
      resume = resolve
    })
    const sync = stalled.syncShards.bind(stalled)
    stalled.syncShards = async (relayId, options) => {
      if (paused) await resumed
      return sync(relayId, options)
    }
    const lost: string[] = []
    const first = new Relay({ store: stalled, transport: slow, ownership: 'shards', leaseMs: 150, ...fast })
    first.on('leaseLost', (e) => lost.push(...e.ids))
    first.on('claimed', () => {
      paused = true
    })
    await first.start()
    await until(() => paused)
    // The new owner claims the row and holds it in its own publish while the old one wakes up.
    const fresh = new MemoryTransport()
    let releaseFresh!: () => void
    const freshGate = new Promise<void>((resolve) => {
      releaseFresh = resolve
    })
    const publishFresh = fresh.publish.bind(fresh)
    let freshCalls = 0
    fresh.publish = async (records) => {
      freshCalls++
      await freshGate
      return publishFresh(records)
    }
    const second = w.relay(fresh, { leaseMs: 150 })
    const secondLost: string[] = []
    second.on('leaseLost', (e) => secondLost.push(...e.ids))
    await second.start()
    await until(() => freshCalls === 1)
    // The old owner's publish returns: its mark of a row it no longer owns is refused.
    releasePublish()
    await until(() => lost.length === 1)
    expect(w.db.rows[0]!.status).toBe('pending')
    releaseFresh()
    await until(() => w.db.rows[0]!.status === 'published')
    expect(secondLost).toEqual([])
    expect(w.db.rows[0]!.attempts).toBe(1)
    await second.stop()
    resume()
    await first.stop()
  })

  test('runOnce syncs, claims and marks one batch; it refuses to run beside the loop', async () => {
    const w = world()
    await w.addMany(3, 2)
    const transport = new MemoryTransport()
    const relay = w.relay(transport, { batchSize: 100 })
    expect(await relay.runOnce()).toBe(6)
    expect(transport.delivered.length).toBe(6)
    expect(await relay.runOnce()).toBe(0)
    await relay.start()
    const error = await relay.runOnce().catch((e: unknown) => e)
    expect(isOutboxKitError(error, ErrorCode.AlreadyStarted)).toBe(true)
    await relay.stop()
  })

  test('a publish that throws marks nothing, backs off, and the batch goes out once the broker is back', async () => {
    const w = world()
    await w.addMany(5, 3)
    const transport = new MemoryTransport()
    let down = true
    transport.throwWith = () => (down ? new Error('broker unreachable') : undefined)
    const errors: RelayEvents['error'][] = []
    const relay = w.relay(transport)
    relay.on('error', (e) => errors.push(e))
    await relay.start()
    await until(() => errors.length >= 2)
    expect(w.db.rows.every((r) => r.status === 'pending' && r.attempts === 0)).toBe(true)
    down = false
    await until(() => transport.delivered.length === 15)
    await relay.stop()
    for (const types of byKey(transport.delivered).values()) expect(types).toEqual(['e0', 'e1', 'e2'])
  })

  test('refuses a store without shard ownership, an unknown mode and a bad relay id', () => {
    const store = new MemoryOutboxStore()
    const transport = new MemoryTransport()
    const rowsOnly = Object.assign(Object.create(store), {
      capabilities: { concurrentClaims: true, notify: false },
    }) as MemoryOutboxStore
    const refused = (make: () => unknown) => {
      try {
        make()
      } catch (error) {
        return isOutboxKitError(error, ErrorCode.InvalidOptions)
      }
      return false
    }
    expect(refused(() => new Relay({ store: rowsOnly, transport, ownership: 'shards' }))).toBe(true)
    expect(refused(() => new Relay({ store, transport, ownership: 'keys' as 'rows' }))).toBe(true)
    expect(refused(() => new Relay({ store, transport, ownership: 'shards', relayId: '' }))).toBe(true)
    expect(refused(() => new Relay({ store, transport, ownership: 'shards', relayId: 'x'.repeat(65) }))).toBe(
      true,
    )
    expect(new Relay({ store, transport, ownership: 'shards', relayId: 'x'.repeat(64) }).relayId).toBe(
      'x'.repeat(64),
    )
  })

  test('memoryShardOf is stable and within range', () => {
    expect(memoryShardOf('order-1')).toBe(memoryShardOf('order-1'))
    for (const key of ['', 'a', 'order-1', '€'.repeat(50)]) {
      const shard = memoryShardOf(key)
      expect(shard >= 0 && shard < MEMORY_SHARD_COUNT).toBe(true)
    }
  })
})
