/**
 * What the NATS consumer runner tells its operators, against the real server and Postgres: the
 * same typed events as the Kafka runner (processed, duplicate, dead, error), health(), and its lag
 * from the durable consumer's info, as an OpenTelemetry gauge.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { jetstream } from '@nats-io/jetstream'
import { headers, type NatsConnection } from '@nats-io/transport-node'
import { MeterProvider, MetricReader } from '@opentelemetry/sdk-metrics'
import { type Kysely, sql } from 'kysely'
import { createKyselyInboxStore, ensureOutboxSchema } from '../../src/adapters/kysely/index.js'
import {
  createNatsConsumerRunner,
  createNatsTransport,
  NATS_KEY_HEADER,
  type NatsConsumerRunnerEvents,
} from '../../src/adapters/nats/index.js'
import { ErrorCode, IdempotentConsumer, uuidv7 } from '../../src/index.js'
import { otelConsumerRunnerMetrics } from '../../src/otel/index.js'
import { type AnyDB, postgresJsBackend } from '../support/databases.js'
import { createStream, deleteStream, natsConnect, uniqueNatsName } from '../support/nats.js'
import { waitFor } from '../support/relay-world.js'

class ScrapeReader extends MetricReader {
  protected override async onShutdown(): Promise<void> {}
  protected override async onForceFlush(): Promise<void> {}
}

let nc: NatsConnection
beforeAll(async () => {
  nc = await natsConnect()
})
afterAll(async () => {
  await nc?.close()
})

type Seen = { [E in keyof NatsConsumerRunnerEvents]: NatsConsumerRunnerEvents[E][] }

describe('NATS consumer runner events, health and lag', () => {
  test('processed, duplicate, dead and error events as the Kafka runner has them; health follows a store failure and its recovery; lag drains to 0', async () => {
    const database = await postgresJsBackend.open()
    const { schema } = database
    await ensureOutboxSchema(database.db, { dialect: 'postgres', schema })
    await database.query(`CREATE TABLE "${schema}"."effects" (id text NOT NULL)`)
    const stream = uniqueNatsName('ops-observe')
    const dead = `${stream}-dead`
    await createStream(nc, stream, [stream])
    await createStream(nc, dead, [dead])
    const transport = createNatsTransport({ connection: nc })
    const reader = new ScrapeReader()
    const meter = new MeterProvider({ readers: [reader] }).getMeter('test')
    const js = jetstream(nc)
    const send = async (id: string | undefined, type = 'E') => {
      const h = headers()
      h.set(NATS_KEY_HEADER, 'order-1')
      h.set('outboxkit-type', type)
      if (id) h.set('outboxkit-id', id)
      await js.publish(stream, new TextEncoder().encode('{}'), { headers: h })
    }
    const runner = createNatsConsumerRunner({
      connection: nc,
      stream,
      durable: 'ops-inventory',
      ackWaitMs: 1_000,
      logger: false,
      consumer: new IdempotentConsumer<Kysely<AnyDB>>({
        store: createKyselyInboxStore({ db: database.db, schema }),
        name: 'inventory',
        maxAttempts: 2,
        backoff: { initialMs: 20, maxMs: 20 },
        deadLetter: { topic: dead, transport },
        handler: async (message, tx) => {
          if (message.type === 'Poison') throw new Error('cannot reserve stock')
          await sql`INSERT INTO ${sql.raw(`"${schema}"."effects"`)} (id) VALUES (${message.id})`.execute(tx)
        },
      }),
    })
    const seen: Seen = { processed: [], duplicate: [], dead: [], error: [] }
    runner.on('processed', (e) => seen.processed.push(e))
    runner.on('duplicate', (e) => seen.duplicate.push(e))
    runner.on('dead', (e) => seen.dead.push(e))
    runner.on('error', (e) => seen.error.push(e))
    const stopMetrics = otelConsumerRunnerMetrics(runner, { meter, system: 'nats' })
    const gauge = async () => {
      const { resourceMetrics } = await reader.collect()
      const metric = resourceMetrics.scopeMetrics
        .flatMap((s) => s.metrics)
        .find((m) => m.descriptor.name === 'outboxkit.consumer.lag')
      return metric?.dataPoints.map((p) => ({ value: p.value, attributes: p.attributes }))
    }
    try {
      expect(runner.health()).toMatchObject({ running: false, startedAt: undefined })
      const good = uuidv7()
      await send(good)
      await send(good) // the same message id again
      await send(uuidv7(), 'Poison')
      await send(undefined, 'NoId')
      await runner.start()
      expect(runner.health()).toMatchObject({ running: true, stream, durable: 'ops-inventory' })
      await waitFor(
        'all four settled',
        () => seen.processed.length + seen.duplicate.length + seen.dead.length === 4,
      )
      expect(seen.processed.map((e) => [e.message.id, e.stream, e.subject, e.seq])).toEqual([
        [good, stream, stream, 1],
      ])
      expect(seen.duplicate.map((e) => [e.message.id, e.seq])).toEqual([[good, 2]])
      expect(seen.dead.map((e) => e.seq)).toEqual([3, 4])
      expect(seen.error).toEqual([])
      await waitFor('the last ack counted', async () => (await runner.lag())[0]?.lag === 0)
      expect(await gauge()).toEqual([
        {
          value: 0,
          attributes: {
            'messaging.system': 'nats',
            'messaging.consumer.group.name': 'ops-inventory',
            'messaging.destination.name': stream,
          },
        },
      ])
      expect(runner.health()).toMatchObject({ consecutiveErrors: 0, lastError: undefined })
      expect(runner.health().lastSuccessAt).toBeInstanceOf(Date)

      // The inbox table gone: processing fails, the message is delivered again, health counts it.
      await database.query(`ALTER TABLE "${schema}".outbox_inbox RENAME TO outbox_inbox_away`)
      const later = uuidv7()
      await send(later)
      await waitFor('two failed deliveries', () => seen.error.length >= 2)
      expect(seen.error[0]).toMatchObject({ fatal: false, topic: stream, subject: stream, seq: 5 })
      const failing = runner.health()
      expect(failing.consecutiveErrors).toBeGreaterThanOrEqual(2)
      expect(failing.lastError?.code).toBe(ErrorCode.StoreFailed)
      expect((await runner.lag())[0]?.lag).toBe(1)
      expect((await gauge())?.[0]?.value).toBe(1)
      await database.query(`ALTER TABLE "${schema}".outbox_inbox_away RENAME TO outbox_inbox`)
      // Settled once the table is back: processed, or dead when the table came back while a
      // delivery that had spent its two attempts was being dead-lettered (its inbox record is
      // then written).
      await waitFor(
        'settled once the table is back',
        () => [...seen.processed, ...seen.dead].some((e) => e.message.id === later),
        30_000,
      ).catch((error: unknown) => {
        const last = seen.error.at(-1)
        throw new Error(
          `${String(error)}: ${seen.error.length} errors (last: ${String(last?.error)}), health ${JSON.stringify(runner.health())}`,
        )
      })
      expect(runner.health()).toMatchObject({ running: true, consecutiveErrors: 0 })
      await runner.stop()
      expect(runner.health().running).toBe(false)
    } finally {
      stopMetrics()
      await runner.stop()
      await transport.close()
      await deleteStream(nc, stream)
      await deleteStream(nc, dead)
      await database.close()
    }
  }, 90_000)
})
