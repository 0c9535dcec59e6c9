import { describe, expect, test } from 'bun:test'
import type { IHeaders } from 'kafkajs'
import { decodeHeaders } from '../../src/consumers/index.js'

describe('decodeHeaders', () => {
  test('a header with a null value (Debezium writes one for a NULL column) is left out', () => {
    // kafkajs decodes a header of length -1 as null, which its types do not admit.
    const headers = {
      id: Buffer.from('abc'),
      traceparent: null,
      repeated: [null, 'x'],
    } as unknown as IHeaders
    expect(decodeHeaders(headers)).toEqual({ id: 'abc' })
  })
})
