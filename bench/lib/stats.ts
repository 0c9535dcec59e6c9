/** Small statistics and timing helpers shared by the measurements. */

export function median(values: readonly number[]): number {
  return percentile(values, 50)
}

/** The p-th percentile (0–100), linear between the closest ranks. NaN for no values. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN
  const sorted = [...values].sort((a, b) => a - b)
  const rank = (p / 100) * (sorted.length - 1)
  const low = Math.floor(rank)
  const high = Math.ceil(rank)
  return sorted[low]! + (sorted[high]! - sorted[low]!) * (rank - low)
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/** Milliseconds on a monotonic clock shared by everything in this process. */
export function now(): number {
  return performance.now()
}

/**
 * Runs the steps in order (a, b, c, a, b, c, ...) for `repetitions` rounds after `warmup`
 * discarded rounds, and returns each step's values in run order. Each step returns a number (a
 * rate or a duration). Ratios of two steps of the same round cancel slow drift in the machine.
 */
export async function rounds<K extends string>(options: {
  readonly warmup: number
  readonly repetitions: number
  readonly steps: Readonly<Record<K, () => Promise<number>>>
  readonly onRound?: (round: number, values: Readonly<Record<K, number>>) => void
}): Promise<Record<K, number[]>> {
  const names = Object.keys(options.steps) as K[]
  const results = Object.fromEntries(names.map((n) => [n, [] as number[]])) as Record<K, number[]>
  for (let round = -options.warmup; round < options.repetitions; round++) {
    const values = {} as Record<K, number>
    for (const name of names) values[name] = await options.steps[name]()
    if (round < 0) continue
    for (const name of names) results[name].push(values[name])
    options.onRound?.(round + 1, values)
  }
  return results
}

/** a[i] ÷ b[i] for each round. */
export function ratios(a: readonly number[], b: readonly number[]): number[] {
  return a.map((value, i) => value / b[i]!)
}
