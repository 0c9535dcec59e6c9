import { ErrorCode, OutboxKitError } from './errors.js'
import {
  DEFAULT_MAX_HEADER_BYTES,
  DEFAULT_MAX_PAYLOAD_BYTES,
  type MessageLimits,
  type OutboxMessageInput,
  type OutboxRecord,
  type PayloadOf,
  toRecord,
} from './message.js'
import { positiveInteger } from './options.js'
import type { OutboxStore } from './store.js'

export { positiveInteger } from './options.js'

/**
 * Captures the caller's trace context when a message is added, as headers stored with the row.
 * `outboxkit/otel` provides one backed by `@opentelemetry/api`; without one, nothing is captured.
 */
export interface TraceContextCapture {
  /** Returns the W3C headers (`traceparent`, `tracestate`, `baggage`) of the active context. */
  capture(): Readonly<Record<string, string>>
}

export interface OutboxOptions<Tx> {
  /** Where rows are written, e.g. `createKyselyOutboxStore(...)` from `outboxkit/kysely`. */
  store: OutboxStore<Tx>
  /** Largest payload in bytes. Default 900 KiB ({@link DEFAULT_MAX_PAYLOAD_BYTES}). Keep it below the broker's `max.message.bytes`. */
  maxPayloadBytes?: number
  /** Largest total size of a message's headers in bytes. Default 64 KiB. */
  maxHeaderBytes?: number
  /** Trace-context capture; see `outboxkit/otel`. */
  tracing?: TraceContextCapture
}

/**
 * The writer. `add` joins the caller's transaction, so an event exists if and only if the
 * transaction that added it commits.
 *
 * @example
 * ```ts
 * await db.transaction().execute(async (trx) => {
 *   await trx.insertInto('orders').values(order).execute()
 *   await outbox.add(trx, { topic: 'order.events', key: order.id, type: 'OrderCreated', payload: order })
 * })
 * ```
 */
export class Outbox<Tx> {
  readonly store: OutboxStore<Tx>
  readonly #limits: MessageLimits
  readonly #tracing: TraceContextCapture | undefined

  constructor(options: OutboxOptions<Tx>) {
    if (!options || typeof options.store?.add !== 'function') {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        'new Outbox({ store }) needs an OutboxStore as `store`.',
      )
    }
    this.store = options.store
    this.#limits = {
      maxPayloadBytes: positiveInteger(
        'maxPayloadBytes',
        options.maxPayloadBytes ?? DEFAULT_MAX_PAYLOAD_BYTES,
      ),
      maxHeaderBytes: positiveInteger('maxHeaderBytes', options.maxHeaderBytes ?? DEFAULT_MAX_HEADER_BYTES),
    }
    this.#tracing = options.tracing
  }

  /**
   * Validates the message(s) and writes them inside `tx`. Returns the message id(s).
   *
   * Throws `INVALID_MESSAGE` or `PAYLOAD_TOO_LARGE` before writing anything, so letting the error
   * propagate rolls back the caller's transaction with its business rows.
   */
  add<P>(tx: Tx, message: OutboxMessageInput<P> & { readonly payload: PayloadOf<P> }): Promise<string>
  add<M extends readonly OutboxMessageInput<unknown>[]>(
    tx: Tx,
    messages: M & { readonly [I in keyof M]: OutboxMessageInput<PayloadOf<M[I]['payload']>> },
  ): Promise<string[]>
  async add(
    tx: Tx,
    input: OutboxMessageInput<unknown> | readonly OutboxMessageInput<unknown>[],
  ): Promise<string | string[]> {
    const many = Array.isArray(input)
    const inputs: readonly OutboxMessageInput<unknown>[] = many
      ? input
      : [input as OutboxMessageInput<unknown>]
    const records = this.prepare(inputs)
    if (records.length > 0) await this.store.add(tx, records)
    const ids = records.map((r) => r.id)
    return many ? ids : ids[0]!
  }

  /** Validates messages and captures the trace context, without writing. */
  prepare(inputs: readonly OutboxMessageInput<unknown>[]): OutboxRecord[] {
    const trace = this.#tracing?.capture() ?? {}
    const records = inputs.map((message, index) => {
      try {
        return toRecord(message, this.#limits, trace)
      } catch (error) {
        if (inputs.length > 1 && error instanceof OutboxKitError) {
          error.message = `${error.message} (message ${index} of ${inputs.length})`
        }
        throw error
      }
    })
    const seen = new Set<string>()
    for (const record of records) {
      if (seen.has(record.id)) {
        throw new OutboxKitError(
          ErrorCode.InvalidMessage,
          `Invalid message id: ${record.id} appears twice in one add(). Give each message its own id, or leave id out to get a fresh UUIDv7.`,
          { details: { field: 'id', id: record.id } },
        )
      }
      seen.add(record.id)
    }
    return records
  }
}
