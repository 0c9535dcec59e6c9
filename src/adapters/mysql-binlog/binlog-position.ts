/**
 * Binlog positions as the feed writes them: `<file>:<offset>`, e.g. `mysql-bin.000003:1234`, the
 * offset just after a transaction's commit event.
 */
import { ErrorCode, OutboxKitError } from '../../core/errors.js'

export interface BinlogPosition {
  readonly file: string
  readonly offset: number
}

const POSITION = /^(.+):(\d+)$/

export function formatPosition(position: BinlogPosition): string {
  return `${position.file}:${position.offset}`
}

export function parsePosition(text: string, source: string): BinlogPosition {
  const match = typeof text === 'string' ? POSITION.exec(text) : null
  const offset = match ? Number(match[2]) : Number.NaN
  if (!match || !Number.isSafeInteger(offset)) {
    throw new OutboxKitError(
      ErrorCode.InvalidOptions,
      `${JSON.stringify(text)} is not a binlog position of this feed: expected <file>:<offset>, e.g. mysql-bin.000003:1234.`,
      { source, details: { position: text } },
    )
  }
  return { file: match[1]!, offset }
}

/**
 * Orders positions. Binlog files of one server share a base name and a numeric extension that
 * grows (`.000009`, `.000010`, then `.1000000` after `.999999`), so extensions compare as numbers.
 */
export function comparePositions(a: BinlogPosition, b: BinlogPosition): number {
  if (a.file !== b.file) {
    const fileA = splitFile(a.file)
    const fileB = splitFile(b.file)
    if (fileA.base === fileB.base && fileA.sequence !== fileB.sequence) return fileA.sequence - fileB.sequence
    return a.file < b.file ? -1 : 1
  }
  return a.offset - b.offset
}

function splitFile(file: string): { base: string; sequence: number } {
  const dot = file.lastIndexOf('.')
  const sequence = dot < 0 ? Number.NaN : Number(file.slice(dot + 1))
  return Number.isSafeInteger(sequence) ? { base: file.slice(0, dot), sequence } : { base: file, sequence: 0 }
}
