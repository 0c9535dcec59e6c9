/** What every measurement receives, and what it returns. */

export interface Sizes {
  /** Repetitions of each alternated pair. */
  readonly repetitions: number
  /** Discarded rounds before them. */
  readonly warmup: number
  /** M1: how long each client burst runs, ms. */
  readonly writeMs: number
  /** M2/M3: events drained per repetition, by batch size. */
  readonly relayEvents: Readonly<Record<number, number>>
  /** M4: events per second and seconds per phase. */
  readonly latencyRate: number
  readonly latencySeconds: number
  readonly latencyRepetitions: number
  /** M5: messages consumed per repetition. */
  readonly consumeMessages: number
  /** M6: events the relay child drains. */
  readonly rssEvents: number
  /** M7: rows in the backlog each step drains (batch 500). */
  readonly limitsEvents: number
}

export const FULL: Sizes = {
  repetitions: 5,
  warmup: 1,
  writeMs: 800,
  relayEvents: { 1: 150, 100: 3_000, 1000: 10_000 },
  latencyRate: 100,
  latencySeconds: 3,
  latencyRepetitions: 3,
  consumeMessages: 1_500,
  rssEvents: 20_000,
  limitsEvents: 10_000,
}

export const QUICK: Sizes = {
  repetitions: 3,
  warmup: 1,
  writeMs: 250,
  relayEvents: { 1: 30, 100: 600, 1000: 3_000 },
  latencyRate: 100,
  latencySeconds: 0.8,
  latencyRepetitions: 2,
  consumeMessages: 400,
  rssEvents: 3_000,
  limitsEvents: 3_000,
}

/**
 * `--smoke`: the quick measurements at the smallest sizes that still run every step, for CI to
 * check the suite works. Its figures are too small to mean anything.
 */
export const SMOKE: Sizes = {
  repetitions: 1,
  warmup: 0,
  writeMs: 150,
  relayEvents: { 1: 10, 100: 200, 1000: 1_000 },
  latencyRate: 100,
  latencySeconds: 0.5,
  latencyRepetitions: 1,
  consumeMessages: 150,
  rssEvents: 1_000,
  limitsEvents: 1_000,
}

export interface Context {
  readonly quick: boolean
  readonly sizes: Sizes
  /** Progress lines (stderr). */
  log(line: string): void
}

export type Unit = 'ratio' | 'ms'

export interface Target {
  readonly op: '>=' | '<='
  readonly value: number
}

/** One line of the results table. */
export interface Figure {
  readonly id: string
  readonly group: string
  readonly label: string
  /** A ratio against the baseline, or milliseconds added over it. */
  readonly unit: Unit
  readonly value: number
  /** The value of each repetition (the figure is their median). */
  readonly rounds?: readonly number[]
  /** The measured side in absolute numbers, e.g. `7 950 events/s`. */
  readonly measured: string
  /** The baseline in absolute numbers. */
  readonly baseline: string
  readonly target?: Target
}

export interface MeasurementResult {
  readonly figures: Figure[]
  /** Everything measured, for the JSON file. */
  readonly raw: Record<string, unknown>
  /** Where the time goes: printed under the table. */
  readonly details?: string
}

/** A figure's value as the median of its repetitions, keeping them. */
export function ofRounds(values: readonly number[]): { value: number; rounds: readonly number[] } {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = (sorted.length - 1) / 2
  return { value: (sorted[Math.floor(mid)]! + sorted[Math.ceil(mid)]!) / 2, rounds: values }
}

export function meets(figure: Figure): boolean | undefined {
  if (!figure.target) return undefined
  return figure.target.op === '>=' ? figure.value >= figure.target.value : figure.value <= figure.target.value
}

/** `12 345`, with thin grouping so wide numbers stay readable in a fixed-width table. */
export function formatNumber(value: number, digits = 0): string {
  if (!Number.isFinite(value)) return String(value)
  const fixed = value.toFixed(digits)
  const [whole, fraction] = fixed.split('.')
  const grouped = whole!.replace(/\B(?=(\d{3})+(?!\d))/g, ' ')
  return fraction === undefined ? grouped : `${grouped}.${fraction}`
}

export function rate(value: number, unit: string): string {
  return `${formatNumber(value, value < 100 ? 1 : 0)} ${unit}`
}

export function ms(value: number): string {
  return `${formatNumber(value, value < 10 ? 2 : 1)} ms`
}
