/**
 * M1 write overhead: business transactions with the outbox event(s) added ÷ the same transactions
 * without, 8 concurrent clients, on Postgres (postgres.js) and MariaDB (mysql2). On Postgres also
 * the two ways of writing for a log-tailing relay, in the same rounds: `deleteAfterAdd` (the row
 * inserted and deleted in the transaction) and the table-less mode (`messagePrefix`: a logical
 * decoding message per event, no row).
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

/** The write modes of the outbox on Postgres, beside the default (a row per event). */
const LOG_MODES = {
  delete: { label: 'deleteAfterAdd', store: { deleteAfterAdd: true } },
  message: { label: 'table-less (messagePrefix)', store: { messagePrefix: 'outboxkit:bench' } },
} as const
type LogMode = keyof typeof LOG_MODES

/** The transactions, on `db`. */
function transactions(database: BenchDatabase, db: BenchKysely) {
  const outbox = new Outbox({ store: createKyselyOutboxStore({ db, schema: database.schema }) })
  // Postgres only: MariaDB refuses messagePrefix.
  const logOutboxes = (
    database.dialect === 'postgres'
      ? Object.fromEntries(
          Object.entries(LOG_MODES).map(([mode, { store }]) => [
            mode,
            new Outbox({ store: createKyselyOutboxStore({ db, schema: database.schema, ...store }) }),
          ]),
        )
      : {}
  ) as Record<LogMode, Outbox<unknown>>
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
    /** The same as `withEvents`, written for a log-tailing relay (Postgres only). */
    withLogEvents: (mode: LogMode, count: number) => () =>
      db.transaction().execute(async (trx) => {
        const id = crypto.randomUUID()
        await trx.withSchema(database.schema).insertInto('orders').values(order(id)).execute()
        await logOutboxes[mode].add(trx, events(id, count))
      }),
  }
}

/** Mean time per statement kind over one burst of each transaction, as the driver saw it. */
async function statementTimes(
  database: BenchDatabase,
  durationMs: number,
): Promise<Record<string, Record<string, number>>> {
  const result: Record<string, Record<string, number>> = {}
  const variants: [string, number, LogMode | undefined][] = [
    ['no event', 0, undefined],
    ['1 event', 1, undefined],
    ['10 events', 10, undefined],
  ]
  if (database.dialect === 'postgres') {
    for (const mode of Object.keys(LOG_MODES) as LogMode[]) {
      variants.push([`1 event, ${mode}`, 1, mode], [`10 events, ${mode}`, 10, mode])
    }
  }
  for (const [variant, events, mode] of variants) {
    const times = new StatementTimes()
    // One pool at a time: the server's connections are shared (destroyed again at close).
    const pool = database.pool({ max: 10, log: times.log })
    const tx = transactions(database, pool)
    const run =
      events === 0 ? tx.plain : mode === undefined ? tx.withEvents(events) : tx.withLogEvents(mode, events)
    await burst(Math.min(durationMs, 200), CLIENTS, run) // opens the pool's connections
    times.reset()
    await burst(durationMs, CLIENTS, run)
    result[variant] = times.means()
    await pool.destroy()
  }
  return result
}

async function measureBackend(ctx: Context, backend: BackendName): Promise<MeasurementResult> {
  const database = await openDatabase(backend)
  try {
    const { plain, second, withEvents, withLogEvents } = transactions(database, database.db)
    const { writeMs } = ctx.sizes
    const postgres = database.dialect === 'postgres'
    const steps: Record<string, () => Promise<number>> = {
      none: () => burst(writeMs, CLIENTS, plain),
      one: () => burst(writeMs, CLIENTS, withEvents(1)),
      ten: () => burst(writeMs, CLIENTS, withEvents(10)),
      control: () => burst(writeMs, CLIENTS, second),
    }
    if (postgres) {
      for (const mode of Object.keys(LOG_MODES) as LogMode[]) {
        steps[`${mode}.1`] = () => burst(writeMs, CLIENTS, withLogEvents(mode, 1))
        steps[`${mode}.10`] = () => burst(writeMs, CLIENTS, withLogEvents(mode, 10))
      }
    }
    const result = await rounds({
      warmup: ctx.sizes.warmup,
      repetitions: ctx.sizes.repetitions,
      steps,
      onRound: (round, v) =>
        ctx.log(
          `  M1 ${backend} round ${round}: ${Object.entries(v)
            .map(([name, value]) => `${name} ${value.toFixed(0)}`)
            .join(', ')} tx/s`,
        ),
    })
    const none = result['none']!
    const statements = await statementTimes(database, writeMs)
    const baseline = rate(median(none), 'tx/s')
    const figures: Figure[] = [
      {
        id: `M1.${backend}.1`,
        group: 'M1 write overhead',
        label: `${backend}, 1 event/tx, ${CLIENTS} clients`,
        unit: 'ratio',
        ...ofRounds(ratios(result['one']!, none)),
        measured: rate(median(result['one']!), 'tx/s'),
        baseline,
        target: { op: '>=', value: 0.95 },
      },
      {
        id: `M1.${backend}.10`,
        group: 'M1 write overhead',
        label: `${backend}, 10 events/tx, ${CLIENTS} clients`,
        unit: 'ratio',
        ...ofRounds(ratios(result['ten']!, none)),
        measured: rate(median(result['ten']!), 'tx/s'),
        baseline,
      },
      {
        id: `M1.${backend}.control`,
        group: 'M1 write overhead',
        label: `${backend}, control: a second plain INSERT instead of the event`,
        unit: 'ratio',
        ...ofRounds(ratios(result['control']!, none)),
        measured: rate(median(result['control']!), 'tx/s'),
        baseline,
      },
    ]
    if (postgres) {
      for (const [mode, { label }] of Object.entries(LOG_MODES) as [LogMode, (typeof LOG_MODES)[LogMode]][]) {
        for (const count of [1, 10]) {
          const values = result[`${mode}.${count}`]!
          figures.push({
            id: `M1.${backend}.${mode}.${count}`,
            group: 'M1 write overhead',
            label: `${backend}, ${label}, ${count} event${count === 1 ? '' : 's'}/tx, ${CLIENTS} clients`,
            unit: 'ratio',
            ...ofRounds(ratios(values, none)),
            measured: rate(median(values), 'tx/s'),
            baseline,
          })
        }
      }
    }
    return {
      figures,
      raw: { backend, clients: CLIENTS, burstMs: writeMs, ...result, msPerStatement: statements },
      details: Object.entries(statements)
        .map(([name, times]) => `  ${backend.padEnd(11)} ${name.padEnd(22)} ${formatTimes(times)}`)
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
