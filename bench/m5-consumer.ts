/**
 * M5 consumer overhead: messages/s over the same pre-produced topic for
 *   - the IdempotentConsumer (inbox row + one business write per message, one transaction),
 *   - the same runner and business write without the inbox (a processor that runs the write in
 *     its own transaction),
 *   - a bare kafkajs consumer whose eachMessage does nothing.
 * Each run uses a fresh consumer group and reads the topic from the beginning; the clock runs from
 * the group join to the last message handled.
 */

import { type Consumer, type ConsumerConfig, Kafka, type KafkaConfig, logLevel } from 'kafkajs'
import { sql } from 'kysely'
import { createKyselyInboxStore } from '../src/adapters/kysely/index.js'
import { createKafkaConsumerRunner } from '../src/consumers/index.js'
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
  const database = await openDatabase('postgres.js')
  const topic = await freshTopic('bench-consume', PARTITIONS)
  try {
    const producer = await rawProducer(testKafka())
    await sendRaw(producer, topic, 0, count, 500, count)
    await producer.disconnect()

    const viaRunner = async (processor: (counted: () => void) => MessageProcessor): Promise<number> => {
      let handled = 0
      let last = 0
      const kafka = clock()
      const runner = createKafkaConsumerRunner({
        kafka,
        groupId: uniqueName('bench-consume'),
        topics: [topic],
        consumer: processor(() => {
          handled++
          last = now()
        }),
        fromBeginning: true,
        partitionsConcurrently: CONCURRENCY,
        consumerConfig: CONSUMER_CONFIG,
      })
      await runner.start()
      try {
        return await until(
          kafka,
          count,
          () => handled,
          () => last,
        )
      } finally {
        await runner.stop()
      }
    }

    const idempotent = (db: BenchKysely = database.db) =>
      viaRunner((counted) => {
        const consumer = new IdempotentConsumer({
          store: createKyselyInboxStore({ db, schema: database.schema }),
          // A fresh name per run: the inbox already holds every id from the runs before.
          name: uniqueName('bench'),
          handler: (message, tx) => effect(database, tx, message),
        })
        consumer.on('processed', counted)
        return consumer
      })

    const withoutInbox = (db: BenchKysely = database.db) =>
      viaRunner((counted) => ({
        async process(message) {
          await db.transaction().execute((tx) => effect(database, tx, message))
          counted()
          return 'processed'
        },
        async deadLetter() {},
      }))

    /** Control: no inbox, but a second plain INSERT in the transaction where the inbox row would go. */
    const secondWrite = (db: BenchKysely = database.db) =>
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

    const result = await rounds({
      warmup: ctx.sizes.warmup,
      repetitions: ctx.sizes.repetitions,
      steps: {
        bare,
        withoutInbox: () => withoutInbox(),
        idempotent: () => idempotent(),
        secondWrite: () => secondWrite(),
      },
      onRound: (round, v) =>
        ctx.log(
          `  M5 round ${round}: bare ${v.bare.toFixed(0)}, without inbox ${v.withoutInbox.toFixed(0)}, idempotent ${v.idempotent.toFixed(0)}, control ${v.secondWrite.toFixed(0)} msg/s`,
        ),
    })
    // Where a message's transaction spends its time: one more run of each, on a pool that logs.
    const statements: Record<string, Record<string, number>> = {}
    for (const [name, run] of [
      ['without inbox', withoutInbox],
      ['idempotent', idempotent],
    ] as const) {
      const times = new StatementTimes()
      const pool = database.pool({ log: times.log })
      await Promise.all(Array.from({ length: CONCURRENCY }, () => sql`SELECT 1`.execute(pool)))
      times.reset()
      await run(pool)
      statements[name] = times.means()
    }
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
    ]
    return {
      figures,
      raw: {
        messages: count,
        partitions: PARTITIONS,
        concurrency: CONCURRENCY,
        ...result,
        msPerStatement: statements,
      },
      details: [
        'M5, ms per statement as the driver saw it (4 partitions handled concurrently):',
        '',
        ...Object.entries(statements).map(([name, times]) => `  ${name.padEnd(13)} ${formatTimes(times)}`),
      ].join('\n'),
    }
  } finally {
    await database.close()
  }
}
