/**
 * G7 against real databases: generated messages go through `outbox.add` into Postgres via pg (jsonb,
 * bytea) and MariaDB (utf8mb4), and generated message ids through `markProcessed`. Whatever the
 * validation accepts is stored as given; whatever it refuses never reaches the database (so no
 * STORE_FAILED for bad input); every id is deduplicated exactly.
 */
import { beforeAll, describe, expect, test } from 'bun:test'
import {
  createKyselyInboxStore,
  createKyselyOutboxStore,
  ensureOutboxSchema,
} from '../../src/adapters/kysely/index.js'
import { isOutboxKitError, Outbox } from '../../src/index.js'
import {
  assertReachable,
  type Backend,
  mysqlBackend,
  pgBackend,
  postgresJsBackend,
} from '../support/databases.js'
import { anyMessage, anyMessageId, random } from '../support/generated-input.js'

const BACKENDS: readonly Backend[] = [pgBackend, postgresJsBackend, mysqlBackend]

beforeAll(async () => {
  for (const backend of BACKENDS) await assertReachable(backend)
})

for (const backend of BACKENDS) {
  describe(`generated input: ${backend.name}`, () => {
    test('400 generated messages: accepted ones are stored byte-exact, refused ones never reach the table', async () => {
      const database = await backend.open()
      const { db, schema, dialect } = database
      try {
        await ensureOutboxSchema(db, { dialect, schema })
        const store = createKyselyOutboxStore({ db, schema })
        const outbox = new Outbox({ store, maxPayloadBytes: 256, maxHeaderBytes: 256 })
        const r = random(19)
        const accepted = new Map<string, { payload: Uint8Array; headers: Record<string, string> }>()
        let refused = 0
        for (let i = 0; i < 400; i++) {
          const input = anyMessage(r, i)
          let prepared: ReturnType<Outbox<unknown>['prepare']>[number] | undefined
          try {
            prepared = outbox.prepare([input])[0]!
          } catch (error) {
            if (!isOutboxKitError(error))
              throw new Error(`seed 19, message ${i}: untyped error ${String(error)}`)
            expect(['INVALID_MESSAGE', 'PAYLOAD_TOO_LARGE']).toContain(error.code)
          }
          // The same input through add: refused the same way, inside the transaction, before any SQL.
          try {
            await store.transaction((tx) => outbox.add(tx, prepared ? { ...input, id: prepared.id } : input))
            accepted.set(prepared!.id, { payload: prepared!.payload, headers: { ...prepared!.headers } })
          } catch (error) {
            if (!isOutboxKitError(error))
              throw new Error(`seed 19, message ${i}: untyped error ${String(error)}`)
            expect(prepared).toBeUndefined()
            expect(['INVALID_MESSAGE', 'PAYLOAD_TOO_LARGE']).toContain(error.code)
            refused++
          }
        }
        expect(accepted.size).toBeGreaterThan(20)
        expect(refused).toBeGreaterThan(20)
        const q = (name: string) => (dialect === 'mysql' ? `\`${name}\`` : `"${name}"`)
        const rows = await database.query<{ id: unknown; payload: Uint8Array; headers: unknown }>(
          `SELECT id, payload, headers FROM ${q(schema)}.${q('outbox')}`,
        )
        expect(rows).toHaveLength(accepted.size)
        for (const row of rows) {
          const expected = accepted.get(String(row.id))!
          expect(Array.from(new Uint8Array(row.payload))).toEqual(Array.from(expected.payload))
          // Postgres stores a jsonb object (not a JSON string); MariaDB JSON text.
          const headers = dialect === 'mysql' ? JSON.parse(String(row.headers)) : row.headers
          expect(headers).toEqual(expected.headers)
        }
        // And a relay reads them back the same way.
        const claim = await store.claim({ limit: 1_000, leaseMs: 30_000 })
        expect(claim.records).toHaveLength(accepted.size)
        for (const record of claim.records) {
          expect(record.payload).toEqual(accepted.get(record.id)!.payload)
          expect(record.headers).toEqual(accepted.get(record.id)!.headers)
        }
      } finally {
        await database.close()
      }
    }, 120_000)

    test('300 generated message ids: each is recorded once, a repeat is a duplicate, a bad one a typed error', async () => {
      const database = await backend.open()
      const { db, schema, dialect } = database
      try {
        await ensureOutboxSchema(db, { dialect, schema })
        const inbox = createKyselyInboxStore({ db, schema })
        const r = random(23)
        const recorded = new Set<string>()
        let refused = 0
        for (let i = 0; i < 300; i++) {
          const id = anyMessageId(r, i)
          try {
            const first = await inbox.transaction((tx) => inbox.markProcessed(tx, 'billing', id))
            expect(first).toBe(!recorded.has(id))
            recorded.add(id)
            expect(await inbox.isProcessed('billing', id)).toBe(true)
            expect(await inbox.transaction((tx) => inbox.markProcessed(tx, 'billing', id))).toBe(false)
          } catch (error) {
            if (!isOutboxKitError(error)) throw new Error(`seed 23, id ${i}: untyped error ${String(error)}`)
            refused++
          }
        }
        expect(recorded.size).toBeGreaterThan(100)
        expect(refused).toBeLessThan(300)
        expect(
          Number(
            (
              await database.query<{ n: unknown }>(
                `SELECT count(*) AS n FROM ${dialect === 'mysql' ? `\`${schema}\`.\`outbox_inbox\`` : `"${schema}"."outbox_inbox"`}`,
              )
            )[0]!.n,
          ),
        ).toBe(recorded.size)
      } finally {
        await database.close()
      }
    }, 120_000)
  })
}
