/**
 * The NATS transport's own failure cases against the real server, beyond transportSuite: a subject
 * no stream captures, a record meant for another stream, and a server lost after connecting.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import type { NatsConnection } from '@nats-io/transport-node'
import { createNatsTransport } from '../../src/adapters/nats/index.js'
import {
  type ClaimedRecord,
  ErrorCode,
  isOutboxKitError,
  type PublishOutcome,
  uuidv7,
} from '../../src/index.js'
import { captureError } from '../../src/testing/index.js'
import { createStream, deleteStream, natsConnect, readStream, uniqueNatsName } from '../support/nats.js'
import { startTcpProxy } from '../support/tcp-proxy.js'

let nc: NatsConnection
const streams: string[] = []
beforeAll(async () => {
  nc = await natsConnect()
})
afterAll(async () => {
  for (const stream of streams) await deleteStream(nc, stream)
  await nc?.close()
})

async function stream(): Promise<string> {
  const name = uniqueNatsName('transport')
  await createStream(nc, name, [name])
  streams.push(name)
  return name
}

function record(topic: string, key: string): ClaimedRecord {
  return {
    id: uuidv7(),
    topic,
    key,
    type: 'E',
    payload: new Uint8Array([1]),
    headers: {},
    attempts: 1,
    createdAt: new Date(),
  }
}

const failure = (o: PublishOutcome | undefined) => (o?.status === 'failed' ? o : undefined)

describe('NATS transport', () => {
  test('a subject no stream captures fails retriable, says to create a stream, and leaves other topics alone', async () => {
    const captured = await stream()
    const transport = createNatsTransport({ connection: nc, ackTimeoutMs: 2_000 })
    try {
      const orphan = uniqueNatsName('orphan')
      const outcomes = await transport.publish([record(orphan, 'a'), record(captured, 'b')])
      expect(failure(outcomes[0])?.retriable).toBe(true)
      expect(failure(outcomes[0])?.error).toContain('Create a stream')
      expect(outcomes[1]).toEqual({ status: 'published' })
    } finally {
      await transport.close()
    }
  })

  test('with `stream`, a record whose subject another stream captures is refused, retriable', async () => {
    const expected = await stream()
    const other = await stream()
    const transport = createNatsTransport({ connection: nc, stream: expected })
    try {
      const outcomes = await transport.publish([record(other, 'a'), record(expected, 'b')])
      expect(failure(outcomes[0])?.retriable).toBe(true)
      expect(outcomes[1]).toEqual({ status: 'published' })
    } finally {
      await transport.close()
    }
  })

  test('a server lost after connecting makes publish throw a retriable TRANSPORT_FAILED; publishing resumes once it is back', async () => {
    const topic = await stream()
    const proxy = await startTcpProxy({ port: 15422, targetHost: '127.0.0.1', targetPort: 4222 })
    const transport = createNatsTransport({ servers: '127.0.0.1:15422', ackTimeoutMs: 1_000 })
    try {
      const before = record(topic, 'a')
      expect(await transport.publish([before])).toEqual([{ status: 'published' }])
      await proxy.refuse()
      const error = await captureError(() => transport.publish([record(topic, 'a'), record(topic, 'b')]))
      expect(isOutboxKitError(error, ErrorCode.TransportFailed)).toBe(true)
      expect((error as { retriable: boolean }).retriable).toBe(true)
      await proxy.restore()
      // The client reconnects by itself; the relay would retry with backoff until then.
      const after = record(topic, 'a')
      let outcomes: readonly PublishOutcome[] = []
      for (let attempt = 0; attempt < 40 && outcomes[0]?.status !== 'published'; attempt++) {
        outcomes = await transport.publish([after]).catch(() => [])
        if (outcomes[0]?.status !== 'published') await new Promise((r) => setTimeout(r, 250))
      }
      expect(outcomes).toEqual([{ status: 'published' }])
      const read = await readStream(nc, topic, [before.id, after.id])
      expect(read.map((r) => r.id)).toContain(after.id)
    } finally {
      await transport.close()
      await proxy.close()
    }
  }, 60_000)
})
