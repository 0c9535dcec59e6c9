/**
 * A diagnostic behind docs/benchmarks.md: the Postgres statements of a relay batch at batch 1000
 * over 10 000 keys, written as the store writes them (one bind parameter per row in an IN list)
 * and with one array parameter (`= ANY($1)`), on the same table, alternated, each in a
 * transaction that is rolled back so every run sees the same rows.
 *
 *   bun bench/claim-statements.ts [--repetitions 15]
 *
 * With `--blocked [--backend postgres.js|mariadb]`: the time of a whole `claim({ limit: 500 })`
 * when one key's head waits for a long retry, with 2 100 and with 50 000 rows of that key queued
 * in front of 200 ready rows of 200 other keys, to show the claim does not grow with the backlog
 * (and, for comparison, the same 200 rows with no blocked key).
 */
import { type RawBuilder, sql } from 'kysely'
import { createKyselyOutboxStore } from '../src/adapters/kysely/index.js'
import { Outbox } from '../src/index.js'
import { type BackendName, openDatabase } from './lib/db.js'
import { silenceNegativeTimeoutWarnings } from './lib/kafka.js'
import { fillOutbox } from './lib/relay.js'
import { median, now } from './lib/stats.js'

silenceNegativeTimeoutWarnings()

const i = process.argv.indexOf('--repetitions')
const repetitions = i > 0 ? Number(process.argv[i + 1]) : 15
const BATCH = 1000
const KEYS = 10_000

class Rollback extends Error {}

if (process.argv.includes('--blocked')) {
  const b = process.argv.indexOf('--backend')
  await blockedBacklog(b > 0 ? (process.argv[b + 1] as BackendName) : 'postgres.js')
  process.exit(0)
}

async function blockedBacklog(backend: BackendName): Promise<void> {
  const database = await openDatabase(backend)
  try {
    const store = createKyselyOutboxStore({ db: database.db, schema: database.schema })
    const outbox = new Outbox({ store })
    for (const backlog of [0, 2_100, 50_000]) {
      await database.resetOutbox()
      for (let start = 0; start < backlog; start += 1000) {
        const n = Math.min(1000, backlog - start)
        await store.transaction((trx) =>
          outbox.add(
            trx,
            Array.from({ length: n }, () => ({ topic: 't', key: 'busy', type: 'e', payload: {} })),
          ),
        )
      }
      await store.transaction((trx) =>
        outbox.add(
          trx,
          Array.from({ length: 200 }, (_, k) => ({ topic: 't', key: `k${k}`, type: 'e', payload: {} })),
        ),
      )
      await database.analyze('outbox')
      if (backlog > 0) {
        const head = await store.claim({ limit: 1, leaseMs: 60_000 })
        await store.markFailed(head.token, [{ id: head.records[0]!.id, error: 'x', retryInMs: 3_600_000 }])
      }
      const times: number[] = []
      let claimed = 0
      for (let round = -3; round < repetitions; round++) {
        const started = now()
        const claim = await store.claim({ limit: 500, leaseMs: 30_000 })
        const elapsed = now() - started
        claimed = claim.records.length
        await store.release(claim.token)
        if (round >= 0) times.push(elapsed)
      }
      console.log(
        `${backend}, blocked key with ${backlog} rows: claim(500) ${median(times).toFixed(2)} ms, ${claimed} records`,
      )
    }
  } finally {
    await database.close()
  }
}

const database = await openDatabase('postgres.js')
try {
  await fillOutbox(database, 'bench-claim-statements', 4 * BATCH * 2, KEYS)
  const outbox = sql.raw(database.table('outbox'))
  const window = (
    await sql<{
      seq: string
      key: string
    }>`SELECT seq, key FROM ${outbox} WHERE status = 0 ORDER BY seq LIMIT ${4 * BATCH}`.execute(database.db)
  ).rows
  const seen = new Set<string>()
  const heads = window.filter((r) => !seen.has(r.key) && seen.add(r.key)).map((r) => r.seq)
  const chosen = window.slice(0, BATCH).map((r) => r.seq)
  const ids = (
    await sql<{ id: string }>`SELECT id FROM ${outbox} WHERE seq IN (${sql.join(chosen)})`.execute(
      database.db,
    )
  ).rows.map((r) => r.id)

  const statements: Record<string, () => RawBuilder<unknown>> = {
    'lock heads, IN list': () =>
      sql`SELECT seq FROM ${outbox} o WHERE o.seq IN (${sql.join(heads)}) AND o.status = 0 FOR UPDATE SKIP LOCKED`,
    'lock heads, = ANY(array)': () =>
      sql`SELECT seq FROM ${outbox} o WHERE o.seq = ANY(${heads}::bigint[]) AND o.status = 0 FOR UPDATE SKIP LOCKED`,
    'lock first 1000 heads, ANY': () =>
      sql`SELECT seq FROM ${outbox} o WHERE o.seq = ANY(${heads}::bigint[]) AND o.status = 0
        ORDER BY o.seq LIMIT ${BATCH} FOR UPDATE SKIP LOCKED`,
    'lease, IN list': () =>
      sql`UPDATE ${outbox} SET attempts = attempts + 1, lease_until = now() + interval '30 seconds',
        claim_token = ${crypto.randomUUID()} WHERE seq IN (${sql.join(chosen)}) AND status = 0
        RETURNING seq, id, topic, key, type, payload, headers, attempts, created_at`,
    'lease, = ANY(array)': () =>
      sql`UPDATE ${outbox} SET attempts = attempts + 1, lease_until = now() + interval '30 seconds',
        claim_token = ${crypto.randomUUID()} WHERE seq = ANY(${chosen}::bigint[]) AND status = 0
        RETURNING seq, id, topic, key, type, payload, headers, attempts, created_at`,
    'settle, IN list': () =>
      sql`UPDATE ${outbox} SET status = 1, published_at = now(), lease_until = NULL, claim_token = NULL
        WHERE id IN (${sql.join(ids)}) RETURNING id`,
    'settle, = ANY(array)': () =>
      sql`UPDATE ${outbox} SET status = 1, published_at = now(), lease_until = NULL, claim_token = NULL
        WHERE id = ANY(${ids}::uuid[]) RETURNING id`,
  }
  const times: Record<string, number[]> = Object.fromEntries(Object.keys(statements).map((k) => [k, []]))
  for (let round = -3; round < repetitions; round++) {
    for (const [name, statement] of Object.entries(statements)) {
      let elapsed = 0
      await database.db
        .transaction()
        .execute(async (trx) => {
          const started = now()
          await statement().execute(trx)
          elapsed = now() - started
          throw new Rollback()
        })
        .catch((error: unknown) => {
          if (!(error instanceof Rollback)) throw error
        })
      if (round >= 0) times[name]!.push(elapsed)
    }
  }
  console.log(
    `Postgres, batch ${BATCH}, ${KEYS} keys: ${heads.length} heads in the window, ${chosen.length} rows leased`,
  )
  for (const [name, values] of Object.entries(times))
    console.log(`  ${name.padEnd(28)} ${median(values).toFixed(2)} ms`)
} finally {
  await database.close()
}
process.exit(0)
