/**
 * The row-lease claim when another relay settles a row between the claim's statements: a key
 * whose head the window saw leased, and which another relay then publishes, has its next head
 * beyond the window. The claim must not trip over it (it once built `IN ()`).
 */
import { beforeAll, describe, expect, test } from 'bun:test'
import type { KyselyPlugin } from 'kysely'
import { createKyselyOutboxStore, ensureOutboxSchema } from '../../src/adapters/kysely/index.js'
import { Outbox } from '../../src/index.js'
import { assertReachable, mysqlBackend, postgresJsBackend } from '../support/databases.js'

const BACKENDS = [postgresJsBackend, mysqlBackend]

beforeAll(async () => {
  for (const backend of BACKENDS) await assertReachable(backend)
})

for (const backend of BACKENDS) {
  describe(`claim race on ${backend.name}`, () => {
    test('a key settled by another relay while the claim reads beyond its window is skipped this time, then claimed', async () => {
      const database = await backend.open()
      try {
        const { schema, dialect } = database
        await ensureOutboxSchema(database.db, { dialect, schema })
        const store = createKyselyOutboxStore({ db: database.db, schema })
        const outbox = new Outbox({ store })
        // 999 rows of a blocked key fill the claim window (1 000 rows at limit 1) with k1 last.
        const blocked = Array.from({ length: 999 }, (_, i) => ({
          topic: 't',
          key: 'blocked',
          type: 'B',
          payload: { i },
        }))
        const [, k1, k2] = await store.transaction(async (trx) => {
          const ids = await outbox.add(trx, blocked)
          const more = await outbox.add(trx, [
            { topic: 't', key: 'k', type: 'K1', payload: {} },
            { topic: 't', key: 'k', type: 'K2', payload: {} },
          ])
          return [ids, ...more]
        })
        const head = await store.claim({ limit: 1, leaseMs: 60_000 })
        await store.markFailed(head.token, [{ id: head.records[0]!.id, error: 'later', retryInMs: 60_000 }])
        const other = await store.claim({ limit: 1, leaseMs: 60_000 })
        expect(other.records.map((r) => r.id)).toEqual([k1!])

        // Right after the racing claim reads its window (k1 still leased there), the other relay
        // publishes k1: k's next head, k2, now lies beyond the window.
        let armed = true
        const plugin: KyselyPlugin = {
          transformQuery: (args) => args.node,
          async transformResult(args) {
            if (armed && args.result.rows.length === 1_000) {
              armed = false
              await store.markPublished(other.token, [k1!])
            }
            return args.result
          },
        }
        const racing = createKyselyOutboxStore({ db: database.db.withPlugin(plugin), schema })
        const raced = await racing.claim({ limit: 1, leaseMs: 60_000 })
        expect(armed).toBe(false)
        expect(raced.records.map((r) => r.id)).toEqual([])
        const next = await store.claim({ limit: 1, leaseMs: 60_000 })
        expect(next.records.map((r) => r.id)).toEqual([k2!])
      } finally {
        await database.close()
      }
    }, 60_000)
  })
}
