/** Human output on a terminal, one JSON document with `--json`; errors on stderr. */
import { CliError, ExitCode, isCliError } from './exit-codes.js'

export interface OutputOptions {
  json?: boolean
}

export function emit(options: OutputOptions, value: unknown, human: () => string): void {
  if (options.json) process.stdout.write(`${JSON.stringify(value)}\n`)
  else process.stdout.write(`${human()}\n`)
}

/** Prints an error the way the output mode wants it and returns its exit code. */
export function reportError(options: OutputOptions, error: unknown): number {
  const cli = isCliError(error)
    ? error
    : new CliError(ExitCode.failed, 'unexpected', error instanceof Error ? error.message : String(error))
  if (options.json) {
    process.stdout.write(
      `${JSON.stringify({ error: { reason: cli.reason, message: cli.message, exitCode: cli.exitCode } })}\n`,
    )
  }
  process.stderr.write(`outboxkit: ${cli.message}\n`)
  return cli.exitCode
}

/** A table of rows as aligned text columns. */
export function table(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)))
  const line = (cells: readonly string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd()
  return [line(headers), ...rows.map(line)].join('\n')
}

/** Milliseconds as a short human duration: 950ms, 12s, 4m 5s, 3h 2m, 2d 4h. */
export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)}ms`
  const s = Math.floor(ms / 1000)
  if (s < 60) return `${s}s`
  const m = Math.floor(s / 60)
  if (m < 60) return s % 60 === 0 ? `${m}m` : `${m}m ${s % 60}s`
  const h = Math.floor(m / 60)
  if (h < 48) return m % 60 === 0 ? `${h}h` : `${h}h ${m % 60}m`
  return h % 24 === 0 ? `${Math.floor(h / 24)}d` : `${Math.floor(h / 24)}d ${h % 24}h`
}

/** Bytes as a short human size: 512 B, 14.2 KiB, 3.0 MiB, 1.2 GiB. */
export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`
  const units = ['KiB', 'MiB', 'GiB', 'TiB']
  let value = bytes / 1024
  let unit = 0
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024
    unit++
  }
  return `${value.toFixed(1)} ${units[unit]}`
}

const UNITS: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 604_800_000,
}

/** Parses `500ms`, `90s`, `15m`, `12h`, `7d`, `2w` (or a bare number of milliseconds). */
export function parseDuration(flag: string, value: string): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h|d|w)?$/.exec(value.trim())
  if (!match) {
    throw new CliError(
      ExitCode.usage,
      'bad_flag',
      `${flag} must be a duration such as 90s, 15m, 12h, 7d or 2w, got ${JSON.stringify(value)}.`,
    )
  }
  return Math.round(Number(match[1]) * UNITS[match[2] ?? 'ms']!)
}

export function parsePositiveInteger(flag: string, value: string, max = Number.MAX_SAFE_INTEGER): number {
  const n = Number(value)
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n) || n < 1 || n > max) {
    throw new CliError(
      ExitCode.usage,
      'bad_flag',
      `${flag} must be an integer from 1 to ${max}, got ${JSON.stringify(value)}.`,
    )
  }
  return n
}
