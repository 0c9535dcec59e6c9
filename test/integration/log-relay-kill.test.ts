/**
 * Log-tailing relays and consumers killed at random, each part its own process
 * (test/faults/log-kill.ts), on Postgres logical replication and on the MariaDB binlog.
 */
import { describe, expect, test } from 'bun:test'
import { runLogKill } from '../faults/log-kill.js'
import { mysqlBackend, postgresJsBackend } from '../support/databases.js'

for (const backend of [postgresJsBackend, mysqlBackend]) {
  describe(`log-tailing relays killed at random: ${backend.name}`, () => {
    test('writers, a reading and a standby relay, two consumers and a killer: nothing lost, each effect once, in key order', async () => {
      const seed = Number(process.env['OUTBOXKIT_SEED'] ?? Math.floor(Math.random() * 2 ** 31))
      const result = await runLogKill({ backend, seed, kills: 8, log: () => {} })
      console.log(`log-kill ${backend.name}: ${JSON.stringify(result)}`)
      expect({
        seed,
        lost: result.lost,
        alteredCopies: result.alteredCopies,
        unknown: result.unknown,
        orderViolations: result.orderViolations,
        effectsLost: result.effectsLost,
        effectDuplicates: result.effectDuplicates,
        effectOrderViolations: result.effectOrderViolations,
      }).toEqual({
        seed,
        lost: 0,
        alteredCopies: 0,
        unknown: 0,
        orderViolations: 0,
        effectsLost: 0,
        effectDuplicates: 0,
        effectOrderViolations: 0,
      })
      expect(result.events).toBe(1_200)
      expect(result.relayKills).toBeGreaterThan(0)
    }, 240_000)
  })
}
