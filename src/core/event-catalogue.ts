import type { InboundMessage, MessageHandler } from './consumer.js'
import { ErrorCode, OutboxKitError } from './errors.js'
import { MAX_TYPE_LENGTH, type OutboxMessageInput, type Payload, type PayloadOf } from './message.js'
import type { Outbox } from './outbox.js'
import type { StandardSchemaV1 } from './standard-schema.js'

/** One event type of a catalogue: where it is published and what its payload looks like. */
export interface EventDefinition<Schema extends StandardSchemaV1 = StandardSchemaV1> {
  /** The topic every event of this type is added to. */
  readonly topic: string
  /** A Standard Schema (zod, valibot, arktype, ...) for the payload. */
  readonly schema: Schema
}

/** Event definitions by event type, the argument of {@link defineEvents}. */
export type EventDefinitions = { readonly [type: string]: EventDefinition }

/** The event type names of a catalogue. */
export type EventType<D extends EventDefinitions> = keyof D & string

/** What `add` takes for an event type: its schema's input type. */
export type EventInput<D extends EventDefinitions, K extends EventType<D>> = StandardSchemaV1.InferInput<
  D[K]['schema']
>

/** What a handler receives for an event type: its schema's output type. */
export type EventOutput<D extends EventDefinitions, K extends EventType<D>> = StandardSchemaV1.InferOutput<
  D[K]['schema']
>

/** The rest of a typed event's message: everything but topic, type and payload. */
export interface AddEventOptions {
  /** The aggregate id: the record key. 1–255 characters. */
  readonly key: string
  /** Extra headers, as for `outbox.add`. */
  readonly headers?: Readonly<Record<string, string>>
  /** A caller-chosen message id (a lower-case UUID). Defaults to a fresh UUIDv7. */
  readonly id?: string
}

/** A consumed message whose type is `K` and whose payload passed that type's schema. */
export interface TypedInboundMessage<K extends string, V> extends Omit<InboundMessage, 'type' | 'value'> {
  readonly type: K
  /** The payload as the schema returned it (parsed JSON, then validated). */
  readonly value: V
}

/** Any event of a catalogue, as a handler receives it: a union discriminated by `type`. */
export type CatalogueEvent<D extends EventDefinitions, K extends EventType<D> = EventType<D>> = {
  [T in K]: TypedInboundMessage<T, EventOutput<D, T>>
}[K]

/** Handlers by event type; a type left out follows {@link EventHandlersOptions.unknown}. */
export type EventHandlers<D extends EventDefinitions, Tx> = {
  readonly [K in EventType<D>]?: (event: CatalogueEvent<D, K>, tx: Tx) => Promise<void>
}

export interface EventHandlersOptions {
  /**
   * What happens to a message whose type has no handler here (a type outside the catalogue, a
   * catalogue type left out of the handlers, or no `outboxkit-type` header):
   * - `'dead-letter'` (default): the handler throws `INVALID_MESSAGE` (`details.field: 'type'`),
   *   which the consumer sends to the dead letter at once;
   * - `'skip'`: the message is recorded as processed without running anything.
   */
  readonly unknown?: 'dead-letter' | 'skip'
}

/** An {@link Outbox} whose `add` knows the catalogue: the payload type follows from the event type. */
export interface TypedOutbox<D extends EventDefinitions, Tx> {
  readonly outbox: Outbox<Tx>
  readonly catalogue: EventCatalogue<D>
  /**
   * Validates `payload` with the schema of `type`, then adds the event to its topic inside `tx`.
   * Throws `INVALID_MESSAGE` (the validator's issues in `details.issues`) before writing anything.
   */
  add<K extends EventType<D>>(
    tx: Tx,
    type: K,
    payload: EventInput<D, K>,
    options: AddEventOptions,
  ): Promise<string>
}

/**
 * A set of event types with their topics and payload schemas. Made by {@link defineEvents}; gives
 * typed writes (`catalogue.outbox(outbox).add(...)`) and typed handlers (`catalogue.handlers(...)`).
 */
export class EventCatalogue<D extends EventDefinitions> {
  readonly definitions: D

  constructor(definitions: D) {
    checkDefinitions(definitions)
    this.definitions = definitions
  }

  /** The event types, in declaration order. */
  get types(): EventType<D>[] {
    return Object.keys(this.definitions) as EventType<D>[]
  }

  /**
   * Validates `value` with the schema of `type` and returns the schema's output. Throws
   * `INVALID_MESSAGE` with the validator's issues in `details.issues` when it does not match.
   */
  async parse<K extends EventType<D>>(type: K, value: unknown): Promise<EventOutput<D, K>> {
    const schema = this.#definition(type).schema
    const result = await schema['~standard'].validate(value)
    if (result.issues) throw payloadError(type, result.issues)
    return result.value as EventOutput<D, K>
  }

  /**
   * Builds the validated `outbox.add` input of one event: its topic and type from the catalogue,
   * its payload the schema's output. Useful to add several events in one call.
   *
   * @example
   * ```ts
   * await outbox.add(trx, await Promise.all([
   *   orderEvents.message('OrderCreated', order, { key: order.id }),
   *   orderEvents.message('OrderPaid', payment, { key: order.id }),
   * ]))
   * ```
   */
  async message<K extends EventType<D>>(
    type: K,
    payload: EventInput<D, K>,
    options: AddEventOptions,
  ): Promise<OutboxMessageInput> {
    const value = await this.parse(type, payload)
    if (typeof options !== 'object' || options === null) {
      throw new OutboxKitError(
        ErrorCode.InvalidMessage,
        `Invalid message: a "${type}" event needs options with its key, e.g. { key: order.id }.`,
        { details: { field: 'key', type } },
      )
    }
    const { key, headers, id } = options
    return {
      topic: this.#definition(type).topic,
      key,
      type,
      // The outbox checks at run time that the schema's output is JSON it can store as given.
      payload: value as Payload,
      ...(headers === undefined ? {} : { headers }),
      ...(id === undefined ? {} : { id }),
    }
  }

  /**
   * Binds the catalogue to an outbox, for typed writes.
   *
   * @example
   * ```ts
   * const orders = orderEvents.outbox(outbox)
   * await db.transaction().execute(async (trx) => {
   *   await trx.insertInto('orders').values(row).execute()
   *   await orders.add(trx, 'OrderCreated', { id: row.id, total: row.total }, { key: row.id })
   * })
   * ```
   */
  outbox<Tx>(outbox: Outbox<Tx>): TypedOutbox<D, Tx> {
    if (typeof outbox?.add !== 'function') {
      throw new OutboxKitError(ErrorCode.InvalidOptions, 'catalogue.outbox(outbox) needs an Outbox.', {
        details: { option: 'outbox' },
      })
    }
    return {
      outbox,
      catalogue: this,
      add: async (tx, type, payload, options) => outbox.add(tx, await this.message(type, payload, options)),
    }
  }

  /**
   * Builds a consumer handler that dispatches on the `outboxkit-type` header. Each payload is
   * validated with its type's schema before its handler runs; one that fails is a poison message:
   * the handler throws `INVALID_MESSAGE` (issues in `details.issues`), which an
   * `IdempotentConsumer` sends to the dead letter at once instead of retrying.
   *
   * @example
   * ```ts
   * const consumer = new IdempotentConsumer({ store: inboxStore, name: 'billing',
   *   handler: orderEvents.handlers<Transaction<DB>>({
   *     OrderCreated: async (event, trx) => { await charge(trx, event.value.total) },
   *   }, { unknown: 'skip' }) })
   * ```
   */
  handlers<Tx>(handlers: EventHandlers<D, Tx>, options: EventHandlersOptions = {}): MessageHandler<Tx> {
    const unknown = options.unknown ?? 'dead-letter'
    if (unknown !== 'dead-letter' && unknown !== 'skip') {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        `handlers(..., { unknown }) takes 'dead-letter' or 'skip', not ${JSON.stringify(unknown)}.`,
        { details: { option: 'unknown' } },
      )
    }
    if (typeof handlers !== 'object' || handlers === null) {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        'handlers() needs an object of handlers by event type.',
        {
          details: { option: 'handlers' },
        },
      )
    }
    const table = new Map<string, (event: InboundMessage, tx: Tx) => Promise<void>>()
    for (const [type, handler] of Object.entries(handlers)) {
      if (handler === undefined) continue
      if (!Object.hasOwn(this.definitions, type)) {
        throw new OutboxKitError(
          ErrorCode.InvalidOptions,
          `handlers() got a handler for "${type}", which the catalogue does not define (it defines ${this.types.map((t) => `"${t}"`).join(', ')}).`,
          { details: { option: 'handlers', type } },
        )
      }
      if (typeof handler !== 'function') {
        throw new OutboxKitError(ErrorCode.InvalidOptions, `The handler for "${type}" is not a function.`, {
          details: { option: 'handlers', type },
        })
      }
      table.set(type, handler as (event: InboundMessage, tx: Tx) => Promise<void>)
    }
    return async (message, tx) => {
      const type = message.type
      const handler = type === undefined ? undefined : table.get(type)
      if (type === undefined || handler === undefined) {
        if (unknown === 'skip') return
        throw new OutboxKitError(
          ErrorCode.InvalidMessage,
          type === undefined
            ? `Invalid message type: message ${message.id} from ${message.topic} has no outboxkit-type header, so no handler can take it. Pass { unknown: 'skip' } to record such messages as processed instead.`
            : `Invalid message type: no handler for "${type}" (message ${message.id} from ${message.topic}). Add a handler for it, or pass { unknown: 'skip' } to record such messages as processed.`,
          { details: { field: 'type', type } },
        )
      }
      const value = await this.parse(type as EventType<D>, message.value)
      await handler({ ...message, value } as unknown as InboundMessage, tx)
    }
  }

  #definition(type: string): EventDefinition {
    if (typeof type !== 'string' || !Object.hasOwn(this.definitions, type)) {
      throw new OutboxKitError(
        ErrorCode.InvalidMessage,
        `Invalid message type: ${JSON.stringify(type)} is not in the event catalogue (it defines ${this.types.map((t) => `"${t}"`).join(', ')}).`,
        { details: { field: 'type', type } },
      )
    }
    return this.definitions[type]!
  }
}

/**
 * Declares event types with their topic and payload schema. Any Standard Schema validator works:
 * zod 3.24+, valibot 1+, arktype 2+, ...
 *
 * @example
 * ```ts
 * const orderEvents = defineEvents({
 *   OrderCreated: { topic: 'orders', schema: z.object({ id: z.string(), total: z.number() }) },
 *   OrderCancelled: { topic: 'orders', schema: z.object({ id: z.string(), reason: z.string() }) },
 * })
 * ```
 */
export function defineEvents<const D extends EventDefinitions>(
  definitions: D & StorableOutputs<D>,
): EventCatalogue<D> {
  return new EventCatalogue<D>(definitions)
}

/**
 * What `defineEvents` asks of each schema at compile time: its output is stored, so it must be
 * JSON (no `Date`, `bigint`, ...: {@link PayloadOf}), and a consumer validates it again with the
 * same schema, so the output must also be a valid input (no transform that changes the type).
 */
export type StorableOutputs<D extends EventDefinitions> = {
  readonly [K in keyof D]: {
    readonly schema: StandardSchemaV1<unknown, PayloadOf<EventOutputOf<D[K]>> & EventInputOf<D[K]>>
  }
}

type EventOutputOf<E extends EventDefinition> = StandardSchemaV1.InferOutput<E['schema']>
type EventInputOf<E extends EventDefinition> = StandardSchemaV1.InferInput<E['schema']>

function checkDefinitions(definitions: EventDefinitions): void {
  if (typeof definitions !== 'object' || definitions === null || Array.isArray(definitions)) {
    throw new OutboxKitError(
      ErrorCode.InvalidOptions,
      'defineEvents() needs an object of event definitions, e.g. { OrderCreated: { topic, schema } }.',
      { details: { option: 'definitions' } },
    )
  }
  const types = Object.keys(definitions)
  if (types.length === 0) {
    throw new OutboxKitError(ErrorCode.InvalidOptions, 'defineEvents() needs at least one event type.', {
      details: { option: 'definitions' },
    })
  }
  for (const type of types) {
    const where = { details: { option: 'definitions', type } }
    if (
      type.length === 0 ||
      type.length > MAX_TYPE_LENGTH ||
      !type.isWellFormed() ||
      type.includes('\u0000')
    ) {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        `The event type "${type.slice(0, 40)}" cannot be stored: types are 1–${MAX_TYPE_LENGTH} characters without NUL or unpaired surrogates.`,
        where,
      )
    }
    const definition = definitions[type]
    if (typeof definition?.topic !== 'string' || definition.topic.length === 0) {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        `The event type "${type}" needs a \`topic\` string.`,
        where,
      )
    }
    const standard = (definition.schema as Partial<StandardSchemaV1> | undefined)?.['~standard']
    if (standard?.version !== 1 || typeof standard.validate !== 'function') {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        `The schema of "${type}" is not a Standard Schema (v1): use a validator that implements it, such as zod 3.24+, valibot 1+ or arktype 2+.`,
        where,
      )
    }
  }
}

/** The `INVALID_MESSAGE` for a payload its schema refused, with a short summary of the issues. */
function payloadError(type: string, issues: ReadonlyArray<StandardSchemaV1.Issue>): OutboxKitError {
  const shown = issues
    .slice(0, 3)
    .map((issue) => {
      const path = formatPath(issue.path)
      return path === '' ? issue.message : `${path}: ${issue.message}`
    })
    .join('; ')
  const more = issues.length > 3 ? ` (and ${issues.length - 3} more)` : ''
  return new OutboxKitError(
    ErrorCode.InvalidMessage,
    `Invalid message payload: the "${type}" payload does not match its schema: ${shown}${more}. details.issues has every issue.`,
    { details: { field: 'payload', type, issues } },
  )
}

function formatPath(path: StandardSchemaV1.Issue['path']): string {
  if (!path || path.length === 0) return ''
  let text = '$'
  for (const segment of path) {
    const key = typeof segment === 'object' && segment !== null ? segment.key : segment
    text += typeof key === 'number' ? `[${key}]` : `.${String(key)}`
  }
  return text
}
