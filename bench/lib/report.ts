/** The results table, the relay phase breakdown, and the JSON file. */
import { mkdirSync, writeFileSync } from 'node:fs'
import { type Figure, formatNumber, meets } from './context.js'
import type { Machine } from './machine.js'

function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)))
  const line = (cells: readonly string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`
  return [line(header), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.map(line)].join('\n')
}

function value(figure: Figure): string {
  // A figure that could not be measured here (e.g. a store without shard ownership).
  if (!Number.isFinite(figure.value)) return 'n/a'
  if (figure.unit === 'ms') return `${figure.value >= 0 ? '+' : ''}${formatNumber(figure.value, 1)} ms`
  return figure.value.toFixed(2)
}

function spread(figure: Figure): string {
  if (!figure.rounds || figure.rounds.length < 2) return ''
  const low = Math.min(...figure.rounds)
  const high = Math.max(...figure.rounds)
  return figure.unit === 'ms'
    ? `${formatNumber(low, 1)} – ${formatNumber(high, 1)}`
    : `${low.toFixed(2)} – ${high.toFixed(2)}`
}

function target(figure: Figure): string {
  if (!figure.target) return ''
  const goal = `${figure.target.op === '>=' ? '≥' : '≤'} ${figure.target.value}${figure.unit === 'ms' ? ' ms' : ''}`
  return `${goal} ${meets(figure) ? 'met' : 'short'}`
}

export function figuresTable(figures: readonly Figure[]): string {
  return table(
    ['Figure', 'Value', 'Rounds', 'Measured', 'Baseline', 'Target'],
    figures.map((f) => [`${f.group}: ${f.label}`, value(f), spread(f), f.measured, f.baseline, target(f)]),
  )
}

export function machineLines(machine: Machine, load: readonly number[][]): string {
  const first = load[0] ?? []
  const last = load.at(-1) ?? []
  const fmt = (l: readonly number[]) => l.map((x) => x.toFixed(2)).join(' ')
  return [
    `Machine: ${machine.cpus} × ${machine.cpuModel}, ${machine.memoryGiB} GiB, ${machine.os}`,
    `Versions: node ${machine.node}, bun ${machine.bun}, kafkajs ${machine.kafkajs}, Kafka ${machine.kafka}, ${machine.postgres}, MariaDB ${machine.mariadb}`,
    `Load average (1/5/15 min): ${fmt(first)} at start, ${fmt(last)} at end`,
  ].join('\n')
}

interface Profile {
  batch: number
  keys: number
  eventsPerSecond: number
  msPerBatch: Record<string, number>
  statementsPerBatch: Record<string, number>
  statements: Record<string, { perBatch: number; msEach: number }>
}

function isProfile(value: unknown): value is Profile {
  return typeof value === 'object' && value !== null && 'msPerBatch' in value && 'statements' in value
}

/** Where a relay batch's time goes, from the profiled drains of M2. */
export function profileTable(raw: Record<string, unknown>): string | undefined {
  const rows: string[][] = []
  for (const [backend, plan] of Object.entries(raw)) {
    const profiles = (plan as { profiles?: unknown } | undefined)?.profiles
    if (!Array.isArray(profiles)) continue
    for (const p of profiles) {
      if (!isProfile(p)) continue
      const statements = (phase: string) =>
        Object.entries(p.statements)
          .filter(([kind]) => kind.startsWith(`${phase}: `))
          .map(([kind, s]) => `${kind.slice(phase.length + 2)} ${s.msEach.toFixed(1)}`)
          .join(', ')
      const count = Object.values(p.statementsPerBatch).reduce((a, b) => a + b, 0)
      rows.push([
        backend,
        String(p.batch),
        formatNumber(p.keys),
        formatNumber(p.eventsPerSecond),
        (p.msPerBatch['claim'] ?? 0).toFixed(1),
        (p.msPerBatch['publish'] ?? 0).toFixed(1),
        (p.msPerBatch['mark'] ?? 0).toFixed(1),
        count.toFixed(0),
        statements('claim'),
        statements('mark'),
      ])
    }
  }
  if (rows.length === 0) return undefined
  return table(
    [
      'Backend',
      'Batch',
      'Keys',
      'ev/s',
      'Claim ms',
      'Publish ms',
      'Mark ms',
      'Stmts',
      'Claim statements, ms each',
      'Mark statements, ms each',
    ],
    rows,
  )
}

/** Writes the results under bench/results/ and returns the path. */
export function writeResults(results: Record<string, unknown>, date: Date, quick: boolean): string {
  const dir = new URL('../results/', import.meta.url)
  mkdirSync(dir, { recursive: true })
  const name = `${date
    .toISOString()
    .replace(/:/g, '-')
    .replace(/\.\d+Z$/, 'Z')}${quick ? '-quick' : ''}.json`
  const file = new URL(name, dir)
  writeFileSync(file, `${JSON.stringify(results, null, 2)}\n`)
  return file.pathname
}
