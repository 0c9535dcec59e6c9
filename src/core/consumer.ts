import { type BackoffOptions, backoffDelay, sleep } from './backoff.js'
import { isDatabaseOutage } from './database-outage.js'
import { describeError, ErrorCode, isOutboxKitError, OutboxKitError } from './errors.js'
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
  /**
   * The handler kept failing, or refused the message (`INVALID_MESSAGE`), or the message had no
   * usable id: it went to the dead letter.
   */
  | 'dead'

/** Handles one message inside the transaction that records it as processed. */
export type MessageHandler<Tx> = (message: InboundMessage, tx: Tx) => Promise<void>

/**
 * Handles the new messages of a batch, in order, inside the one transaction that records them
 * as processed: e.g. one multi-row INSERT for all of them. Duplicates are already left out.
 */
export type BatchMessageHandler<Tx> = (messages: readonly InboundMessage[], tx: Tx) => Promise<void>

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

/** Options of {@link IdempotentConsumer.processBatch}. */
export interface ProcessBatchOptions {
  /** Stops waiting (retries, a database outage): the call rejects with `CLOSED`, retriable. */
  readonly signal?: AbortSignal
  /**
   * Called each time a longer prefix of the batch is durable: the outcomes of `messages[0]` to
   * `messages[count - 1]` are committed (or dead-lettered), so a runner may resolve their offsets
   * even if the call later rejects.
   */
  readonly onDurable?: (count: number) => void
}

/** What a broker runner drives: an {@link IdempotentConsumer}, or anything that behaves like one. */
export interface MessageProcessor {
  process(message: InboundMessage, signal?: AbortSignal): Promise<ProcessOutcome>
  deadLetter(message: InboundMessage, reason: string, signal?: AbortSignal): Promise<void>
  /** Processes many messages of one partition, in order; needed by a runner in batch mode. */
  processBatch?(messages: readonly InboundMessage[], options?: ProcessBatchOptions): Promise<ProcessOutcome[]>
}

/** How one transaction over a batch ended. */
type BatchAttempt =
  | { readonly kind: 'committed'; readonly fresh: readonly boolean[] }
  /** The handler of `messages[index]` threw: nothing of the batch committed. */
  | { readonly kind: 'failed'; readonly index: number }
  /** The batch handler threw, for one message or another: nothing of the batch committed. */
  | { readonly kind: 'failedBatch' }
  /** It failed in a way no single message explains: each message goes through `process` alone. */
  | { readonly kind: 'oneByOne' }

/** `failedAt` while the batch handler runs: the failure is the batch's, not one message's. */
const BATCH_HANDLER = -1

/** Thrown inside a batch transaction to roll it back when `confirmProcessed` says it already ended. */
const UNCONFIRMED = Symbol('unconfirmed')

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
  /**
   * Runs a `batchHandler` call over `messages` (the new messages of one batch, in order), e.g.
   * in one span linked to the context each message carries. Optional: without it the call runs
   * in the caller's context.
   */
  traceBatch?(
    messages: readonly InboundMessage[],
    consumerName: string,
    process: () => Promise<void>,
  ): Promise<void>
}

export interface IdempotentConsumerOptions<Tx> {
  /** The inbox table, e.g. `createKyselyInboxStore(...)`. Its transactions carry the handler's writes. */
  store: InboxStore<Tx>
  /** The consumer's name: messages are deduplicated per (name, message id). 1–255 characters. */
  name: string
  /**
   * Handles one message. Needed unless `batchHandler` is given; in `processBatch` it runs once
   * per new message, in order, in the batch's transaction.
   */
  handler?: MessageHandler<Tx>
  /**
   * Handles the new messages of a batch in one call (`processBatch`), e.g. with one multi-row
   * INSERT. A message processed alone (`process`, or a batch split after a failure) goes to
   * `handler` when given, else to `batchHandler` as a batch of one.
   */
  batchHandler?: BatchMessageHandler<Tx>
  /**
   * Attempts before a failing message goes to the dead letter. Default 5. A database outage
   * (`isDatabaseOutage`) spends none: the message waits for the database instead. A handler that
   * throws `INVALID_MESSAGE` (the message itself is wrong) is dead-lettered at its first failure.
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
  readonly #batchHandler: BatchMessageHandler<Tx> | undefined
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
    const { handler, batchHandler } = options
    if (
      (handler !== undefined && typeof handler !== 'function') ||
      (batchHandler !== undefined && typeof batchHandler !== 'function') ||
      (handler === undefined && batchHandler === undefined)
    ) {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        'IdempotentConsumer needs a `handler` function, a `batchHandler` function, or both.',
      )
    }
    this.name = options.name
    this.#store = options.store
    this.#batchHandler = batchHandler
    this.#handler = handler ?? ((message, tx) => batchHandler!([message], tx))
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
   * throws, dead-lettered after `maxAttempts` (at once when it throws `INVALID_MESSAGE`, e.g. a
   * payload that fails an event catalogue's schema). A message whose id an inbox cannot store is
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
        // The message itself is wrong (its payload failed its schema, its type has no handler):
        // trying again cannot help, so it goes to the dead letter at once.
        if (isOutboxKitError(error, ErrorCode.InvalidMessage)) {
          await this.deadLetter(message, `${ErrorCode.InvalidMessage}: ${describeError(error)}`, signal)
          return 'dead'
        }
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

  /**
   * Processes the messages of one partition fetch, in order, in as few transactions as it can:
   * the inbox records the whole batch in one statement (`markProcessedMany`), then each new
   * message's handler runs in the same transaction, in order, and duplicates are skipped. The
   * batch commits once, after its last handler.
   *
   * When a handler throws, that transaction rolls back as a whole and the batch is split: the
   * messages before the failing one are processed again as a batch (their writes were rolled
   * back, so their effects still apply once), the failing one goes through {@link process} alone
   * with its retries and dead letter, then the rest of the batch goes on as a batch. A database
   * outage retries the whole batch without spending attempts. A batch whose transaction the
   * database ended behind the consumer's back (see `confirmProcessed`), or that failed outside
   * any handler, is processed one message at a time. Messages with ids no inbox can store are
   * dead-lettered in their place. `maxAttempts` counts the attempts of a message alone.
   *
   * With a `batchHandler`, the batch's new messages go to it in one call. When it throws, which
   * message failed is unknown, so the batch is halved and each half processed as a batch (in
   * order), until the failing message is alone and goes through {@link process}.
   *
   * Resolves with one outcome per message, in order, once every outcome is durable;
   * `options.onDurable` reports durable prefixes on the way. Rejects like {@link process}.
   */
  async processBatch(
    messages: readonly InboundMessage[],
    options: ProcessBatchOptions = {},
  ): Promise<ProcessOutcome[]> {
    const outcomes: ProcessOutcome[] = []
    const { signal, onDurable } = options
    let start = 0
    for (let i = 0; i <= messages.length; i++) {
      if (i < messages.length && unusableIdReason(messages[i]!) === undefined) continue
      if (i > start) await this.#batch(messages, start, i, outcomes, signal, onDurable)
      if (i < messages.length) {
        outcomes[i] = await this.process(messages[i]!, signal)
        onDurable?.(i + 1)
      }
      start = i + 1
    }
    return outcomes
  }

  /** Processes `messages[from]` to `messages[to - 1]` (all with usable ids) into `outcomes`. */
  async #batch(
    messages: readonly InboundMessage[],
    from: number,
    to: number,
    outcomes: ProcessOutcome[],
    signal: AbortSignal | undefined,
    onDurable: ((count: number) => void) | undefined,
  ): Promise<void> {
    if (to - from === 1) {
      // A batch of one is a message alone: the single-message path, with its retries.
      outcomes[from] = await this.process(messages[from]!, signal)
      onDurable?.(to)
      return
    }
    const attempt = await this.#batchTransaction(messages.slice(from, to), signal)
    if (attempt.kind === 'committed') {
      attempt.fresh.forEach((fresh, k) => {
        outcomes[from + k] = fresh ? 'processed' : 'duplicate'
      })
      onDurable?.(to)
      return
    }
    if (attempt.kind === 'failedBatch') {
      // Which message failed is unknown: halve the batch until the failing one is alone.
      const middle = from + Math.ceil((to - from) / 2)
      await this.#batch(messages, from, middle, outcomes, signal, onDurable)
      await this.#batch(messages, middle, to, outcomes, signal, onDurable)
      return
    }
    if (attempt.kind === 'oneByOne') {
      for (let i = from; i < to; i++) {
        outcomes[i] = await this.process(messages[i]!, signal)
        onDurable?.(i + 1)
      }
      return
    }
    const failing = from + attempt.index
    if (failing > from) await this.#batch(messages, from, failing, outcomes, signal, onDurable)
    outcomes[failing] = await this.process(messages[failing]!, signal)
    onDurable?.(failing + 1)
    if (failing + 1 < to) await this.#batch(messages, failing + 1, to, outcomes, signal, onDurable)
  }

  /** One transaction over `batch`, tried again while the database is unavailable. */
  async #batchTransaction(
    batch: readonly InboundMessage[],
    signal: AbortSignal | undefined,
  ): Promise<BatchAttempt> {
    const started = Date.now()
    for (let outages = 1; ; outages++) {
      /** Which handler call was running: a message's index, or BATCH_HANDLER. */
      let failedAt: number | undefined
      try {
        const fresh = await this.#store.transaction(async (tx) => {
          const marked = await this.#markMany(tx, batch)
          const firstNew = marked.indexOf(true)
          if (this.#batchHandler) {
            const fresh = batch.filter((_, k) => marked[k])
            if (fresh.length > 0) {
              failedAt = BATCH_HANDLER
              await this.#runBatchHandler(this.#batchHandler, fresh, tx)
            }
          } else {
            for (let k = 0; k < batch.length; k++) {
              if (!marked[k]) continue
              failedAt = k
              await this.#runHandler(batch[k]!, tx)
            }
          }
          failedAt = undefined
          if (firstNew !== -1 && !(await this.#store.confirmProcessed(tx, this.name, batch[firstNew]!.id))) {
            throw UNCONFIRMED
          }
          return marked
        })
        const durationMs = Date.now() - started
        fresh.forEach((isNew, k) => {
          const message = batch[k]!
          if (isNew) this.#events.emit('processed', { message, attempts: 1, durationMs })
          else this.#events.emit('duplicate', { message })
        })
        return { kind: 'committed', fresh }
      } catch (error) {
        if (error === UNCONFIRMED) return { kind: 'oneByOne' }
        if (isDatabaseOutage(error)) {
          const retryInMs = backoffDelay(outages, this.#backoff)
          const waiting = failedAt === undefined || failedAt === BATCH_HANDLER ? 0 : failedAt
          this.#events.emit('unavailable', { message: batch[waiting]!, outages, error, retryInMs })
          await this.#pause(retryInMs, signal)
          continue
        }
        if (failedAt === BATCH_HANDLER) return { kind: 'failedBatch' }
        return failedAt === undefined ? { kind: 'oneByOne' } : { kind: 'failed', index: failedAt }
      }
    }
  }

  #markMany(tx: Tx, batch: readonly InboundMessage[]): Promise<boolean[]> {
    const ids = batch.map((message) => message.id)
    if (this.#store.markProcessedMany) return this.#store.markProcessedMany(tx, this.name, ids)
    return (async () => {
      const marked: boolean[] = []
      for (const id of ids) marked.push(await this.#store.markProcessed(tx, this.name, id))
      return marked
    })()
  }

  /** The batch handler inside the batch's transaction, traced as a batch when instrumented. */
  async #runBatchHandler(
    handler: BatchMessageHandler<Tx>,
    messages: readonly InboundMessage[],
    tx: Tx,
  ): Promise<void> {
    const traceBatch = this.#instrumentation?.traceBatch
    if (!traceBatch) return handler(messages, tx)
    await traceBatch.call(this.#instrumentation, messages, this.name, () => handler(messages, tx))
  }

  /** The handler inside the batch's transaction, in the message's own span when instrumented. */
  async #runHandler(message: InboundMessage, tx: Tx): Promise<void> {
    if (!this.#instrumentation) return this.#handler(message, tx)
    await this.#instrumentation.traceProcess(message, this.name, async () => {
      await this.#handler(message, tx)
      return 'processed'
    })
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
