/**
 * Helpers for tests that talk to the real NATS server (127.0.0.1:4222 with JetStream, or the
 * servers in NATS_SERVERS).
 */
import { randomUUID } from 'node:crypto'
import { jetstreamManager } from '@nats-io/jetstream'
import { connect, type NatsConnection } from '@nats-io/transport-node'
import { NATS_KEY_HEADER } from '../../src/adapters/nats/index.js'
import { Headers } from '../../src/index.js'
import type { TransportReadRecord } from '../../src/testing/index.js'

export function natsServers(): string[] {
  const fromEnv = (process.env['NATS_SERVERS'] ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0)
  return fromEnv.length > 0 ? fromEnv : ['127.0.0.1:4222']
}

/** A stream, subject or consumer name no earlier run used (letters, digits and `-`). */
export function uniqueNatsName(prefix: string): string {
  return `${prefix}-${Date.now().toString(36)}-${randomUUID().slice(0, 8)}`
}

export function natsConnect(): Promise<NatsConnection> {
  return connect({ servers: natsServers(), timeout: 5_000 })
}

/** Creates a stream named `name` capturing `subjects` (a two-minute duplicate window). */
export async function createStream(nc: NatsConnection, name: string, subjects: string[]): Promise<void> {
  const jsm = await jetstreamManager(nc)
  await jsm.streams.add({ name, subjects, duplicate_window: 120_000_000_000 })
}

export async function deleteStream(nc: NatsConnection, name: string): Promise<void> {
  const jsm = await jetstreamManager(nc)
  await jsm.streams.delete(name).catch(() => {})
}

/**
 * Reads stream `stream` message by message (direct from its storage, not through a transport or
 * runner) until every id in `ids` was seen; at most 60 s. Returns the messages in stream order.
 */
export async function readStream(
  nc: NatsConnection,
  stream: string,
  ids: readonly string[],
): Promise<TransportReadRecord[]> {
  const jsm = await jetstreamManager(nc)
  const read: TransportReadRecord[] = []
  const waiting = new Set(ids)
  const deadline = Date.now() + 60_000
  let seq = 1
  for (;;) {
    const { state } = await jsm.streams.info(stream)
    for (; seq <= state.last_seq; seq++) {
      const message = await jsm.streams.getMessage(stream, { seq }).catch(() => null)
      if (!message) continue
      const headers: Record<string, string> = {}
      for (const name of message.header?.keys() ?? []) headers[name] = message.header!.get(name)
      const id = headers[Headers.messageId] ?? ''
      read.push({
        id,
        topic: message.subject,
        key: headers[NATS_KEY_HEADER] ?? '',
        payload: message.data,
        headers,
      })
      waiting.delete(id)
    }
    if (waiting.size === 0) return read
    if (Date.now() > deadline)
      throw new Error(`${waiting.size} of ${ids.length} records did not reach ${stream}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}
