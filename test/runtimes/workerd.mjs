/**
 * The write path inside a real Cloudflare Workers runtime: examples/worker/worker.mjs, bundled with esbuild the
 * way Wrangler bundles (conditions workerd, worker, import; nodejs_compat), runs in workerd
 * through Miniflare and writes orders and their events to the local PostgreSQL. This process
 * (Node) then relays those rows to Kafka and consumes them, and checks each side effect happened
 * exactly once.
 *
 *   node test/runtimes/workerd.mjs
 *
 * Needs `npm run build` first, PostgreSQL and Kafka. Ends with `result: N passed, N failed`.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import process from 'node:process'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'
import { Miniflare } from 'miniflare'
import { Checks, deadline, observe, openWorld, POSTGRES_URL, relayAndConsume, verify } from './scenario.mjs'

const REQUESTS = 4
const ORDERS_PER_REQUEST = 5
// A date the bundled workerd supports; nodejs_compat brings node:net and friends postgres.js uses.
const COMPATIBILITY_DATE = '2025-09-01'

const require = createRequire(import.meta.url)
const workerdVersion = require('workerd/package.json').version
const miniflareVersion = require('miniflare/package.json').version
console.log(
  `e2e with workerd ${workerdVersion} (miniflare ${miniflareVersion}) writing, node ${process.versions.node} relaying`,
)

const checks = new Checks()
const out = mkdtempSync(join(tmpdir(), 'outboxkit-worker-'))
let mf
let world
const cancelDeadline = deadline(150_000, async () => {
  checks.check('the scenario finished within 150 s', false)
  checks.finish()
  await mf?.dispose().catch(() => {})
  await world?.close()
})

try {
  const bundle = await build({
    entryPoints: [fileURLToPath(new URL('../../examples/worker/worker.mjs', import.meta.url))],
    outfile: join(out, 'worker.js'),
    bundle: true,
    format: 'esm',
    platform: 'neutral',
    target: 'es2022',
    conditions: ['workerd', 'worker', 'import'],
    mainFields: ['module', 'main'],
    external: ['cloudflare:*', 'node:*'],
    metafile: true,
    logLevel: 'warning',
  })
  const inputs = Object.keys(bundle.metafile.inputs)
  checks.check(
    'the Worker bundles outboxkit from dist and the workerd build of postgres.js',
    inputs.some((f) => f.startsWith('dist/')) && inputs.some((f) => f.includes('postgres/cf/')),
    inputs.filter((f) => !f.includes('kysely/dist')).join(', '),
  )

  mf = new Miniflare({
    modules: true,
    modulesRoot: out,
    scriptPath: join(out, 'worker.js'),
    compatibilityDate: COMPATIBILITY_DATE,
    compatibilityFlags: ['nodejs_compat'],
    bindings: { POSTGRES_URL },
  })
  const runtime = await (await mf.dispatchFetch('http://worker/runtime')).json()
  checks.check(
    'the Worker runs in workerd',
    runtime.userAgent === 'Cloudflare-Workers',
    JSON.stringify(runtime),
  )

  world = await openWorld('workerd')
  const post = (body) =>
    mf.dispatchFetch('http://worker/orders', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ schema: world.schema, topic: world.topic, ...body }),
    })
  // Concurrent requests: each has its own connection and its own transactions.
  const responses = await Promise.all(
    Array.from({ length: REQUESTS }, (_, r) =>
      post({
        orders: Array.from({ length: ORDERS_PER_REQUEST }, (_, i) => ({
          orderId: `order-${r}-${i}`,
          amount: 100 * r + i,
        })),
      }),
    ),
  )
  const written = []
  for (const response of responses) {
    const body = await response.json()
    if (response.status !== 200)
      throw new Error(`the Worker answered ${response.status}: ${JSON.stringify(body)}`)
    written.push(...body.written)
  }
  const failed = await post({ orders: [{ orderId: 'order-rolled-back', amount: 1 }], failAfterAdd: true })
  const failure = await failed.json()
  const rolledBack = {
    orderId: 'order-rolled-back',
    threw: failed.status === 500 && failure.error === 'payment declined',
  }

  const total = REQUESTS * ORDERS_PER_REQUEST
  const counts = await relayAndConsume(world, total)
  verify(checks, { written, rolledBack }, await observe(world), counts)
} catch (error) {
  checks.crash(error)
} finally {
  await mf?.dispose().catch((error) => checks.crash(error))
  await world?.close().catch((error) => checks.crash(error))
  rmSync(out, { recursive: true, force: true })
}
cancelDeadline()
process.exit(checks.finish())
