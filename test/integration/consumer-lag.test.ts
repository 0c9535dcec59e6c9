/**
 * A Kafka consumer runner's lag per partition and its outcome counters as OpenTelemetry metrics,
 * against a real broker and Postgres, read through an in-memory metric reader.
 */
import { describe, expect, test } from 'bun:test'
import type { Attributes } from '@opentelemetry/api'
import { MeterProvider, MetricReader } from '@opentelemetry/sdk-metrics'
import { Partitioners } from 'kafkajs'
import { uuidv7 } from '../../src/index.js'
import { otelConsumerInstrumentation, otelConsumerRunnerMetrics } from '../../src/otel/index.js'
import { openConsumerWorld } from '../support/consumer-world.js'
import { postgresJsBackend } from '../support/databases.js'
import { testKafka } from '../support/kafka.js'
import { waitFor } from '../support/relay-world.js'

/** A reader that collects when asked, as a Prometheus scrape does. */
class ScrapeReader extends MetricReader {
  protected override async onShutdown(): Promise<void> {}
  protected override async onForceFlush(): Promise<void> {}
}

interface Point {
  readonly value: number
  readonly attributes: Attributes
}

async function scrape(reader: ScrapeReader): Promise<Map<string, Point[]>> {
  const { resourceMetrics } = await reader.collect()
  const found = new Map<string, Point[]>()
  for (const scope of resourceMetrics.scopeMetrics)
    for (const metric of scope.metrics)
      found.set(
        metric.descriptor.name,
        metric.dataPoints.map((p) => ({ value: p.value as number, attributes: p.attributes })),
      )
  return found
}

describe('Kafka consumer runner lag as an OpenTelemetry gauge', () => {
  test('lag per partition grows while a slow handler holds a backlog, and reads 0 once it drains; outcomes are counted per partition', async () => {
    const world = await openConsumerWorld(postgresJsBackend, { partitions: 2 })
    const reader = new ScrapeReader()
    const meter = new MeterProvider({ readers: [reader] }).getMeter('test')
    let release = () => {}
    try {
      const total = 20
      const producer = testKafka(world.brokers).producer({
        idempotent: true,
        maxInFlightRequests: 1,
        createPartitioner: Partitioners.DefaultPartitioner,
      })
      await producer.connect()
      await producer.send({
        topic: world.topic,
        acks: -1,
        messages: Array.from({ length: total }, () => ({
          partition: 1,
          key: 'order-1',
          value: '{}',
          headers: { 'outboxkit-id': uuidv7(), 'outboxkit-type': 'OrderCreated' },
        })),
      })
      await producer.disconnect()

      let handled = 0
      const gate = new Promise<void>((resolve) => {
        release = resolve
      })
      const consumer = world.consumer({
        instrumentation: otelConsumerInstrumentation({ meter }),
        handler: async (m, tx) => {
          // The first five go through; the sixth waits until the test lets it.
          if (++handled > 5) await gate
          await world.applyEffect(tx, m)
        },
      })
      let processed = 0
      const runner = await world.run(consumer, undefined, {
        onRunner: (r) => {
          r.on('processed', () => processed++)
          otelConsumerRunnerMetrics(r, { meter })
        },
      })
      await waitFor('five processed, the sixth in hand', () => processed === 5 && handled === 6)

      const lagOf = (points: Point[] | undefined, partition: string) =>
        points?.find((p) => p.attributes['messaging.destination.partition.id'] === partition)
      const held = await scrape(reader)
      const busy = lagOf(held.get('outboxkit.consumer.lag'), '1')
      expect(busy?.value).toBe(total - 5)
      expect(busy?.attributes).toEqual({
        'messaging.system': 'kafka',
        'messaging.consumer.group.name': runner.groupName,
        'messaging.destination.name': world.topic,
        'messaging.destination.partition.id': '1',
      })
      // The empty partition is assigned too: nothing behind.
      expect(lagOf(held.get('outboxkit.consumer.lag'), '0')?.value).toBe(0)
      expect(runner.health().lag).toEqual([
        { topic: world.topic, partition: 0, offset: '0', highWatermark: '0', lag: 0 },
        { topic: world.topic, partition: 1, offset: '5', highWatermark: String(total), lag: total - 5 },
      ])

      release()
      await waitFor('the backlog drained', () => processed === total)
      await waitFor('lag 0 once the last offset is resolved', async () => {
        const points = (await scrape(reader)).get('outboxkit.consumer.lag')
        return lagOf(points, '1')?.value === 0
      })
      expect(runner.health().lag.find((l) => l.partition === 1)).toMatchObject({
        offset: String(total),
        lag: 0,
      })
      const counted = (await scrape(reader)).get('outboxkit.consumer.processed')
      expect(counted).toEqual([
        {
          value: total,
          attributes: {
            'messaging.system': 'kafka',
            'messaging.consumer.group.name': 'inventory',
            'messaging.destination.name': world.topic,
            'messaging.destination.partition.id': '1',
          },
        },
      ])
      expect((await world.effects()).size).toBe(total)
    } finally {
      release()
      await world.close()
    }
  }, 120_000)
})
