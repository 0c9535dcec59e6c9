/**
 * `drain`: "write → relay → handler" in a unit test, without a broker. The relay runs until the
 * outbox has nothing ready, and what the memory transport received goes to the consumers, again
 * and again while handlers write new events, until nothing moves.
 */
import type { DeliveredRecord } from '../adapters/memory/memory-transport.js'
import { inboundMessage, type MessageProcessor, type ProcessOutcome } from '../core/consumer.js'
import { ErrorCode, OutboxKitError } from '../core/errors.js'
import { Headers } from '../core/message.js'
import { positiveInteger } from '../core/options.js'
import { Relay, type RelayOptions } from '../core/relay.js'
import type { OutboxStore } from '../core/store.js'
import type { Transport } from '../core/transport.js'

/** A consumer and, optionally, the topics it reads (default: every topic). */
export interface DrainConsumer {
  readonly consumer: MessageProcessor
  readonly topics?: readonly string[]
}

export interface DrainOptions<Tx> {
  /** The outbox store the application writes to (a `MemoryOutboxStore`, or any other). */
  store: OutboxStore<Tx>
  /** A `MemoryTransport`: the relay publishes to it, and `drain` reads what it received. */
  transport: Transport & { readonly delivered: readonly DeliveredRecord[] }
  /**
   * Consumers fed with every record delivered since the last `drain` on this transport, in the order
   * they were published: an `IdempotentConsumer`, or one with the topics it reads.
   */
  consumers?: readonly (MessageProcessor | DrainConsumer)[]
  /** Relay settings (e.g. `maxAttempts`, `deadLetter`); `logger` defaults to false here. */
  relay?: Omit<RelayOptions<Tx>, 'store' | 'transport'>
  /**
   * Most rounds (relay until idle, then feed the consumers) before giving up with `INVALID_OPTIONS`:
   * handlers that keep writing events for each other never let the outbox empty. Default 100.
   */
  maxRounds?: number
}

/** What a {@link drain} did. */
export interface DrainResult {
  /** Records the relay published, in order (also those no consumer reads). */
  readonly published: readonly DeliveredRecord[]
  /** Per consumer (in the order given): the outcome of each record fed to it, in order. */
  readonly outcomes: readonly (readonly { readonly id: string; readonly outcome: ProcessOutcome }[])[]
  /**
   * Rows still pending afterwards: records that failed and wait for a retry (their backoff runs
   * on the store's clock), or rows another relay holds. 0 when everything went out.
   */
  readonly pending: number
  /** Rows dead in the outbox afterwards (given up on by the relay). */
  readonly dead: number
}

/** How many records of each transport earlier drains fed already. */
const fed = new WeakMap<object, number>()

/**
 * Runs the relay until the outbox has nothing ready, feeds the consumers what the transport
 * received, and repeats while that made handlers write new events.
 *
 * @example
 * ```ts
 * const db = new MemoryDatabase()
 * const store = new MemoryOutboxStore(db)
 * const transport = new MemoryTransport()
 * const outbox = new Outbox({ store })
 * const seen: string[] = []
 * const billing = new IdempotentConsumer({
 *   store: new MemoryInboxStore(db),
 *   name: 'billing',
 *   handler: async (message) => {
 *     seen.push(message.id)
 *   },
 * })
 * await store.transaction((tx) => outbox.add(tx, { topic: 'orders', key: 'o-1', type: 'OrderPlaced', payload: {} }))
 * const result = await drain({ store, transport, consumers: [billing] })
 * // result.outcomes[0] is [{ id, outcome: 'processed' }]
 * ```
 */
export async function drain<Tx>(options: DrainOptions<Tx>): Promise<DrainResult> {
  const { store, transport } = options
  if (!Array.isArray(transport?.delivered)) {
    throw new OutboxKitError(
      ErrorCode.InvalidOptions,
      'drain({ transport }) needs a transport that keeps what it received in `delivered`: use new MemoryTransport() from outboxkit/memory.',
      { details: { option: 'transport' } },
    )
  }
  const maxRounds = positiveInteger('maxRounds', options.maxRounds ?? 100)
  const consumers: DrainConsumer[] = (options.consumers ?? []).map((c) =>
    'consumer' in c ? c : { consumer: c },
  )
  const relay = new Relay({ logger: false, ...options.relay, store, transport })
  const published: DeliveredRecord[] = []
  const outcomes = consumers.map(() => [] as { id: string; outcome: ProcessOutcome }[])
  for (let round = 0; ; round++) {
    if (round >= maxRounds) {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        `drain: the outbox still had records after ${maxRounds} rounds; handlers keep writing new events. Raise maxRounds, or check for handlers that answer each other forever.`,
        { details: { option: 'maxRounds' } },
      )
    }
    while ((await relay.runOnce()) > 0) {}
    const from = fed.get(transport) ?? 0
    const fresh = transport.delivered.slice(from)
    fed.set(transport, transport.delivered.length)
    if (fresh.length === 0) break
    published.push(...fresh)
    for (const record of fresh) {
      const message = inboundMessage({
        id: record.id,
        topic: record.topic,
        key: record.key,
        payload: record.payload,
        // As a broker delivers it: the stored headers plus the id and type the relay adds.
        headers: { ...record.headers, [Headers.messageId]: record.id, [Headers.messageType]: record.type },
      })
      for (const [i, { consumer, topics }] of consumers.entries()) {
        if (topics && !topics.includes(record.topic)) continue
        outcomes[i]!.push({ id: record.id, outcome: await consumer.process(message) })
      }
    }
  }
  const stats = await store.stats()
  return { published, outcomes, pending: stats.pending, dead: stats.dead }
}
