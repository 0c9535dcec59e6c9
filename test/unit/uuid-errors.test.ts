import { describe, expect, test } from 'bun:test'
import {
  ErrorCode,
  isOutboxKitError,
  isUuid,
  OutboxKitError,
  uuidv7,
  uuidv7Timestamp,
} from '../../src/index.js'

describe('uuidv7', () => {
  test('ids are RFC 9562 version 7, carry their time, and increase strictly within a runtime', () => {
    const before = Date.now()
    const ids = Array.from({ length: 20_000 }, () => uuidv7())
    const after = Date.now()
    for (let i = 1; i < ids.length; i++) expect(ids[i]! > ids[i - 1]!).toBe(true)
    expect(new Set(ids).size).toBe(ids.length)
    for (const id of [ids[0]!, ids.at(-1)!]) {
      expect(isUuid(id)).toBe(true)
      expect(id[14]).toBe('7')
      expect('89ab').toContain(id[19]!)
    }
    expect(uuidv7Timestamp(ids[0]!)).toBeGreaterThanOrEqual(before)
    expect(uuidv7Timestamp(ids.at(-1)!)).toBeLessThanOrEqual(after + 5)
  })

  test('a clock that steps back does not break ordering', () => {
    const a = uuidv7(2_000_000_000_000)
    const b = uuidv7(1_000_000_000_000)
    expect(b > a).toBe(true)
  })
})

describe('errors', () => {
  test('errors are recognised by brand, also from another copy of the library', () => {
    const own = new OutboxKitError(ErrorCode.StoreFailed, 'lost', { retriable: true, source: 'postgres' })
    expect(own.message).toBe('[outboxkit] [postgres] lost')
    expect(isOutboxKitError(own, ErrorCode.StoreFailed)).toBe(true)
    expect(isOutboxKitError(own, ErrorCode.Closed)).toBe(false)
    // What a second bundled copy's error looks like: a different class, the same global brand.
    const foreign = Object.assign(new Error('x'), {
      code: ErrorCode.Closed,
      [Symbol.for('outboxkit.error')]: true,
    })
    expect(isOutboxKitError(foreign, ErrorCode.Closed)).toBe(true)
    expect(isOutboxKitError(new Error('plain'))).toBe(false)
    expect(isOutboxKitError(null)).toBe(false)
  })

  test('the cause is kept', () => {
    const cause = new Error('socket hang up')
    expect(new OutboxKitError(ErrorCode.StoreFailed, 'failed', { cause }).cause).toBe(cause)
  })
})
