/**
 * The setting of consumer tests: a database (one backend) with the outbox and inbox tables and an
 * `effects` table in its own schema, and a fresh topic. `effects` has no unique constraint, so a
 * side effect applied twice shows up as two rows.
 */
import { type Kysely, sql } from 'kysely'
import {
  createKyselyInboxStore,
  createKyselyOutboxStore,
  ensureOutboxSchema,
} from '../../src/adapters/kysely/index.js'
import {
  createKafkaConsumerRunner,
  type KafkaConsumerRunner,
  type KafkaConsumerRunnerOptions,
} from '../../src/consumers/index.js'
import {
  IdempotentConsumer,
  type IdempotentConsumerOptions,
  type InboundMessage,
  Outbox,
} from '../../src/index.js'
import type { AnyDB, Backend, TestDatabase } from './databases.js'
import { createTopic, kafkaBrokers, testKafka, uniqueName, uniqueTopic } from './kafka.js'

export interface ConsumerWorld {
  readonly database: TestDatabase
  readonly topic: string
  readonly brokers: string[]
  /** Appends one side-effect row for `message` inside `tx` (the handler's usual work). */
  applyEffect(tx: Kysely<AnyDB>, message: InboundMessage): Promise<void>
  /** Side-effect rows per message id, read directly. */
  effects(): Promise<Map<string, number>>
  /** Rows in the inbox for `consumer`, read directly. */
  inboxCount(consumer: string): Promise<number>
  consumer(
    options: Partial<IdempotentConsumerOptions<Kysely<AnyDB>>> &
      Pick<IdempotentConsumerOptions<Kysely<AnyDB>>, 'handler'>,
  ): IdempotentConsumer<Kysely<AnyDB>>
  /** A started runner for `consumer` on the world's topic (fresh group unless given). */
  run(
    consumer: IdempotentConsumer<Kysely<AnyDB>>,
    groupId?: string,
    options?: Pick<
      KafkaConsumerRunnerOptions,
      'mode' | 'batchSize' | 'logger' | 'restart' | 'consumerConfig'
    > & {
      /** Called with the runner before it starts (to subscribe to its first events). */
      onRunner?: (runner: KafkaConsumerRunner) => void
    },
  ): Promise<KafkaConsumerRunner>
  outbox: Outbox<Kysely<AnyDB>>
  close(): Promise<void>
}

export async function openConsumerWorld(
  backend: Backend,
  options: { partitions?: number; brokers?: string[] } = {},
): Promise<ConsumerWorld> {
  const database = await backend.open()
  const { schema, dialect } = database
  await ensureOutboxSchema(database.db, { dialect, schema })
  const q = (name: string) => (dialect === 'mysql' ? `\`${name}\`` : `"${name}"`)
  const effectsTable = `${q(schema)}.${q('effects')}`
  await database.query(
    `CREATE TABLE ${effectsTable} (message_id varchar(255) NOT NULL, detail varchar(255) NOT NULL)`,
  )
  const brokers = options.brokers ?? kafkaBrokers()
  const topic = uniqueTopic('consume')
  await createTopic(brokers, topic, { partitions: options.partitions ?? 2 })
  const inbox = createKyselyInboxStore({ db: database.db, schema })
  const runners: KafkaConsumerRunner[] = []
  return {
    database,
    topic,
    brokers,
    outbox: new Outbox({ store: createKyselyOutboxStore({ db: database.db, schema }) }),
    async applyEffect(tx, message) {
      await sql`INSERT INTO ${sql.raw(effectsTable)} (message_id, detail) VALUES (${message.id}, ${message.type ?? ''})`.execute(
        tx,
      )
    },
    async effects() {
      const rows = await database.query<{ message_id: string; n: unknown }>(
        `SELECT message_id, count(*) AS n FROM ${effectsTable} GROUP BY message_id`,
      )
      return new Map(rows.map((r) => [r.message_id, Number(r.n)]))
    },
    async inboxCount(consumer) {
      const rows = await database.query<{ n: unknown }>(
        `SELECT count(*) AS n FROM ${q(schema)}.${q('outbox_inbox')} WHERE consumer = '${consumer}'`,
      )
      return Number(rows[0]!.n)
    },
    consumer(consumerOptions) {
      return new IdempotentConsumer({
        store: inbox,
        name: 'inventory',
        backoff: { initialMs: 20, maxMs: 100 },
        ...consumerOptions,
      })
    },
    async run(consumer, groupId = uniqueName('group'), { onRunner, consumerConfig, ...runnerOptions } = {}) {
      const runner = createKafkaConsumerRunner({
        ...runnerOptions,
        kafka: testKafka(brokers),
        groupId,
        topics: [topic],
        consumer,
        fromBeginning: true,
        consumerConfig: { maxWaitTimeInMs: 200, ...consumerConfig },
      })
      onRunner?.(runner)
      await runner.start()
      runners.push(runner)
      return runner
    },
    async close() {
      for (const runner of runners) await runner.stop()
      await database.close()
    },
  }
}
