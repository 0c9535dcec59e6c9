/**
 * Every fault scenario of test/faults/scenarios.ts, briefly: the invariants must hold (nothing
 * lost, no copy altered, no key reordered, no side effect applied twice, and with exactlyOnce no
 * duplicate for a read_committed reader). `npm run soak` runs the
 * same scenarios for longer and prints the report's table (docs/reliability.md).
 *
 * The seed is printed; OUTBOXKIT_FAULT_SEED=<seed> replays the same fault timings.
 */
import { afterAll, expect, test } from 'bun:test'
import { brokenInvariants, closeScenarioServers, SCENARIOS } from '../faults/scenarios.js'

const seed = Number(process.env['OUTBOXKIT_FAULT_SEED'] ?? Math.floor(Math.random() * 2 ** 31))
console.log(`fault scenarios: OUTBOXKIT_FAULT_SEED=${seed}`)

afterAll(() => closeScenarioServers())

for (const scenario of SCENARIOS) {
  test(scenario.name, async () => {
    const result = await scenario.run({ seed, faultMs: 3_000, log: (line) => console.log(line) })
    expect(result.events).toBeGreaterThan(0)
    // Nothing lost, altered, reordered or applied twice; under exactlyOnce no duplicate either.
    expect({ broken: brokenInvariants(result), injected: result.injected }).toEqual({
      broken: [],
      injected: result.injected,
    })
    // The fault reached the code under test.
    expect({ reached: result.reached, injected: result.injected }).toEqual({
      reached: true,
      injected: result.injected,
    })
  }, 180_000)
}
