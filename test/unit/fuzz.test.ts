/**
 * G7 under generated input: whatever a caller or a broker hands us, the answer is a valid result
 * or a typed outboxkit error, never a crash of another kind; what is accepted is stored as it
 * was given, and every message id is deduplicated exactly.
 */
import { describe, expect, test } from 'bun:test'
import { MemoryDatabase, MemoryInboxStore, MemoryOutboxStore } from '../../src/adapters/memory/index.js'
import { decodeHeaders } from '../../src/consumers/index.js'
import { inboundMessage, isOutboxKitError, Outbox } from '../../src/index.js'
import { sanitizeTraceHeaders } from '../../src/otel/index.js'
import { anyMessage, anyMessageId, random } from '../support/generated-input.js'

describe('generated input', () => {
  test('5 000 generated messages: each is stored byte-exact or refused with INVALID_MESSAGE / PAYLOAD_TOO_LARGE, writing nothing', async () => {
    const r = random(20261128)
    const store = new MemoryOutboxStore(new MemoryDatabase())
    const outbox = new Outbox({ store, maxPayloadBytes: 256, maxHeaderBytes: 256 })
    const accepted = new Map<string, { payload: Uint8Array; headers: Record<string, string> }>()
    for (let i = 0; i < 5_000; i++) {
      const input = anyMessage(r, i)
      try {
        const [record] = outbox.prepare([input])
        const id = await store.transaction((tx) => outbox.add(tx, { ...input, id: record!.id }))
        expect(id).toBe(record!.id)
        accepted.set(id, { payload: record!.payload, headers: { ...record!.headers } })
      } catch (error) {
        if (!isOutboxKitError(error))
          throw new Error(`seed 20261128, message ${i}: untyped error ${String(error)}`)
        expect(['INVALID_MESSAGE', 'PAYLOAD_TOO_LARGE']).toContain(error.code)
      }
    }
    // The generator produces both outcomes.
    expect(accepted.size).toBeGreaterThan(100)
    expect(accepted.size).toBeLessThan(5_000)
    // Exactly the accepted messages were written, as they were given.
    expect(store.rows).toHaveLength(accepted.size)
    for (const row of store.rows) {
      const expected = accepted.get(row.record.id)!
      expect(row.record.payload).toEqual(expected.payload)
      expect(row.record.headers).toEqual(expected.headers)
      for (const value of Object.values(row.record.headers)) {
        expect(value.isWellFormed() && !value.includes('\u0000')).toBe(true)
      }
    }
  })

  test('2 000 generated message ids: each is recorded once, a repeat is a duplicate, a bad one a typed error', async () => {
    const r = random(4242)
    const inbox = new MemoryInboxStore(new MemoryDatabase())
    const recorded = new Set<string>()
    let refused = 0
    for (let i = 0; i < 2_000; i++) {
      const id = anyMessageId(r, i)
      try {
        const first = await inbox.transaction((tx) => inbox.markProcessed(tx, 'billing', id))
        expect(first).toBe(!recorded.has(id))
        recorded.add(id)
        expect(await inbox.isProcessed('billing', id)).toBe(true)
        expect(await inbox.transaction((tx) => inbox.markProcessed(tx, 'billing', id))).toBe(false)
      } catch (error) {
        if (!isOutboxKitError(error)) throw new Error(`seed 4242, id ${i}: untyped error ${String(error)}`)
        refused++
      }
    }
    expect(recorded.size).toBeGreaterThan(1_000)
    expect(refused).toBeLessThan(2_000)
  })

  test('consumed headers and payloads of any shape are decoded without throwing', () => {
    const r = random(7)
    let validTraceparents = 0
    for (let i = 0; i < 2_000; i++) {
      const bytes = () =>
        Buffer.from(Array.from({ length: Math.floor(r() * 40) }, () => Math.floor(r() * 256)))
      const hex = (length: number) => Array.from({ length }, () => Math.floor(r() * 16).toString(16)).join('')
      const traceparent = () => {
        const pick = r()
        if (pick < 0.3) return bytes()
        // Well-formed, so sanitizing keeps it.
        if (pick < 0.6) return `00-${hex(32)}-${hex(16)}-01`
        // One field of the wrong length, an all-zero trace id, upper-case hex.
        if (pick < 0.7) return `00-${hex(31)}-${hex(16)}-01`
        if (pick < 0.8) return `00-${'0'.repeat(32)}-${hex(16)}-01`
        if (pick < 0.9) return `00-${hex(32).toUpperCase()}-${hex(16)}-01`
        return `00-${bytes().toString('hex')}-01`
      }
      const headers = decodeHeaders({
        'outboxkit-id': r() > 0.5 ? bytes() : [bytes(), bytes()],
        'content-type': r() > 0.5 ? 'application/json' : bytes(),
        traceparent: traceparent(),
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
      if (trace['traceparent'] !== undefined) {
        expect(trace['traceparent']).toMatch(
          /^[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$/,
        )
        expect(trace['traceparent']).toBe(headers['traceparent']!)
        validTraceparents++
      }
    }
    // The assertion above ran for a good share of the inputs, and not for the malformed ones.
    expect(validTraceparents).toBeGreaterThan(400)
    expect(validTraceparents).toBeLessThan(1_000)
  })
})
