/**
 * How the NATS client's errors map onto publish outcomes. Errors are recognised by name and
 * shape, never `instanceof`, so a second copy of the NATS client in the bundle is still understood.
 */
import { describeError, ErrorCode, OutboxKitError } from '../../index.js'

/** What a failed publish of one record means for it and for the call. */
export type PublishFault =
  /** The record itself cannot be stored (too large, refused subject): dead-letter it now. */
  | { readonly kind: 'record'; readonly error: string }
  /** This record failed, others may pass; a later attempt may succeed (no stream yet, stream full). */
  | { readonly kind: 'retry'; readonly error: string }
  /** The connection failed or the ack did not come: the outcome is unknown, the server may be gone. */
  | { readonly kind: 'outage'; readonly error: string }

/** JetStream API error codes that are about the message, not the moment. */
const RECORD_API_CODES = new Set([
  10054, // message size exceeds maximum allowed
])

function errorName(error: unknown): string {
  return error instanceof Error ? error.name || error.constructor.name : typeof error
}

function causeOf(error: unknown): unknown {
  return error instanceof Error ? error.cause : undefined
}

function apiCode(error: unknown): number | undefined {
  const code = (error as { code?: unknown } | null)?.code
  return typeof code === 'number' ? code : undefined
}

/** Classifies an error thrown by `js.publish`. */
export function classifyPublishError(error: unknown, subject: string): PublishFault {
  const names = [errorName(error), errorName(causeOf(error))]
  const text = describeError(error)
  if (names.includes('InvalidSubjectError'))
    return { kind: 'record', error: `"${subject}" is not a valid NATS subject: ${text}` }
  if (names.includes('InvalidArgumentError') && /max_payload/.test(text))
    return { kind: 'record', error: `The record is larger than the server's max_payload: ${text}` }
  if (names.includes('PermissionViolationError'))
    return { kind: 'record', error: `This connection may not publish to "${subject}": ${text}` }
  if (
    names.includes('NoRespondersError') ||
    names.includes('JetStreamNotEnabled') ||
    /no responders|jetstream is not enabled/i.test(text)
  )
    return {
      kind: 'retry',
      error: `No JetStream stream captures the subject "${subject}" (or JetStream is not enabled on the server). Create a stream whose subjects include it, e.g. \`nats stream add --subjects '${subject}'\`; the record is published again later.`,
    }
  const code = apiCode(error)
  if (code !== undefined && names.includes('JetStreamApiError')) {
    if (RECORD_API_CODES.has(code))
      return { kind: 'record', error: `The stream refused the record (${code}): ${text}` }
    return { kind: 'retry', error: `The stream refused the record (${code}): ${text}` }
  }
  return { kind: 'outage', error: `Publishing to NATS failed: ${text}` }
}

/** The error a publish throws when nothing could be published because the server is unreachable. */
export function outageError(message: string, cause?: unknown): OutboxKitError {
  return new OutboxKitError(
    ErrorCode.TransportFailed,
    `${message} Check that the NATS server is reachable; the records are published again later.`,
    { source: 'nats', retriable: true, ...(cause === undefined ? {} : { cause }) },
  )
}

/** An option that must be a positive integer (`fallback` when not given), or INVALID_OPTIONS. */
export function optionInteger(name: string, value: number | undefined, fallback: number): number {
  const v = value ?? fallback
  if (!Number.isSafeInteger(v) || v <= 0) {
    throw new OutboxKitError(
      ErrorCode.InvalidOptions,
      `Option ${name} must be a positive integer, got ${String(value)}.`,
      { source: 'nats', details: { option: name } },
    )
  }
  return v
}
