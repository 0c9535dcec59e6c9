/**
 * The exactly-once kill scenario (test/faults/eos-kill.ts) for as long as asked, round after round,
 * each round with the next seed, on Postgres (postgres.js) and MariaDB:
 *
 *   npm run soak:eos -- --minutes 10 [--seed 42] [--kills 10] [--only mariadb]
 *
 * Prints a line per run and the totals per backend. Exits 1 if any run lost, reordered, altered or
 * duplicated an event (or left a row unsettled), naming the seeds that did.
 */
import { parseArgs } from 'node:util'
import { mysqlBackend, postgresJsBackend } from '../support/databases.js'
import { describeRun, type EosKillResult, runEosKill, violations } from './eos-kill.js'

const { values } = parseArgs({
  options: {
    minutes: { type: 'string', default: '5' },
    seed: { type: 'string' },
    kills: { type: 'string', default: '10' },
    only: { type: 'string' },
  },
})
const minutes = Number(values.minutes)
const kills = Number(values.kills)
if (!(minutes > 0) || !(kills >= 2)) {
  console.error('soak:eos: --minutes must be positive and --kills at least 2')
  process.exit(2)
}
const firstSeed = Number(values.seed ?? Math.floor(Math.random() * 2 ** 31))
const backends = [postgresJsBackend, mysqlBackend].filter((b) => !values.only || b.name.includes(values.only))
if (backends.length === 0) {
  console.error(`soak:eos: no backend matches --only ${values.only}`)
  process.exit(2)
}

interface Totals {
  runs: number
  events: number
  lost: number
  duplicates: number
  altered: number
  order: number
  kills: number
  windowKills: number
  pauses: number
  reconciled: number
  worstRecoveryMs: number
  failedSeeds: number[]
}
const totals = new Map<string, Totals>(
  backends.map((b) => [
    b.name,
    {
      runs: 0,
      events: 0,
      lost: 0,
      duplicates: 0,
      altered: 0,
      order: 0,
      kills: 0,
      windowKills: 0,
      pauses: 0,
      reconciled: 0,
      worstRecoveryMs: 0,
      failedSeeds: [],
    },
  ]),
)

console.log(
  `soak:eos: ${minutes} min, ${kills} kills a run, first seed ${firstSeed} (--seed ${firstSeed} replays)`,
)
const deadline = Date.now() + minutes * 60_000
let round = 0
while (Date.now() < deadline) {
  const seed = firstSeed + round
  round++
  for (const backend of backends) {
    if (Date.now() >= deadline) break
    const t = totals.get(backend.name)!
    let result: EosKillResult
    try {
      result = await runEosKill({ backend, seed, exactlyOnce: true, kills, log: () => {} })
    } catch (error) {
      // A relay that never finished the work (stuck) is a violation too.
      t.runs++
      t.failedSeeds.push(seed)
      console.log(
        `[round ${round}, seed ${seed}] ${backend.name}: FAILED: ${error instanceof Error ? error.message : error}`,
      )
      continue
    }
    const broken = violations(result)
    t.runs++
    t.events += result.events
    t.lost += result.lost + result.unsettled
    t.duplicates += result.topicDuplicates
    t.altered += result.alteredCopies + result.unknown
    t.order += result.orderViolations
    t.kills += result.kills
    t.windowKills += result.windowKills
    t.pauses += result.pauses
    t.reconciled += result.reconciledMarked
    t.worstRecoveryMs = Math.max(t.worstRecoveryMs, result.recoveryMs)
    if (broken.length > 0) t.failedSeeds.push(seed)
    const left = Math.max(0, Math.round((deadline - Date.now()) / 1000))
    console.log(
      `[round ${round}, ${left}s left] ${describeRun(backend.name, result)}${broken.length > 0 ? `  <-- BROKEN: ${broken.join(', ')}` : ''}`,
    )
  }
}

console.log()
console.log(
  '| Backend | Runs | Events | Lost | Duplicates | Altered copies | Order violations | Kills (in the window) | Pauses | Rows reconciled | Worst recovery |',
)
console.log('|---|---|---|---|---|---|---|---|---|---|---|')
for (const [name, t] of totals) {
  if (t.runs === 0) continue
  console.log(
    `| ${name} | ${t.runs} | ${t.events} | ${t.lost} | ${t.duplicates} | ${t.altered} | ${t.order} | ${t.kills} (${t.windowKills}) | ${t.pauses} | ${t.reconciled} | ${(t.worstRecoveryMs / 1000).toFixed(1)} s |`,
  )
}
const failed = [...totals].filter(([, t]) => t.failedSeeds.length > 0)
for (const [name, t] of failed) console.log(`BROKEN: ${name} with --seed ${t.failedSeeds.join(', --seed ')}`)
console.log(
  failed.length === 0
    ? 'soak:eos: every invariant held'
    : `soak:eos: ${failed.length} backend(s) broke an invariant`,
)
process.exit(failed.length === 0 ? 0 : 1)
