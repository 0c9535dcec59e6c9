import { describe, expect, test } from 'bun:test'
import { MemoryTransport } from '../../src/adapters/memory/index.js'
import { ErrorCode, Headers, OutboxKitError } from '../../src/index.js'
import { type TransportHarness, transportSuite } from '../../src/testing/index.js'

const MAX_PAYLOAD_BYTES = 10_000

/** The memory transport's harness reads its `delivered` list, the memory "broker". */
function openMemoryHarness(): Promise<TransportHarness> {
  const transport = new MemoryTransport({ maxPayloadBytes: MAX_PAYLOAD_BYTES })
  let topics = 0
  return Promise.resolve({
    transport,
    topic: async () => `memory-topic-${++topics}`,
    read: async (topic) =>
      transport.delivered
        .filter((r) => r.topic === topic)
        .map((r) => ({
          id: r.id,
          topic: r.topic,
          key: r.key,
          payload: r.payload,
          headers: { ...r.headers, [Headers.messageId]: r.id, [Headers.messageType]: r.type },
        })),
    unreachable: async () => {
      const down = new MemoryTransport()
      down.throwWith = () =>
        new OutboxKitError(ErrorCode.TransportFailed, 'The memory broker is down.', {
          source: 'memory',
          retriable: true,
        })
      return down
    },
    close: () => transport.close(),
  })
}

transportSuite({ describe, test, expect }, 'memory', openMemoryHarness, {
  oversizePayloadBytes: MAX_PAYLOAD_BYTES + 1,
})
