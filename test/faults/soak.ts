/**
 * The fault scenarios for as long as asked, round after round, each round with the next seed:
 *
 *   npm run soak -- --minutes 10 [--seed 42] [--fault-seconds 8] [--only consumer]
 *
 * Prints a line per scenario run, then the report's table (docs/reliability.md): events, lost,
 * topic duplicates, effect duplicates, order violations and the worst recovery time per scenario,
 * and what each scenario proves.
 * Exits 1 if any invariant broke, with the seed that broke it.
 */
import { parseArgs } from 'node:util'
import { brokenInvariants, closeScenarioServers, SCENARIOS, type ScenarioResult } from './scenarios.js'

const { values } = parseArgs({
  options: {
    minutes: { type: 'string', default: '5' },
    seed: { type: 'string' },
    'fault-seconds': { type: 'string', default: '8' },
    only: { type: 'string' },
  },
})
const minutes = Number(values.minutes)
const faultMs = Number(values['fault-seconds']) * 1000
if (!(minutes > 0) || !(faultMs > 0)) {
  console.error('soak: --minutes and --fault-seconds must be positive numbers')
  process.exit(2)
}
const firstSeed = Number(values.seed ?? Math.floor(Math.random() * 2 ** 31))
const scenarios = SCENARIOS.filter((s) => !values.only || s.name.includes(values.only))
if (scenarios.length === 0) {
  console.error(`soak: no scenario matches --only ${values.only}`)
  process.exit(2)
}

interface Totals {
  runs: number
  events: number
  lost: number
  topicDuplicates: number
  effectDuplicates: number
  alteredCopies: number
  orderViolations: number
  worstRecoveryMs: number
  failedSeeds: number[]
}

const totals = new Map<string, Totals>(
  scenarios.map((s) => [
    s.name,
    {
      runs: 0,
      events: 0,
      lost: 0,
      topicDuplicates: 0,
      effectDuplicates: 0,
      alteredCopies: 0,
      orderViolations: 0,
      worstRecoveryMs: 0,
      failedSeeds: [],
    },
  ]),
)

const broken = (r: ScenarioResult) => brokenInvariants(r).length > 0

console.log(
  `soak: ${minutes} min, ${scenarios.length} scenarios, first seed ${firstSeed} (--seed ${firstSeed} replays)`,
)
const deadline = Date.now() + minutes * 60_000
let round = 0
while (Date.now() < deadline) {
  const seed = firstSeed + round
  round++
  for (const scenario of scenarios) {
    if (Date.now() >= deadline) break
    const started = Date.now()
    const result = await scenario.run({ seed, faultMs, log: () => {} })
    const t = totals.get(scenario.name)!
    t.runs++
    t.events += result.events
    t.lost += result.lost
    t.topicDuplicates += result.topicDuplicates
    t.effectDuplicates += result.effectDuplicates
    t.alteredCopies += result.alteredCopies
    t.orderViolations += result.orderViolations
    t.worstRecoveryMs = Math.max(t.worstRecoveryMs, result.recoveryMs)
    if (broken(result)) t.failedSeeds.push(seed)
    const left = Math.max(0, Math.round((deadline - Date.now()) / 1000))
    console.log(
      `[round ${round}, seed ${seed}, ${left}s left] ${scenario.name}: ${result.events} events, lost ${result.lost}, topic dup ${result.topicDuplicates}, effect dup ${result.effectDuplicates}, order ${result.orderViolations}, recovery ${result.recoveryMs} ms (${result.injected}; ${Math.round((Date.now() - started) / 1000)}s)${broken(result) ? '  <-- BROKEN' : ''}`,
    )
  }
}

await closeScenarioServers()
console.log()
console.log(
  '| Scenario | Runs | Events | Lost | Topic duplicates | Effect duplicates | Order violations | Worst recovery |',
)
console.log('|---|---|---|---|---|---|---|---|')
for (const [name, t] of totals) {
  if (t.runs === 0) continue
  console.log(
    `| ${name} | ${t.runs} | ${t.events} | ${t.lost} | ${t.topicDuplicates} | ${t.effectDuplicates} | ${t.orderViolations + t.alteredCopies} | ${(t.worstRecoveryMs / 1000).toFixed(1)} s |`,
  )
}
console.log()
for (const scenario of scenarios) console.log(`- ${scenario.name}: ${scenario.proves}`)
const failed = [...totals].filter(([, t]) => t.failedSeeds.length > 0)
for (const [name, t] of failed) console.log(`BROKEN: ${name} with --seed ${t.failedSeeds.join(', --seed ')}`)
console.log(
  failed.length === 0
    ? 'soak: every invariant held'
    : `soak: ${failed.length} scenario(s) broke an invariant`,
)
process.exit(failed.length === 0 ? 0 : 1)
