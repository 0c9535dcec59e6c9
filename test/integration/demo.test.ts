/**
 * `npm run demo` as a user runs it: a subprocess that writes orders, crashes a relay, delivers a
 * record twice, and exits 0 only if its invariants hold. Once on the embedded PGlite, once on
 * MariaDB/MySQL, and once with `--exactly-once` on Postgres: the crash leaves no duplicate in
 * the topic, as the demo counts it by reading the topic.
 */
import { describe, expect, test } from 'bun:test'
import { spawn } from 'node:child_process'
import { join } from 'node:path'
import { MYSQL_URL, POSTGRES_URL } from '../support/databases.js'

const ROOT = join(import.meta.dir, '../..')
const BUN = join(ROOT, 'node_modules/.bin/bun')

function runDemo(
  databaseUrl: string | undefined,
  flags: readonly string[] = [],
): Promise<{ code: number | null; output: string }> {
  const env: Record<string, string | undefined> = { ...process.env, NO_COLOR: '1' }
  if (databaseUrl === undefined) delete env['DATABASE_URL']
  else env['DATABASE_URL'] = databaseUrl
  return new Promise((resolve, reject) => {
    const child = spawn(BUN, ['examples/demo/main.ts', '--orders', '50', ...flags], {
      cwd: ROOT,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let output = ''
    child.stdout.on('data', (chunk: Buffer) => {
      output += chunk.toString()
    })
    child.stderr.on('data', (chunk: Buffer) => {
      output += chunk.toString()
    })
    child.on('error', reject)
    child.on('close', (code) => resolve({ code, output }))
  })
}

function expectSuccess({ code, output }: { code: number | null; output: string }, exactlyOnce = false): void {
  if (code !== 0) console.error(output)
  expect(code).toBe(0)
  expect(output).toContain('Summary')
  expect(output).toMatch(/orders written \(order row \+ event, one transaction each\)\s+50/)
  expect(output).toMatch(/side effects applied \(stock taken\)\s+50/)
  expect(output).toContain('✔ inbox rows (50) == orders (50)')
  expect(output).toContain('✔ side effects applied (50) == orders (50)')
  expect(output).toContain('✔ no outbox row pending (0) or dead (0); 50 published')
  if (exactlyOnce) {
    // Read from the topic with read_committed: one record per order, and the rows of the crashed
    // batch marked from the progress topic rather than published again.
    expect(output).toMatch(/duplicate records in the topic \(message id seen before\)\s+0 /)
    expect(output).toContain('✔ 0 duplicate records in the topic: Kafka records (50) == orders (50)')
    const reconciled = /reconciled by relay #2 from the progress topic\s+(\d+)/.exec(output)
    expect(Number(reconciled?.[1])).toBeGreaterThan(0)
    expect(output).toContain(
      `✔ rows reconciled from the progress topic (${reconciled?.[1]}) == rows the crash left unmarked (${reconciled?.[1]})`,
    )
  } else {
    // The crashed batch is in the topic twice, and the record produced again by hand.
    const duplicates = /duplicate records in the topic \(message id seen before\)\s+(\d+)/.exec(output)
    const crashed = /re-published after the relay crash\s+(\d+)/.exec(output)
    expect(Number(crashed?.[1])).toBeGreaterThan(0)
    expect(Number(duplicates?.[1])).toBe(Number(crashed?.[1]) + 1)
  }
  expect(output).toContain('✔ all invariants hold')
  expect(output).not.toContain('✘')
  expect(output).toContain('cleanup')
  // The trace of one order: request span, the process span under it, the handler's span under that.
  expect(output).toMatch(
    /POST \/orders \[internal\][^\n]*\n(?:[^\n]*\n)*?\s+└─ process \S+ \[consumer\][^\n]*→ processed\n\s+└─ take stock \[internal\]/,
  )
}

describe('npm run demo', () => {
  test('on the embedded PGlite: every invariant holds', async () => {
    const result = await runDemo(undefined)
    expectSuccess(result)
    expect(result.output).toContain('PGlite')
  }, 180_000)

  test('on MariaDB/MySQL (DATABASE_URL): every invariant holds and the demo database is dropped', async () => {
    const result = await runDemo(MYSQL_URL)
    expectSuccess(result)
    expect(result.output).toMatch(/database outboxkit_demo_[0-9a-f]{8} dropped/)
  }, 180_000)

  test('--exactly-once on Postgres (DATABASE_URL): the crash leaves 0 duplicates in the topic', async () => {
    const result = await runDemo(POSTGRES_URL, ['--exactly-once'])
    expectSuccess(result, true)
    expect(result.output).toMatch(/schema outboxkit_demo_[0-9a-f]{8} dropped/)
    expect(result.output).toMatch(/topic demo-progress-[0-9a-f]{8} deleted/)
  }, 180_000)
})
