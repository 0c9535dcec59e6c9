import { type JetStreamClient, jetstream } from '@nats-io/jetstream'
import { connect, type NatsConnection, headers as natsHeaders } from '@nats-io/transport-node'
import {
  type ClaimedRecord,
  ErrorCode,
  OutboxKitError,
  type PublishOutcome,
  publishedHeaders,
  type Transport,
  type TransportCapabilities,
} from '../../index.js'
import { classifyPublishError, optionInteger, outageError, type PublishFault } from './nats-errors.js'

/**
 * The header that carries the record key: NATS messages have a subject but no key. Consumers
 * read it back as `InboundMessage.key`.
 */
export const NATS_KEY_HEADER = 'outboxkit-key'
/** JetStream's deduplication header; the transport sets it to the message id. */
export const NATS_MSG_ID_HEADER = 'Nats-Msg-Id'

export interface NatsTransportOptions {
  /**
   * Your NATS connection (`connect()` from `@nats-io/transport-node`, with your TLS, auth and
   * reconnect settings). It stays yours: `close()` leaves it open. Or pass `servers` instead.
   */
  connection?: NatsConnection
  /** Servers to connect to, when no `connection` is given. The transport then owns the connection. */
  servers?: string | string[]
  /** How long a connection attempt may take, ms, when the transport connects itself. Default 5 000. */
  connectTimeoutMs?: number
  /** The subject a record is published to. Default: its topic, unchanged. */
  subject?: (record: ClaimedRecord) => string
  /**
   * The stream every record must land in. When set, the server refuses a record whose subject is
   * captured by another stream, and the record is retried. Default: any stream.
   */
  stream?: string
  /** How long a publish waits for the stream's acknowledgement, ms. Default 5 000. */
  ackTimeoutMs?: number
  /**
   * Largest record (payload + headers) sent, in bytes. Larger records fail at once as not
   * retriable, so the relay dead-letters them. Default: the server's `max_payload` (1 MiB unless
   * configured otherwise).
   */
  maxRecordBytes?: number
  /** Keys published at the same time (each key's records go one after another). Default 64. */
  keysInFlight?: number
}

const encoder = new TextEncoder()

/**
 * A {@link Transport} on NATS JetStream (`@nats-io/jetstream`). Each record is published to the
 * subject of its topic with its message id as `Nats-Msg-Id`, so the stream drops a copy published
 * again within its `duplicate_window` (the acknowledgement says `duplicate`, and the record counts
 * as published). A record counts as published only once the stream acknowledged it.
 *
 * A key's records are published one after another, each after the previous one's
 * acknowledgement; after a failure, the key's later records in the call are not sent. Different
 * keys are published concurrently.
 *
 * @example
 * ```ts
 * const transport = createNatsTransport({ servers: '127.0.0.1:4222' })
 * const relay = new Relay({ store, transport })
 * ```
 */
export function createNatsTransport(options: NatsTransportOptions): NatsTransport {
  return new NatsTransport(options)
}

export class NatsTransport implements Transport {
  readonly name = 'nats'
  /** JetStream publishes are acknowledged one by one: no atomic batches, but deduplication by id. */
  readonly capabilities: TransportCapabilities = { transactions: false, deduplicates: true }
  readonly #options: NatsTransportOptions
  readonly #ackTimeoutMs: number
  readonly #keysInFlight: number
  readonly #connectTimeoutMs: number
  #connection: Promise<NatsConnection> | undefined
  #js: JetStreamClient | undefined
  #closed = false

  constructor(options: NatsTransportOptions) {
    if (!options?.connection && !options?.servers) {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        'createNatsTransport needs `connection` (a NATS connection) or `servers`.',
        { source: 'nats' },
      )
    }
    this.#options = options
    this.#ackTimeoutMs = optionInteger('ackTimeoutMs', options.ackTimeoutMs, 5_000)
    this.#keysInFlight = optionInteger('keysInFlight', options.keysInFlight, 64)
    this.#connectTimeoutMs = optionInteger('connectTimeoutMs', options.connectTimeoutMs, 5_000)
    if (options.maxRecordBytes !== undefined) optionInteger('maxRecordBytes', options.maxRecordBytes, 1)
    if (options.connection) this.#connection = Promise.resolve(options.connection)
  }

  async publish(records: readonly ClaimedRecord[]): Promise<readonly PublishOutcome[]> {
    if (this.#closed)
      throw new OutboxKitError(ErrorCode.Closed, 'The NATS transport is closed.', { source: 'nats' })
    if (records.length === 0) return []
    const nc = await this.#connect()
    this.#js ??= jetstream(nc, { timeout: this.#ackTimeoutMs })
    const js = this.#js
    const limit = this.#options.maxRecordBytes ?? nc.info?.max_payload ?? 1024 * 1024

    // Each key's records, in input order.
    const byKey = new Map<string, number[]>()
    records.forEach((record, index) => {
      const list = byKey.get(record.key)
      if (list) list.push(index)
      else byKey.set(record.key, [index])
    })
    const outcomes: PublishOutcome[] = new Array(records.length)
    const faults: PublishFault[] = []
    let published = 0

    const publishKey = async (indexes: readonly number[]): Promise<void> => {
      for (let i = 0; i < indexes.length; i++) {
        const index = indexes[i]!
        const fault = await this.#publishOne(js, records[index]!, limit)
        if (fault === undefined) {
          outcomes[index] = { status: 'published' }
          published++
          continue
        }
        faults.push(fault)
        outcomes[index] = { status: 'failed', error: fault.error, retriable: fault.kind !== 'record' }
        // The key's later records would overtake the failed one.
        for (const later of indexes.slice(i + 1)) {
          outcomes[later] = {
            status: 'failed',
            error: 'Not sent: an earlier record of its key failed.',
            retriable: true,
          }
        }
        return
      }
    }

    const queue = [...byKey.values()]
    const workers = Array.from({ length: Math.min(this.#keysInFlight, queue.length) }, async () => {
      for (let next = queue.shift(); next; next = queue.shift()) await publishKey(next)
    })
    await Promise.all(workers)

    // Nothing got through and the server did not answer: the outcome of the call is unknown.
    if (published === 0 && faults.length > 0 && faults.every((f) => f.kind === 'outage'))
      throw outageError(faults[0]!.error)
    return outcomes
  }

  /** Publishes one record and waits for its ack; returns why it failed, or undefined. */
  async #publishOne(
    js: JetStreamClient,
    record: ClaimedRecord,
    limit: number,
  ): Promise<PublishFault | undefined> {
    const subject = this.#options.subject ? this.#options.subject(record) : record.topic
    const fields: [string, string][] = Object.entries(publishedHeaders(record))
    fields.push([NATS_KEY_HEADER, record.key])
    // NATS headers are lines of text: a value with CR or LF cannot be carried.
    const broken = fields.find(([, value]) => /[\r\n]/.test(value))
    if (broken) {
      return {
        kind: 'record',
        error: `Header "${broken[0]}" contains a line break, which NATS headers cannot carry.`,
      }
    }
    const size = recordSize(record, fields)
    if (size > limit) {
      return {
        kind: 'record',
        error: `The record is about ${size} bytes; the limit (maxRecordBytes, or the server's max_payload) is ${limit}.`,
      }
    }
    const hdrs = natsHeaders()
    for (const [name, value] of fields) hdrs.set(name, value)
    try {
      const ack = await js.publish(subject, record.payload, {
        msgID: record.id,
        headers: hdrs,
        timeout: this.#ackTimeoutMs,
        ...(this.#options.stream === undefined ? {} : { expect: { streamName: this.#options.stream } }),
      })
      // A duplicate ack means the stream already holds this id: it is published.
      if (!ack || typeof ack.seq !== 'number' || !ack.stream)
        return { kind: 'outage', error: 'The stream answered the publish without an acknowledgement.' }
      return undefined
    } catch (error) {
      return classifyPublishError(error, subject)
    }
  }

  async #connect(): Promise<NatsConnection> {
    this.#connection ??= connect({
      servers: this.#options.servers!,
      timeout: this.#connectTimeoutMs,
      maxReconnectAttempts: -1,
    }).catch((error: unknown) => {
      this.#connection = undefined
      throw outageError(
        `Connecting to NATS at ${String(this.#options.servers)} failed: ${String(error)}.`,
        error,
      )
    })
    return this.#connection
  }

  /** Closes the connection if the transport opened it; a connection you passed stays open. */
  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    const owned = this.#options.connection === undefined
    const connection = this.#connection
    this.#connection = undefined
    this.#js = undefined
    if (owned && connection) await connection.then((nc) => nc.close()).catch(() => {})
  }
}

/** The bytes NATS counts against `max_payload`: the payload and the encoded header block. */
function recordSize(record: ClaimedRecord, fields: readonly (readonly [string, string])[]): number {
  let size = record.payload.byteLength + 'NATS/1.0\r\n\r\n'.length
  for (const [name, value] of fields) size += encoder.encode(name).length + encoder.encode(value).length + 4
  // The Nats-Msg-Id header the client adds for the message id.
  return size + NATS_MSG_ID_HEADER.length + record.id.length + 4
}
