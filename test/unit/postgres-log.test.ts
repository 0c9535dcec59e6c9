/** The Postgres change feed's pure parts: LSNs, names and options, and the setup SQL. */
import { describe, expect, test } from 'bun:test'
import {
  createPostgresChangeFeed,
  decodeLogicalMessage,
  encodeLogicalMessage,
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
    const [marker, dead, publication, slot, row] = postgresFeedSetup({
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

  test('keeps dead records that have no row in <outboxTable>_dead; table: false publishes no table', () => {
    const [, dead, publication] = postgresFeedSetup({
      slot: 'orders',
      publication: 'orders_pub',
      schema: 'app',
      table: false,
    })
    expect(dead).toContain('CREATE TABLE IF NOT EXISTS "app"."outbox_dead"')
    expect(dead).toContain('PRIMARY KEY ("slot_name", "id")')
    expect(publication).toContain(`CREATE PUBLICATION "orders_pub" WITH (publish = 'insert')`)
    expect(publication).not.toContain('FOR TABLE')
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

describe('logical message encoding (the table-less mode)', () => {
  const everyByte = Uint8Array.from({ length: 256 }, (_, i) => i)
  const record = {
    id: '01890a5d-ac96-774b-bcce-b302099a8057',
    topic: 'orders.events',
    key: 'cust-ü-😀',
    type: 'OrderCreated',
    payload: everyByte,
    headers: {
      traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
      tracestate: 'vendor=a,other=b',
      'x-note': 'ünïcödé 😀 "quoted" \\ \n',
      'x-empty': '',
    },
  }

  test('round-trips every field byte for byte, binary payloads included, headers in order', () => {
    const content = encodeLogicalMessage(record, 1_700_000_000_123)
    expect(content[0]).toBe(1)
    const decoded = decodeLogicalMessage(content)
    expect(decoded).toEqual({ ...record, attempts: 1, createdAt: new Date(1_700_000_000_123) })
    expect(Object.keys(decoded.headers)).toEqual(Object.keys(record.headers))
    const empty = decodeLogicalMessage(
      encodeLogicalMessage({ ...record, payload: new Uint8Array(0), headers: {} }, 0),
    )
    expect(empty.payload).toEqual(new Uint8Array(0))
    expect(empty.headers).toEqual({})
  })

  test('the decoded record owns its bytes: the content may be a view of a driver buffer that is reused', () => {
    const content = encodeLogicalMessage(record, 0)
    const driverBuffer = Buffer.from(content)
    const decoded = decodeLogicalMessage(driverBuffer.subarray(0))
    driverBuffer.fill(0)
    expect(decoded.payload).toEqual(everyByte)
    expect(decoded.key).toBe(record.key)
  })

  test('is compact: 33 bytes of framing without headers, 8 more per header', () => {
    const small = {
      id: 'i',
      topic: 't',
      key: 'k',
      type: 'y',
      payload: new Uint8Array([1]),
      headers: { a: 'b' },
    }
    // 1 version + 8 time + 4×(4+1) strings + 4 count + 2×(4+1) header + 4+1 payload
    expect(encodeLogicalMessage(small, 0).byteLength).toBe(1 + 8 + 20 + 4 + 10 + 5)
  })

  test('content it cannot read whole is INVALID_MESSAGE, never a guess', () => {
    const content = encodeLogicalMessage(record, 0)
    const bad: Uint8Array[] = [
      new Uint8Array(0),
      content.slice(0, content.length - 1),
      Uint8Array.from([...content, 0]),
      Uint8Array.from([2, ...content.slice(1)]),
    ]
    // A string that is not UTF-8: the id's first byte (after version, time and its length).
    const notUtf8 = content.slice()
    notUtf8[13] = 0xff
    bad.push(notUtf8)
    // A NUL in a string (Postgres text cannot hold it), and a time beyond Date's range.
    bad.push(encodeLogicalMessage({ ...record, key: 'a\u0000b' }, 0))
    const farFuture = content.slice()
    new DataView(farFuture.buffer).setBigInt64(1, 2n ** 62n)
    bad.push(farFuture)
    for (const c of bad) expect(codeOf(() => decodeLogicalMessage(c))).toBe(ErrorCode.InvalidMessage)
  })
})

describe('createPostgresChangeFeed messagePrefix and table', () => {
  const base = { connectionString: 'postgres://localhost/db', slot: 'orders', publication: 'orders' }
  test('a bad prefix, or table: false without a prefix, is INVALID_OPTIONS', () => {
    expect(codeOf(() => createPostgresChangeFeed({ ...base, messagePrefix: '' }))).toBe(
      ErrorCode.InvalidOptions,
    )
    expect(codeOf(() => createPostgresChangeFeed({ ...base, table: false }))).toBe(ErrorCode.InvalidOptions)
    expect(
      codeOf(() => createPostgresChangeFeed({ ...base, table: false, messagePrefix: 'p' })),
    ).toBeUndefined()
  })
})
