import { type BackoffOptions, backoffDelay, sleep } from './backoff.js'
import { isDatabaseOutage } from './database-outage.js'
import { describeError, ErrorCode, OutboxKitError } from './errors.js'
import { Emitter } from './events.js'
import { decodePayload, Headers, type Payload } from './message.js'
import { messageIdProblem } from './message-id.js'
import { backoffOptions, nonEmptyString, positiveInteger } from './options.js'
import { DEAD_REASON_HEADER, ORIGINAL_TOPIC_HEADER } from './relay.js'
import type { InboxStore } from './store.js'
import type { Transport } from './transport.js'
import { uuidv7 } from './uuid.js'

/** A message as a consumer handler receives it, whatever broker it came from. */
export interface InboundMessage {
  /** The message id: the dedupe key. */
  readonly id: string
  readonly topic: string
  /** The record key (outboxkit: the aggregate id), or null. */
  readonly key: string | null
  /** The event type (`outboxkit-type` header), when present. */
  readonly type: string | undefined
  /** The payload bytes as received. */
  readonly payload: Uint8Array
  /** The payload decoded: parsed JSON when the content type is `application/json`, else the bytes. */
  readonly value: Payload
  /** Headers as strings (the first value of a repeated header). */
  readonly headers: Readonly<Record<string, string>>
  /** Where it came from, for logs: e.g. `{ partition: 3, offset: '1042' }`. */
  readonly position?: Readonly<Record<string, string | number>>
}

/** The outcome of {@link IdempotentConsumer.process}. */
export type ProcessOutcome =
  /** The handler ran and its transaction committed. */
  | 'processed'
  /** The message was already processed by this consumer: the handler did not run. */
  | 'duplicate'
  /** The handler kept failing (or the message had no usable id): it went to the dead letter. */
  | 'dead'

/** Handles one message inside the transaction that records it as processed. */
export type MessageHandler<Tx> = (message: InboundMessage, tx: Tx) => Promise<void>

export interface ConsumerEvents {
  processed: { readonly message: InboundMessage; readonly attempts: number; readonly durationMs: number }
  duplicate: { readonly message: InboundMessage }
  failed: {
    readonly message: InboundMessage
    readonly attempt: number
    readonly error: unknown
    readonly retryInMs: number
  }
  /**
   * The database is unavailable (see `isDatabaseOutage`): the message waits `retryInMs` and is
   * tried again, without spending an attempt. `outages` counts the consecutive ones.
   */
  unavailable: {
    readonly message: InboundMessage
    readonly outages: number
    readonly error: unknown
    readonly retryInMs: number
  }
  deadLettered: { readonly message: InboundMessage; readonly reason: string }
}

/** What a broker runner drives: an {@link IdempotentConsumer}, or anything that behaves like one. */
export interface MessageProcessor {
  process(message: InboundMessage, signal?: AbortSignal): Promise<ProcessOutcome>
  deadLetter(message: InboundMessage, reason: string, signal?: AbortSignal): Promise<void>
}

/**
 * Telemetry around processing. `outboxkit/otel` provides one backed by OpenTelemetry: it runs
 * `process` (the handler included) inside a span whose parent is the context the message
 * carries, so the handler's own spans and any chained `outbox.add` continue the trace.
 */
export interface ConsumerInstrumentation {
  traceProcess(
    message: InboundMessage,
    consumerName: string,
    process: () => Promise<ProcessOutcome>,
  ): Promise<ProcessOutcome>
}

export interface IdempotentConsumerOptions<Tx> {
  /** The inbox table, e.g. `createKyselyInboxStore(...)`. Its transactions carry the handler's writes. */
  store: InboxStore<Tx>
  /** The consumer's name: messages are deduplicated per (name, message id). 1–255 characters. */
  name: string
  handler: MessageHandler<Tx>
  /**
   * Attempts before a failing message goes to the dead letter. Default 5. A database outage
   * (`isDatabaseOutage`) spends none: the message waits for the database instead.
   */
  maxAttempts?: number
  /** Backoff between attempts, and between tries while the database is unavailable. Default 200 ms ×2, max 10 s. */
  backoff?: BackoffOptions
  /**
   * Where failed messages go: a topic through a Transport, with the reason in the
   * `outboxkit-dead-reason` header. Without it, dead messages are only reported through the
   * `deadLettered` event (and recorded in the inbox so they are not retried forever).
   */
  deadLetter?: { topic: string; transport: Transport }
  /** Spans and metrics around processing, e.g. `otelConsumerInstrumentation()` from `outboxkit/otel`. */
  instrumentation?: ConsumerInstrumentation
}

const DEFAULT_CONSUMER_BACKOFF: Required<BackoffOptions> = { initialMs: 200, maxMs: 10_000, multiplier: 2 }

/**
 * Applies each message's side effects exactly once per consumer name: the message id is recorded
 * in the inbox in the same transaction as the handler's writes, so a redelivered message finds
 * its id and is skipped, and a failed handler leaves no trace. The handler can add outbox events
 * through the same transaction ("consume, update, emit" is atomic).
 *
 * @example
 * ```ts
 * const inventory = new IdempotentConsumer({ store: inboxStore, name: 'inventory',
 *   handler: async (message, trx) => {
 *     await trx.updateTable('stock').set(...).execute()
 *     await outbox.add(trx, { topic: 'stock.events', key: ..., type: 'StockReserved', payload: ... })
 *   } })
 * ```
 */
export class IdempotentConsumer<Tx> implements MessageProcessor {
  readonly name: string
  readonly #store: InboxStore<Tx>
  readonly #handler: MessageHandler<Tx>
  readonly #maxAttempts: number
  readonly #backoff: BackoffOptions
  readonly #deadLetter: { topic: string; transport: Transport } | undefined
  readonly #instrumentation: ConsumerInstrumentation | undefined
  readonly #events = new Emitter<ConsumerEvents>()

  constructor(options: IdempotentConsumerOptions<Tx>) {
    if (!options?.store || typeof options.store.markProcessed !== 'function') {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        'new IdempotentConsumer({ store, name, handler }) needs an InboxStore as `store`.',
      )
    }
    if (messageIdProblem(options.name) !== undefined) {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        'IdempotentConsumer needs a `name` of 1–255 characters without NUL or unpaired surrogates.',
      )
    }
    if (typeof options.handler !== 'function') {
      throw new OutboxKitError(ErrorCode.InvalidOptions, 'IdempotentConsumer needs a `handler` function.')
    }
    this.name = options.name
    this.#store = options.store
    this.#handler = options.handler
    this.#maxAttempts = positiveInteger('maxAttempts', options.maxAttempts ?? 5)
    this.#backoff = backoffOptions('backoff', options.backoff, DEFAULT_CONSUMER_BACKOFF)
    if (options.deadLetter !== undefined) {
      nonEmptyString('deadLetter.topic', options.deadLetter?.topic)
      if (typeof options.deadLetter.transport?.publish !== 'function') {
        throw new OutboxKitError(
          ErrorCode.InvalidOptions,
          'deadLetter.transport must be a Transport (e.g. createKafkaTransport(...)).',
          { details: { option: 'deadLetter.transport' } },
        )
      }
    }
    this.#deadLetter = options.deadLetter
    this.#instrumentation = options.instrumentation
  }

  /** Subscribes to an event. Returns a function that unsubscribes. */
  on<E extends keyof ConsumerEvents>(event: E, listener: (event: ConsumerEvents[E]) => void): () => void {
    return this.#events.on(event, listener)
  }

  /**
   * Processes one message: at most once in effect, retried with backoff while the handler
   * throws, dead-lettered after `maxAttempts`. A message whose id an inbox cannot store is
   * dead-lettered at once (`INVALID_MESSAGE_ID` or `MISSING_MESSAGE_ID`). While the database is
   * unavailable the message waits and is tried again, without spending attempts, until it
   * succeeds or `signal` aborts. Resolves once the outcome is durable, so a runner may then commit
   * the broker offset. Rejects when `signal` aborts (`CLOSED`, retriable) or the dead-letter
   * transport fails; the message must then be delivered again.
   */
  process(message: InboundMessage, signal?: AbortSignal): Promise<ProcessOutcome> {
    return this.#instrumentation
      ? this.#instrumentation.traceProcess(message, this.name, () => this.#process(message, signal))
      : this.#process(message, signal)
  }

  async #process(message: InboundMessage, signal?: AbortSignal): Promise<ProcessOutcome> {
    const unusable = unusableIdReason(message)
    if (unusable !== undefined) {
      await this.deadLetter(message, unusable, signal)
      return 'dead'
    }
    const started = Date.now()
    let attempt = 1
    let outages = 0
    for (;;) {
      try {
        const outcome = await this.#store.transaction(async (tx) => {
          if (!(await this.#store.markProcessed(tx, this.name, message.id))) return 'duplicate' as const
          await this.#handler(message, tx)
          if (!(await this.#store.confirmProcessed(tx, this.name, message.id))) {
            throw new OutboxKitError(
              ErrorCode.StoreFailed,
              `The transaction of message ${message.id} ended before the handler returned: the database rolled it back or aborted it (a deadlock or a failed statement the handler caught), so its writes are not all in it. Let database errors propagate out of the handler; the message is tried again.`,
              { source: this.#store.name, details: { operation: 'confirmProcessed' } },
            )
          }
          return 'processed' as const
        })
        if (outcome === 'duplicate') this.#events.emit('duplicate', { message })
        else this.#events.emit('processed', { message, attempts: attempt, durationMs: Date.now() - started })
        return outcome
      } catch (error) {
        if (isDatabaseOutage(error)) {
          outages++
          const retryInMs = backoffDelay(outages, this.#backoff)
          this.#events.emit('unavailable', { message, outages, error, retryInMs })
          await this.#pause(retryInMs, signal)
          continue
        }
        outages = 0
        if (attempt >= this.#maxAttempts) {
          await this.deadLetter(message, `${ErrorCode.HandlerFailed}: ${describeError(error)}`, signal)
          return 'dead'
        }
        const retryInMs = backoffDelay(attempt, this.#backoff)
        this.#events.emit('failed', { message, attempt, error, retryInMs })
        await this.#pause(retryInMs, signal)
        attempt++
      }
    }
  }

  async #pause(ms: number, signal: AbortSignal | undefined): Promise<void> {
    await sleep(ms, signal)
    if (signal?.aborted) {
      throw new OutboxKitError(ErrorCode.Closed, 'The consumer stopped while a message waited for a retry.', {
        retriable: true,
      })
    }
  }

  /**
   * Sends a message to the dead letter and records it in the inbox, so a redelivery does not run
   * the handler again. Also used by runners for records that cannot be processed at all (no
   * usable id: those are not recorded, as no inbox can store their id). While the database is
   * unavailable, recording waits and tries again (the letter is not sent twice) until `signal`
   * aborts.
   */
  async deadLetter(message: InboundMessage, reason: string, signal?: AbortSignal): Promise<void> {
    const storable = messageIdProblem(message.id) === undefined
    if (this.#deadLetter) {
      const { topic, transport } = this.#deadLetter
      const [outcome] = await transport.publish([
        {
          id: storable ? message.id : uuidv7(),
          topic,
          key: message.key ?? (storable ? message.id : ''),
          type: message.type ?? 'unknown',
          payload: message.payload,
          headers: {
            ...message.headers,
            [DEAD_REASON_HEADER]: reason.slice(0, 1000),
            [ORIGINAL_TOPIC_HEADER]: message.topic,
            'outboxkit-dead-consumer': this.name,
          },
          attempts: 1,
          createdAt: new Date(),
        },
      ])
      if (outcome?.status !== 'published') {
        throw new OutboxKitError(
          ErrorCode.TransportFailed,
          `Could not publish to the dead-letter topic ${topic}: ${outcome?.status === 'failed' ? outcome.error : 'no outcome'}`,
          { retriable: true },
        )
      }
    }
    for (let outages = 1; storable; outages++) {
      try {
        await this.#store.transaction((tx) => this.#store.markProcessed(tx, this.name, message.id))
        break
      } catch (error) {
        if (!isDatabaseOutage(error)) throw error
        const retryInMs = backoffDelay(outages, this.#backoff)
        this.#events.emit('unavailable', { message, outages, error, retryInMs })
        await this.#pause(retryInMs, signal)
      }
    }
    this.#events.emit('deadLettered', { message, reason })
  }
}

/**
 * The dead-letter reason (`MISSING_MESSAGE_ID` or `INVALID_MESSAGE_ID`) for a message whose id no
 * inbox can store, or undefined when the id is usable.
 */
export function unusableIdReason(message: InboundMessage): string | undefined {
  const problem = messageIdProblem(message.id)
  if (problem === undefined) return undefined
  const where = message.position
    ? ` at ${message.topic}/${Object.values(message.position).join('@')}`
    : ` from ${message.topic}`
  if (typeof message.id !== 'string' || message.id.length === 0) {
    return `${ErrorCode.MissingMessageId}: the record${where} has no message id, so it cannot be deduplicated.`
  }
  return `${ErrorCode.InvalidMessageId}: the message id of the record${where} cannot be stored in the inbox (${problem}); ids must be 1–255 characters without NUL or unpaired surrogates.`
}

/** Builds an {@link InboundMessage} from raw parts; decodes the payload by its content type. */
export function inboundMessage(parts: {
  id: string
  topic: string
  key: string | null
  payload: Uint8Array
  headers: Readonly<Record<string, string>>
  position?: Readonly<Record<string, string | number>>
}): InboundMessage {
  let value: Payload = parts.payload
  try {
    value = decodePayload(parts.payload, parts.headers[Headers.contentType])
  } catch {
    // Not valid JSON despite its content type: the handler gets the bytes.
  }
  return {
    id: parts.id,
    topic: parts.topic,
    key: parts.key,
    type: parts.headers[Headers.messageType],
    payload: parts.payload,
    value,
    headers: parts.headers,
    ...(parts.position ? { position: parts.position } : {}),
  }
}
