import { describe, expect, test } from 'bun:test'
import {
  comparePositions,
  createMysqlChangeFeed,
  formatPosition,
  parsePosition,
} from '../../src/adapters/mysql-binlog/index.js'
import { ErrorCode, isOutboxKitError } from '../../src/index.js'

const at = (text: string) => parsePosition(text, 'test')

describe('binlog positions', () => {
  test('round-trip through their text form, file names with colons included', () => {
    expect(at('mysql-bin.000003:1234')).toEqual({ file: 'mysql-bin.000003', offset: 1234 })
    expect(at('host:3306-bin.000001:4')).toEqual({ file: 'host:3306-bin.000001', offset: 4 })
    expect(formatPosition(at('mysql-bin.000003:1234'))).toBe('mysql-bin.000003:1234')
  })

  test('order by file sequence number, then offset, also past six digits', () => {
    expect(comparePositions(at('mysql-bin.000002:900'), at('mysql-bin.000003:4'))).toBeLessThan(0)
    expect(comparePositions(at('mysql-bin.000003:5'), at('mysql-bin.000003:4'))).toBeGreaterThan(0)
    expect(comparePositions(at('mysql-bin.999999:5'), at('mysql-bin.1000000:4'))).toBeLessThan(0)
    expect(comparePositions(at('mysql-bin.000003:4'), at('mysql-bin.000003:4'))).toBe(0)
  })

  test('text that is not a position is refused with INVALID_OPTIONS', () => {
    for (const text of ['', 'mysql-bin.000003', 'mysql-bin.000003:', ':12', 'mysql-bin.000003:1x']) {
      let error: unknown
      try {
        at(text)
      } catch (e) {
        error = e
      }
      expect(isOutboxKitError(error, ErrorCode.InvalidOptions)).toBe(true)
    }
  })
})

describe('createMysqlChangeFeed options', () => {
  const base = { connection: 'mysql://root@127.0.0.1:3306', schema: 'app', serverId: 7 }

  test('hostile names and bad server ids are refused before any connection', () => {
    const refused = (options: Record<string, unknown>, code: ErrorCode) => {
      let error: unknown
      try {
        createMysqlChangeFeed({ ...base, ...options } as Parameters<typeof createMysqlChangeFeed>[0])
      } catch (e) {
        error = e
      }
      expect(isOutboxKitError(error) && error.code).toBe(code)
    }
    refused({ schema: 'app`; DROP' }, ErrorCode.InvalidIdentifier)
    refused({ outboxTable: 'a b' }, ErrorCode.InvalidIdentifier)
    refused({ positionTable: '1x' }, ErrorCode.InvalidIdentifier)
    refused({ serverId: 0 }, ErrorCode.InvalidOptions)
    refused({ serverId: 2 ** 32 }, ErrorCode.InvalidOptions)
    refused({ feedName: '' }, ErrorCode.InvalidOptions)
    refused({ layout: 'other' }, ErrorCode.InvalidOptions)
    refused({ connection: 42 }, ErrorCode.InvalidOptions)
  })

  test('a feed that is not open refuses reads with CLOSED', async () => {
    const feed = createMysqlChangeFeed(base)
    expect(feed.name).toBe('mysql-binlog')
    const error = await feed.read({ limit: 1, maxWaitMs: 0 }).catch((e: unknown) => e)
    expect(isOutboxKitError(error, ErrorCode.Closed)).toBe(true)
    await feed.close()
  })
})
