/**
 * M5 consumer overhead: messages/s over the same pre-produced topic for
 *   - the IdempotentConsumer (inbox row + one business write per message, one transaction),
 *   - the same runner and business write without the inbox (a processor that runs the write in
 *     its own transaction),
 *   - a bare kafkajs consumer whose eachMessage does nothing;
 * and, on a topic with ten times the messages (a batch run of the small topic would time little
 * more than the first fetch), the runner in batch mode:
 *   - the IdempotentConsumer's processBatch (one inbox statement, then each write, one
 *     transaction per fetch chunk),
 *   - the same batches without the inbox (each write, one transaction per chunk);
 * on Postgres (postgres.js) and MariaDB. Each run uses a fresh consumer group and reads the topic
 * from the beginning; the clock runs from the group join to the last message handled.
 */

import { type Consumer, type ConsumerConfig, Kafka, type KafkaConfig, logLevel } from 'kafkajs'
import { sql } from 'kysely'
import { createKyselyInboxStore } from '../src/adapters/kysely/index.js'
import { createKafkaConsumerRunner, type KafkaConsumerRunnerOptions } from '../src/consumers/index.js'
import { IdempotentConsumer, type InboundMessage, type MessageProcessor } from '../src/index.js'
import { type Context, type Figure, type MeasurementResult, ofRounds, rate } from './lib/context.js'
import { type BenchDatabase, type BenchKysely, openDatabase } from './lib/db.js'
import { freshTopic, kafkaBrokers, rawProducer, sendRaw, testKafka, uniqueName } from './lib/kafka.js'
import { formatTimes, StatementTimes } from './lib/statements.js'
import { median, now, ratios, rounds, sleep } from './lib/stats.js'

const PARTITIONS = 4
const CONCURRENCY = 4
const CONSUMER_CONFIG = { maxWaitTimeInMs: 100 } satisfies Partial<ConsumerConfig>

/** A kafkajs client that notes when each consumer it makes joins its group. */
class JoinClock extends Kafka {
  joinedAt: number | undefined

  constructor(config: KafkaConfig) {
    super(config)
  }

  override consumer(config: ConsumerConfig): Consumer {
    const consumer = super.consumer(config)
    consumer.on(consumer.events.GROUP_JOIN, () => {
      this.joinedAt ??= now()
    })
    return consumer
  }
}

function clock(): JoinClock {
  return new JoinClock({
    clientId: 'outboxkit-bench',
    brokers: kafkaBrokers(),
    logLevel: logLevel.NOTHING,
    connectionTimeout: 5_000,
  })
}

async function effect(database: BenchDatabase, tx: BenchKysely, message: InboundMessage): Promise<void> {
  await tx
    .withSchema(database.schema)
    .insertInto('effects')
    .values({ message_id: message.id, detail: message.type ?? '' })
    .execute()
}

/** The business write of a whole batch as one multi-row INSERT: what a `batchHandler` can do. */
async function effects(
  database: BenchDatabase,
  tx: BenchKysely,
  messages: readonly InboundMessage[],
): Promise<void> {
  await tx
    .withSchema(database.schema)
    .insertInto('effects')
    .values(messages.map((message) => ({ message_id: message.id, detail: message.type ?? '' })))
    .execute()
}

/** The batched handler without the inbox: the same writes, one transaction per batch. */
function batchedWithoutInbox(
  database: BenchDatabase,
  db: BenchKysely,
  counted: () => void,
  rows: 'statement per message' | 'one statement',
): MessageProcessor {
  return {
    async process() {
      throw new Error('M5: the batch baseline runs in batch mode only')
    },
    async deadLetter() {},
    async processBatch(messages, options) {
      await db.transaction().execute(async (tx) => {
        if (rows === 'one statement') await effects(database, tx, messages)
        else for (const message of messages) await effect(database, tx, message)
      })
      options?.onDurable?.(messages.length)
      for (const _ of messages) counted()
      return messages.map(() => 'processed' as const)
    },
  }
}

/** Waits until `handled()` reaches `count`; returns messages/s from the group join. */
async function until(
  kafka: JoinClock,
  count: number,
  handled: () => number,
  last: () => number,
): Promise<number> {
  const deadline = now() + 120_000
  while (handled() < count) {
    if (now() > deadline) throw new Error(`M5: ${handled()} of ${count} messages handled within 120 s`)
    await sleep(5)
  }
  return count / ((last() - kafka.joinedAt!) / 1000)
}

export async function runM5(ctx: Context): Promise<MeasurementResult> {
  const count = ctx.sizes.consumeMessages
  // Batch runs need more messages than per-message ones to time more than the first fetches.
  const batchCount = count * 10
  const rowsCount = count * 40
  const databases = { postgres: await openDatabase('postgres.js'), mariadb: await openDatabase('mariadb') }
  const topic = await freshTopic('bench-consume', PARTITIONS)
  const batchTopic = await freshTopic('bench-consume-batch', PARTITIONS)
  const rowsTopic = await freshTopic('bench-consume-rows', PARTITIONS)
  try {
    const producer = await rawProducer(testKafka())
    await sendRaw(producer, topic, 0, count, 500, count)
    await sendRaw(producer, batchTopic, 0, batchCount, 500, batchCount)
    await sendRaw(producer, rowsTopic, 0, rowsCount, 500, rowsCount)
    await producer.disconnect()

    const viaRunner = async (
      processor: (counted: () => void) => MessageProcessor,
      runnerOptions: Pick<KafkaConsumerRunnerOptions, 'mode'> = {},
      rows = false,
    ): Promise<number> => {
      let handled = 0
      let last = 0
      const kafka = clock()
      const batch = runnerOptions.mode === 'batch'
      const [feed, messages] = rows
        ? [rowsTopic, rowsCount]
        : batch
          ? [batchTopic, batchCount]
          : [topic, count]
      const runner = createKafkaConsumerRunner({
        kafka,
        groupId: uniqueName('bench-consume'),
        topics: [feed],
        consumer: processor(() => {
          handled++
          last = now()
        }),
        fromBeginning: true,
        partitionsConcurrently: CONCURRENCY,
        consumerConfig: CONSUMER_CONFIG,
        ...runnerOptions,
      })
      await runner.start()
      try {
        return await until(
          kafka,
          messages,
          () => handled,
          () => last,
        )
      } finally {
        await runner.stop()
      }
    }

    const idempotent = (
      database: BenchDatabase,
      mode: 'message' | 'batch' | 'batch, one statement',
      db: BenchKysely = database.db,
    ) =>
      viaRunner(
        (counted) => {
          const consumer = new IdempotentConsumer<BenchKysely>({
            store: createKyselyInboxStore({ db, schema: database.schema }),
            // A fresh name per run: the inbox already holds every id from the runs before.
            name: uniqueName('bench'),
            ...(mode === 'batch, one statement'
              ? {
                  batchHandler: (messages: readonly InboundMessage[], tx: BenchKysely) =>
                    effects(database, tx, messages),
                }
              : { handler: (message: InboundMessage, tx: BenchKysely) => effect(database, tx, message) }),
          })
          consumer.on('processed', counted)
          return consumer
        },
        { mode: mode === 'message' ? 'message' : 'batch' },
        mode === 'batch, one statement',
      )

    const withoutInbox = (database: BenchDatabase, db: BenchKysely = database.db) =>
      viaRunner((counted) => ({
        async process(message) {
          await db.transaction().execute((tx) => effect(database, tx, message))
          counted()
          return 'processed'
        },
        async deadLetter() {},
      }))

    const batchWithoutInbox = (database: BenchDatabase, db: BenchKysely = database.db) =>
      viaRunner((counted) => batchedWithoutInbox(database, db, counted, 'statement per message'), {
        mode: 'batch',
      })
    const batchRowsWithoutInbox = (database: BenchDatabase, db: BenchKysely = database.db) =>
      viaRunner(
        (counted) => batchedWithoutInbox(database, db, counted, 'one statement'),
        { mode: 'batch' },
        true,
      )

    /** Control: no inbox, but a second plain INSERT in the transaction where the inbox row would go. */
    const secondWrite = (database: BenchDatabase, db: BenchKysely = database.db) =>
      viaRunner((counted) => ({
        async process(message) {
          await db.transaction().execute(async (tx) => {
            await effect(database, tx, message)
            await effect(database, tx, message)
          })
          counted()
          return 'processed'
        },
        async deadLetter() {},
      }))

    const bare = async (): Promise<number> => {
      let handled = 0
      let last = 0
      const kafka = clock()
      const consumer = kafka.consumer({ groupId: uniqueName('bench-consume'), ...CONSUMER_CONFIG })
      await consumer.connect()
      await consumer.subscribe({ topics: [topic], fromBeginning: true })
      await consumer.run({
        partitionsConsumedConcurrently: CONCURRENCY,
        eachMessage: async () => {
          handled++
          last = now()
        },
      })
      try {
        return await until(
          kafka,
          count,
          () => handled,
          () => last,
        )
      } finally {
        await consumer.disconnect()
      }
    }

    const { postgres: pg, mariadb: maria } = databases
    const result = await rounds({
      warmup: ctx.sizes.warmup,
      repetitions: ctx.sizes.repetitions,
      steps: {
        bare,
        withoutInbox: () => withoutInbox(pg),
        idempotent: () => idempotent(pg, 'message'),
        secondWrite: () => secondWrite(pg),
        batchWithoutInbox: () => batchWithoutInbox(pg),
        batchIdempotent: () => idempotent(pg, 'batch'),
        rowsWithoutInbox: () => batchRowsWithoutInbox(pg),
        rowsIdempotent: () => idempotent(pg, 'batch, one statement'),
        mariadbIdempotent: () => idempotent(maria, 'message'),
        mariadbBatchWithoutInbox: () => batchWithoutInbox(maria),
        mariadbBatchIdempotent: () => idempotent(maria, 'batch'),
        mariadbRowsWithoutInbox: () => batchRowsWithoutInbox(maria),
        mariadbRowsIdempotent: () => idempotent(maria, 'batch, one statement'),
      },
      onRound: (round, v) =>
        ctx.log(
          `  M5 round ${round}: bare ${v.bare.toFixed(0)}, without inbox ${v.withoutInbox.toFixed(0)}, idempotent ${v.idempotent.toFixed(0)}, control ${v.secondWrite.toFixed(0)}, batch without inbox ${v.batchWithoutInbox.toFixed(0)}, batch idempotent ${v.batchIdempotent.toFixed(0)}, one-statement batch without inbox ${v.rowsWithoutInbox.toFixed(0)}, idempotent ${v.rowsIdempotent.toFixed(0)}; mariadb idempotent ${v.mariadbIdempotent.toFixed(0)}, batch without inbox ${v.mariadbBatchWithoutInbox.toFixed(0)}, batch idempotent ${v.mariadbBatchIdempotent.toFixed(0)}, one-statement batch without inbox ${v.mariadbRowsWithoutInbox.toFixed(0)}, idempotent ${v.mariadbRowsIdempotent.toFixed(0)} msg/s`,
        ),
    })
    // Where the time goes: one more run of each, on a pool that logs, as ms per statement and,
    // for batches (whose statements each serve many messages), driver ms per message.
    const statements: Record<string, Record<string, number>> = {}
    const perMessage: Record<string, Record<string, number>> = {}
    for (const [name, database, run, messages] of [
      ['without inbox', pg, (db: BenchKysely) => withoutInbox(pg, db), count],
      ['idempotent', pg, (db: BenchKysely) => idempotent(pg, 'message', db), count],
      ['batch without inbox', pg, (db: BenchKysely) => batchWithoutInbox(pg, db), batchCount],
      ['batch idempotent', pg, (db: BenchKysely) => idempotent(pg, 'batch', db), batchCount],
      ['batchHandler without inbox', pg, (db: BenchKysely) => batchRowsWithoutInbox(pg, db), rowsCount],
      [
        'batchHandler idempotent',
        pg,
        (db: BenchKysely) => idempotent(pg, 'batch, one statement', db),
        rowsCount,
      ],
      ['mariadb idempotent', maria, (db: BenchKysely) => idempotent(maria, 'message', db), count],
      ['mariadb batch without inbox', maria, (db: BenchKysely) => batchWithoutInbox(maria, db), batchCount],
      ['mariadb batch idempotent', maria, (db: BenchKysely) => idempotent(maria, 'batch', db), batchCount],
      [
        'mariadb batchHandler without inbox',
        maria,
        (db: BenchKysely) => batchRowsWithoutInbox(maria, db),
        rowsCount,
      ],
      [
        'mariadb batchHandler idempotent',
        maria,
        (db: BenchKysely) => idempotent(maria, 'batch, one statement', db),
        rowsCount,
      ],
    ] as const) {
      const times = new StatementTimes()
      const pool = database.pool({ log: times.log })
      await Promise.all(Array.from({ length: CONCURRENCY }, () => sql`SELECT 1`.execute(pool)))
      times.reset()
      await run(pool)
      statements[name] = times.means()
      perMessage[name] = times.totalsPer(messages)
    }
    const batchFigure = (
      id: string,
      label: string,
      measured: readonly number[],
      baseline: readonly number[],
      target?: { op: '>='; value: number },
    ): Figure => ({
      id,
      group: 'M5 consumer overhead',
      label,
      unit: 'ratio',
      ...ofRounds(ratios(measured, baseline)),
      measured: rate(median(measured), 'msg/s'),
      baseline: rate(median(baseline), 'msg/s'),
      ...(target ? { target } : {}),
    })
    const figures: Figure[] = [
      {
        id: 'M5.idempotent.plain',
        group: 'M5 consumer overhead',
        label: 'postgres.js: IdempotentConsumer ÷ same write without inbox',
        unit: 'ratio',
        ...ofRounds(ratios(result.idempotent, result.withoutInbox)),
        measured: rate(median(result.idempotent), 'msg/s'),
        baseline: rate(median(result.withoutInbox), 'msg/s'),
        target: { op: '>=', value: 0.85 },
      },
      {
        id: 'M5.control',
        group: 'M5 consumer overhead',
        label: 'postgres.js, control: a second plain INSERT instead of the inbox row',
        unit: 'ratio',
        ...ofRounds(ratios(result.secondWrite, result.withoutInbox)),
        measured: rate(median(result.secondWrite), 'msg/s'),
        baseline: rate(median(result.withoutInbox), 'msg/s'),
      },
      {
        id: 'M5.plain.bare',
        group: 'M5 consumer overhead',
        label: 'postgres.js: without inbox ÷ bare kafkajs (no-op)',
        unit: 'ratio',
        ...ofRounds(ratios(result.withoutInbox, result.bare)),
        measured: rate(median(result.withoutInbox), 'msg/s'),
        baseline: rate(median(result.bare), 'msg/s'),
      },
      {
        id: 'M5.idempotent.bare',
        group: 'M5 consumer overhead',
        label: 'postgres.js: IdempotentConsumer ÷ bare kafkajs (no-op)',
        unit: 'ratio',
        ...ofRounds(ratios(result.idempotent, result.bare)),
        measured: rate(median(result.idempotent), 'msg/s'),
        baseline: rate(median(result.bare), 'msg/s'),
      },
      batchFigure(
        'M5.batch.speedup',
        'postgres.js: IdempotentConsumer, batch mode ÷ per-message mode',
        result.batchIdempotent,
        result.idempotent,
        { op: '>=', value: 10 },
      ),
      batchFigure(
        'M5.batch.plain',
        'postgres.js: batch mode ÷ same batched writes without inbox',
        result.batchIdempotent,
        result.batchWithoutInbox,
        { op: '>=', value: 0.85 },
      ),
      batchFigure(
        'M5.batch.bare',
        'postgres.js: batch mode ÷ bare kafkajs (no-op)',
        result.batchIdempotent,
        result.bare,
      ),
      batchFigure(
        'M5.batchHandler.speedup',
        'postgres.js: batchHandler (one INSERT per batch) ÷ per-message mode',
        result.rowsIdempotent,
        result.idempotent,
        { op: '>=', value: 10 },
      ),
      batchFigure(
        'M5.batchHandler.plain',
        'postgres.js: batchHandler ÷ same one-INSERT batches without inbox',
        result.rowsIdempotent,
        result.rowsWithoutInbox,
        { op: '>=', value: 0.85 },
      ),
      batchFigure(
        'M5.batchHandler.bare',
        'postgres.js: batchHandler ÷ bare kafkajs (no-op)',
        result.rowsIdempotent,
        result.bare,
      ),
      batchFigure(
        'M5.mariadb.batch.speedup',
        'mariadb: IdempotentConsumer, batch mode ÷ per-message mode',
        result.mariadbBatchIdempotent,
        result.mariadbIdempotent,
        { op: '>=', value: 10 },
      ),
      batchFigure(
        'M5.mariadb.batch.plain',
        'mariadb: batch mode ÷ same batched writes without inbox',
        result.mariadbBatchIdempotent,
        result.mariadbBatchWithoutInbox,
        { op: '>=', value: 0.85 },
      ),
      batchFigure(
        'M5.mariadb.batchHandler.speedup',
        'mariadb: batchHandler (one INSERT per batch) ÷ per-message mode',
        result.mariadbRowsIdempotent,
        result.mariadbIdempotent,
        { op: '>=', value: 10 },
      ),
      batchFigure(
        'M5.mariadb.batchHandler.plain',
        'mariadb: batchHandler ÷ same one-INSERT batches without inbox',
        result.mariadbRowsIdempotent,
        result.mariadbRowsWithoutInbox,
        { op: '>=', value: 0.85 },
      ),
    ]
    const width = Math.max(...Object.keys(statements).map((name) => name.length)) + 1
    return {
      figures,
      raw: {
        messages: count,
        batchMessages: batchCount,
        batchHandlerMessages: rowsCount,
        partitions: PARTITIONS,
        concurrency: CONCURRENCY,
        ...result,
        msPerStatement: statements,
        driverMsPerMessage: perMessage,
      },
      details: [
        `M5, ms per statement as the driver saw it (4 partitions handled concurrently; batch runs: ${batchCount} messages, batchHandler runs: ${rowsCount}):`,
        '',
        ...Object.entries(statements).map(([name, times]) => `  ${name.padEnd(width)} ${formatTimes(times)}`),
        '',
        'M5, driver ms per message, by statement (a batch statement serves every message of its batch):',
        '',
        ...Object.entries(perMessage).map(
          ([name, times]) => `  ${name.padEnd(width)} ${formatTimes(times, 3)}`,
        ),
      ].join('\n'),
    }
  } finally {
    await databases.postgres.close()
    await databases.mariadb.close()
  }
}
