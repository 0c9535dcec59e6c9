/**
 * M1 write overhead: business transactions with the outbox event(s) added ÷ the same transactions
 * without, 8 concurrent clients, on Postgres (postgres.js) and MariaDB (mysql2).
 */
import { createKyselyOutboxStore } from '../src/adapters/kysely/index.js'
import { Outbox, type OutboxMessageInput } from '../src/index.js'
import { type Context, type Figure, type MeasurementResult, ofRounds, rate } from './lib/context.js'
import { type BackendName, type BenchDatabase, type BenchKysely, openDatabase } from './lib/db.js'
import { formatTimes, StatementTimes } from './lib/statements.js'
import { median, now, ratios, rounds } from './lib/stats.js'

const CLIENTS = 8

/** Runs `clients` loops of `tx` for `durationMs`; returns transactions per second. */
async function burst(durationMs: number, clients: number, tx: () => Promise<void>): Promise<number> {
  let count = 0
  const started = now()
  const deadline = started + durationMs
  await Promise.all(
    Array.from({ length: clients }, async () => {
      while (now() < deadline) {
        await tx()
        count++
      }
    }),
  )
  return count / ((now() - started) / 1000)
}

function order(id: string) {
  return { id, customer: `customer-${id.slice(0, 4)}`, total: 123.45, items: 2 }
}

function events(orderId: string, count: number): OutboxMessageInput[] {
  return Array.from({ length: count }, (_, i) => ({
    topic: 'order.events',
    key: orderId,
    type: i === 0 ? 'OrderCreated' : 'OrderLineAdded',
    payload: { ...order(orderId), line: i },
  }))
}

/** The three transactions, on `db`. */
function transactions(database: BenchDatabase, db: BenchKysely) {
  const outbox = new Outbox({ store: createKyselyOutboxStore({ db, schema: database.schema }) })
  return {
    plain: () =>
      db.transaction().execute(async (trx) => {
        await trx
          .withSchema(database.schema)
          .insertInto('orders')
          .values(order(crypto.randomUUID()))
          .execute()
      }),
    /** Control: one more plain statement (a narrow row) instead of the event. */
    second: () =>
      db.transaction().execute(async (trx) => {
        const id = crypto.randomUUID()
        await trx.withSchema(database.schema).insertInto('orders').values(order(id)).execute()
        await trx
          .withSchema(database.schema)
          .insertInto('effects')
          .values({ message_id: id, detail: 'OrderCreated' })
          .execute()
      }),
    withEvents: (count: number) => () =>
      db.transaction().execute(async (trx) => {
        const id = crypto.randomUUID()
        await trx.withSchema(database.schema).insertInto('orders').values(order(id)).execute()
        await outbox.add(trx, events(id, count))
      }),
  }
}

/** Mean time per statement kind over one burst of each transaction, as the driver saw it. */
async function statementTimes(
  database: BenchDatabase,
  durationMs: number,
): Promise<Record<string, Record<string, number>>> {
  const result: Record<string, Record<string, number>> = {}
  for (const [variant, events] of [
    ['no event', 0],
    ['1 event', 1],
    ['10 events', 10],
  ] as const) {
    const times = new StatementTimes()
    const tx = transactions(database, database.pool({ max: 10, log: times.log }))
    const run = events === 0 ? tx.plain : tx.withEvents(events)
    await burst(Math.min(durationMs, 200), CLIENTS, run) // opens the pool's connections
    times.reset()
    await burst(durationMs, CLIENTS, run)
    result[variant] = times.means()
  }
  return result
}

async function measureBackend(ctx: Context, backend: BackendName): Promise<MeasurementResult> {
  const database = await openDatabase(backend)
  try {
    const { plain, second, withEvents } = transactions(database, database.db)
    const { writeMs } = ctx.sizes
    const result = await rounds({
      warmup: ctx.sizes.warmup,
      repetitions: ctx.sizes.repetitions,
      steps: {
        none: () => burst(writeMs, CLIENTS, plain),
        one: () => burst(writeMs, CLIENTS, withEvents(1)),
        ten: () => burst(writeMs, CLIENTS, withEvents(10)),
        control: () => burst(writeMs, CLIENTS, second),
      },
      onRound: (round, v) =>
        ctx.log(
          `  M1 ${backend} round ${round}: no event ${v.none.toFixed(0)} tx/s, 1 event ${v.one.toFixed(0)}, 10 events ${v.ten.toFixed(0)}, control ${v.control.toFixed(0)}`,
        ),
    })
    const statements = await statementTimes(database, writeMs)
    const baseline = rate(median(result.none), 'tx/s')
    const figures: Figure[] = [
      {
        id: `M1.${backend}.1`,
        group: 'M1 write overhead',
        label: `${backend}, 1 event/tx, ${CLIENTS} clients`,
        unit: 'ratio',
        ...ofRounds(ratios(result.one, result.none)),
        measured: rate(median(result.one), 'tx/s'),
        baseline,
        target: { op: '>=', value: 0.95 },
      },
      {
        id: `M1.${backend}.10`,
        group: 'M1 write overhead',
        label: `${backend}, 10 events/tx, ${CLIENTS} clients`,
        unit: 'ratio',
        ...ofRounds(ratios(result.ten, result.none)),
        measured: rate(median(result.ten), 'tx/s'),
        baseline,
      },
      {
        id: `M1.${backend}.control`,
        group: 'M1 write overhead',
        label: `${backend}, control: a second plain INSERT instead of the event`,
        unit: 'ratio',
        ...ofRounds(ratios(result.control, result.none)),
        measured: rate(median(result.control), 'tx/s'),
        baseline,
      },
    ]
    return {
      figures,
      raw: { backend, clients: CLIENTS, burstMs: writeMs, ...result, msPerStatement: statements },
      details: Object.entries(statements)
        .map(([name, times]) => `  ${backend.padEnd(11)} ${name.padEnd(9)} ${formatTimes(times)}`)
        .join('\n'),
    }
  } finally {
    await database.close()
  }
}

export async function runM1(ctx: Context): Promise<MeasurementResult> {
  const figures: Figure[] = []
  const raw: Record<string, unknown> = {}
  const details = [`M1, ms per statement as the driver saw it (${CLIENTS} clients):`, '']
  for (const backend of ['postgres.js', 'mariadb'] as const) {
    const result = await measureBackend(ctx, backend)
    figures.push(...result.figures)
    raw[backend] = result.raw
    if (result.details) details.push(result.details)
  }
  return { figures, raw, details: details.join('\n') }
}
