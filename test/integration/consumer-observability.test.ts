/**
 * What the Kafka consumer runner tells its operators, against a real broker and Postgres: its
 * events (rebalance, processed, duplicate, dead, error), `health()` and its log lines.
 */
import { describe, expect, test } from 'bun:test'
import { Partitioners } from 'kafkajs'
import type { KafkaConsumerRunner, KafkaConsumerRunnerEvents } from '../../src/consumers/index.js'
import { ErrorCode, type LogFields, type Logger, uuidv7 } from '../../src/index.js'
import { openConsumerWorld } from '../support/consumer-world.js'
import { postgresJsBackend } from '../support/databases.js'
import { testKafka, uniqueName } from '../support/kafka.js'
import { waitFor } from '../support/relay-world.js'

function record(id: string | undefined, type = 'OrderCreated', key = 'order-1') {
  return {
    key,
    value: JSON.stringify({ id, type }),
    headers: {
      ...(id ? { 'outboxkit-id': id } : {}),
      'outboxkit-type': type,
      'content-type': 'application/json',
    },
  }
}

async function produce(brokers: string[], topic: string, messages: ReturnType<typeof record>[]) {
  const producer = testKafka(brokers).producer({
    idempotent: true,
    maxInFlightRequests: 1,
    createPartitioner: Partitioners.DefaultPartitioner,
  })
  await producer.connect()
  try {
    await producer.send({ topic, acks: -1, messages })
  } finally {
    await producer.disconnect()
  }
}

type Seen = { [E in keyof KafkaConsumerRunnerEvents]: KafkaConsumerRunnerEvents[E][] }

function recordingLogger(): Logger & { lines: { level: string; message: string; fields: LogFields }[] } {
  const lines: { level: string; message: string; fields: LogFields }[] = []
  const at =
    (level: string) =>
    (message: string, fields: LogFields = {}) =>
      lines.push({ level, message, fields })
  return { lines, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') }
}

describe('Kafka consumer runner events and health on postgres.js', () => {
  test.each(['message', 'batch'] as const)(
    'mode %s: rebalance at start, processed, duplicate for a re-sent record, dead for a poison one and one without id; health follows',
    async (mode) => {
      const world = await openConsumerWorld(postgresJsBackend, { partitions: 2 })
      try {
        const good = uuidv7()
        const poison = uuidv7()
        await produce(world.brokers, world.topic, [
          record(good),
          record(good), // re-sent: the same message id
          record(poison, 'Poison'),
          record(undefined, 'NoId'),
        ])
        const consumer = world.consumer({
          maxAttempts: 2,
          handler: async (m, tx) => {
            if (m.type === 'Poison') throw new Error('cannot reserve stock')
            await world.applyEffect(tx, m)
          },
        })
        const logger = recordingLogger()
        const seen: Seen = { processed: [], duplicate: [], dead: [], error: [], rebalance: [] }
        // Subscribed before start: the first rebalance happens while start() joins the group.
        const started = world.run(consumer, undefined, {
          mode,
          logger,
          onRunner: (r) => {
            r.on('processed', (e) => seen.processed.push(e))
            r.on('duplicate', (e) => seen.duplicate.push(e))
            r.on('dead', (e) => seen.dead.push(e))
            r.on('error', (e) => seen.error.push(e))
            r.on('rebalance', (e) => seen.rebalance.push(e))
          },
        })
        const running = await started
        expect(seen.rebalance[0]).toEqual({
          assigned: [{ topic: world.topic, partitions: [0, 1] }],
          revoked: [],
          partitions: [{ topic: world.topic, partitions: [0, 1] }],
        })
        await waitFor(
          'every record settled',
          () => seen.processed.length + seen.duplicate.length + seen.dead.length === 4,
        )

        expect(seen.processed.map((e) => e.message.id)).toEqual([good])
        expect(seen.duplicate.map((e) => e.message.id)).toEqual([good])
        expect(seen.dead.map((e) => e.message.type)).toEqual(['Poison', 'NoId'])
        // All four share a key, so one partition, in order.
        const partition = seen.processed[0]!.partition
        expect(
          [...seen.processed, ...seen.duplicate, ...seen.dead].map((e) => [e.partition, e.offset]),
        ).toEqual([
          [partition, '0'],
          [partition, '1'],
          [partition, '2'],
          [partition, '3'],
        ])
        expect(seen.error).toEqual([])
        expect((await world.effects()).get(good)).toBe(1)

        await waitFor(
          'a successful cycle after the last record',
          () => running.health().lastSuccessAt !== undefined,
        )
        const health = running.health()
        expect(health).toMatchObject({
          running: true,
          consecutiveErrors: 0,
          lastError: undefined,
          partitions: [{ topic: world.topic, partitions: [0, 1] }],
        })
        expect(health.startedAt).toBeInstanceOf(Date)
        expect(logger.lines.filter((l) => l.level === 'warn').map((l) => l.message)).toEqual([
          '[outboxkit] consumer runner record dead-lettered',
          '[outboxkit] consumer runner record dead-lettered',
        ])

        await running.stop()
        expect(seen.rebalance.at(-1)).toEqual({
          assigned: [],
          revoked: [{ topic: world.topic, partitions: [0, 1] }],
          partitions: [],
        })
        expect(running.health()).toMatchObject({ running: false, partitions: [] })
        expect(logger.lines.at(-1)?.message).toBe('[outboxkit] consumer runner stopped')
      } finally {
        await world.close()
      }
    },
    90_000,
  )

  test('with restart: false, a batch that fails with a non-retriable error (its inbox table is gone) is reported, stops consumption visibly, and a restart by hand recovers', async () => {
    const world = await openConsumerWorld(postgresJsBackend, { partitions: 1 })
    const schema = `"${world.database.schema}"`
    try {
      const id = uuidv7()
      const consumer = world.consumer({ maxAttempts: 1, handler: (m, tx) => world.applyEffect(tx, m) })
      const logger = recordingLogger()
      const errors: KafkaConsumerRunnerEvents['error'][] = []
      const processed: string[] = []
      const observe = (r: KafkaConsumerRunner) => {
        r.on('error', (e) => errors.push(e))
        r.on('processed', (e) => processed.push(e.message.id))
      }
      const groupId = uniqueName('group')
      const runner = await world.run(consumer, groupId, { logger, restart: false, onRunner: observe })
      await world.database.query(`ALTER TABLE ${schema}.outbox_inbox RENAME TO outbox_inbox_away`)
      await produce(world.brokers, world.topic, [record(id)])
      // The batch's error, then kafkajs gives up on the consumer: STORE_FAILED is not retriable.
      await waitFor('the consumer stopped by the failed batch', () => errors.some((e) => e.fatal))
      expect(errors.map((e) => [e.fatal, e.partition])).toEqual([
        [false, 0],
        [true, undefined],
      ])
      expect(errors[1]!.error).toBe(errors[0]!.error)
      const failing = runner.health()
      expect(failing).toMatchObject({ running: false, consecutiveErrors: 1, partitions: [] })
      expect(failing.lastError?.code).toBe(ErrorCode.StoreFailed)
      expect(failing.lastError?.message).toContain('outbox_inbox')
      const warned = logger.lines.find((l) => l.level === 'warn' && l.message.includes('batch failed'))
      expect(warned?.fields).toMatchObject({ code: ErrorCode.StoreFailed, topic: world.topic, partition: 0 })
      const stopped = logger.lines.filter((l) => l.level === 'error')
      expect(stopped.map((l) => l.fields['code'])).toEqual([ErrorCode.StoreFailed])
      expect(stopped[0]!.message).toContain('stop() and start()')

      await world.database.query(`ALTER TABLE ${schema}.outbox_inbox_away RENAME TO outbox_inbox`)
      await runner.stop()
      const restarted = await world.run(consumer, groupId, { logger, onRunner: observe })
      await waitFor('the record processed once the inbox is back', () => processed.includes(id), 60_000)
      await waitFor('a successful cycle', () => restarted.health().lastSuccessAt !== undefined)
      expect(restarted.health()).toMatchObject({ running: true, consecutiveErrors: 0, lastError: undefined })
      expect((await world.effects()).get(id)).toBe(1)
    } finally {
      await world.close()
    }
  }, 120_000)
})
