import { ErrorCode, OutboxKitError } from './errors.js'
import { isUuid, uuidv7 } from './uuid.js'

/** Any value `JSON.stringify` turns into the same value when parsed back. */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue }

/** A message payload: a JSON value (stored as UTF-8 JSON) or raw bytes (stored as they are). */
export type Payload = JsonValue | Uint8Array

/** Values `JSON.stringify` drops or turns into something else. */
type NotJson =
  | undefined
  | bigint
  | symbol
  | ((...args: never[]) => unknown)
  | Date
  | RegExp
  | Map<unknown, unknown>
  | Set<unknown>
  | WeakMap<object, unknown>
  | WeakSet<object>
  | Promise<unknown>
  | ArrayBufferView
  | ArrayBuffer

/**
 * `T` itself when it is JSON, else `T` with `never` in place of each part JSON cannot represent
 * (a `Date`, a function, a `bigint`, `undefined`, ...), so that passing a `T` fails to compile
 * at that part. Unlike {@link JsonValue} it accepts interfaces, which have no index signature.
 * Optional properties are allowed; an explicit `undefined` in one is still refused at run time.
 */
export type JsonCompatible<T> = T extends JsonValue
  ? T
  : T extends NotJson
    ? never
    : T extends readonly unknown[]
      ? { [I in keyof T]: JsonCompatible<T[I]> }
      : T extends object
        ? { [K in keyof T]: JsonCompatible<T[K]> }
        : never

/** What `outbox.add` accepts as the payload of type `T`: bytes, or `T` when it is JSON. */
export type PayloadOf<T> = T extends Uint8Array ? T : JsonCompatible<T>

/**
 * What a caller passes to `outbox.add`. `P` is the payload's type: `outbox.add` checks at compile
 * time that it is JSON or bytes ({@link PayloadOf}), and `toRecord` checks the value at run time.
 */
export interface OutboxMessageInput<P = Payload> {
  /** The Kafka topic (or the transport's destination). 1–249 characters of `[a-zA-Z0-9._-]`. */
  topic: string
  /**
   * The aggregate id. It becomes the Kafka record key, so all events of one key land on one
   * partition, in order. 1–255 characters.
   */
  key: string
  /** The event type, e.g. `OrderCreated`. 1–255 characters. */
  type: string
  /**
   * A JSON value (plain objects, arrays, strings, finite numbers, booleans, null; interfaces are
   * fine), or bytes for a payload you encode yourself (Avro, Protobuf, ...).
   */
  payload: P
  /** Extra headers, string to string. Reserved names (see {@link RESERVED_HEADERS}) are refused. */
  headers?: Readonly<Record<string, string>>
  /**
   * The media type of a bytes payload. JSON payloads are always `application/json`; bytes default
   * to `application/octet-stream`.
   */
  contentType?: string
  /** A caller-chosen message id (a lower-case UUID). Defaults to a fresh UUIDv7. */
  id?: string
}

/** A validated message, ready to be stored. */
export interface OutboxRecord {
  readonly id: string
  readonly topic: string
  readonly key: string
  readonly type: string
  /** The payload as stored and published, byte for byte. */
  readonly payload: Uint8Array
  /**
   * Headers stored with the row: the caller's headers, `content-type`, and the trace context
   * captured at write time. The message id and type are added when published.
   */
  readonly headers: Readonly<Record<string, string>>
}

/** A record as a relay publishes it: the stored record and its delivery attempt. */
export interface ClaimedRecord extends OutboxRecord {
  /** How many times this record has been claimed, this claim included (1 on the first try). */
  readonly attempts: number
  /** When the row was written, by the database's clock. */
  readonly createdAt: Date
  /** The record's shard, on records from `OutboxStore.claimOwned`. */
  readonly shard?: number
}

/** Header names outboxkit sets itself. Callers cannot set them (compared case-insensitively). */
export const Headers = {
  messageId: 'outboxkit-id',
  messageType: 'outboxkit-type',
  contentType: 'content-type',
  traceparent: 'traceparent',
  tracestate: 'tracestate',
  baggage: 'baggage',
} as const

export const RESERVED_HEADERS: ReadonlySet<string> = new Set(Object.values(Headers))

/** Limits applied to every message before anything is written. */
export interface MessageLimits {
  /** Largest payload in bytes. Default {@link DEFAULT_MAX_PAYLOAD_BYTES} (900 KiB). */
  maxPayloadBytes: number
  /** Largest total size of header names and values in bytes. Default 64 KiB. */
  maxHeaderBytes: number
}

/**
 * Default largest payload: 900 KiB, so that the largest record `add` accepts by default, and its
 * dead-letter copy, fit the Kafka transport's default `maxRecordBytes` (1 000 000, itself below the
 * broker's default `max.message.bytes` of 1 048 588). Worst case, in bytes as the transport counts
 * them (UTF-8; a UTF-16 code unit is at most 3 bytes):
 *
 *     payload                                             921 600
 *   + headers counted by maxHeaderBytes (user + trace)     65 536
 *   + key, 255 units × 3                                      765
 *   + content-type header, 12 + 255                           267
 *   + outboxkit-id header, 12 + 36                             48
 *   + outboxkit-type header, 14 + 255 × 3                     779
 *   + outboxkit-dead-reason header, 21 + 1 000 × 3          3 021
 *   + outboxkit-original-topic header, 24 + 249               273
 *   + the transport's per-record overhead estimate            128
 *   = 992 417 ≤ 1 000 000
 *
 * test/unit/relay.test.ts recomputes this from the constants.
 */
export const DEFAULT_MAX_PAYLOAD_BYTES = 900 * 1024
export const DEFAULT_MAX_HEADER_BYTES = 64 * 1024
export const MAX_TOPIC_LENGTH = 249
export const MAX_KEY_LENGTH = 255
export const MAX_TYPE_LENGTH = 255
const MAX_HEADER_NAME_LENGTH = 255

const TOPIC_PATTERN = /^[a-zA-Z0-9._-]+$/
const HEADER_NAME_PATTERN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/
const MAX_CONTENT_TYPE_LENGTH = 255
/** A media type as RFC 9110 writes it: `type/subtype`, then optional `; name=value` parameters. */
const TOKEN = "[!#$%&'*+.^_`|~0-9A-Za-z-]+"
const CONTENT_TYPE_PATTERN = new RegExp(
  `^${TOKEN}/${TOKEN}(?:[ \\t]*;[ \\t]*${TOKEN}=(?:${TOKEN}|"(?:[^"\\\\\\x00-\\x1f\\x7f]|\\\\[^\\x00-\\x1f\\x7f])*"))*$`,
)

const encoder = new TextEncoder()

function invalid(field: string, message: string, details: Record<string, unknown> = {}): OutboxKitError {
  return new OutboxKitError(ErrorCode.InvalidMessage, `Invalid message ${field}: ${message}`, {
    details: { field, ...details },
  })
}

function checkText(field: string, value: unknown, max: number): string {
  if (typeof value !== 'string') throw invalid(field, `expected a string, got ${typeName(value)}.`)
  if (value.length === 0) throw invalid(field, 'must not be empty.')
  if (value.length > max) {
    throw invalid(field, `is ${value.length} characters; the limit is ${max}.`, { limit: max })
  }
  // Lone surrogates cannot be encoded as UTF-8 and would be silently replaced by the database.
  if (!value.isWellFormed()) throw invalid(field, 'contains an unpaired UTF-16 surrogate.')
  if (value.includes('\u0000')) throw invalid(field, 'contains a NUL character.')
  return value
}

function typeName(value: unknown): string {
  if (value === null) return 'null'
  if (Array.isArray(value)) return 'an array'
  return typeof value
}

function encodePayload(payload: unknown): { bytes: Uint8Array; json: boolean } {
  if (payload instanceof Uint8Array) return { bytes: payload, json: false }
  if (payload === undefined) {
    throw invalid('payload', 'is undefined; pass null for an empty JSON payload, or bytes.')
  }
  checkJson(payload, '$', new Set())
  return { bytes: encoder.encode(JSON.stringify(payload)), json: true }
}

/** Rejects values that `JSON.stringify` would silently drop or change. */
function checkJson(value: unknown, path: string, seen: Set<object>): void {
  switch (typeof value) {
    case 'string':
      if (!value.isWellFormed()) throw invalid('payload', `${path} contains an unpaired UTF-16 surrogate.`)
      return
    case 'boolean':
      return
    case 'number':
      if (!Number.isFinite(value))
        throw invalid('payload', `${path} is ${value}, which JSON cannot represent.`)
      return
    case 'object': {
      if (value === null) return
      if (seen.has(value)) throw invalid('payload', `${path} is a circular reference.`)
      seen.add(value)
      if (Array.isArray(value)) {
        for (let i = 0; i < value.length; i++) checkJson(value[i], `${path}[${i}]`, seen)
      } else {
        const proto = Object.getPrototypeOf(value)
        if (proto !== Object.prototype && proto !== null) {
          throw invalid(
            'payload',
            `${path} is a ${value.constructor?.name ?? 'non-plain object'}; pass plain objects, arrays and primitives (convert dates to ISO strings), or bytes.`,
          )
        }
        for (const [k, v] of Object.entries(value)) checkJson(v, `${path}.${k}`, seen)
      }
      seen.delete(value)
      return
    }
    default:
      throw invalid('payload', `${path} is ${typeof value}, which JSON cannot represent.`)
  }
}

/**
 * Validates a message and turns it into the record that will be stored.
 * Throws {@link OutboxKitError} (`INVALID_MESSAGE` or `PAYLOAD_TOO_LARGE`) before anything is written.
 */
export function toRecord(
  input: OutboxMessageInput<unknown>,
  limits: MessageLimits,
  traceHeaders: Readonly<Record<string, string>> = {},
): OutboxRecord {
  if (typeof input !== 'object' || input === null) {
    throw invalid('', `expected an object with topic, key, type and payload, got ${typeName(input)}.`)
  }
  const topic = checkText('topic', input.topic, MAX_TOPIC_LENGTH)
  if (!TOPIC_PATTERN.test(topic) || topic === '.' || topic === '..') {
    throw invalid(
      'topic',
      `"${topic}" may contain only letters, digits, '.', '_' and '-' (and is not '.' or '..').`,
    )
  }
  const key = checkText('key', input.key, MAX_KEY_LENGTH)
  const type = checkText('type', input.type, MAX_TYPE_LENGTH)

  let id = input.id
  if (id === undefined) id = uuidv7()
  else if (typeof id !== 'string' || !isUuid(id)) {
    throw invalid('id', 'must be a lower-case UUID string such as 0190f2c4-8b7a-7cc2-9a4e-1f2d3c4b5a69.')
  }

  const { bytes, json } = encodePayload(input.payload)
  if (bytes.byteLength > limits.maxPayloadBytes) {
    throw new OutboxKitError(
      ErrorCode.PayloadTooLarge,
      `The payload of a "${type}" message is ${bytes.byteLength} bytes; the limit is ${limits.maxPayloadBytes}. Store large data elsewhere and send a reference, or raise maxPayloadBytes (and the broker's max.message.bytes).`,
      { details: { size: bytes.byteLength, limit: limits.maxPayloadBytes } },
    )
  }

  const headers: Record<string, string> = {}
  let headerBytes = 0
  if (input.headers !== undefined) {
    if (typeof input.headers !== 'object' || input.headers === null || Array.isArray(input.headers)) {
      throw invalid('headers', `expected an object of string values, got ${typeName(input.headers)}.`)
    }
    for (const [name, value] of Object.entries(input.headers)) {
      if (!HEADER_NAME_PATTERN.test(name) || name.length > MAX_HEADER_NAME_LENGTH) {
        throw invalid('headers', `"${name}" is not a valid header name (1–255 token characters, no spaces).`)
      }
      if (RESERVED_HEADERS.has(name.toLowerCase())) {
        throw invalid('headers', `"${name}" is reserved by outboxkit and set automatically.`, {
          header: name,
        })
      }
      if (typeof value !== 'string') {
        throw invalid(
          'headers',
          `the value of "${name}" is ${typeName(value)}; header values must be strings.`,
        )
      }
      // Postgres jsonb refuses NUL (\u0000) and UTF-8 cannot encode a lone surrogate: refuse both
      // here, inside the caller's transaction, rather than as a store failure.
      if (!value.isWellFormed()) {
        throw invalid('headers', `the value of "${name}" has an unpaired UTF-16 surrogate.`, { header: name })
      }
      if (value.includes('\u0000')) {
        throw invalid('headers', `the value of "${name}" contains a NUL character.`, { header: name })
      }
      headers[name] = value
      headerBytes += name.length + encoder.encode(value).byteLength
    }
  }

  let contentType = 'application/json'
  if (!json) contentType = input.contentType ?? 'application/octet-stream'
  else if (input.contentType !== undefined && input.contentType !== contentType) {
    throw invalid('contentType', 'is only for bytes payloads; JSON payloads are always application/json.')
  }
  if (
    typeof contentType !== 'string' ||
    contentType.length > MAX_CONTENT_TYPE_LENGTH ||
    !CONTENT_TYPE_PATTERN.test(contentType)
  ) {
    throw invalid(
      'contentType',
      `${JSON.stringify(typeof contentType === 'string' ? contentType : typeName(contentType))} is not a media type: use type/subtype with optional ; name=value parameters (e.g. application/avro), at most ${MAX_CONTENT_TYPE_LENGTH} characters.`,
    )
  }
  headers[Headers.contentType] = contentType

  for (const [name, value] of Object.entries(traceHeaders)) {
    headers[name] = value
    headerBytes += name.length + value.length
  }
  if (headerBytes > limits.maxHeaderBytes) {
    throw invalid('headers', `total ${headerBytes} bytes; the limit is ${limits.maxHeaderBytes}.`, {
      size: headerBytes,
      limit: limits.maxHeaderBytes,
    })
  }

  return { id, topic, key, type, payload: bytes, headers }
}

/** The headers a record is published with: its stored headers plus message id and type. */
export function publishedHeaders(record: OutboxRecord): Record<string, string> {
  return { ...record.headers, [Headers.messageId]: record.id, [Headers.messageType]: record.type }
}

const decoder = new TextDecoder()

/** Decodes a payload published by outboxkit: JSON when its content type says so, else the bytes. */
export function decodePayload(bytes: Uint8Array, contentType: string | undefined): Payload {
  if (contentType === 'application/json') return JSON.parse(decoder.decode(bytes)) as JsonValue
  return bytes
}
