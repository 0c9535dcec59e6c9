/**
 * The content of a Postgres logical decoding message that carries one outbox record (the
 * table-less mode: `pg_logical_emit_message(true, <prefix>, <content>)` instead of an INSERT).
 *
 * Version 1, all integers big-endian, every string a `uint32` byte length then its UTF-8 bytes:
 *
 * | bytes | field |
 * |-------|-------|
 * | 1 | version, `0x01` |
 * | 8 | createdAt: milliseconds since the Unix epoch, signed, by the writer's clock |
 * | string | id |
 * | string | topic |
 * | string | key |
 * | string | type |
 * | 4 | header count |
 * | string, string | each header's name then value, in insertion order |
 * | 4 + n | payload: its length, then its bytes as they are |
 *
 * Nothing may follow the payload. A decoder refuses an unknown version, a truncated content,
 * invalid UTF-8, a NUL in a string, a time out of `Date`'s range and trailing bytes, rather than
 * guess.
 */
import { ErrorCode, OutboxKitError } from '../../core/errors.js'
import type { ClaimedRecord, OutboxRecord } from '../../core/message.js'

/** The encoding version this code writes. */
export const LOGICAL_MESSAGE_VERSION = 1

const encoder = new TextEncoder()
const decoder = new TextDecoder('utf-8', { fatal: true })

/** Encodes one record as the content of a logical decoding message (see the module's table). */
export function encodeLogicalMessage(record: OutboxRecord, createdAtMs: number = Date.now()): Uint8Array {
  const strings = [record.id, record.topic, record.key, record.type].map((s) => encoder.encode(s))
  const headers = Object.entries(record.headers).map(([name, value]) => [
    encoder.encode(name),
    encoder.encode(value),
  ])
  let size = 1 + 8 + 4 + 4 + record.payload.byteLength
  for (const s of strings) size += 4 + s.byteLength
  for (const [name, value] of headers) size += 8 + name!.byteLength + value!.byteLength
  const out = new Uint8Array(size)
  const view = new DataView(out.buffer)
  let at = 0
  const bytes = (b: Uint8Array) => {
    view.setUint32(at, b.byteLength)
    out.set(b, at + 4)
    at += 4 + b.byteLength
  }
  view.setUint8(at, LOGICAL_MESSAGE_VERSION)
  view.setBigInt64(at + 1, BigInt(Math.trunc(createdAtMs)))
  at += 9
  for (const s of strings) bytes(s)
  view.setUint32(at, headers.length)
  at += 4
  for (const [name, value] of headers) {
    bytes(name!)
    bytes(value!)
  }
  bytes(record.payload)
  return out
}

/**
 * Decodes the content of a logical decoding message written by {@link encodeLogicalMessage}.
 * `attempts` is 1. Throws `INVALID_MESSAGE` on content it cannot read whole.
 */
export function decodeLogicalMessage(content: Uint8Array): ClaimedRecord {
  const view = new DataView(content.buffer, content.byteOffset, content.byteLength)
  let at = 0
  const need = (n: number) => {
    if (at + n > content.byteLength) throw malformed(`it ends at byte ${content.byteLength}`)
  }
  const u32 = () => {
    need(4)
    const n = view.getUint32(at)
    at += 4
    return n
  }
  const bytes = () => {
    const n = u32()
    need(n)
    // A copy: the content may be a view of the driver's read buffer, which is reused (and a
    // Buffer's slice() is a view too).
    const b = new Uint8Array(content.subarray(at, at + n))
    at += n
    return b
  }
  const text = () => {
    let value: string
    try {
      value = decoder.decode(bytes())
    } catch (error) {
      if (error instanceof OutboxKitError) throw error
      throw malformed('a string is not valid UTF-8')
    }
    // outbox.add refuses NUL in every text field, and Postgres text and jsonb cannot hold it.
    if (value.includes('\u0000')) throw malformed('a string contains a NUL character')
    return value
  }
  need(1)
  const version = view.getUint8(0)
  if (version !== LOGICAL_MESSAGE_VERSION) {
    throw malformed(`its version is ${version}; this outboxkit reads version ${LOGICAL_MESSAGE_VERSION}`)
  }
  need(9)
  const createdAt = new Date(Number(view.getBigInt64(1)))
  if (Number.isNaN(createdAt.getTime())) throw malformed('its createdAt is out of range')
  at = 9
  const id = text()
  const topic = text()
  const key = text()
  const type = text()
  const count = u32()
  const headers: Record<string, string> = {}
  for (let i = 0; i < count; i++) {
    const name = text()
    headers[name] = text()
  }
  const payload = bytes()
  if (at !== content.byteLength) throw malformed(`${content.byteLength - at} bytes follow the payload`)
  return { id, topic, key, type, payload, headers, attempts: 1, createdAt }
}

const MAX_PREFIX_LENGTH = 255

/**
 * Checks a logical message prefix: 1–255 characters, no control characters (NUL included), no
 * unpaired surrogates. Every consumer of the database's log sees every prefix, so choose one that
 * names the outbox, e.g. `outboxkit:app.orders`.
 */
export function validateMessagePrefix(prefix: unknown, source?: string): string {
  if (
    typeof prefix !== 'string' ||
    prefix.length === 0 ||
    prefix.length > MAX_PREFIX_LENGTH ||
    !prefix.isWellFormed() ||
    // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what is refused.
    /[\u0000-\u001f\u007f]/.test(prefix)
  ) {
    throw new OutboxKitError(
      ErrorCode.InvalidOptions,
      `messagePrefix must be 1–${MAX_PREFIX_LENGTH} characters without control characters, got ${JSON.stringify(prefix)}.`,
      { ...(source === undefined ? {} : { source }), details: { option: 'messagePrefix' } },
    )
  }
  return prefix
}

function malformed(why: string): OutboxKitError {
  return new OutboxKitError(
    ErrorCode.InvalidMessage,
    `A logical decoding message with the outbox's prefix cannot be read as an outbox record: ${why}.`,
  )
}
