/** Console output of the demo: timed step lines, progress lines, the summary and the invariants. */

const started = Date.now()
const tty = process.stdout.isTTY === true
const color = tty && !process.env['NO_COLOR']

const paint = (code: string) => (text: string) => (color ? `\x1b[${code}m${text}\x1b[0m` : text)
export const bold = paint('1')
export const dim = paint('2')
export const green = paint('32')
export const red = paint('31')
export const yellow = paint('33')

function elapsed(): string {
  return `${((Date.now() - started) / 1000).toFixed(1)}s`.padStart(6)
}

const LABEL_WIDTH = 10

/** One line of the story: `  4.8s  orders     200 orders written ...`. */
export function step(label: string, text: string): void {
  console.log(`${dim(elapsed())}  ${bold(label.padEnd(LABEL_WIDTH))} ${text}`)
}

/** A follow-up line under a step, aligned with its text. */
export function detail(text: string): void {
  console.log(`${' '.repeat(6 + 2 + LABEL_WIDTH + 1)}${dim(text)}`)
}

export function warn(label: string, text: string): void {
  console.log(`${dim(elapsed())}  ${yellow(label.padEnd(LABEL_WIDTH))} ${yellow(text)}`)
}

/**
 * A line that keeps changing while a long step runs. On a terminal it is rewritten in place; in
 * a log (not a terminal) it is printed at most once a second.
 */
export class Progress {
  readonly #label: string
  /**
   * On a terminal the line is redrawn at most every 100 ms. Elsewhere a line is printed at most
   * once a second, the first a second after the step began (short steps print none).
   */
  #lastPrinted = Date.now()
  #shown = false

  constructor(label: string) {
    this.#label = label
  }

  update(text: string): void {
    const now = Date.now()
    if (now - this.#lastPrinted < (tty ? 100 : 1_000) && (!tty || this.#shown)) return
    const line = `${dim(elapsed())}  ${bold(this.#label.padEnd(LABEL_WIDTH))} ${text}`
    if (tty) {
      process.stdout.write(`\r${line}\x1b[K`)
      this.#shown = true
    } else {
      console.log(line)
    }
    this.#lastPrinted = now
  }

  /** Clears the progress line (on a terminal), so the next step line replaces it. */
  clear(): void {
    if (tty && this.#shown) process.stdout.write('\r\x1b[K')
    this.#shown = false
  }
}

export interface SummaryRow {
  readonly label: string
  readonly value: string | number
  /** Indented under the previous row. */
  readonly sub?: boolean
  readonly note?: string
}

export function printSummary(title: string, rows: readonly SummaryRow[]): void {
  const labels = rows.map((row) => (row.sub ? `  ${row.label}` : row.label))
  const width = Math.max(...labels.map((label) => label.length))
  const valueWidth = Math.max(...rows.map((row) => String(row.value).length))
  console.log('')
  console.log(bold(title))
  rows.forEach((row, i) => {
    const value = String(row.value).padStart(valueWidth)
    const note = row.note ? `  ${dim(row.note)}` : ''
    console.log(`  ${labels[i]!.padEnd(width)}  ${bold(value)}${note}`)
  })
}

export interface Invariant {
  readonly ok: boolean
  readonly text: string
}

export function printInvariants(title: string, invariants: readonly Invariant[]): void {
  console.log('')
  console.log(bold(title))
  for (const invariant of invariants) {
    console.log(`  ${invariant.ok ? green('✔') : red('✘')} ${invariant.text}`)
  }
}
