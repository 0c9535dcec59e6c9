/** Conformance-suite harnesses for the Kysely stores, reading tables with plain SQL. */

import type { Kysely } from 'kysely'
import { sql } from 'kysely'
import {
  createKyselyInboxStore,
  createKyselyOutboxStore,
  ensureOutboxSchema,
} from '../../src/adapters/kysely/index.js'
import { LAYOUTS, type OutboxLayout } from '../../src/adapters/kysely/schema.js'
import type { InboxStoreHarness, InspectedOutboxRow, OutboxStoreHarness } from '../../src/testing/index.js'
import type { AnyDB, Backend, TestDatabase } from './databases.js'

const STATUS = ['pending', 'published', 'dead'] as const

function bytes(value: unknown): Uint8Array {
  if (value instanceof Uint8Array) return new Uint8Array(value)
  throw new Error(`expected bytes, got ${typeof value}`)
}

function q(database: TestDatabase, name: string): string {
  return database.dialect === 'mysql' ? `\`${name}\`` : `"${name}"`
}

export async function openOutboxHarness(
  backend: Backend,
  layout: OutboxLayout = 'outboxkit',
): Promise<OutboxStoreHarness<Kysely<AnyDB>>> {
  const database = await backend.open()
  const { schema, dialect } = database
  await ensureOutboxSchema(database.db, { dialect, schema, layout })
  const table = `${q(database, schema)}.${q(database, 'outbox')}`
  const orders = `${q(database, schema)}.${q(database, 'orders')}`
  await database.query(`CREATE TABLE ${orders} (id varchar(64) PRIMARY KEY)`)
  const c = LAYOUTS[layout]
  const col = (name: string) => q(database, name)
  const store = createKyselyOutboxStore({ db: database.db, schema, layout })
  return {
    store,
    async peer() {
      return createKyselyOutboxStore({ db: await database.openPeer(), schema, layout })
    },
    async readRows() {
      const rows = await database.query<Record<string, unknown>>(
        `SELECT ${col(c.id)} AS id, ${col(c.topic)} AS topic, ${col(c.key)} AS k, ${col(c.type)} AS t,
          ${col(c.payload)} AS payload, ${col(c.headers)} AS headers, ${col(c.status)} AS status,
          ${col(c.attempts)} AS attempts, ${col(c.claimToken)} AS token, ${col(c.lastError)} AS last_error
         FROM ${table} ORDER BY ${col(c.seq)}`,
      )
      return rows.map(
        (r): InspectedOutboxRow => ({
          id: String(r['id']),
          topic: String(r['topic']),
          key: String(r['k']),
          type: String(r['t']),
          payload: bytes(r['payload']),
          headers:
            typeof r['headers'] === 'string'
              ? JSON.parse(r['headers'])
              : (r['headers'] as Record<string, string>),
          status: STATUS[Number(r['status'])]!,
          attempts: Number(r['attempts']),
          claimed: r['token'] !== null,
          lastError: r['last_error'] === null ? null : String(r['last_error']),
        }),
      )
    },
    async writeBusinessRow(tx, id) {
      await sql`INSERT INTO ${sql.raw(orders)} (id) VALUES (${id})`.execute(tx)
    },
    async countBusinessRows() {
      const rows = await database.query<{ n: unknown }>(`SELECT count(*) AS n FROM ${orders}`)
      return Number(rows[0]!.n)
    },
    async ageRows(ms) {
      const shift =
        dialect === 'mysql' ? `INTERVAL ${ms * 1000} MICROSECOND` : `interval '${ms} milliseconds'`
      await database.query(`UPDATE ${table} SET ${col(c.createdAt)} = ${col(c.createdAt)} - ${shift}`)
    },
    close: () => database.close(),
  }
}

export async function openInboxHarness(backend: Backend): Promise<InboxStoreHarness<Kysely<AnyDB>>> {
  const database = await backend.open()
  const { schema, dialect } = database
  await ensureOutboxSchema(database.db, { dialect, schema })
  const table = `${q(database, schema)}.${q(database, 'outbox_inbox')}`
  return {
    store: createKyselyInboxStore({ db: database.db, schema }),
    async readRows() {
      const rows = await database.query<{ consumer: string; message_id: string }>(
        `SELECT consumer, message_id FROM ${table}`,
      )
      return rows.map((r) => `${r.consumer}/${r.message_id}`).sort()
    },
    async ageRows(ms) {
      const shift =
        dialect === 'mysql' ? `INTERVAL ${ms * 1000} MICROSECOND` : `interval '${ms} milliseconds'`
      await database.query(`UPDATE ${table} SET processed_at = processed_at - ${shift}`)
    },
    async endTransaction(tx) {
      await sql`ROLLBACK`.execute(tx)
    },
    close: () => database.close(),
  }
}
