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
