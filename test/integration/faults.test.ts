/**
 * Every fault scenario of test/faults/scenarios.ts, briefly: the invariants must hold (nothing
 * lost, no copy altered, no key reordered, no side effect applied twice). `npm run soak` runs the
 * same scenarios for longer and prints the report's table (docs/reliability.md).
 *
 * The seed is printed; OUTBOXKIT_FAULT_SEED=<seed> replays the same fault timings.
 */
import { afterAll, expect, test } from 'bun:test'
import { closeScenarioServers, SCENARIOS } from '../faults/scenarios.js'

const seed = Number(process.env['OUTBOXKIT_FAULT_SEED'] ?? Math.floor(Math.random() * 2 ** 31))
console.log(`fault scenarios: OUTBOXKIT_FAULT_SEED=${seed}`)

afterAll(() => closeScenarioServers())

for (const scenario of SCENARIOS) {
  test(scenario.name, async () => {
    const result = await scenario.run({ seed, faultMs: 3_000, log: (line) => console.log(line) })
    expect(result.events).toBeGreaterThan(0)
    expect({
      lost: result.lost,
      alteredCopies: result.alteredCopies,
      effectDuplicates: result.effectDuplicates,
      orderViolations: result.orderViolations,
    }).toEqual({ lost: 0, alteredCopies: 0, effectDuplicates: 0, orderViolations: 0 })
    // The fault reached the code under test.
    expect({ reached: result.reached, injected: result.injected }).toEqual({
      reached: true,
      injected: result.injected,
    })
  }, 180_000)
}
