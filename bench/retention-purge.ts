/**
 * Retention on a large table, while the application writes and a relay claims: how fast a
 * `Retention` pass deletes old published rows, and what it does to the latency of the writes and
 * claims running next to it (against the same loops with no purge). See docs/benchmarks.md.
 *
 *   bun bench/retention-purge.ts [--backend postgres.js|mariadb] [--rows 1000000] [--dead 20000]
 *     [--batch 500] [--pause 10]
 *
 * The table gets `--rows` published rows and `--dead` dead rows, all two days old, interleaved
 * (one dead row every rows/dead published ones), and 1 000 pending rows. The pass deletes the
 * published rows (horizon one day) and keeps the dead ones, as the default retention does.
 * `OUTBOXKIT_SCHEMA_PREFIX` names the schema (default `bench`).
 */
import { sql } from 'kysely'
import { createKyselyOutboxStore, ensureOutboxSchema } from '../src/adapters/kysely/index.js'
import { Outbox, Retention } from '../src/index.js'
import { type BackendName, openPool } from './lib/db.js'
import { silenceNegativeTimeoutWarnings } from './lib/kafka.js'
import { now, percentile, sleep } from './lib/stats.js'

silenceNegativeTimeoutWarnings()

const arg = (name: string, fallback: string) => {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 ? process.argv[i + 1]! : fallback
}
const backends = (
  process.argv.includes('--backend') ? [arg('backend', '')] : ['postgres.js', 'mariadb']
) as BackendName[]
const ROWS = Number(arg('rows', '1000000'))
const DEAD = Number(arg('dead', '20000'))
const BATCH = Number(arg('batch', '500'))
const PAUSE = Number(arg('pause', '10'))
const BASELINE_MS = 10_000
const CHUNK = 100_000

interface Latencies {
  writes: number[]
  claims: number[]
}

function summary(values: readonly number[]): string {
  const f = (v: number) => v.toFixed(1)
  return `n=${values.length} p50=${f(percentile(values, 50))} p99=${f(percentile(values, 99))} max=${f(Math.max(...values))} ms`
}

async function run(backend: BackendName): Promise<void> {
  const dialect = backend === 'mariadb' ? 'mysql' : 'postgres'
  const schema = `${process.env['OUTBOXKIT_SCHEMA_PREFIX'] ?? 'bench'}_purge_${Date.now().toString(36)}`
  const q = (n: string) => (dialect === 'mysql' ? `\`${n}\`` : `"${n}"`)
  const table = `${q(schema)}.${q('outbox')}`
  const db = openPool(backend, { max: 12 })
  await sql
    .raw(dialect === 'mysql' ? `CREATE DATABASE ${q(schema)}` : `CREATE SCHEMA ${q(schema)}`)
    .execute(db)
  try {
    await ensureOutboxSchema(db, { dialect, schema })
    const store = createKyselyOutboxStore({ db, schema })
    const outbox = new Outbox({ store })
    const every = Math.max(1, Math.floor(ROWS / Math.max(1, DEAD)))
    const fillStarted = now()
    for (let from = 1; from <= ROWS; from += CHUNK) {
      const to = Math.min(ROWS, from + CHUNK - 1)
      const status = DEAD > 0 ? `CASE WHEN g % ${every} = 0 THEN 2 ELSE 1 END` : '1'
      await sql
        .raw(
          dialect === 'mysql'
            ? `INSERT INTO ${table} (id, topic, \`key\`, type, payload, headers, status, created_at)
               SELECT UUID(), 'old.events', CONCAT('k-', seq % 1000), 'Old', x'7b7d', '{}', ${status.replaceAll('g %', 'seq %')}, NOW(6) - INTERVAL 2 DAY + INTERVAL seq MICROSECOND
               FROM seq_${from}_to_${to}`
            : `INSERT INTO ${table} (id, topic, "key", type, payload, headers, status, created_at)
               SELECT gen_random_uuid(), 'old.events', 'k-' || (g % 1000), 'Old', '\\x7b7d'::bytea, '{}', ${status}, now() - interval '2 days' + g * interval '1 microsecond'
               FROM generate_series(${from}, ${to}) g`,
        )
        .execute(db)
    }
    const pendingIds = await db.transaction().execute((trx) =>
      outbox.add(
        trx,
        Array.from({ length: 1_000 }, (_, i) => ({
          topic: 'new.events',
          key: `p-${i % 50}`,
          type: 'New',
          payload: { i },
        })),
      ),
    )
    await sql.raw(dialect === 'mysql' ? `ANALYZE TABLE ${table}` : `ANALYZE ${table}`).execute(db)
    const counts = await sql
      .raw<{ status: unknown; n: unknown }>(
        `SELECT status, count(*) AS n FROM ${table} GROUP BY status ORDER BY status`,
      )
      .execute(db)
    process.stderr.write(
      `${backend}: filled in ${((now() - fillStarted) / 1000).toFixed(1)} s: ${counts.rows.map((r) => `status ${r.status}: ${r.n}`).join(', ')} (${pendingIds.length} pending added)\n`,
    )

    // The application: one writer adding 10 events per transaction, one relay claiming 100 and marking them.
    const loops = (latencies: Latencies, stop: { stopped: boolean }) => {
      const writer = (async () => {
        for (let i = 0; !stop.stopped; i++) {
          const started = now()
          await db.transaction().execute((trx) =>
            outbox.add(
              trx,
              Array.from({ length: 10 }, (_, j) => ({
                topic: 'new.events',
                key: `w-${(i + j) % 100}`,
                type: 'New',
                payload: { i, j },
              })),
            ),
          )
          latencies.writes.push(now() - started)
          await sleep(5)
        }
      })()
      const claimer = (async () => {
        while (!stop.stopped) {
          const started = now()
          const claim = await store.claim({ limit: 100, leaseMs: 30_000 })
          if (claim.records.length > 0)
            await store.markPublished(
              claim.token,
              claim.records.map((r) => r.id),
            )
          latencies.claims.push(now() - started)
          await sleep(5)
        }
      })()
      return Promise.all([writer, claimer])
    }

    const baseline: Latencies = { writes: [], claims: [] }
    const baselineStop = { stopped: false }
    const baselineRun = loops(baseline, baselineStop)
    await sleep(BASELINE_MS)
    baselineStop.stopped = true
    await baselineRun

    const during: Latencies = { writes: [], claims: [] }
    const duringStop = { stopped: false }
    const duringRun = loops(during, duringStop)
    const batchMs: number[] = []
    const retention = new Retention({
      outbox: { store, publishedOlderThanMs: 24 * 3_600_000 },
      batchSize: BATCH,
      pauseMs: PAUSE,
      logger: false,
    })
    // Time each batch: the store's purge is the batch.
    const purge = store.purge.bind(store)
    store.purge = async (options) => {
      const started = now()
      try {
        return await purge(options)
      } finally {
        batchMs.push(now() - started)
      }
    }
    const passStarted = now()
    const report = await retention.runOnce()
    const passMs = now() - passStarted
    duringStop.stopped = true
    await duringRun
    const left = await sql
      .raw<{ status: unknown; n: unknown }>(
        `SELECT status, count(*) AS n FROM ${table} WHERE created_at < ${dialect === 'mysql' ? 'NOW(6) - INTERVAL 1 DAY' : "now() - interval '1 day'"} GROUP BY status ORDER BY status`,
      )
      .execute(db)

    const lines = [
      `${backend}: retention pass deleted ${report.published} published rows in ${(passMs / 1000).toFixed(1)} s (${Math.round(report.published / (passMs / 1000))} rows/s), ${report.batches} batches of ${BATCH}, pause ${PAUSE} ms`,
      `  batch (one purge call) ${summary(batchMs)}`,
      `  old rows left: ${left.rows.map((r) => `status ${r.status}: ${r.n}`).join(', ') || 'none'}`,
      `  writes (10 events/tx)  baseline ${summary(baseline.writes)}`,
      `                         during   ${summary(during.writes)}`,
      `  claim+mark (100)       baseline ${summary(baseline.claims)}`,
      `                         during   ${summary(during.claims)}`,
    ]
    process.stdout.write(`${lines.join('\n')}\n`)
  } finally {
    await sql
      .raw(dialect === 'mysql' ? `DROP DATABASE ${q(schema)}` : `DROP SCHEMA ${q(schema)} CASCADE`)
      .execute(db)
    await db.destroy()
  }
}

for (const backend of backends) await run(backend)
