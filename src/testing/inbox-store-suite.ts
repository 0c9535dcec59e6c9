/**
 * The conformance suite every {@link InboxStore} must pass. Assertions read the table through the
 * harness's `readRows`, which must query the database directly.
 */
import { isOutboxKitError } from '../core/errors.js'
import type { InboxStore } from '../core/store.js'
import { captureError, skipTest, type TestApi } from './test-api.js'

export interface InboxStoreHarness<Tx> {
  readonly store: InboxStore<Tx>
  /** Every inbox row as `consumer/messageId`, sorted, read directly from the database. */
  readRows(): Promise<string[]>
  /** Makes every inbox row older by `ms`. */
  ageRows(ms: number): Promise<void>
  /**
   * Ends `tx` on the database behind the store's back, as the database does when it gives up on
   * a transaction (MariaDB rolls it back on a deadlock): e.g. a raw `ROLLBACK` sent through `tx`.
   * Later statements through `tx` then run outside it.
   */
  endTransaction(tx: Tx): Promise<void>
  close(): Promise<void>
}

export interface InboxStoreSuiteOptions {
  /** Whether two transactions can be open at once (false for PGlite). */
  readonly concurrentTransactions: boolean
  /**
   * Whether the store implements the optional `markProcessedMany`. Default true: a store without
   * it then fails those tests; pass false to skip them.
   */
  readonly markProcessedMany?: boolean
}

export function inboxStoreSuite<Tx>(
  api: TestApi,
  name: string,
  open: () => Promise<InboxStoreHarness<Tx>>,
  options: InboxStoreSuiteOptions,
): void {
  const { describe, expect } = api
  const test = (title: string, fn: (h: InboxStoreHarness<Tx>) => Promise<void>) =>
    api.test(
      title,
      async () => {
        const harness = await open()
        try {
          await fn(harness)
        } finally {
          await harness.close()
        }
      },
      30_000,
    )

  describe(`InboxStore conformance: ${name}`, () => {
    test('a message is processed once per consumer; other consumers are independent', async (h) => {
      const first = await h.store.transaction((tx) => h.store.markProcessed(tx, 'billing', 'm-1'))
      const again = await h.store.transaction((tx) => h.store.markProcessed(tx, 'billing', 'm-1'))
      const other = await h.store.transaction((tx) => h.store.markProcessed(tx, 'shipping', 'm-1'))
      expect([first, again, other]).toEqual([true, false, true])
      expect(await h.readRows()).toEqual(['billing/m-1', 'shipping/m-1'])
      expect(await h.store.isProcessed('billing', 'm-1')).toBe(true)
      expect(await h.store.isProcessed('billing', 'm-2')).toBe(false)
    })

    test('a rolled-back transaction records nothing, so the message is processed again', async (h) => {
      const handlerFailure = new Error('handler failed')
      let marked: boolean | undefined
      const error = await captureError(() =>
        h.store.transaction(async (tx) => {
          marked = await h.store.markProcessed(tx, 'billing', 'm-1')
          throw handlerFailure
        }),
      )
      // Checked outside the transaction: an assertion failing inside it would be the error caught.
      expect(error).toBe(handlerFailure)
      expect(marked).toBe(true)
      expect(await h.readRows()).toEqual([])
      expect(await h.store.transaction((tx) => h.store.markProcessed(tx, 'billing', 'm-1'))).toBe(true)
    })

    test('an id no inbox can store (over 255 characters, NUL, unpaired surrogate, empty) is refused and nothing is written', async (h) => {
      for (const id of ['x'.repeat(256), 'a\u0000b', 'lone \ud800', '']) {
        const error = await captureError(() =>
          h.store.transaction((tx) => h.store.markProcessed(tx, 'billing', id)),
        )
        expect([id.length, isOutboxKitError(error)]).toEqual([id.length, true])
      }
      expect(await h.readRows()).toEqual([])
      // The longest storable id, and any outbox id (a UUID), are stored as given.
      const longest = 'y'.repeat(255)
      expect(await h.store.transaction((tx) => h.store.markProcessed(tx, 'billing', longest))).toBe(true)
      expect(await h.readRows()).toEqual([`billing/${longest}`])
    })

    test('confirmProcessed is true only in the open transaction that recorded the pair', async (h) => {
      const own = await h.store.transaction(async (tx) => {
        expect(await h.store.markProcessed(tx, 'billing', 'm-1')).toBe(true)
        return h.store.confirmProcessed(tx, 'billing', 'm-1')
      })
      expect(own).toBe(true)
      expect(await h.readRows()).toEqual(['billing/m-1'])
      // Recorded by an earlier, committed transaction: not this one's.
      const other = await h.store.transaction(async (tx) => {
        expect(await h.store.markProcessed(tx, 'billing', 'm-1')).toBe(false)
        return h.store.confirmProcessed(tx, 'billing', 'm-1')
      })
      expect(other).toBe(false)
    })

    test('confirmProcessed is false once the database ended the transaction, and nothing is recorded', async (h) => {
      let marked: boolean | undefined
      let confirmed: boolean | undefined
      // Whether the store's commit then fails is up to the backend; the answer must be false.
      await h.store
        .transaction(async (tx) => {
          marked = await h.store.markProcessed(tx, 'billing', 'm-1')
          await h.endTransaction(tx)
          confirmed = await h.store.confirmProcessed(tx, 'billing', 'm-1')
        })
        .catch(() => {})
      expect([marked, confirmed]).toEqual([true, false])
      expect(await h.readRows()).toEqual([])
    })

    const racing = 'two transactions racing on one message: exactly one wins'
    if (!options.concurrentTransactions) {
      skipTest(api, racing, 'this backend runs one transaction at a time')
    } else {
      test(racing, async (h) => {
        for (let i = 0; i < 10; i++) {
          const results = await Promise.all(
            [0, 1, 2].map(() =>
              h.store.transaction((tx) => h.store.markProcessed(tx, 'billing', `race-${i}`)),
            ),
          )
          expect(results.filter(Boolean)).toHaveLength(1)
        }
        expect(await h.readRows()).toHaveLength(10)
      })
    }

    test("ids and consumer names that differ only by trailing spaces are different ('abc' vs 'abc ')", async (h) => {
      const first = await h.store.transaction((tx) => h.store.markProcessed(tx, 'billing', 'abc'))
      expect(await h.store.isProcessed('billing', 'abc ')).toBe(false)
      const padded = await h.store.transaction((tx) => h.store.markProcessed(tx, 'billing', 'abc '))
      const paddedConsumer = await h.store.transaction((tx) => h.store.markProcessed(tx, 'billing ', 'abc'))
      expect([first, padded, paddedConsumer]).toEqual([true, true, true])
      expect(await h.store.isProcessed('billing ', 'abc ')).toBe(false)
      expect(await h.readRows()).toEqual(['billing /abc', 'billing/abc', 'billing/abc '].sort())
    })

    const many = (h: InboxStoreHarness<Tx>, tx: Tx, consumer: string, ids: readonly string[]) => {
      const markMany = h.store.markProcessedMany
      if (!markMany) throw new Error('unreachable: the store has no markProcessedMany')
      return markMany.call(h.store, tx, consumer, ids)
    }
    const batchTest = (title: string, fn: (h: InboxStoreHarness<Tx>) => Promise<void>) =>
      options.markProcessedMany === false
        ? skipTest(api, title, 'the store does not implement markProcessedMany')
        : test(title, async (h) => {
            expect(typeof h.store.markProcessedMany).toBe('function')
            await fn(h)
          })

    batchTest(
      'markProcessedMany records a list in order and tells which ids were new; a repeated id counts once',
      async (h) => {
        const first = await h.store.transaction((tx) => many(h, tx, 'billing', ['m-2', 'm-1', 'm-3']))
        expect(first).toEqual([true, true, true])
        await h.store.transaction((tx) => h.store.markProcessed(tx, 'billing', 'm-5'))
        const second = await h.store.transaction((tx) =>
          many(h, tx, 'billing', ['m-4', 'm-1', 'm-4', 'm-5', 'm-6']),
        )
        expect(second).toEqual([true, false, false, false, true])
        const other = await h.store.transaction((tx) => many(h, tx, 'shipping', ['m-1']))
        expect(other).toEqual([true])
        expect(await h.store.transaction((tx) => many(h, tx, 'billing', []))).toEqual([])
        expect(await h.readRows()).toEqual([
          'billing/m-1',
          'billing/m-2',
          'billing/m-3',
          'billing/m-4',
          'billing/m-5',
          'billing/m-6',
          'shipping/m-1',
        ])
      },
    )

    batchTest(
      'markProcessedMany: confirmProcessed is true in its transaction, and a rollback records none of the list',
      async (h) => {
        const confirmed = await h.store.transaction(async (tx) => {
          await h.store.markProcessed(tx, 'billing', 'm-0')
          const marked = await many(h, tx, 'billing', ['m-0', 'm-1', 'm-2'])
          return [marked, await h.store.confirmProcessed(tx, 'billing', 'm-1')]
        })
        expect(confirmed).toEqual([[false, true, true], true])
        const failure = new Error('handler failed')
        const error = await captureError(() =>
          h.store.transaction(async (tx) => {
            await many(h, tx, 'billing', ['m-3', 'm-4'])
            throw failure
          }),
        )
        expect(error).toBe(failure)
        expect(await h.readRows()).toEqual(['billing/m-0', 'billing/m-1', 'billing/m-2'])
        // A list partly recorded before (a batch redelivered): the new ones are recorded, and confirmed.
        const again = await h.store.transaction(async (tx) => {
          const marked = await many(h, tx, 'billing', ['m-2', 'm-3', 'm-1', 'm-4'])
          return [marked, await h.store.confirmProcessed(tx, 'billing', 'm-3')]
        })
        expect(again).toEqual([[false, true, false, true], true])
        expect(await h.readRows()).toHaveLength(5)
      },
    )

    batchTest('markProcessedMany records a list of 2 500 ids, half of them recorded before', async (h) => {
      const ids = Array.from({ length: 2500 }, (_, i) => `bulk-${String(i).padStart(4, '0')}`)
      const before = ids.filter((_, i) => i % 2 === 0)
      expect((await h.store.transaction((tx) => many(h, tx, 'billing', before))).every(Boolean)).toBe(true)
      const marked = await h.store.transaction(async (tx) => {
        const result = await many(h, tx, 'billing', ids)
        return [result, await h.store.confirmProcessed(tx, 'billing', ids[1]!)] as const
      })
      expect(marked[0]).toEqual(ids.map((_, i) => i % 2 === 1))
      expect(marked[1]).toBe(true)
      expect(await h.readRows()).toHaveLength(2500)
    })

    batchTest(
      'markProcessedMany refuses a list with an id no inbox can store, and writes none of it',
      async (h) => {
        for (const bad of ['x'.repeat(256), 'a\u0000b', '']) {
          const error = await captureError(() =>
            h.store.transaction((tx) => many(h, tx, 'billing', ['ok-1', bad, 'ok-2'])),
          )
          expect([bad.length, isOutboxKitError(error)]).toEqual([bad.length, true])
        }
        expect(await h.readRows()).toEqual([])
      },
    )

    batchTest(
      'markProcessedMany: confirmProcessed is false once the database ended the transaction',
      async (h) => {
        let confirmed: boolean | undefined
        await h.store
          .transaction(async (tx) => {
            await many(h, tx, 'billing', ['m-1', 'm-2'])
            await h.endTransaction(tx)
            confirmed = await h.store.confirmProcessed(tx, 'billing', 'm-1')
          })
          .catch(() => {})
        expect(confirmed).toBe(false)
        expect(await h.readRows()).toEqual([])
      },
    )

    const racingMany =
      'markProcessedMany: transactions racing on overlapping lists record each id exactly once'
    if (!options.concurrentTransactions || options.markProcessedMany === false) {
      skipTest(api, racingMany, 'this backend runs one transaction at a time')
    } else {
      batchTest(racingMany, async (h) => {
        const ids = Array.from({ length: 30 }, (_, i) => `race-${String(i).padStart(2, '0')}`)
        const lists = [ids.slice(0, 20), ids.slice(10, 30), [...ids].reverse()]
        const results = await Promise.all(
          lists.map((list) => h.store.transaction((tx) => many(h, tx, 'billing', list))),
        )
        const winners = new Map<string, number>()
        results.forEach((marked, i) => {
          marked.forEach((won, j) => {
            if (won) winners.set(lists[i]![j]!, (winners.get(lists[i]![j]!) ?? 0) + 1)
          })
        })
        expect([...winners.keys()].sort()).toEqual(ids)
        expect([...winners.values()].every((n) => n === 1)).toBe(true)
        expect(await h.readRows()).toHaveLength(30)
      })
    }

    test('retention purge removes only records older than the horizon', async (h) => {
      await h.store.transaction(async (tx) => {
        await h.store.markProcessed(tx, 'billing', 'old-1')
        await h.store.markProcessed(tx, 'shipping', 'old-2')
      })
      await h.ageRows(3_600_000)
      await h.store.transaction((tx) => h.store.markProcessed(tx, 'billing', 'new-1'))
      expect(await h.store.purge({ olderThanMs: 60_000, consumer: 'billing' })).toBe(1)
      expect(await h.readRows()).toEqual(['billing/new-1', 'shipping/old-2'])
      expect(await h.store.purge({ olderThanMs: 60_000 })).toBe(1)
      expect(await h.readRows()).toEqual(['billing/new-1'])
    })
  })
}
