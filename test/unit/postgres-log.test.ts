/** The Postgres change feed's pure parts: LSNs, names and options, and the setup SQL. */
import { describe, expect, test } from 'bun:test'
import {
  createPostgresChangeFeed,
  formatLsn,
  parseLsn,
  postgresFeedDropSql,
  postgresFeedSetup,
} from '../../src/adapters/postgres-log/index.js'
import { ErrorCode, isOutboxKitError } from '../../src/index.js'

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn()
  } catch (error) {
    return isOutboxKitError(error) ? error.code : 'not an OutboxKitError'
  }
  return undefined
}

describe('LSNs', () => {
  test('parse and format round-trip, and order as numbers', () => {
    for (const text of ['0/0', '0/16B3748', '16/B374D848', 'FFFFFFFF/FFFFFFFF']) {
      expect(formatLsn(parseLsn(text))).toBe(text)
    }
    expect(parseLsn('1/0')).toBeGreaterThan(parseLsn('0/FFFFFFFF'))
    expect(parseLsn('0/a')).toBe(10n)
  })

  test('anything else is INVALID_OPTIONS', () => {
    for (const text of ['', '0', '0/', '/1', '0/1/2', 'x/1', '123456789/0', ' 0/1']) {
      expect(codeOf(() => parseLsn(text))).toBe(ErrorCode.InvalidOptions)
    }
  })
})

describe('createPostgresChangeFeed options', () => {
  const base = { connectionString: 'postgres://localhost/db', slot: 'orders', publication: 'orders' }

  test('slot names follow Postgres: lower-case letters, digits and _', () => {
    for (const slot of ['Orders', 'a-b', '', 'x'.repeat(64), 'a;drop']) {
      expect(codeOf(() => createPostgresChangeFeed({ ...base, slot }))).toBe(ErrorCode.InvalidIdentifier)
    }
    expect(codeOf(() => createPostgresChangeFeed({ ...base, slot: 'orders_2' }))).toBeUndefined()
  })

  test('publication, schema and table names are validated identifiers', () => {
    expect(codeOf(() => createPostgresChangeFeed({ ...base, publication: 'a"b' }))).toBe(
      ErrorCode.InvalidIdentifier,
    )
    expect(codeOf(() => createPostgresChangeFeed({ ...base, schema: 'x y' }))).toBe(
      ErrorCode.InvalidIdentifier,
    )
    expect(codeOf(() => createPostgresChangeFeed({ ...base, outboxTable: '1t' }))).toBe(
      ErrorCode.InvalidIdentifier,
    )
  })

  test('exactly one of connectionString and clientConfig; positive limits', () => {
    const { connectionString: _, ...names } = base
    expect(codeOf(() => createPostgresChangeFeed(names))).toBe(ErrorCode.InvalidOptions)
    expect(codeOf(() => createPostgresChangeFeed({ ...base, clientConfig: { host: 'h' } }))).toBe(
      ErrorCode.InvalidOptions,
    )
    expect(codeOf(() => createPostgresChangeFeed({ ...names, clientConfig: { host: 'h' } }))).toBeUndefined()
    expect(codeOf(() => createPostgresChangeFeed({ ...base, statusIntervalMs: 0 }))).toBe(
      ErrorCode.InvalidOptions,
    )
    expect(codeOf(() => createPostgresChangeFeed({ ...base, maxBufferedRecords: 1.5 }))).toBe(
      ErrorCode.InvalidOptions,
    )
  })
})

describe('setup SQL', () => {
  test('publishes INSERTs of the outbox table only, and guards the slot with its marker row', () => {
    const [marker, publication, slot, row] = postgresFeedSetup({
      slot: 'orders',
      publication: 'orders_pub',
      schema: 'app',
    })
    expect(marker).toContain('CREATE TABLE IF NOT EXISTS "app"."outbox_feeds"')
    expect(publication).toContain(
      `CREATE PUBLICATION "orders_pub" FOR TABLE "app"."outbox" WITH (publish = 'insert')`,
    )
    expect(slot).toContain(`pg_create_logical_replication_slot('orders', 'pgoutput')`)
    expect(slot).toContain(`NOT EXISTS (SELECT 1 FROM "app"."outbox_feeds" WHERE "slot_name" = 'orders')`)
    expect(row).toContain('INSERT INTO "app"."outbox_feeds"')
  })

  test('drop SQL removes the slot, the marker row and the publication', () => {
    const sql = postgresFeedDropSql({
      slot: 'orders',
      publication: 'orders_pub',
      outboxTable: 'events',
    }).join('\n')
    expect(sql).toContain('pg_drop_replication_slot')
    expect(sql).toContain('DELETE FROM "events_feeds"')
    expect(sql).toContain('DROP PUBLICATION IF EXISTS "orders_pub"')
  })
})
