/**
 * End to end on the runtime that runs this file (Node, Deno or Bun), from the built package:
 * orders and events written in transactions, relayed to Kafka, consumed exactly once in effect.
 *
 *   node test/runtimes/e2e.mjs
 *   deno run --allow-env --allow-net --allow-read --allow-sys test/runtimes/e2e.mjs
 *   bun test/runtimes/e2e.mjs
 *
 * Needs `npm run build` first, PostgreSQL and Kafka. Ends with `result: N passed, N failed`.
 */
import process from 'node:process'
import {
  Checks,
  deadline,
  observe,
  openWorld,
  relayAndConsume,
  runtimeName,
  verify,
  writeOrders,
} from './scenario.mjs'

const ORDERS = 20
const checks = new Checks()
console.log(`e2e on ${runtimeName()}`)
let world
const cancelDeadline = deadline(150_000, async () => {
  checks.check('the scenario finished within 150 s', false)
  checks.finish()
  await world?.close()
})
try {
  world = await openWorld(runtimeName().split(' ')[0])
  const written = await writeOrders(world, ORDERS)
  const counts = await relayAndConsume(world, ORDERS)
  verify(checks, written, await observe(world), counts)
} catch (error) {
  checks.crash(error)
} finally {
  await world?.close().catch((error) => checks.crash(error))
}
cancelDeadline()
process.exit(checks.finish())
