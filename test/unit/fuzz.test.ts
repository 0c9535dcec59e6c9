/**
 * G7 under generated input: whatever a caller or a broker hands us, the answer is a valid result
 * or a typed outboxkit error, never a crash of another kind.
 */
import { describe, expect, test } from 'bun:test'
import { decodeHeaders } from '../../src/consumers/index.js'
import { inboundMessage, isOutboxKitError, type OutboxMessageInput, toRecord } from '../../src/index.js'
import { sanitizeTraceHeaders } from '../../src/otel/index.js'

/** A small deterministic generator (mulberry32), so a failure can be replayed from its seed. */
function random(seed: number): () => number {
  let a = seed
  return () => {
    a = (a + 0x6d2b79f5) | 0
    let t = Math.imul(a ^ (a >>> 15), 1 | a)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

function anyValue(r: () => number, depth = 0): unknown {
  const pick = Math.floor(r() * 16)
  const text = () =>
    Array.from({ length: Math.floor(r() * 12) }, () => String.fromCharCode(Math.floor(r() * 0xffff))).join('')
  switch (pick) {
    case 0:
      return undefined
    case 1:
      return null
    case 2:
      return r() * 1e6 - 5e5
    case 3:
      return [Number.NaN, Number.POSITIVE_INFINITY, -0, 2 ** 53][Math.floor(r() * 4)]
    case 4:
      return text()
    case 5:
      return 'order-' + Math.floor(r() * 100)
    case 6:
      return r() > 0.5
    case 7:
      return BigInt(Math.floor(r() * 100))
    case 8:
      return new Uint8Array(Math.floor(r() * 64))
    case 9:
      return new Date()
    case 10:
      return () => 1
    case 11:
      return Symbol('s')
    case 12:
    case 13:
      return depth > 3
        ? {}
        : Object.fromEntries(Array.from({ length: 3 }, () => [text() || 'k', anyValue(r, depth + 1)]))
    default:
      return depth > 3 ? [] : Array.from({ length: 3 }, () => anyValue(r, depth + 1))
  }
}

describe('generated input', () => {
  test('toRecord returns a record or throws INVALID_MESSAGE / PAYLOAD_TOO_LARGE, for 5 000 generated messages', () => {
    const r = random(20261128)
    let accepted = 0
    for (let i = 0; i < 5_000; i++) {
      const input = {
        topic: r() > 0.3 ? 'orders' : anyValue(r),
        key: r() > 0.3 ? `order-${i}` : anyValue(r),
        type: r() > 0.3 ? 'OrderCreated' : anyValue(r),
        payload: anyValue(r),
        ...(r() > 0.5 ? { headers: r() > 0.5 ? { 'x-a': String(i) } : anyValue(r) } : {}),
        ...(r() > 0.8 ? { id: anyValue(r) } : {}),
        ...(r() > 0.8 ? { contentType: anyValue(r) } : {}),
      } as OutboxMessageInput
      try {
        const record = toRecord(input, { maxPayloadBytes: 256, maxHeaderBytes: 256 })
        accepted++
        expect(record.payload.byteLength).toBeLessThanOrEqual(256)
        for (const value of Object.values(record.headers)) expect(typeof value).toBe('string')
      } catch (error) {
        if (!isOutboxKitError(error))
          throw new Error(`seed 20261128, message ${i}: untyped error ${String(error)}`)
        expect(['INVALID_MESSAGE', 'PAYLOAD_TOO_LARGE']).toContain(error.code)
      }
    }
    // The generator produces both outcomes.
    expect(accepted).toBeGreaterThan(100)
    expect(accepted).toBeLessThan(5_000)
  })

  test('consumed headers and payloads of any shape are decoded without throwing', () => {
    const r = random(7)
    for (let i = 0; i < 2_000; i++) {
      const bytes = () =>
        Buffer.from(Array.from({ length: Math.floor(r() * 40) }, () => Math.floor(r() * 256)))
      const headers = decodeHeaders({
        'outboxkit-id': r() > 0.5 ? bytes() : [bytes(), bytes()],
        'content-type': r() > 0.5 ? 'application/json' : bytes(),
        traceparent: r() > 0.5 ? bytes() : `00-${bytes().toString('hex')}-01`,
        empty: r() > 0.5 ? undefined : [],
      })
      for (const value of Object.values(headers)) expect(typeof value).toBe('string')
      const message = inboundMessage({
        id: headers['outboxkit-id'] ?? '',
        topic: 't',
        key: null,
        payload: bytes(),
        headers,
      })
      expect(message.payload instanceof Uint8Array).toBe(true)
      const trace = sanitizeTraceHeaders(headers)
      if (trace['traceparent'])
        expect(trace['traceparent']).toMatch(/^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/)
    }
  })
})
