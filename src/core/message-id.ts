/**
 * The one rule for message ids (and consumer names) that an inbox must be able to store: a
 * non-empty string of at most 255 UTF-16 code units, without NUL (Postgres text refuses it) and
 * without unpaired surrogates (they cannot be encoded as UTF-8). Every id `outbox.add` accepts,
 * a lower-case UUID, passes it.
 */
export const MAX_MESSAGE_ID_LENGTH = 255

/** What is wrong with `value` as a message id or consumer name, or undefined when it is usable. */
export function messageIdProblem(value: unknown): string | undefined {
  if (typeof value !== 'string') return `expected a string, got ${value === null ? 'null' : typeof value}`
  if (value.length === 0) return 'it is empty'
  if (value.length > MAX_MESSAGE_ID_LENGTH) {
    return `it is ${value.length} characters long; the limit is ${MAX_MESSAGE_ID_LENGTH}`
  }
  if (value.includes('\u0000')) return 'it contains a NUL character'
  if (!value.isWellFormed()) return 'it contains an unpaired UTF-16 surrogate'
  return undefined
}
