import { describe, expect, test } from 'bun:test'
import {
  decodePayload,
  ErrorCode,
  Headers,
  isOutboxKitError,
  type OutboxKitError,
  type OutboxMessageInput,
  publishedHeaders,
  toRecord,
} from '../../src/index.js'

const limits = { maxPayloadBytes: 1024, maxHeaderBytes: 512 }
const base: OutboxMessageInput = {
  topic: 'order.events',
  key: 'order-1',
  type: 'OrderCreated',
  payload: { a: 1 },
}

function failure(input: unknown, code: ErrorCode = ErrorCode.InvalidMessage): OutboxKitError {
  try {
    toRecord(input as OutboxMessageInput, limits)
  } catch (error) {
    expect(isOutboxKitError(error, code)).toBe(true)
    return error as OutboxKitError
  }
  throw new Error('expected a validation error')
}

describe('message validation', () => {
  test('a valid JSON message becomes a record with a UUIDv7 id and a JSON content type', () => {
    const record = toRecord(base, limits)
    expect(record.id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/)
    expect(new TextDecoder().decode(record.payload)).toBe('{"a":1}')
    expect(record.headers).toEqual({ 'content-type': 'application/json' })
    expect(decodePayload(record.payload, record.headers['content-type'])).toEqual({ a: 1 })
  })

  test('bytes are kept as they are, with the given content type', () => {
    const bytes = new Uint8Array([0, 255, 10])
    const record = toRecord({ ...base, payload: bytes, contentType: 'application/avro' }, limits)
    expect(record.payload).toBe(bytes)
    expect(record.headers['content-type']).toBe('application/avro')
  })

  test.each([
    ['empty topic', { ...base, topic: '' }, 'topic'],
    ['topic with a space', { ...base, topic: 'a b' }, 'topic'],
    ['topic "."', { ...base, topic: '.' }, 'topic'],
    ['over-long topic', { ...base, topic: 'x'.repeat(250) }, 'topic'],
    ['empty key', { ...base, key: '' }, 'key'],
    ['numeric key', { ...base, key: 42 }, 'key'],
    ['over-long key', { ...base, key: 'k'.repeat(256) }, 'key'],
    ['key with NUL', { ...base, key: 'a\u0000b' }, 'key'],
    ['key with a lone surrogate', { ...base, key: 'a\ud800' }, 'key'],
    ['empty type', { ...base, type: '' }, 'type'],
    ['over-long type', { ...base, type: 't'.repeat(256) }, 'type'],
    ['undefined payload', { ...base, payload: undefined }, 'payload'],
    ['NaN in payload', { ...base, payload: { n: Number.NaN } }, 'payload'],
    ['a Date in payload', { ...base, payload: { at: new Date() } }, 'payload'],
    ['a function in payload', { ...base, payload: { f: () => 1 } }, 'payload'],
    ['a bigint in payload', { ...base, payload: { n: 1n } }, 'payload'],
    ['a Map payload', { ...base, payload: new Map() }, 'payload'],
    ['a non-string header value', { ...base, headers: { 'x-n': 1 } }, 'headers'],
    ['a header name with a space', { ...base, headers: { 'x n': 'v' } }, 'headers'],
    ['a reserved header', { ...base, headers: { TraceParent: '00-abc' } }, 'headers'],
    ['the reserved id header', { ...base, headers: { [Headers.messageId]: 'x' } }, 'headers'],
    ['headers as an array', { ...base, headers: ['a'] }, 'headers'],
    ['an id that is not a UUID', { ...base, id: 'order-1' }, 'id'],
    ['a content type on a JSON payload', { ...base, contentType: 'text/plain' }, 'contentType'],
  ])('%s is rejected with INVALID_MESSAGE naming the field', (_name, input, field) => {
    const error = failure(input)
    expect(error.details['field']).toBe(field)
    expect(error.retriable).toBe(false)
    expect(error.message).toStartWith('[outboxkit] Invalid message')
  })

  test.each([
    ['a NUL character', 'a\u0000b'],
    ['a lone high surrogate', 'a\ud800'],
    ['a lone low surrogate', '\udc00z'],
  ])('a header value with %s is rejected with INVALID_MESSAGE naming the header', (_name, value) => {
    const error = failure({ ...base, headers: { 'x-ok': 'fine', 'x-bad': value } })
    expect(error.details['field']).toBe('headers')
    expect(error.details['header']).toBe('x-bad')
    expect(error.message).toContain('"x-bad"')
  })

  test.each([
    ['empty', ''],
    ['without a subtype', 'application'],
    ['with a space inside', 'application/ avro'],
    ['with a NUL', 'application/avro\u0000'],
    ['with a newline', 'application/avro\n'],
    ['with a bare parameter', 'text/plain; charset'],
    ['with an unterminated quoted parameter', 'text/plain; a="b'],
    ['a number', 42],
    ['over 255 characters', `application/${'x'.repeat(250)}`],
  ])('a bytes content type %s is rejected with INVALID_MESSAGE', (_name, contentType) => {
    const error = failure({ ...base, payload: new Uint8Array([1]), contentType })
    expect(error.details['field']).toBe('contentType')
    expect(error.message).toContain('media type')
  })

  test.each([
    'application/avro',
    'application/vnd.kafka+json',
    'text/plain; charset=utf-8',
    'multipart/mixed;boundary="a b;c"',
  ])('a well-formed content type %s is accepted', (contentType) => {
    const record = toRecord({ ...base, payload: new Uint8Array([1]), contentType }, limits)
    expect(record.headers['content-type']).toBe(contentType)
  })

  test('a circular payload is rejected, a shared non-circular object is not', () => {
    const loop: Record<string, unknown> = {}
    loop['self'] = loop
    expect(failure({ ...base, payload: loop }).message).toContain('circular')
    const shared = { x: 1 }
    expect(() => toRecord({ ...base, payload: { a: shared, b: shared } }, limits)).not.toThrow()
  })

  test('an oversize payload fails with PAYLOAD_TOO_LARGE and says what to do', () => {
    const error = failure({ ...base, payload: new Uint8Array(1025) }, ErrorCode.PayloadTooLarge)
    expect(error.details).toEqual({ size: 1025, limit: 1024 })
    expect(error.message).toContain('maxPayloadBytes')
    expect(() => toRecord({ ...base, payload: new Uint8Array(1024) }, limits)).not.toThrow()
  })

  test('headers over the size limit are rejected', () => {
    failure({ ...base, headers: { 'x-big': 'v'.repeat(600) } })
  })

  test('non-objects are rejected with a readable error', () => {
    expect(failure(null).message).toContain('expected an object')
    expect(failure('OrderCreated').message).toContain('expected an object')
  })

  test('published headers add the message id and type, which stored headers cannot override', () => {
    const record = toRecord({ ...base, headers: { 'x-tenant': 'acme' } }, limits, {
      traceparent: '00-t-s-01',
    })
    expect(publishedHeaders(record)).toEqual({
      'x-tenant': 'acme',
      'content-type': 'application/json',
      traceparent: '00-t-s-01',
      [Headers.messageId]: record.id,
      [Headers.messageType]: 'OrderCreated',
    })
  })
})
