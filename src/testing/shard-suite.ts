/**
 * The conformance suite for shard ownership (`syncShards`, `claimOwned`, `leaveShards` and the
 * settle calls on their tokens). It uses only the store contract; assertions on rows read the
 * table through the harness's `readRows`, which must query the database directly. Shard numbers
 * are never assumed: only that a key always maps to the same shard, within `shardCount`.
 */
import { ErrorCode, isOutboxKitError } from '../core/errors.js'
import type { ClaimedRecord, OutboxMessageInput } from '../core/message.js'
import { Outbox } from '../core/outbox.js'
import type { OutboxStore, ShardState } from '../core/store.js'
import type { OutboxStoreHarness } from './outbox-store-suite.js'
import { captureError, skipTest, sleep, type TestApi } from './test-api.js'

export interface ShardSuiteOptions {
  /** Whether two transactions can be open at once (false for PGlite); concurrent tests are skipped when false. */
  readonly concurrentTransactions: boolean
  /** Short lease for expiry tests, in ms. Default 400. */
  readonly shortLeaseMs?: number
  /**
   * Whether the store implements `reconcilePublished` (what `RelayOptions.exactlyOnce` needs).
   * Default true: its tests then fail if it is missing; false shows them as skipped.
   */
  readonly reconcilePublished?: boolean
}

type ShardStore<Tx> = OutboxStore<Tx> &
  Required<Pick<OutboxStore<Tx>, 'syncShards' | 'claimOwned' | 'leaveShards'>>

function shardStore<Tx>(store: OutboxStore<Tx>): ShardStore<Tx> {
  if (!store.capabilities.shards || !store.syncShards || !store.claimOwned || !store.leaveShards) {
    throw new Error(
      `${store.name} does not declare capabilities.shards with syncShards, claimOwned, leaveShards`,
    )
  }
  return store as ShardStore<Tx>
}

function message(key: string, type: string): OutboxMessageInput {
  return { topic: 'orders', key, type, payload: { key, type } }
}

const LONG = 30_000

export function shardSuite<Tx>(
  api: TestApi,
  name: string,
  open: () => Promise<OutboxStoreHarness<Tx>>,
  options: ShardSuiteOptions,
): void {
  const { describe, expect } = api
  const lease = options.shortLeaseMs ?? 400
  const test = (
    title: string,
    fn: (
      h: OutboxStoreHarness<Tx>,
      store: ShardStore<Tx>,
      add: (m: OutboxMessageInput[]) => Promise<string[]>,
    ) => Promise<void>,
  ) =>
    api.test(
      title,
      async () => {
        const harness = await open()
        try {
          const outbox = new Outbox({ store: harness.store })
          const add = (messages: OutboxMessageInput[]) =>
            harness.store.transaction((tx) => outbox.add(tx, messages))
          await fn(harness, shardStore(harness.store), add)
        } finally {
          await harness.close()
        }
      },
      30_000,
    )
  const concurrentTest = options.concurrentTransactions
    ? test
    : (title: string, _fn: unknown) => skipTest(api, title, 'this backend runs one transaction at a time')

  const reconcileTest =
    options.reconcilePublished === false
      ? (title: string, _fn: unknown) =>
          skipTest(api, title, 'this store does not implement reconcilePublished')
      : test

  const peerOf = async (h: OutboxStoreHarness<Tx>) => shardStore(await h.peer())
  const shardsOf = (state: ShardState) => state.owned.map((s) => s.shard)
  const all = (state: ShardState) => Array.from({ length: state.shardCount }, (_, i) => i)
  const expectInvalid = async (fn: () => Promise<unknown>) => {
    const error = await captureError(fn)
    expect(isOutboxKitError(error, ErrorCode.InvalidOptions)).toBe(true)
  }

  describe(`Shard ownership conformance: ${name}`, () => {
    test('one relay takes every shard, ascending, each with an epoch above 0', async (_h, store) => {
      const state = await store.syncShards('relay-a', { leaseMs: LONG })
      expect(state.shardCount).toBeGreaterThan(0)
      expect(state.liveRelays).toBe(1)
      expect(state.fairShare).toBe(state.shardCount)
      expect(shardsOf(state)).toEqual(all(state))
      expect(state.owned.every((s) => s.epoch > 0)).toBe(true)
      // Renewing keeps the epochs: nobody else owned them in between.
      const again = await store.syncShards('relay-a', { leaseMs: LONG })
      expect(again.owned).toEqual(state.owned)
    })

    test('two relays: fair shares, disjoint ownership, and the surplus moves only via release', async (h, a) => {
      const b = await peerOf(h)
      const first = await a.syncShards('relay-a', { leaseMs: LONG })
      const joined = await b.syncShards('relay-b', { leaseMs: LONG })
      expect(joined.liveRelays).toBe(2)
      expect(joined.fairShare).toBe(Math.ceil(first.shardCount / 2))
      // Every shard is live and owned by relay-a: relay-b takes none.
      expect(joined.owned).toEqual([])
      const stillAll = await a.syncShards('relay-a', { leaseMs: LONG })
      expect(stillAll.fairShare).toBe(joined.fairShare)
      expect(shardsOf(stillAll)).toEqual(all(first))
      const surplus = shardsOf(stillAll).slice(stillAll.fairShare)
      const released = await a.syncShards('relay-a', { leaseMs: LONG, release: surplus })
      expect(released.owned).toHaveLength(released.fairShare)
      expect(shardsOf(released).some((s) => surplus.includes(s))).toBe(false)
      const taken = await b.syncShards('relay-b', { leaseMs: LONG })
      expect(shardsOf(taken)).toEqual(surplus)
      // Each taken shard's epoch was bumped past the one relay-a held it at.
      for (const lease of taken.owned) {
        const before = first.owned.find((s) => s.shard === lease.shard)!
        expect(lease.epoch).toBeGreaterThan(before.epoch)
      }
      const again = await a.syncShards('relay-a', { leaseMs: LONG })
      expect(again.owned).toEqual(released.owned)
    })

    test('acquire: false renews owned shards and takes none', async (h, a) => {
      const b = await peerOf(h)
      const none = await b.syncShards('relay-b', { leaseMs: LONG, acquire: false })
      expect(none.owned).toEqual([])
      const state = await a.syncShards('relay-a', { leaseMs: LONG })
      expect(state.owned.length).toBeGreaterThan(0)
      const renewed = await a.syncShards('relay-a', { leaseMs: LONG, acquire: false })
      expect(renewed.owned).toEqual(state.owned)
    })

    concurrentTest(
      'concurrent syncShards of several relays never give one shard to two relays',
      async (h, first) => {
        const stores = [first, await peerOf(h), await peerOf(h), await peerOf(h)]
        const ids = stores.map((_, i) => `relay-${i}`)
        let states: ShardState[] = []
        for (let round = 0; round < 4; round++) {
          states = await Promise.all(
            stores.map((s, i) => {
              const mine = states[i]
              // Relays over their fair share give the surplus up, as a relay does once idle.
              const release = mine ? shardsOf(mine).slice(mine.fairShare) : []
              return s.syncShards(ids[i]!, { leaseMs: LONG, release })
            }),
          )
          const owners = new Map<number, string>()
          states.forEach((state, i) => {
            for (const shard of shardsOf(state)) {
              expect(owners.has(shard)).toBe(false)
              owners.set(shard, ids[i]!)
            }
          })
        }
        const settled = await Promise.all(stores.map((s, i) => s.syncShards(ids[i]!, { leaseMs: LONG })))
        expect(settled.every((s) => s.liveRelays === stores.length)).toBe(true)
        expect(settled.every((s) => s.owned.length <= s.fairShare)).toBe(true)
        expect(settled.reduce((n, s) => n + s.owned.length, 0)).toBe(settled[0]!.shardCount)
      },
    )

    test("claimOwned returns only owned shards' rows, each with its shard, runs in write order, attempts = stored + 1", async (h, a, add) => {
      const b = await peerOf(h)
      const keys = Array.from({ length: 40 }, (_, i) => `key-${i}`)
      const ids = await add(keys.flatMap((k) => [message(k, `${k}/1`), message(k, `${k}/2`)]))
      await a.syncShards('relay-a', { leaseMs: LONG })
      await b.syncShards('relay-b', { leaseMs: LONG })
      const full = await a.syncShards('relay-a', { leaseMs: LONG })
      const mineA = await a.syncShards('relay-a', {
        leaseMs: LONG,
        release: shardsOf(full).slice(full.fairShare),
      })
      const mineB = await b.syncShards('relay-b', { leaseMs: LONG })
      const claimA = await a.claimOwned('relay-a', { limit: 1000 })
      const claimB = await b.claimOwned('relay-b', { limit: 1000 })
      const check = (records: readonly ClaimedRecord[], owned: readonly number[]) => {
        for (const r of records) {
          expect(typeof r.shard).toBe('number')
          expect(owned).toContain(r.shard)
          expect(r.attempts).toBe(1)
        }
      }
      check(claimA.records, shardsOf(mineA))
      check(claimB.records, shardsOf(mineB))
      const claimed = [...claimA.records, ...claimB.records]
      expect(claimed.map((r) => r.id).sort()).toEqual([...ids].sort())
      const shardOfKey = new Map<string, number>()
      for (const r of claimed) {
        expect(r.shard!).toBeGreaterThanOrEqual(0)
        expect(r.shard!).toBeLessThan(full.shardCount)
        if (shardOfKey.has(r.key)) expect(r.shard).toBe(shardOfKey.get(r.key))
        shardOfKey.set(r.key, r.shard!)
      }
      // Oldest first: the claim follows write order, so each key's run is in order.
      const order = (records: readonly ClaimedRecord[]) => records.map((r) => ids.indexOf(r.id))
      expect(order(claimA.records)).toEqual([...order(claimA.records)].sort((x, y) => x - y))
      // claimOwned writes nothing.
      expect((await h.readRows()).every((r) => r.attempts === 0 && r.status === 'pending')).toBe(true)
      // A failed attempt is counted; the next claim reports it as the second.
      const first = claimA.records[0]!
      const failed = await a.markFailed(claimA.token, [{ id: first.id, error: 'boom', retryInMs: 0 }])
      expect(failed).toEqual({ settled: 1, lost: [] })
      const retried = await a.claimOwned('relay-a', { limit: 1000 })
      expect(retried.records.find((r) => r.id === first.id)!.attempts).toBe(2)
    })

    test('a limit cuts runs without breaking key order, sharing the claim between keys', async (_h, store, add) => {
      await add([message('a', 'a1'), message('a', 'a2'), message('b', 'b1'), message('a', 'a3')])
      await store.syncShards('relay-a', { leaseMs: LONG })
      // A key's share of a 2-record claim is one record while another key has one ready.
      const claim = await store.claimOwned('relay-a', { limit: 2 })
      expect(claim.records.map((r) => r.type)).toEqual(['a1', 'b1'])
      const all3 = await store.claimOwned('relay-a', { limit: 10 })
      expect(all3.records.map((r) => r.type)).toEqual(['a1', 'a2', 'b1', 'a3'])
      // With nothing else ready, one key fills the claim.
      const onlyA = await store.claimOwned('relay-a', { limit: 2, inFlight: [all3.records[2]!.id] })
      expect(onlyA.records.map((r) => r.type)).toEqual(['a1', 'a2'])
    })

    test('a key with a backlog larger than any window leaves room in each claim for the other ready keys', async (_h, store, add) => {
      await add(Array.from({ length: 1_203 }, (_, i) => message('hot', `h${i}`)))
      await add([message('x', 'x1'), message('y', 'y1'), message('z', 'z1'), message('x', 'x2')])
      await store.syncShards('relay-a', { leaseMs: LONG })
      const claim = await store.claimOwned('relay-a', { limit: 8 })
      const types = claim.records.map((r) => r.type)
      // Every other key's run, and the hot key's oldest records in order for the rest.
      expect(types.filter((t) => !t.startsWith('h'))).toEqual(['x1', 'y1', 'z1', 'x2'])
      expect(types.filter((t) => t.startsWith('h'))).toEqual(['h0', 'h1', 'h2', 'h3'])
    })

    test('records in flight are left out and their keys go on right after them', async (h, store, add) => {
      await add([
        message('a', 'a1'),
        message('b', 'b1'),
        message('a', 'a2'),
        message('c', 'c1'),
        message('a', 'a3'),
      ])
      await store.syncShards('relay-a', { leaseMs: LONG })
      const first = await store.claimOwned('relay-a', { limit: 2 })
      expect(first.records.map((r) => r.type)).toEqual(['a1', 'b1'])
      const inFlight = first.records.map((r) => r.id)
      const second = await store.claimOwned('relay-a', { limit: 2, inFlight })
      expect(second.records.map((r) => r.type)).toEqual(['a2', 'c1'])
      const third = await store.claimOwned('relay-a', {
        limit: 10,
        inFlight: [...inFlight, ...second.records.map((r) => r.id)],
      })
      expect(third.records.map((r) => r.type)).toEqual(['a3'])
      const everything = [...first.records, ...second.records, ...third.records].map((r) => r.id)
      expect((await store.claimOwned('relay-a', { limit: 10, inFlight: everything })).records).toEqual([])
      // Later claims settle first: each token settles its own records only.
      expect(
        await store.markPublished(
          third.token,
          third.records.map((r) => r.id),
        ),
      ).toEqual({ settled: 1, lost: [] })
      expect(
        await store.markPublished(
          second.token,
          second.records.map((r) => r.id),
        ),
      ).toEqual({ settled: 2, lost: [] })
      expect(await store.markPublished(first.token, inFlight)).toEqual({ settled: 2, lost: [] })
      expect((await h.readRows()).every((r) => r.status === 'published')).toBe(true)
    })

    test('excludeShards leaves those shards out', async (_h, store, add) => {
      await add([message('a', 'a1'), message('b', 'b1'), message('a', 'a2'), message('c', 'c1')])
      await store.syncShards('relay-a', { leaseMs: LONG })
      const everything = await store.claimOwned('relay-a', { limit: 10 })
      expect(everything.records.map((r) => r.type)).toEqual(['a1', 'b1', 'a2', 'c1'])
      const shardOfB = everything.records.find((r) => r.key === 'b')!.shard!
      const noShardB = await store.claimOwned('relay-a', { limit: 10, excludeShards: [shardOfB] })
      expect(noShardB.records.some((r) => r.shard === shardOfB)).toBe(false)
      expect(noShardB.records.map((r) => r.type)).toEqual(
        everything.records.filter((r) => r.shard !== shardOfB).map((r) => r.type),
      )
    })

    test('a key blocked by a retry, holding more rows than any window, does not hide other keys', async (_h, store, add) => {
      await add(Array.from({ length: 1203 }, (_, i) => message('blocked', `b${i}`)))
      await add([message('other-1', 'o1'), message('other-2', 'o2'), message('other-1', 'o3')])
      await store.syncShards('relay-a', { leaseMs: LONG })
      const head = await store.claimOwned('relay-a', { limit: 1 })
      expect(head.records.map((r) => r.type)).toEqual(['b0'])
      await store.markFailed(head.token, [{ id: head.records[0]!.id, error: 'later', retryInMs: 60_000 }])
      const claim = await store.claimOwned('relay-a', { limit: 10 })
      expect(claim.records.map((r) => r.type)).toEqual(['o1', 'o2', 'o3'])
      // With a record of other-1 in flight: never that record, and other-1 either goes on right
      // after it or waits, never from an earlier point.
      const o1 = claim.records[0]!
      const behind = await store.claimOwned('relay-a', { limit: 10, inFlight: [o1.id] })
      const types = behind.records.map((r) => r.type)
      expect(types.includes('o1')).toBe(false)
      expect([['o2'], ['o2', 'o3']].some((t) => JSON.stringify(t) === JSON.stringify(types))).toBe(true)
    })

    test('markFailed delays the key and counts the attempt; markDead and markPublished settle', async (h, store, add) => {
      const [x1, x2, y1] = await add([message('x', 'x1'), message('x', 'x2'), message('y', 'y1')])
      await store.syncShards('relay-a', { leaseMs: LONG })
      const claim = await store.claimOwned('relay-a', { limit: 10 })
      expect(claim.records.map((r) => r.type)).toEqual(['x1', 'x2', 'y1'])
      expect(
        await store.markFailed(claim.token, [{ id: x1!, error: 'broker down', retryInMs: lease }]),
      ).toEqual({
        settled: 1,
        lost: [],
      })
      expect(await store.markDead(claim.token, [{ id: y1!, error: 'poison' }])).toEqual({
        settled: 1,
        lost: [],
      })
      // x waits for its retry, x2 included; y1 is dead.
      expect((await store.claimOwned('relay-a', { limit: 10 })).records).toEqual([])
      const rows = await h.readRows()
      expect(rows.map((r) => [r.type, r.status, r.attempts, r.lastError])).toEqual([
        ['x1', 'pending', 1, 'broker down'],
        ['x2', 'pending', 0, null],
        ['y1', 'dead', 1, 'poison'],
      ])
      await sleep(lease + 200)
      const retry = await store.claimOwned('relay-a', { limit: 10 })
      expect(retry.records.map((r) => [r.type, r.attempts])).toEqual([
        ['x1', 2],
        ['x2', 1],
      ])
      expect(await store.markPublished(retry.token, [x1!, x2!])).toEqual({ settled: 2, lost: [] })
      // Settled rows are not pending any more: a second settle loses them.
      expect(await store.markPublished(retry.token, [x1!])).toEqual({ settled: 0, lost: [x1!] })
      const after = await h.readRows()
      expect(after.map((r) => [r.type, r.status, r.attempts])).toEqual([
        ['x1', 'published', 2],
        ['x2', 'published', 1],
        ['y1', 'dead', 1],
      ])
      expect((await store.claimOwned('relay-a', { limit: 10 })).records).toEqual([])
    })

    test('release writes nothing and reports what the token still holds', async (h, store, add) => {
      const ids = await add([message('x', 'x1'), message('y', 'y1')])
      await store.syncShards('relay-a', { leaseMs: LONG })
      const claim = await store.claimOwned('relay-a', { limit: 10 })
      expect(await store.release(claim.token, [ids[0]!])).toEqual({ settled: 1, lost: [] })
      expect(await store.release(claim.token)).toEqual({ settled: 2, lost: [] })
      expect((await h.readRows()).every((r) => r.status === 'pending' && r.attempts === 0)).toBe(true)
      expect((await store.claimOwned('relay-a', { limit: 10 })).records).toHaveLength(2)
    })

    test('fencing: after another relay takes the expired shards, every settle of the old token is lost and writes nothing', async (h, a, add) => {
      const b = await peerOf(h)
      const ids = await add([message('x', 'x1'), message('y', 'y1'), message('z', 'z1')])
      const held = await a.syncShards('relay-a', { leaseMs: lease })
      const claim = await a.claimOwned('relay-a', { limit: 10 })
      expect(claim.records).toHaveLength(3)
      await sleep(lease + 200)
      const taken = await b.syncShards('relay-b', { leaseMs: LONG })
      expect(taken.liveRelays).toBe(1)
      expect(shardsOf(taken)).toEqual(shardsOf(held))
      for (const s of taken.owned)
        expect(s.epoch).toBeGreaterThan(held.owned.find((o) => o.shard === s.shard)!.epoch)
      const all3 = [...ids].sort()
      const lost = (r: { settled: number; lost: readonly string[] }) => [r.settled, [...r.lost].sort()]
      expect(lost(await a.markPublished(claim.token, ids))).toEqual([0, all3])
      expect(
        lost(
          await a.markFailed(
            claim.token,
            ids.map((id) => ({ id, error: 'e', retryInMs: 0 })),
          ),
        ),
      ).toEqual([0, all3])
      expect(
        lost(
          await a.markDead(
            claim.token,
            ids.map((id) => ({ id, error: 'e' })),
          ),
        ),
      ).toEqual([0, all3])
      expect(lost(await a.release(claim.token, ids))).toEqual([0, all3])
      expect((await a.release(claim.token)).settled).toBe(0)
      expect(await a.extendLease(claim.token, LONG)).toBe(0)
      const rows = await h.readRows()
      expect(rows.map((r) => [r.status, r.attempts, r.lastError])).toEqual([
        ['pending', 0, null],
        ['pending', 0, null],
        ['pending', 0, null],
      ])
      // relay-a owns nothing now and reads nothing.
      expect((await a.claimOwned('relay-a', { limit: 10 })).records).toEqual([])
      const claimB = await b.claimOwned('relay-b', { limit: 10 })
      expect(claimB.records.map((r) => r.id)).toEqual(ids)
      expect(await b.markPublished(claimB.token, ids)).toEqual({ settled: 3, lost: [] })
    })

    test('an expired shard lease alone does not fence: until another relay takes it, the owner still settles', async (h, store, add) => {
      const ids = await add([message('x', 'x1')])
      await store.syncShards('relay-a', { leaseMs: lease })
      const claim = await store.claimOwned('relay-a', { limit: 10 })
      await sleep(lease + 200)
      expect(await store.markPublished(claim.token, ids)).toEqual({ settled: 1, lost: [] })
      expect((await h.readRows())[0]!.status).toBe('published')
    })

    test('extendLease keeps another relay from taking the shards of the claimed records', async (h, a, add) => {
      const b = await peerOf(h)
      await add([message('x', 'x1'), message('x', 'x2'), message('y', 'y1')])
      await a.syncShards('relay-a', { leaseMs: lease })
      const claim = await a.claimOwned('relay-a', { limit: 10 })
      const claimedShards = [...new Set(claim.records.map((r) => r.shard!))]
      await sleep(lease / 2)
      expect(await a.extendLease(claim.token, LONG)).toBe(3)
      await sleep(lease)
      const state = await b.syncShards('relay-b', { leaseMs: LONG })
      // relay-a's registration expired: relay-b takes every other shard, but not these.
      expect(shardsOf(state).some((s) => claimedShards.includes(s))).toBe(false)
      expect(state.owned).toHaveLength(state.shardCount - claimedShards.length)
      expect(
        await a.markPublished(
          claim.token,
          claim.records.map((r) => r.id),
        ),
      ).toEqual({ settled: 3, lost: [] })
    })

    test('leaveShards frees the shards at once and removes the registration', async (h, a) => {
      const b = await peerOf(h)
      await a.syncShards('relay-a', { leaseMs: LONG })
      expect((await b.syncShards('relay-b', { leaseMs: LONG })).owned).toEqual([])
      await a.leaveShards('relay-a')
      const state = await b.syncShards('relay-b', { leaseMs: LONG })
      expect(state.liveRelays).toBe(1)
      expect(shardsOf(state)).toEqual(all(state))
      expect((await a.claimOwned('relay-a', { limit: 10 })).records).toEqual([])
      await a.leaveShards('relay-never-seen')
    })

    test('relay registrations expire', async (h, a) => {
      const b = await peerOf(h)
      await a.syncShards('relay-a', { leaseMs: lease })
      expect((await b.syncShards('relay-b', { leaseMs: LONG })).liveRelays).toBe(2)
      await sleep(lease + 200)
      const state = await b.syncShards('relay-b', { leaseMs: LONG })
      expect(state.liveRelays).toBe(1)
      expect(state.fairShare).toBe(state.shardCount)
      expect(shardsOf(state)).toEqual(all(state))
    })

    test('a shard taken from a relay whose lease expired names it as previousOwner; kept, released or free shards do not', async (h, a) => {
      const b = await peerOf(h)
      const first = await a.syncShards('relay-a', { leaseMs: lease })
      // Never owned before: taken while free.
      expect(first.owned.every((s) => s.previousOwner === undefined)).toBe(true)
      await sleep(lease + 200)
      const taken = await b.syncShards('relay-b', { leaseMs: LONG })
      expect(shardsOf(taken)).toEqual(all(taken))
      expect(taken.owned.every((s) => s.previousOwner === 'relay-a')).toBe(true)
      // Renewed: kept, so no previous owner any more.
      const kept = await b.syncShards('relay-b', { leaseMs: LONG })
      expect(kept.owned.every((s) => s.previousOwner === undefined)).toBe(true)
      // Given up by relay-b, then taken by relay-a: nothing of relay-b's can be in flight.
      const released = await b.syncShards('relay-b', {
        leaseMs: LONG,
        release: shardsOf(kept),
        acquire: false,
      })
      expect(released.owned).toEqual([])
      await b.leaveShards('relay-b')
      const back = await a.syncShards('relay-a', { leaseMs: LONG })
      expect(shardsOf(back)).toEqual(all(back))
      expect(back.owned.every((s) => s.previousOwner === undefined)).toBe(true)
    })

    test('a claim reports the epoch of every shard it read records from, as owned at claim time', async (_h, store, add) => {
      await add([message('x', 'x1'), message('y', 'y1'), message('z', 'z1'), message('x', 'x2')])
      const state = await store.syncShards('relay-a', { leaseMs: LONG })
      const claim = await store.claimOwned('relay-a', { limit: 10 })
      const read = new Set(claim.records.map((r) => r.shard!))
      expect(Array.isArray(claim.shards)).toBe(true)
      const reported = new Map(claim.shards!.map((s) => [s.shard, s.epoch]))
      for (const shard of read) {
        expect(reported.get(shard)).toBe(state.owned.find((s) => s.shard === shard)!.epoch)
      }
      for (const shard of reported.keys()) expect(shardsOf(state)).toContain(shard)
    })

    reconcileTest(
      'reconcilePublished marks pending rows published whatever claim holds them, and leaves published, dead and unknown ids alone',
      async (h, store, add) => {
        if (!store.reconcilePublished) throw new Error(`${store.name} has no reconcilePublished`)
        const [held, waiting, dead, done, x2] = await add([
          message('x', 'x1'),
          message('y', 'y1'),
          message('z', 'z1'),
          message('w', 'w1'),
          message('x', 'x2'),
        ])
        await store.syncShards('relay-a', { leaseMs: LONG })
        const claim = await store.claimOwned('relay-a', { limit: 10 })
        expect(claim.records.map((r) => r.id).sort()).toEqual([held, waiting, dead, done, x2].sort())
        await store.markFailed(claim.token, [{ id: waiting!, error: 'e', retryInMs: LONG }])
        await store.markDead(claim.token, [{ id: dead!, error: 'e' }])
        await store.markPublished(claim.token, [done!])
        const unknown = '00000000-0000-7000-8000-000000000001'
        // `held` is claimed and in flight, `waiting` waits for its retry: both are pending.
        expect(await store.reconcilePublished([held!, waiting!, dead!, done!, unknown, held!])).toBe(2)
        const rows = new Map((await h.readRows()).map((r) => [r.id, r]))
        expect([held, waiting, dead, done, x2].map((id) => rows.get(id!)!.status)).toEqual([
          'published',
          'published',
          'dead',
          'published',
          'pending',
        ])
        expect(rows.get(held!)!.claimed).toBe(false)
        // Again: nothing left to change.
        expect(await store.reconcilePublished([held!, waiting!])).toBe(0)
        expect(await store.reconcilePublished([])).toBe(0)
        // The key goes on after its reconciled head.
        await store.release(claim.token)
        const next = await store.claimOwned('relay-a', { limit: 10 })
        expect(next.records.map((r) => r.id)).toEqual([x2])
      },
    )

    reconcileTest('reconcilePublished takes more ids than one statement holds', async (h, store, add) => {
      if (!store.reconcilePublished) throw new Error(`${store.name} has no reconcilePublished`)
      const ids = await add([message('x', 'x1'), message('y', 'y1'), message('z', 'z1')])
      const unknown = Array.from(
        { length: 2_500 },
        (_, i) => `00000000-0000-7000-8000-${i.toString(16).padStart(12, '0')}`,
      )
      // The real ids at the start, the middle and the end of the list.
      const list = [ids[0]!, ...unknown.slice(0, 1_200), ids[1]!, ...unknown.slice(1_200), ids[2]!]
      expect(await store.reconcilePublished(list)).toBe(3)
      expect((await h.readRows()).every((r) => r.status === 'published')).toBe(true)
    })

    test('claimOwned of a relay that owns no shard returns no records', async (_h, store, add) => {
      await add([message('x', 'x1')])
      const claim = await store.claimOwned('relay-a', { limit: 10 })
      expect(claim.records).toEqual([])
      expect(typeof claim.token).toBe('string')
      expect(await store.markPublished(claim.token, ['00000000-0000-7000-8000-000000000000'])).toEqual({
        settled: 0,
        lost: ['00000000-0000-7000-8000-000000000000'],
      })
    })

    test('an invalid relay id, limit, lease or shard list is refused with INVALID_OPTIONS', async (_h, store) => {
      for (const relayId of ['', 'r'.repeat(65), 'nul\u0000', 42 as unknown as string]) {
        await expectInvalid(() => store.syncShards(relayId, { leaseMs: LONG }))
        await expectInvalid(() => store.claimOwned(relayId, { limit: 10 }))
        await expectInvalid(() => store.leaveShards(relayId))
      }
      await store.syncShards('r'.repeat(64), { leaseMs: LONG })
      for (const limit of [0, -1, 1.5, 10_001, Number.NaN]) {
        await expectInvalid(() => store.claimOwned('relay-a', { limit }))
      }
      for (const leaseMs of [0, -5, 1.5]) await expectInvalid(() => store.syncShards('relay-a', { leaseMs }))
      await expectInvalid(() => store.syncShards('relay-a', { leaseMs: LONG, release: [-1] }))
      await expectInvalid(() => store.claimOwned('relay-a', { limit: 1, excludeShards: [1.5] }))
    })
  })
}
