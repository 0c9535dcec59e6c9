/** The OpenTelemetry instrumentation's spans and metrics, on the memory reference adapters. */
import { describe, expect, test } from 'bun:test'
import { context, trace } from '@opentelemetry/api'
import {
  AggregationTemporality,
  InMemoryMetricExporter,
  MeterProvider,
  PeriodicExportingMetricReader,
} from '@opentelemetry/sdk-metrics'
import { InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base'
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node'
import {
  MemoryChangeFeed,
  MemoryChangeLog,
  MemoryDatabase,
  MemoryInboxStore,
  MemoryOutboxStore,
  MemoryTransport,
} from '../../src/adapters/memory/index.js'
import { IdempotentConsumer, inboundMessage, LogRelay, Outbox, Relay } from '../../src/index.js'
import {
  otelConsumerInstrumentation,
  otelRelayInstrumentation,
  otelTraceCapture,
  sanitizeTraceHeaders,
} from '../../src/otel/index.js'

function telemetry() {
  const spans = new InMemorySpanExporter()
  const tracerProvider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(spans)] })
  // Registers the async context manager and the W3C propagator, as an application does.
  tracerProvider.register()
  const metricExporter = new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE)
  const reader = new PeriodicExportingMetricReader({
    exporter: metricExporter,
    exportIntervalMillis: 3_600_000,
  })
  const meterProvider = new MeterProvider({ readers: [reader] })
  return {
    spans,
    tracer: tracerProvider.getTracer('test'),
    meter: meterProvider.getMeter('test'),
    async metrics(): Promise<Record<string, number>> {
      await reader.forceFlush()
      const values: Record<string, number> = {}
      for (const resource of metricExporter.getMetrics()) {
        for (const scope of resource.scopeMetrics) {
          for (const metric of scope.metrics) {
            for (const point of metric.dataPoints) {
              const value = point.value as number | { count: number }
              values[metric.descriptor.name] = typeof value === 'number' ? value : value.count
            }
          }
        }
      }
      return values
    },
  }
}

describe('OpenTelemetry instrumentation', () => {
  test('malformed or oversized trace headers are dropped, never fatal', () => {
    const valid = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'
    expect(sanitizeTraceHeaders({ traceparent: valid, tracestate: 'a=b' })).toEqual({
      traceparent: valid,
      tracestate: 'a=b',
    })
    expect(sanitizeTraceHeaders({ traceparent: 'garbage', tracestate: 'a=b' })).toEqual({})
    expect(
      sanitizeTraceHeaders({ traceparent: '00-00000000000000000000000000000000-b7ad6b7169203331-01' }),
    ).toEqual({})
    expect(sanitizeTraceHeaders({ traceparent: valid, tracestate: 'x'.repeat(600), baggage: 'k=v' })).toEqual(
      {
        traceparent: valid,
        baggage: 'k=v',
      },
    )
  })

  test('processBatch: each handler call runs in its message span; a batch handler runs in one span linked to every message', async () => {
    const t = telemetry()
    const parents = ['0af7651916cd43dd8448eb211c80319c', '1af7651916cd43dd8448eb211c80319d'].map(
      (traceId, i) => ({
        traceId,
        spanId: `b7ad6b716920333${i}`,
      }),
    )
    const messages = parents.map((p, i) =>
      inboundMessage({
        id: `m-${i}`,
        topic: 'orders',
        key: 'k',
        payload: new Uint8Array(0),
        headers: { traceparent: `00-${p.traceId}-${p.spanId}-01`, 'outboxkit-type': 'A' },
      }),
    )
    const seen: (string | undefined)[] = []
    const perMessage = new IdempotentConsumer({
      store: new MemoryInboxStore(new MemoryDatabase()),
      name: 'inventory',
      instrumentation: otelConsumerInstrumentation({ tracer: t.tracer, meter: t.meter }),
      handler: async () => {
        seen.push(trace.getActiveSpan()?.spanContext().traceId)
      },
    })
    await perMessage.processBatch(messages)
    expect(seen).toEqual(parents.map((p) => p.traceId))

    const batched = new IdempotentConsumer({
      store: new MemoryInboxStore(new MemoryDatabase()),
      name: 'inventory',
      instrumentation: otelConsumerInstrumentation({ tracer: t.tracer, meter: t.meter }),
      batchHandler: async () => {
        seen.push(trace.getActiveSpan()?.spanContext().spanId)
      },
    })
    t.spans.reset()
    await batched.processBatch(messages)
    const [span] = t.spans.getFinishedSpans()
    expect(span?.name).toBe('process orders')
    expect(span?.attributes['messaging.batch.message_count']).toBe(2)
    expect(span?.links.map((l) => l.context.spanId)).toEqual(parents.map((p) => p.spanId))
    expect(seen[2]).toBe(span?.spanContext().spanId)
  })

  test('without a registered SDK nothing is captured and nothing fails', async () => {
    const store = new MemoryOutboxStore(new MemoryDatabase())
    const outbox = new Outbox({ store, tracing: otelTraceCapture() })
    await store.transaction((tx) => outbox.add(tx, { topic: 't', key: 'k', type: 'A', payload: 1 }))
    expect(store.rows[0]!.record.headers['traceparent']).toBeUndefined()
  })

  test('runOnce samples the backlog: pending and dead gauges for a scheduled relay without a loop', async () => {
    const t = telemetry()
    const store = new MemoryOutboxStore(new MemoryDatabase())
    const transport = new MemoryTransport({ maxPayloadBytes: 20 })
    const outbox = new Outbox({ store })
    await store.transaction((tx) =>
      outbox.add(tx, [
        { topic: 'orders', key: 'big', type: 'A', payload: 'x'.repeat(100) },
        { topic: 'orders', key: 'a', type: 'A', payload: 1 },
        { topic: 'orders', key: 'b', type: 'A', payload: 2 },
      ]),
    )
    const relay = new Relay({
      store,
      transport,
      batchSize: 2,
      lagIntervalMs: 1,
      logger: false,
      instrumentation: otelRelayInstrumentation({ tracer: t.tracer, meter: t.meter }),
    })
    // First run samples 3 pending (before it claims), publishes 'a' and kills 'big'.
    await relay.runOnce()
    let values = await t.metrics()
    expect([values['outboxkit.relay.pending'], values['outboxkit.relay.dead']]).toEqual([3, 0])
    await new Promise((r) => setTimeout(r, 5))
    await relay.runOnce()
    values = await t.metrics()
    expect([values['outboxkit.relay.pending'], values['outboxkit.relay.dead']]).toEqual([1, 1])
  })

  test('relay and consumer report spans and metrics: published, duration, lag, processed, deduplicated, dead', async () => {
    const t = telemetry()
    const db = new MemoryDatabase()
    const store = new MemoryOutboxStore(db)
    const transport = new MemoryTransport()
    const outbox = new Outbox({ store, tracing: otelTraceCapture() })
    const root = t.tracer.startSpan('request')
    await context.with(trace.setSpan(context.active(), root), () =>
      store.transaction((tx) => outbox.add(tx, { topic: 'orders', key: 'k', type: 'A', payload: 1 })),
    )
    root.end()
    expect(store.rows[0]!.record.headers['traceparent']).toBe(
      `00-${root.spanContext().traceId}-${root.spanContext().spanId}-01`,
    )
    const relay = new Relay({
      store,
      transport,
      lagIntervalMs: 1,
      instrumentation: otelRelayInstrumentation({ tracer: t.tracer, meter: t.meter }),
    })
    await relay.runOnce()
    const send = t.spans.getFinishedSpans().find((s) => s.name === 'send orders')!
    expect(send.links.map((l) => l.context.spanId)).toEqual([root.spanContext().spanId])
    expect(send.attributes['messaging.message.id']).toBe(store.rows[0]!.record.id)

    let calls = 0
    const consumer = new IdempotentConsumer({
      store: new MemoryInboxStore(db),
      name: 'inventory',
      maxAttempts: 1,
      instrumentation: otelConsumerInstrumentation({ tracer: t.tracer, meter: t.meter }),
      handler: async (m) => {
        calls++
        if (m.type === 'Poison') throw new Error('no')
      },
    })
    const delivered = transport.delivered[0]!
    const message = (id: string, type: string) =>
      inboundMessage({
        id,
        topic: 'orders',
        key: 'k',
        payload: delivered.payload,
        headers: { ...delivered.headers, 'outboxkit-type': type },
      })
    await consumer.process(message(delivered.id, 'A'))
    await consumer.process(message(delivered.id, 'A'))
    await consumer.process(message('other', 'Poison'))
    expect(calls).toBe(2)
    const processSpans = t.spans.getFinishedSpans().filter((s) => s.name === 'process orders')
    expect(processSpans.map((s) => s.attributes['outboxkit.outcome'])).toEqual([
      'processed',
      'duplicate',
      'dead',
    ])
    expect(processSpans[0]!.parentSpanContext?.spanId).toBe(root.spanContext().spanId)
    expect(processSpans[2]!.attributes['error.type']).toBe('HANDLER_FAILED')

    // Lag is sampled on the relay's loop; run it briefly so a sample is taken.
    await relay.start()
    await new Promise((r) => setTimeout(r, 30))
    await relay.stop()
    const values = await t.metrics()
    expect(values['outboxkit.relay.published']).toBe(1)
    expect(values['outboxkit.relay.publish.duration']).toBe(1)
    expect(values['outboxkit.relay.lag']).toBe(0)
    expect(values['outboxkit.consumer.processed']).toBe(1)
    expect(values['outboxkit.consumer.deduplicated']).toBe(1)
    expect(values['outboxkit.consumer.dead_lettered']).toBe(1)
  })

  test('a log relay reports its feed lag as gauges: outboxkit.relay.feed.lag (bytes) and .age (ms)', async () => {
    const t = telemetry()
    const log = new MemoryChangeLog()
    const transport = new MemoryTransport()
    transport.throwWith = () => new Error('broker down')
    const payload = new Uint8Array(300)
    log.commit([{ id: 'id-1', topic: 'orders', key: 'k', type: 'A', payload, headers: {} }])
    const relay = new LogRelay({
      feed: new MemoryChangeFeed(log),
      transport,
      pollIntervalMs: 5,
      lagIntervalMs: 1,
      backoff: { initialMs: 5, maxMs: 5, multiplier: 1 },
      logger: false,
      instrumentation: otelRelayInstrumentation({ tracer: t.tracer, meter: t.meter }),
    })
    await relay.start()
    const end = Date.now() + 5_000
    while ((relay.health().lag?.ageMs ?? 0) === 0 && Date.now() < end)
      await new Promise((r) => setTimeout(r, 5))
    await relay.stop()
    const values = await t.metrics()
    expect(values['outboxkit.relay.feed.lag']).toBe(300)
    expect(values['outboxkit.relay.feed.age']).toBeGreaterThan(0)
  })
})
