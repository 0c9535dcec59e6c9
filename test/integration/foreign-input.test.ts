/**
 * Bad input end to end: a foreign producer (raw kafkajs, not outboxkit) writes records with a
 * malformed and an oversize `traceparent`, header values and a key that are not UTF-8, a body
 * that claims JSON and is not, a hostile message id, and a large body, between good records.
 * The traced consumer runner must process each exactly once, never stop the partition, and start
 * a new trace where the carried context is unusable.
 */
import { describe, expect, test } from 'bun:test'
import { InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base'
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node'
import { sql } from 'kysely'
import { createKafkaConsumerRunner } from '../../src/consumers/index.js'
import { otelConsumerInstrumentation } from '../../src/otel/index.js'
import { openConsumerWorld } from '../support/consumer-world.js'
import { mysqlBackend, postgresJsBackend } from '../support/databases.js'
import { testKafka, uniqueName } from '../support/kafka.js'
import { waitFor } from '../support/relay-world.js'

const TRACE_ID = '4bf92f3577b34da6a3ce929d0e0e4736'
const GOOD_TRACEPARENT = `00-${TRACE_ID}-00f067aa0ba902b7-01`

for (const backend of [postgresJsBackend, mysqlBackend]) {
  describe(`foreign input on ${backend.name}`, () => {
    test('hostile records are each processed once, the partition goes on, bad trace context starts a new trace', async () => {
      const world = await openConsumerWorld(backend, { partitions: 1 })
      const spans = new InMemorySpanExporter()
      const provider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(spans)] })
      provider.register()
      const json = 'application/json'
      const records: {
        id: string
        key: Buffer | string | null
        value: Buffer | string
        headers: Record<string, Buffer | string>
      }[] = [
        {
          id: 'good-1',
          key: 'k',
          value: '{"n":1}',
          headers: { 'content-type': json, traceparent: GOOD_TRACEPARENT },
        },
        {
          id: 'bad-trace',
          key: 'k',
          value: '{"n":2}',
          headers: { 'content-type': json, traceparent: 'not-a-traceparent' },
        },
        {
          id: 'huge-trace',
          key: 'k',
          value: '{"n":3}',
          headers: {
            'content-type': json,
            traceparent: `00-${'a'.repeat(10_000)}-01`,
            tracestate: 'x='.repeat(5_000),
          },
        },
        {
          id: 'not-utf8',
          key: Buffer.from([0xff, 0xfe, 0x41]),
          value: '{"n":4}',
          headers: {
            'content-type': json,
            'outboxkit-type': Buffer.from([0xc3, 0x28]),
            custom: Buffer.from([0x80]),
          },
        },
        { id: 'not-json', key: 'k', value: '{"n": oops', headers: { 'content-type': json } },
        { id: "x'); DROP TABLE effects; --", key: 'k', value: '{"n":6}', headers: { 'content-type': json } },
        {
          id: 'large',
          key: 'k',
          value: JSON.stringify({ blob: 'y'.repeat(500_000) }),
          headers: { 'content-type': json },
        },
        { id: 'good-2', key: 'k', value: '{"n":8}', headers: { 'content-type': json } },
      ]
      const seen = new Map<string, unknown>()
      const consumer = world.consumer({
        instrumentation: otelConsumerInstrumentation({ tracer: provider.getTracer('foreign-input') }),
        handler: async (message, tx) => {
          seen.set(message.id, message.value)
          await world.applyEffect(tx, message)
        },
      })
      const producer = testKafka(world.brokers).producer()
      await producer.connect()
      const runner = createKafkaConsumerRunner({
        kafka: testKafka(world.brokers),
        groupId: uniqueName('foreign'),
        topics: [world.topic],
        consumer,
        fromBeginning: true,
        consumerConfig: { maxWaitTimeInMs: 200, maxBytes: 5_000_000 },
      })
      try {
        await producer.send({
          topic: world.topic,
          messages: records.map((r) => ({
            key: r.key,
            value: r.value,
            headers: { 'outboxkit-id': r.id, ...r.headers },
          })),
        })
        await runner.start()
        await waitFor(
          'every record processed',
          async () => (await world.effects()).size === records.length,
          60_000,
        )
        // Read again from the beginning by a new group of the same consumer: the inbox skips them all.
        await runner.stop()
        const again = createKafkaConsumerRunner({
          kafka: testKafka(world.brokers),
          groupId: uniqueName('foreign-again'),
          topics: [world.topic],
          consumer,
          fromBeginning: true,
          consumerConfig: { maxWaitTimeInMs: 200, maxBytes: 5_000_000 },
        })
        await again.start()
        await waitFor('the second pass deduplicated', async () => {
          const finished = spans.getFinishedSpans().length
          return finished >= 2 * records.length
        })
        await again.stop()

        const effects = await world.effects()
        expect([...effects.keys()].sort()).toEqual(records.map((r) => r.id).sort())
        expect([...effects.values()].every((n) => n === 1)).toBe(true)
        // The hostile id is stored as data, not run as SQL.
        expect(effects.get("x'); DROP TABLE effects; --")).toBe(1)
        // Not JSON despite its content type: the handler got the bytes.
        expect(seen.get('not-json')).toBeInstanceOf(Uint8Array)
        expect(seen.get('good-1')).toEqual({ n: 1 })
        // A usable traceparent continues its trace; a malformed or oversize one starts a new one.
        const first = (id: string) =>
          spans.getFinishedSpans().find((s) => s.attributes['messaging.message.id'] === id)!
        expect(first('good-1').spanContext().traceId).toBe(TRACE_ID)
        for (const id of ['bad-trace', 'huge-trace']) {
          expect(first(id).spanContext().traceId).not.toBe(TRACE_ID)
          expect(first(id).parentSpanContext).toBeUndefined()
        }
        // Not UTF-8: decoded with replacement characters, processed like any other record.
        expect(first('not-utf8').attributes['messaging.kafka.message.key']).toBe('\ufffd\ufffdA')
        const rows = await sql<{ n: unknown }>`SELECT count(*) AS n FROM ${sql.raw(
          world.database.dialect === 'mysql'
            ? `\`${world.database.schema}\`.\`effects\``
            : `"${world.database.schema}"."effects"`,
        )}`.execute(world.database.db)
        expect(Number(rows.rows[0]!.n)).toBe(records.length)
      } finally {
        await runner.stop().catch(() => {})
        await producer.disconnect()
        await provider.shutdown()
        await world.close()
      }
    }, 120_000)
  })
}
