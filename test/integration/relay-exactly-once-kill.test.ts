/**
 * Three `exactlyOnce` relay processes SIGKILLed at random (often between the Kafka commit and the
 * database mark, a window widened to a few hundred ms), restarted under the same or a new relay id,
 * and one frozen past its shard lease and resumed, while writers commit events: afterwards a
 * `read_committed` reader sees every event exactly once, in key order (test/faults/eos-kill.ts).
 * Without exactlyOnce the same faults leave duplicates, so the scenario can fail.
 *
 * The seed is printed; OUTBOXKIT_FAULT_SEED=<seed> replays the same fault sequence (the services'
 * own timing still varies). `npm run soak:eos` runs the scenario round after round.
 */
import { describe, expect, test } from 'bun:test'
import { describeRun, runEosKill } from '../faults/eos-kill.js'
import { mysqlBackend, postgresJsBackend } from '../support/databases.js'

const seed = Number(process.env['OUTBOXKIT_FAULT_SEED'] ?? Math.floor(Math.random() * 2 ** 31))
console.log(`exactly-once kill scenario: OUTBOXKIT_FAULT_SEED=${seed}`)

for (const backend of [postgresJsBackend, mysqlBackend]) {
  describe(`exactlyOnce relay processes killed at random on ${backend.name}`, () => {
    test('SIGKILLs inside the commit→mark window and a pause past the lease leave each event once, in key order', async () => {
      const result = await runEosKill({
        backend,
        seed,
        exactlyOnce: true,
        kills: 8,
        log: (line) => console.log(line),
      })
      console.log(describeRun(backend.name, result))
      expect(result.events).toBeGreaterThan(300)
      expect({
        lost: result.lost,
        unsettled: result.unsettled,
        topicDuplicates: result.topicDuplicates,
        alteredCopies: result.alteredCopies,
        unknown: result.unknown,
        orderViolations: result.orderViolations,
      }).toEqual({
        lost: 0,
        unsettled: 0,
        topicDuplicates: 0,
        alteredCopies: 0,
        unknown: 0,
        orderViolations: 0,
      })
      // The faults reached the code: relays died inside the window, and their successors marked
      // from the progress topic rows Kafka already held.
      expect(result.kills).toBe(8)
      expect(result.windowKills).toBeGreaterThan(0)
      expect(result.pauses).toBe(1)
      expect(result.reconciledMarked).toBeGreaterThan(0)
    }, 120_000)

    test('without exactlyOnce the same kills leave duplicates in the topic (and lose nothing)', async () => {
      const result = await runEosKill({
        backend,
        seed,
        exactlyOnce: false,
        kills: 2,
        log: (line) => console.log(line),
      })
      console.log(describeRun(backend.name, result))
      expect(result.windowKills).toBeGreaterThan(0)
      expect(result.topicDuplicates).toBeGreaterThan(0)
      expect({
        lost: result.lost,
        unsettled: result.unsettled,
        orderViolations: result.orderViolations,
      }).toEqual({
        lost: 0,
        unsettled: 0,
        orderViolations: 0,
      })
    }, 120_000)
  })
}
