/** Postgres log sequence numbers (`16/B374D848`): two 32-bit hex halves of a 64-bit WAL offset. */
import { ErrorCode, OutboxKitError } from '../../core/errors.js'

const LSN = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/

export function parseLsn(text: string, source = 'postgres-logical'): bigint {
  const match = typeof text === 'string' ? LSN.exec(text) : null
  if (!match) {
    throw new OutboxKitError(
      ErrorCode.InvalidOptions,
      `${JSON.stringify(text)} is not a Postgres log position (an LSN such as 0/16B3748).`,
      { source, details: { position: text } },
    )
  }
  return (BigInt(`0x${match[1]}`) << 32n) | BigInt(`0x${match[2]}`)
}

export function formatLsn(value: bigint): string {
  return `${(value >> 32n).toString(16).toUpperCase()}/${(value & 0xffffffffn).toString(16).toUpperCase()}`
}
