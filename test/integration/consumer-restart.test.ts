/**
 * A Kafka consumer runner that survives a fatal error: it restarts its consumer with a backoff
 * (seen in health()), or, past `maxAttempts`, stops for good and makes its Lifecycle fail.
 * Against a real broker (stopped and started again) and Postgres.
 */

import { describe, expect, test } from 'bun:test'
import { execFileSync } from 'node:child_process'
import { Partitioners } from 'kafkajs'
import type { KafkaConsumerRunnerEvents } from '../../src/consumers/index.js'
import { ErrorCode, Lifecycle, uuidv7 } from '../../src/index.js'
import { openConsumerWorld } from '../support/consumer-world.js'
import { postgresJsBackend } from '../support/databases.js'
import { testKafka, uniqueName } from '../support/kafka.js'
import { waitFor } from '../support/relay-world.js'

async function produce(brokers: string[], topic: string, ids: string[]) {
  const producer = testKafka(brokers).producer({
    idempotent: true,
    maxInFlightRequests: 1,
    createPartitioner: Partitioners.DefaultPartitioner,
  })
  await producer.connect()
  try {
    await producer.send({
      topic,
      acks: -1,
      messages: ids.map((id) => ({ key: 'order-1', value: '{}', headers: { 'outboxkit-id': id } })),
    })
  } finally {
    await producer.disconnect()
  }
}

const quickRestart = { initialMs: 200, maxMs: 1_000 }
/** kafkajs gives up on its consumer fast, so the runner's restart is what is tested. */
const shortRetries = { retry: { retries: 1, initialRetryTime: 100, maxRetryTime: 300 } }

describe('Kafka consumer runner after a fatal error', () => {
  test('a non-retriable batch error (the inbox table is gone) crashes the consumer; the runner restarts it with a backoff until the table is back, and health shows it', async () => {
    const world = await openConsumerWorld(postgresJsBackend, { partitions: 1 })
    const schema = `"${world.database.schema}"`
    try {
      const id = uuidv7()
      const consumer = world.consumer({ maxAttempts: 1, handler: (m, tx) => world.applyEffect(tx, m) })
      const errors: KafkaConsumerRunnerEvents['error'][] = []
      const processed: string[] = []
      const runner = await world.run(consumer, uniqueName('group'), {
        restart: quickRestart,
        logger: false,
        onRunner: (r) => {
          r.on('error', (e) => errors.push(e))
          r.on('processed', (e) => processed.push(e.message.id))
        },
      })
      await world.database.query(`ALTER TABLE ${schema}.outbox_inbox RENAME TO outbox_inbox_away`)
      await produce(world.brokers, world.topic, [id])
      await waitFor('two restarts that crashed again', () => runner.health().restarts >= 2, 60_000)
      expect(errors.every((e) => !e.fatal)).toBe(true)
      const crashes = errors.filter((e) => e.restartInMs !== undefined)
      expect(crashes.length).toBeGreaterThanOrEqual(2)
      expect(crashes.every((e) => (e.restartInMs ?? 0) > 0 && (e.restartInMs ?? 0) <= 1_000)).toBe(true)
      const failing = runner.health()
      expect(failing.consecutiveErrors).toBeGreaterThanOrEqual(2)
      expect(failing.lastError?.code).toBe(ErrorCode.StoreFailed)

      await world.database.query(`ALTER TABLE ${schema}.outbox_inbox_away RENAME TO outbox_inbox`)
      await waitFor('the record processed once the inbox is back', () => processed.includes(id), 60_000)
      await waitFor('a successful cycle', () => runner.health().consecutiveErrors === 0)
      expect(runner.health()).toMatchObject({ running: true, restartAt: undefined })
      expect((await world.effects()).get(id)).toBe(1)
    } finally {
      await world.close()
    }
  }, 120_000)

  test('past maxAttempts restarts in a row it stops for good: a fatal error event, and its Lifecycle fails', async () => {
    const world = await openConsumerWorld(postgresJsBackend, { partitions: 1 })
    const schema = `"${world.database.schema}"`
    try {
      const consumer = world.consumer({ maxAttempts: 1, handler: (m, tx) => world.applyEffect(tx, m) })
      const errors: KafkaConsumerRunnerEvents['error'][] = []
      await world.database.query(`ALTER TABLE ${schema}.outbox_inbox RENAME TO outbox_inbox_away`)
      await produce(world.brokers, world.topic, [uuidv7()])
      const runner = await world.run(consumer, uniqueName('group'), {
        restart: { ...quickRestart, maxAttempts: 2 },
        logger: false,
        onRunner: (r) => r.on('error', (e) => errors.push(e)),
      })
      // The world started it; a Lifecycle of its own watches it (start() of a running runner would throw).
      const watched = {
        start: async () => {},
        stop: () => runner.stop(),
        health: () => runner.health(),
        onFatal: (l: (e: unknown) => void) => runner.onFatal(l),
      }
      const lifecycle = new Lifecycle({ runners: [watched], logger: false })
      await lifecycle.start()
      const failure = await lifecycle.failed
      expect(failure.name).toBe('runner[0]')
      expect(errors.filter((e) => e.fatal)).toHaveLength(1)
      expect(errors.at(-1)?.fatal).toBe(true)
      expect(runner.health()).toMatchObject({ running: false, restarts: 2, restartAt: undefined })
      expect((await lifecycle.stop()).clean).toBe(true)
    } finally {
      await world.close()
    }
  }, 120_000)

  test('the broker stopped past kafkajs retries: the runner keeps restarting, reports it, and consumes again once the broker is back', async () => {
    // A broker of its own, so stopping it disturbs no other test (files run side by side).
    const port = '9220'
    const kafkaScript = (...args: string[]) =>
      execFileSync('bash', ['scripts/kafka', ...args], {
        env: { ...process.env, KAFKA_PORT: port, KAFKA_BROKERS: '' },
        stdio: 'pipe',
      })
    kafkaScript('start')
    const world = await openConsumerWorld(postgresJsBackend, {
      partitions: 1,
      brokers: [`127.0.0.1:${port}`],
    })
    let brokerDown = false
    try {
      const before = uuidv7()
      const after = uuidv7()
      const consumer = world.consumer({ handler: (m, tx) => world.applyEffect(tx, m) })
      const errors: KafkaConsumerRunnerEvents['error'][] = []
      const processed: string[] = []
      const runner = await world.run(consumer, uniqueName('group'), {
        restart: { initialMs: 500, maxMs: 2_000 },
        logger: false,
        consumerConfig: shortRetries,
        onRunner: (r) => {
          r.on('error', (e) => errors.push(e))
          r.on('processed', (e) => processed.push(e.message.id))
        },
      })
      await produce(world.brokers, world.topic, [before])
      await waitFor('the first record processed', () => processed.includes(before), 30_000)

      kafkaScript('kill', '1')
      brokerDown = true
      await waitFor(
        'a crash the runner restarts from',
        () => errors.some((e) => e.restartInMs !== undefined),
        90_000,
      )
      await waitFor(
        'a restart that failed too',
        () => runner.health().restarts >= 1 && runner.health().consecutiveErrors >= 2,
        60_000,
      )
      expect(runner.health().running).toBe(false)
      expect(errors.some((e) => e.fatal)).toBe(false)

      kafkaScript('restart-node', '1')
      brokerDown = false
      await produce(world.brokers, world.topic, [after])
      await waitFor('the record sent after the outage processed', () => processed.includes(after), 90_000)
      await waitFor(
        'healthy again',
        () => runner.health().running && runner.health().consecutiveErrors === 0,
        30_000,
      )
      expect((await world.effects()).get(before)).toBe(1)
      expect((await world.effects()).get(after)).toBe(1)
    } finally {
      if (brokerDown) kafkaScript('restart-node', '1')
      await world.close()
      kafkaScript('stop')
    }
  }, 300_000)
})
