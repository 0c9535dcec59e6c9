import { describe, expect, test } from 'bun:test'
import type { NatsConnection } from '@nats-io/transport-node'
import { createNatsTransport, type NatsTransport } from '../../src/adapters/nats/index.js'
import { type TransportHarness, transportSuite } from '../../src/testing/index.js'
import {
  createStream,
  deleteStream,
  natsConnect,
  natsServers,
  readStream,
  uniqueNatsName,
} from '../support/nats.js'

const MAX_RECORD_BYTES = 100_000

/** One stream per topic, named after it; the transport connects by itself, as a relay's would. */
async function openNatsHarness(shared: boolean): Promise<TransportHarness> {
  const nc: NatsConnection = await natsConnect()
  const streams: string[] = []
  const transports: NatsTransport[] = []
  const make = (options: Parameters<typeof createNatsTransport>[0]) => {
    const transport = createNatsTransport({ maxRecordBytes: MAX_RECORD_BYTES, ...options })
    transports.push(transport)
    return transport
  }
  return {
    transport: shared ? make({ connection: nc }) : make({ servers: natsServers() }),
    topic: async () => {
      const topic = uniqueNatsName('suite')
      await createStream(nc, topic, [topic])
      streams.push(topic)
      return topic
    },
    read: (topic, ids) => readStream(nc, topic, ids),
    unreachable: async () => make({ servers: '127.0.0.1:1', connectTimeoutMs: 500 }),
    close: async () => {
      for (const transport of transports) await transport.close()
      for (const stream of streams) await deleteStream(nc, stream)
      await nc.close()
    },
  }
}

const api = { describe, test, expect }
transportSuite(api, 'nats (own connection)', () => openNatsHarness(false), {
  oversizePayloadBytes: MAX_RECORD_BYTES + 1,
})
transportSuite(api, "nats (the caller's connection)", () => openNatsHarness(true), {
  oversizePayloadBytes: MAX_RECORD_BYTES + 1,
})
