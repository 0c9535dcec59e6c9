/**
 * The conformance suite every {@link OutboxStore} must pass. Assertions read the table through
 * the harness's `readRows`, which must query the database directly (not through the store), so a
 * buggy store cannot vouch for itself.
 */
import { ErrorCode, isOutboxKitError } from '../core/errors.js'
import type { ClaimedRecord, OutboxMessageInput } from '../core/message.js'
import { Outbox } from '../core/outbox.js'
import type { OutboxStore } from '../core/store.js'
import { captureError, skipTest, sleep, type TestApi } from './test-api.js'

/** An outbox row as it is in the database. */
export interface InspectedOutboxRow {
  readonly id: string
  readonly topic: string
  readonly key: string
  readonly type: string
  readonly payload: Uint8Array
  readonly headers: Record<string, string>
  readonly status: 'pending' | 'published' | 'dead'
  readonly attempts: number
  /** Whether a claim token is set. */
  readonly claimed: boolean
  readonly lastError: string | null
}

export interface OutboxStoreHarness<Tx> {
  readonly store: OutboxStore<Tx>
  /**
   * A second store on the same tables with its own connections, as a second relay would have.
   * May return `store` itself for single-connection backends.
   */
  peer(): Promise<OutboxStore<Tx>>
  /** Every outbox row in insertion order, read directly from the database. */
  readRows(): Promise<InspectedOutboxRow[]>
  /** Writes one business row inside `tx` (a table the harness owns). */
  writeBusinessRow(tx: Tx, id: string): Promise<void>
  /** Counts business rows, read directly. */
  countBusinessRows(): Promise<number>
  /** Makes every row older by `ms` (created time), so retention can be tested without waiting. */
  ageRows(ms: number): Promise<void>
  close(): Promise<void>
}

export interface OutboxStoreSuiteOptions {
  /**
   * Whether two transactions can be open at once (false for single-connection backends such as
   * PGlite). Tests of interleaved transactions are skipped when false.
   */
  readonly concurrentTransactions: boolean
  /** Lease used by lease-expiry tests, in ms. Default 400. */
  readonly shortLeaseMs?: number
}

const encoder = new TextEncoder()

function message(key: string, type: string, extra: Partial<OutboxMessageInput> = {}): OutboxMessageInput {
  return { topic: 'orders', key, type, payload: { key, type }, ...extra }
}

export function outboxStoreSuite<Tx>(
  api: TestApi,
  name: string,
  open: () => Promise<OutboxStoreHarness<Tx>>,
  options: OutboxStoreSuiteOptions,
): void {
  const { describe, expect } = api
  const lease = options.shortLeaseMs ?? 400
  const test = (title: string, fn: (h: OutboxStoreHarness<Tx>, outbox: Outbox<Tx>) => Promise<void>) =>
    api.test(
      title,
      async () => {
        const harness = await open()
        try {
          await fn(harness, new Outbox({ store: harness.store, maxPayloadBytes: 64 * 1024 }))
        } finally {
          await harness.close()
        }
      },
      30_000,
    )
  const concurrentTest = options.concurrentTransactions
    ? test
    : (title: string, _fn: unknown) => skipTest(api, title, 'this backend runs one transaction at a time')

  describe(`OutboxStore conformance: ${name}`, () => {
    test('a committed transaction leaves exactly its events, payload and headers byte-exact', async (h, outbox) => {
      const bytes = new Uint8Array([0, 1, 2, 127, 128, 254, 255, 0])
      const ids = await h.store.transaction(async (tx) => {
        await h.writeBusinessRow(tx, 'order-1')
        return outbox.add(tx, [
          message('order-1', 'OrderCreated', {
            payload: { total: 12.5, note: 'crème brûlée ✓', nested: [1, null] },
          }),
          message('order-1', 'OrderPaid', {
            payload: bytes,
            contentType: 'application/x-custom',
            headers: { 'x-tenant': 'acme', 'x-empty': '' },
          }),
        ])
      })
      const rows = await h.readRows()
      expect(rows.map((r) => r.id)).toEqual(ids)
      expect(rows[0]!.payload).toEqual(
        encoder.encode('{"total":12.5,"note":"crème brûlée ✓","nested":[1,null]}'),
      )
      expect(rows[1]!.payload).toEqual(bytes)
      expect(rows[1]!.headers).toEqual({
        'x-tenant': 'acme',
        'x-empty': '',
        'content-type': 'application/x-custom',
      })
      expect(rows.map((r) => [r.topic, r.key, r.type, r.status, r.attempts, r.claimed])).toEqual([
        ['orders', 'order-1', 'OrderCreated', 'pending', 0, false],
        ['orders', 'order-1', 'OrderPaid', 'pending', 0, false],
      ])
      expect(await h.countBusinessRows()).toBe(1)
    })

    test('a rolled-back transaction leaves no event and no business row', async (h, outbox) => {
      const failure = await captureError(() =>
        h.store.transaction(async (tx) => {
          await h.writeBusinessRow(tx, 'order-1')
          await outbox.add(tx, message('order-1', 'OrderCreated'))
          throw new Error('business rule failed')
        }),
      )
      expect((failure as Error).message).toBe('business rule failed')
      expect(await h.readRows()).toHaveLength(0)
      expect(await h.countBusinessRows()).toBe(0)
    })

    test('an invalid or oversize message fails inside the transaction and the business row rolls back', async (h, outbox) => {
      const invalid = await captureError(() =>
        h.store.transaction(async (tx) => {
          await h.writeBusinessRow(tx, 'order-1')
          await outbox.add(tx, [
            message('order-1', 'Ok'),
            message('order-1', 'Bad', { headers: { 'outboxkit-id': 'x' } }),
          ])
        }),
      )
      expect(isOutboxKitError(invalid, ErrorCode.InvalidMessage)).toBe(true)
      const oversize = await captureError(() =>
        h.store.transaction(async (tx) => {
          await h.writeBusinessRow(tx, 'order-2')
          await outbox.add(tx, message('order-2', 'Big', { payload: new Uint8Array(64 * 1024 + 1) }))
        }),
      )
      expect(isOutboxKitError(oversize, ErrorCode.PayloadTooLarge)).toBe(true)
      expect(await h.readRows()).toHaveLength(0)
      expect(await h.countBusinessRows()).toBe(0)
    })

    test('many events in one add are all stored, in order', async (h, outbox) => {
      const inputs = Array.from({ length: 1203 }, (_, i) => message(`k${i % 7}`, `E${i}`))
      const ids = await h.store.transaction((tx) => outbox.add(tx, inputs))
      const rows = await h.readRows()
      expect(rows.map((r) => r.id)).toEqual(ids)
      expect(rows.map((r) => r.type)).toEqual(inputs.map((m) => m.type))
    })

    test('a claim takes runs of each key in write order, oldest first, and counts the attempt', async (h, outbox) => {
      await h.store.transaction((tx) =>
        outbox.add(tx, [
          message('a', 'a1'),
          message('b', 'b1'),
          message('a', 'a2'),
          message('c', 'c1'),
          message('a', 'a3'),
        ]),
      )
      const claim = await h.store.claim({ limit: 10, leaseMs: 30_000 })
      expect(claim.records.map((r) => r.type)).toEqual(['a1', 'b1', 'a2', 'c1', 'a3'])
      expect(claim.records.every((r) => r.attempts === 1)).toBe(true)
      expect((await h.readRows()).every((r) => r.claimed && r.attempts === 1)).toBe(true)
      const again = await h.store.claim({ limit: 10, leaseMs: 30_000 })
      expect(again.records).toHaveLength(0)
    })

    test('a claim limit cuts runs without breaking key order, sharing the claim between keys', async (h, outbox) => {
      await h.store.transaction((tx) =>
        outbox.add(tx, [message('a', 'a1'), message('a', 'a2'), message('b', 'b1'), message('a', 'a3')]),
      )
      // A key's share of a 2-record claim is one record while another key has one ready.
      const first = await h.store.claim({ limit: 2, leaseMs: 30_000 })
      expect(first.records.map((r) => r.type)).toEqual(['a1', 'b1'])
      // Keys a and b are held by the first claim.
      expect((await h.store.claim({ limit: 10, leaseMs: 30_000 })).records).toEqual([])
      await h.store.markPublished(
        first.token,
        first.records.map((r) => r.id),
      )
      // With nothing else ready, one key fills the claim.
      const second = await h.store.claim({ limit: 10, leaseMs: 30_000 })
      expect(second.records.map((r) => r.type)).toEqual(['a2', 'a3'])
    })

    test('a key with a backlog larger than any window leaves room in each claim for the other ready keys', async (h, outbox) => {
      await h.store.transaction((tx) =>
        outbox.add(
          tx,
          Array.from({ length: 1_203 }, (_, i) => message('hot', `h${i}`)),
        ),
      )
      await h.store.transaction((tx) =>
        outbox.add(tx, [message('x', 'x1'), message('y', 'y1'), message('z', 'z1'), message('x', 'x2')]),
      )
      const claim = await h.store.claim({ limit: 8, leaseMs: 30_000 })
      const types = claim.records.map((r) => r.type)
      // Every other key's run, and the hot key's oldest records in order for the rest.
      expect(types.filter((t) => !t.startsWith('h'))).toEqual(['x1', 'y1', 'z1', 'x2'])
      expect(types.filter((t) => t.startsWith('h'))).toEqual(['h0', 'h1', 'h2', 'h3'])
    })

    test('two concurrent claimers never hold the same row, nor rows of the same key', async (h, outbox) => {
      const peer = await h.peer()
      const keys = Array.from({ length: 12 }, (_, i) => `key-${i}`)
      await h.store.transaction((tx) =>
        outbox.add(
          tx,
          Array.from({ length: 240 }, (_, i) => message(keys[i % keys.length]!, `e${i}`)),
        ),
      )
      const seen = new Map<string, number>()
      const published: ClaimedRecord[] = []
      for (let round = 0; round < 40 && published.length < 240; round++) {
        const [a, b] = await Promise.all([
          h.store.claim({ limit: 7, leaseMs: 30_000 }),
          peer.claim({ limit: 7, leaseMs: 30_000 }),
        ])
        const keysA = new Set(a.records.map((r) => r.key))
        expect(b.records.filter((r) => keysA.has(r.key))).toHaveLength(0)
        for (const r of [...a.records, ...b.records]) seen.set(r.id, (seen.get(r.id) ?? 0) + 1)
        published.push(...a.records, ...b.records)
        await Promise.all([
          h.store.markPublished(
            a.token,
            a.records.map((r) => r.id),
          ),
          peer.markPublished(
            b.token,
            b.records.map((r) => r.id),
          ),
        ])
      }
      expect(published).toHaveLength(240)
      expect([...seen.values()].every((n) => n === 1)).toBe(true)
      for (const key of keys) {
        const order = published.filter((r) => r.key === key).map((r) => Number(r.type.slice(1)))
        expect(order).toEqual([...order].sort((x, y) => x - y))
      }
    })

    concurrentTest(
      'a transaction that began first but commits last still has its events claimed',
      async (h, outbox) => {
        let releaseLate!: () => void
        const lateMayCommit = new Promise<void>((resolve) => {
          releaseLate = resolve
        })
        let lateWritten!: () => void
        const lateHasWritten = new Promise<void>((resolve) => {
          lateWritten = resolve
        })
        const late = h.store.transaction(async (tx) => {
          await outbox.add(tx, message('late', 'late-1'))
          lateWritten()
          await lateMayCommit
        })
        await lateHasWritten
        await h.store.transaction((tx) => outbox.add(tx, message('early', 'early-1')))
        const first = await h.store.claim({ limit: 10, leaseMs: 30_000 })
        expect(first.records.map((r) => r.type)).toEqual(['early-1'])
        await h.store.markPublished(
          first.token,
          first.records.map((r) => r.id),
        )
        releaseLate()
        await late
        const second = await h.store.claim({ limit: 10, leaseMs: 30_000 })
        expect(second.records.map((r) => r.type)).toEqual(['late-1'])
      },
    )

    test("an expired lease is claimed again and the stale claimer's marks are rejected", async (h, outbox) => {
      await h.store.transaction((tx) => outbox.add(tx, [message('a', 'a1'), message('a', 'a2')]))
      const stale = await h.store.claim({ limit: 10, leaseMs: lease })
      expect(stale.records).toHaveLength(2)
      expect((await h.store.claim({ limit: 10, leaseMs: lease })).records).toHaveLength(0)
      await sleep(lease * 2 + 100)
      const fresh = await (await h.peer()).claim({ limit: 10, leaseMs: 30_000 })
      expect(fresh.records.map((r) => [r.type, r.attempts])).toEqual([
        ['a1', 2],
        ['a2', 2],
      ])
      const staleMark = await h.store.markPublished(
        stale.token,
        stale.records.map((r) => r.id),
      )
      expect(staleMark.settled).toBe(0)
      expect([...staleMark.lost].sort()).toEqual(stale.records.map((r) => r.id).sort())
      const staleDead = await h.store.markDead(stale.token, [{ id: stale.records[0]!.id, error: 'zombie' }])
      expect(staleDead.settled).toBe(0)
      expect((await h.readRows()).map((r) => r.status)).toEqual(['pending', 'pending'])
      const freshMark = await h.store.markPublished(
        fresh.token,
        fresh.records.map((r) => r.id),
      )
      expect(freshMark).toEqual({ settled: 2, lost: [] })
      expect((await h.readRows()).map((r) => [r.status, r.claimed])).toEqual([
        ['published', false],
        ['published', false],
      ])
    })

    test('extending a lease keeps the rows held past the original lease', async (h, outbox) => {
      await h.store.transaction((tx) => outbox.add(tx, message('a', 'a1')))
      const claim = await h.store.claim({ limit: 10, leaseMs: lease })
      expect(await h.store.extendLease(claim.token, 30_000)).toBe(1)
      await sleep(lease * 2 + 100)
      expect((await h.store.claim({ limit: 10, leaseMs: lease })).records).toHaveLength(0)
      expect((await h.store.markPublished(claim.token, [claim.records[0]!.id])).settled).toBe(1)
    })

    test('a failed record waits for its retry time, holds back its key, and lets other keys flow', async (h, outbox) => {
      await h.store.transaction((tx) =>
        outbox.add(tx, [message('a', 'a1'), message('a', 'a2'), message('b', 'b1')]),
      )
      const claim = await h.store.claim({ limit: 1, leaseMs: 30_000 })
      expect(claim.records.map((r) => r.type)).toEqual(['a1'])
      const failed = await h.store.markFailed(claim.token, [
        { id: claim.records[0]!.id, error: 'broker down', retryInMs: lease },
      ])
      expect(failed.settled).toBe(1)
      const meanwhile = await h.store.claim({ limit: 10, leaseMs: 30_000 })
      expect(meanwhile.records.map((r) => r.type)).toEqual(['b1'])
      const rows = await h.readRows()
      expect([rows[0]!.status, rows[0]!.claimed, rows[0]!.lastError]).toEqual([
        'pending',
        false,
        'broker down',
      ])
      await sleep(lease * 2 + 100)
      const retry = await h.store.claim({ limit: 10, leaseMs: 30_000 })
      expect(retry.records.map((r) => [r.type, r.attempts])).toEqual([
        ['a1', 2],
        ['a2', 1],
      ])
    })

    // 5 000 rows: five times the largest share of the table a Kysely claim of 500 reads first.
    const backlog = 5_000
    const blockedBacklog = async (outbox: Outbox<Tx>, h: OutboxStoreHarness<Tx>) => {
      for (let start = 0; start < backlog; start += 1_000) {
        await h.store.transaction((tx) =>
          outbox.add(
            tx,
            Array.from({ length: 1_000 }, (_, i) => message('busy', `busy-${start + i}`)),
          ),
        )
      }
      await h.store.transaction((tx) =>
        outbox.add(
          tx,
          Array.from({ length: 20 }, (_, i) => message(`other-${i}`, `other-${i}`)),
        ),
      )
      const head = await h.store.claim({ limit: 1, leaseMs: 60_000 })
      expect(head.records.map((r) => r.type)).toEqual(['busy-0'])
      return head
    }

    test("a key whose head waits for a long retry does not hold back other keys' ready rows, whatever its backlog", async (h, outbox) => {
      const head = await blockedBacklog(outbox, h)
      await h.store.markFailed(head.token, [
        { id: head.records[0]!.id, error: 'no leader', retryInMs: 60_000 },
      ])
      const next = await h.store.claim({ limit: 500, leaseMs: 30_000 })
      expect(next.records.map((r) => r.type)).toEqual(Array.from({ length: 20 }, (_, i) => `other-${i}`))
    })

    test("a key whose head is held by a claim that never settles does not hold back other keys' ready rows", async (h, outbox) => {
      await blockedBacklog(outbox, h)
      const next = await h.store.claim({ limit: 500, leaseMs: 30_000 })
      expect(next.records.map((r) => r.type)).toEqual(Array.from({ length: 20 }, (_, i) => `other-${i}`))
      // And a small claim finds them too, a few at a time, oldest first.
      const released = await h.store.release(next.token)
      expect(released.settled).toBe(20)
      const small = await h.store.claim({ limit: 3, leaseMs: 30_000 })
      expect(small.records.map((r) => r.type)).toEqual(['other-0', 'other-1', 'other-2'])
    })

    test('a dead record is kept with its reason and no longer holds back its key', async (h, outbox) => {
      await h.store.transaction((tx) => outbox.add(tx, [message('a', 'a1'), message('a', 'a2')]))
      const claim = await h.store.claim({ limit: 1, leaseMs: 30_000 })
      await h.store.markDead(claim.token, [{ id: claim.records[0]!.id, error: 'MESSAGE_TOO_LARGE' }])
      const next = await h.store.claim({ limit: 10, leaseMs: 30_000 })
      expect(next.records.map((r) => r.type)).toEqual(['a2'])
      const rows = await h.readRows()
      expect([rows[0]!.status, rows[0]!.lastError]).toEqual(['dead', 'MESSAGE_TOO_LARGE'])
      const stats = await h.store.stats()
      expect([stats.pending, stats.dead]).toEqual([1, 1])
    })

    test('a requeued dead record goes after the rows its key had pending, never while another claim holds the key', async (h, outbox) => {
      await h.store.transaction((tx) =>
        outbox.add(tx, [message('a', 'a1'), message('a', 'a2'), message('a', 'a3'), message('b', 'b1')]),
      )
      const first = await h.store.claim({ limit: 1, leaseMs: 30_000 })
      const a1 = first.records[0]!
      expect(a1.type).toBe('a1')
      expect((await h.store.markDead(first.token, [{ id: a1.id, error: 'MESSAGE_TOO_LARGE' }])).settled).toBe(
        1,
      )
      const held = await h.store.claim({ limit: 1, leaseMs: 30_000 })
      const a2 = held.records[0]!
      expect(a2.type).toBe('a2')

      const result = await h.store.requeue([a1.id, a2.id])
      expect([result.requeued, result.skipped]).toEqual([[a1.id], [a2.id]])
      expect((await h.store.stats()).dead).toBe(0)
      // Key a is held by the other claim: the requeued row must not become a second head.
      const meanwhile = await h.store.claim({ limit: 10, leaseMs: 30_000 })
      expect(meanwhile.records.map((r) => r.type)).toEqual(['b1'])

      expect((await h.store.markPublished(held.token, [a2.id])).settled).toBe(1)
      const next = await h.store.claim({ limit: 10, leaseMs: 30_000 })
      expect(next.records.map((r) => [r.type, r.id, r.attempts])).toEqual([
        ['a3', next.records[0]!.id, 1],
        ['a1', a1.id, 1],
      ])
      // Requeueing a row that is not dead changes nothing.
      expect(await h.store.requeue([a2.id])).toEqual({ requeued: [], skipped: [a2.id] })
      expect((await h.readRows()).find((r) => r.id === a2.id)!.status).toBe('published')
    })

    test('a released claim does not count as an attempt and is claimable at once', async (h, outbox) => {
      await h.store.transaction((tx) => outbox.add(tx, [message('a', 'a1'), message('b', 'b1')]))
      const claim = await h.store.claim({ limit: 10, leaseMs: 30_000 })
      const released = await h.store.release(claim.token)
      expect(released.settled).toBe(2)
      expect((await h.readRows()).map((r) => [r.attempts, r.claimed])).toEqual([
        [0, false],
        [0, false],
      ])
      const again = await h.store.claim({ limit: 10, leaseMs: 30_000 })
      expect(again.records.map((r) => [r.type, r.attempts])).toEqual([
        ['a1', 1],
        ['b1', 1],
      ])
      expect((await h.store.release(claim.token)).settled).toBe(0)
    })

    test('stats report pending rows and the age of the oldest', async (h, outbox) => {
      expect(await h.store.stats()).toEqual({ pending: 0, dead: 0, oldestPendingAgeMs: 0 })
      await h.store.transaction((tx) => outbox.add(tx, [message('a', 'a1'), message('b', 'b1')]))
      await h.ageRows(60_000)
      const stats = await h.store.stats()
      expect(stats.pending).toBe(2)
      expect(stats.oldestPendingAgeMs).toBeGreaterThanOrEqual(59_000)
      expect(stats.oldestPendingAgeMs).toBeLessThan(120_000)
    })

    test('retention purge removes only settled rows older than the horizon', async (h, outbox) => {
      await h.store.transaction((tx) =>
        outbox.add(tx, [
          message('a', 'old-published'),
          message('b', 'old-dead'),
          message('c', 'old-pending'),
        ]),
      )
      const claim = await h.store.claim({ limit: 2, leaseMs: 30_000 })
      await h.store.markPublished(claim.token, [claim.records[0]!.id])
      await h.store.markDead(claim.token, [{ id: claim.records[1]!.id, error: 'x' }])
      await h.ageRows(3_600_000)
      await h.store.transaction((tx) => outbox.add(tx, message('d', 'new')))
      const fresh = await h.store.claim({ limit: 10, leaseMs: 30_000 })
      await h.store.markPublished(
        fresh.token,
        fresh.records.filter((r) => r.type === 'new').map((r) => r.id),
      )

      expect(await h.store.purge({ olderThanMs: 60_000 })).toBe(1)
      expect((await h.readRows()).map((r) => r.type)).toEqual(['old-dead', 'old-pending', 'new'])
      expect(await h.store.purge({ olderThanMs: 60_000, includeDead: true })).toBe(1)
      expect((await h.readRows()).map((r) => r.type)).toEqual(['old-pending', 'new'])
    })

    test('purge with includePending (an outbox read from the log) also removes old pending rows, never newer ones', async (h, outbox) => {
      await h.store.transaction((tx) => outbox.add(tx, [message('a', 'old-1'), message('a', 'old-2')]))
      await h.ageRows(3_600_000)
      await h.store.transaction((tx) => outbox.add(tx, message('a', 'new')))
      expect(await h.store.purge({ olderThanMs: 60_000 })).toBe(0)
      expect(await h.store.purge({ olderThanMs: 60_000, includePending: true, limit: 1 })).toBe(1)
      expect(await h.store.purge({ olderThanMs: 60_000, includePending: true })).toBe(1)
      expect((await h.readRows()).map((r) => r.type)).toEqual(['new'])
    })

    test('runExclusive (when implemented): a second holder is refused until the first is done, even on a peer', async (h) => {
      const store = h.store
      if (!store.runExclusive) return
      const peer = await h.peer()
      let release!: () => void
      const gate = new Promise<void>((resolve) => {
        release = resolve
      })
      let entered!: () => void
      const inside = new Promise<void>((resolve) => {
        entered = resolve
      })
      const first = store.runExclusive('suite-lock', async () => {
        entered()
        await gate
        // The holder can use the store while it holds the lock.
        return (await store.stats()).pending
      })
      await inside
      expect(await peer.runExclusive!('suite-lock', async () => 'ran')).toEqual({ acquired: false })
      expect(await peer.runExclusive!('another-lock', async () => 'ran')).toEqual({
        acquired: true,
        value: 'ran',
      })
      release()
      expect(await first).toEqual({ acquired: true, value: 0 })
      expect(await peer.runExclusive!('suite-lock', async () => 'ran')).toEqual({
        acquired: true,
        value: 'ran',
      })
    })

    test('a duplicate message id is refused and the transaction rolls back', async (h, outbox) => {
      const [id] = await h.store.transaction((tx) => outbox.add(tx, [message('a', 'a1')]))
      const failure = await captureError(() =>
        h.store.transaction(async (tx) => {
          await h.writeBusinessRow(tx, 'x')
          await outbox.add(tx, message('a', 'again', { id: id! }))
        }),
      )
      expect(isOutboxKitError(failure)).toBe(true)
      expect(await h.countBusinessRows()).toBe(0)
      expect(await h.readRows()).toHaveLength(1)
    })
  })
}
