/**
 * OpenTelemetry for outboxkit, through `@opentelemetry/api` only: without a registered SDK every
 * call here is a no-op.
 *
 * - {@link otelTraceCapture}: `new Outbox({ store, tracing: otelTraceCapture() })` stores the
 *   active W3C trace context (`traceparent`, `tracestate`, `baggage`) with each event.
 * - {@link otelRelayInstrumentation}: a `send <topic>` span per published batch, linked to each
 *   event's stored context, plus publish metrics and relay lag.
 * - {@link otelConsumerInstrumentation}: a `process <topic>` span per message whose parent is the
 *   context the message carries, so the handler's spans continue the writer's trace.
 * - {@link otelConsumerRunnerMetrics}: a consumer runner's lag per partition and its errors.
 */
import {
  type Attributes,
  context,
  type Link,
  type Meter,
  metrics,
  propagation,
  ROOT_CONTEXT,
  type Span,
  SpanKind,
  SpanStatusCode,
  type Tracer,
  trace,
} from '@opentelemetry/api'
import type { FeedLag } from '../core/change-feed.js'
import type { ConsumerInstrumentation, InboundMessage, ProcessOutcome } from '../core/consumer.js'
import type { ObservableConsumerRunner } from '../core/consumer-runner.js'
import { isOutboxKitError } from '../core/errors.js'
import { type ClaimedRecord, Headers } from '../core/message.js'
import type { TraceContextCapture } from '../core/outbox.js'
import type { RelayEvents, RelayInstrumentation } from '../core/relay.js'
import type { PublishOutcome } from '../core/transport.js'

const INSTRUMENTATION_NAME = 'outboxkit'
const INSTRUMENTATION_VERSION = '0.1.0'

/** W3C limits: a valid `traceparent`, a `tracestate` of at most 512 characters, `baggage` of at most 8 KiB. */
const TRACEPARENT = /^[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$/
const MAX_TRACESTATE = 512
const MAX_BAGGAGE = 8192

/**
 * Keeps only well-formed trace headers: a malformed or oversized value is dropped, never fatal,
 * and never stored or forwarded.
 */
export function sanitizeTraceHeaders(headers: Readonly<Record<string, string>>): Record<string, string> {
  const result: Record<string, string> = {}
  const traceparent = headers[Headers.traceparent]
  if (typeof traceparent !== 'string' || !TRACEPARENT.test(traceparent)) return result
  result[Headers.traceparent] = traceparent
  const tracestate = headers[Headers.tracestate]
  if (typeof tracestate === 'string' && tracestate.length <= MAX_TRACESTATE)
    result[Headers.tracestate] = tracestate
  const baggage = headers[Headers.baggage]
  if (typeof baggage === 'string' && baggage.length <= MAX_BAGGAGE) result[Headers.baggage] = baggage
  return result
}

/** Captures the active context with the registered propagator (W3C by default). */
export function otelTraceCapture(): TraceContextCapture {
  return {
    capture() {
      const carrier: Record<string, string> = {}
      propagation.inject(context.active(), carrier)
      return sanitizeTraceHeaders(carrier)
    },
  }
}

/** The context stored in a message's headers, or none when the headers carry no valid one. */
function extractContext(headers: Readonly<Record<string, string>>) {
  const clean = sanitizeTraceHeaders(headers)
  if (!clean[Headers.traceparent]) return undefined
  return propagation.extract(ROOT_CONTEXT, clean)
}

function errorType(error: unknown): string {
  if (isOutboxKitError(error)) return error.code
  if (error instanceof Error) return error.name || 'Error'
  return 'Error'
}

/** Marks a span failed with `error.type` (the outboxkit code or the error's class) and the exception. */
function recordFailure(span: Span, error: unknown): void {
  span.setAttribute('error.type', errorType(error))
  span.recordException(error instanceof Error ? error : new Error(String(error)))
  span.setStatus({
    code: SpanStatusCode.ERROR,
    message: error instanceof Error ? error.message : String(error),
  })
}

export interface OtelInstrumentationOptions {
  /** Tracer to use. Default: the global tracer provider's `outboxkit` tracer. */
  tracer?: Tracer
  /** Meter to use. Default: the global meter provider's `outboxkit` meter. */
  meter?: Meter
  /** Messaging system attribute. Default `kafka`. */
  system?: string
}

/**
 * Spans and metrics for a relay: `new Relay({ ..., instrumentation: otelRelayInstrumentation() })`.
 *
 * Span: `send <topic>` (kind PRODUCER) per batch, linked to each event's creation context, with
 * the messaging semantic-convention attributes; `error.type` on failure.
 * Metrics: `outboxkit.relay.published` (events), `outboxkit.relay.failed` (events),
 * `outboxkit.relay.publish.duration` (s, per batch), `outboxkit.relay.lag` (ms, oldest pending age),
 * `outboxkit.relay.pending` and `outboxkit.relay.dead` (events), sampled every `lagIntervalMs`.
 * On a `LogRelay`, instead of those three: `outboxkit.relay.feed.lag` (By, log behind the feed's
 * confirmed position) and `outboxkit.relay.feed.age` (ms, oldest record read but not confirmed),
 * sampled every `lagIntervalMs`.
 */
export function otelRelayInstrumentation(options: OtelInstrumentationOptions = {}): RelayInstrumentation {
  const tracer = options.tracer ?? trace.getTracer(INSTRUMENTATION_NAME, INSTRUMENTATION_VERSION)
  const meter = options.meter ?? metrics.getMeter(INSTRUMENTATION_NAME, INSTRUMENTATION_VERSION)
  const system = options.system ?? 'kafka'
  const published = meter.createCounter('outboxkit.relay.published', {
    description: 'Events published by relays',
    unit: '{event}',
  })
  const failed = meter.createCounter('outboxkit.relay.failed', {
    description: 'Events whose publish failed',
    unit: '{event}',
  })
  const duration = meter.createHistogram('outboxkit.relay.publish.duration', {
    description: 'Duration of one batch publish',
    unit: 's',
  })
  let lastLag: RelayEvents['lag'] | undefined
  meter
    .createObservableGauge('outboxkit.relay.lag', {
      description: 'Age of the oldest pending event',
      unit: 'ms',
    })
    .addCallback((result) => {
      if (lastLag) result.observe(lastLag.oldestPendingAgeMs)
    })
  meter
    .createObservableGauge('outboxkit.relay.pending', {
      description: 'Events in the outbox not yet published nor dead',
      unit: '{event}',
    })
    .addCallback((result) => {
      if (lastLag) result.observe(lastLag.pending)
    })
  meter
    .createObservableGauge('outboxkit.relay.dead', {
      description: 'Dead events in the outbox, waiting for an operator',
      unit: '{event}',
    })
    .addCallback((result) => {
      if (lastLag) result.observe(lastLag.dead)
    })

  let lastFeedLag: FeedLag | undefined
  meter
    .createObservableGauge('outboxkit.relay.feed.lag', {
      description: "Log (WAL, binlog) between a log-tailing relay's confirmed position and the log's end",
      unit: 'By',
    })
    .addCallback((result) => {
      if (lastFeedLag?.bytes !== undefined) result.observe(lastFeedLag.bytes)
    })
  meter
    .createObservableGauge('outboxkit.relay.feed.age', {
      description: 'Age of the oldest event a log-tailing relay read and has not confirmed',
      unit: 'ms',
    })
    .addCallback((result) => {
      if (lastFeedLag?.ageMs !== undefined) result.observe(lastFeedLag.ageMs)
    })

  return {
    recordLag(sample) {
      lastLag = sample
    },
    recordFeedLag(sample) {
      lastFeedLag = sample
    },
    async tracePublish<T>(records: readonly ClaimedRecord[], publish: () => Promise<T>): Promise<T> {
      const topics = [...new Set(records.map((r) => r.topic))]
      const keys = new Set(records.map((r) => r.key))
      const attributes: Attributes = {
        'messaging.system': system,
        'messaging.operation.type': 'send',
        'messaging.operation.name': 'send',
      }
      if (topics.length === 1) attributes['messaging.destination.name'] = topics[0]!
      if (records.length > 1) attributes['messaging.batch.message_count'] = records.length
      if (records.length === 1) attributes['messaging.message.id'] = records[0]!.id
      if (keys.size === 1) attributes['messaging.kafka.message.key'] = records[0]!.key
      const links: Link[] = []
      for (const record of records) {
        const stored = extractContext(record.headers)
        const spanContext = stored && trace.getSpanContext(stored)
        if (spanContext)
          links.push({ context: spanContext, attributes: { 'messaging.message.id': record.id } })
      }
      const name = topics.length === 1 ? `send ${topics[0]}` : 'send'
      const started = performance.now()
      // A batch publish is its own root: each event's trace is reached through its link.
      return tracer.startActiveSpan(
        name,
        { kind: SpanKind.PRODUCER, attributes, links, root: true },
        async (span: Span) => {
          try {
            const result = await publish()
            const outcomes = Array.isArray(result) ? (result as readonly PublishOutcome[]) : []
            const failures = outcomes.filter((o) => o.status === 'failed')
            published.add(outcomes.length - failures.length, { 'messaging.system': system })
            if (failures.length > 0) {
              failed.add(failures.length, { 'messaging.system': system })
              span.setAttribute('error.type', 'partial_failure')
              span.setStatus({
                code: SpanStatusCode.ERROR,
                message: `${failures.length} of ${outcomes.length} failed`,
              })
            }
            return result
          } catch (error) {
            failed.add(records.length, { 'messaging.system': system })
            recordFailure(span, error)
            throw error
          } finally {
            duration.record((performance.now() - started) / 1000, { 'messaging.system': system })
            span.end()
          }
        },
      )
    },
  }
}

export interface OtelConsumerOptions extends OtelInstrumentationOptions {
  /**
   * `parent` (default): the span is a child of the context the message carries, so one trace
   * runs from the write to the handler. `link`: the span starts a new trace linked to it.
   */
  context?: 'parent' | 'link'
  /** `messaging.consumer.group.name`. Default: the consumer's name. */
  groupName?: string
}

/**
 * Spans and metrics for an `IdempotentConsumer`: `process <topic>` (kind CONSUMER) around each
 * message, the handler running inside it.
 * Metrics: `outboxkit.consumer.processed`, `outboxkit.consumer.deduplicated`,
 * `outboxkit.consumer.dead_lettered` (messages, with `messaging.destination.name`,
 * `messaging.destination.partition.id` where the broker has partitions, and
 * `messaging.consumer.group.name`), `outboxkit.consumer.process.duration` (s). For the lag and
 * the errors of the runner that feeds the consumer, see {@link otelConsumerRunnerMetrics}.
 */
export function otelConsumerInstrumentation(options: OtelConsumerOptions = {}): ConsumerInstrumentation {
  const tracer = options.tracer ?? trace.getTracer(INSTRUMENTATION_NAME, INSTRUMENTATION_VERSION)
  const meter = options.meter ?? metrics.getMeter(INSTRUMENTATION_NAME, INSTRUMENTATION_VERSION)
  const system = options.system ?? 'kafka'
  const counters: Record<ProcessOutcome, ReturnType<Meter['createCounter']>> = {
    processed: meter.createCounter('outboxkit.consumer.processed', {
      description: 'Messages processed',
      unit: '{message}',
    }),
    duplicate: meter.createCounter('outboxkit.consumer.deduplicated', {
      description: 'Messages skipped as already processed',
      unit: '{message}',
    }),
    dead: meter.createCounter('outboxkit.consumer.dead_lettered', {
      description: 'Messages dead-lettered',
      unit: '{message}',
    }),
  }
  const duration = meter.createHistogram('outboxkit.consumer.process.duration', {
    description: 'Duration of processing one message',
    unit: 's',
  })

  return {
    async traceProcess(
      message: InboundMessage,
      consumerName: string,
      process: () => Promise<ProcessOutcome>,
    ) {
      const carried = extractContext(message.headers)
      const carriedSpan = carried && trace.getSpanContext(carried)
      const linkMode = options.context === 'link'
      const parent = carried && !linkMode ? carried : ROOT_CONTEXT
      const group = options.groupName ?? consumerName
      const attributes: Attributes = {
        'messaging.system': system,
        'messaging.operation.type': 'process',
        'messaging.operation.name': 'process',
        'messaging.destination.name': message.topic,
        'messaging.consumer.group.name': group,
        'messaging.message.id': message.id,
      }
      if (message.key !== null) attributes['messaging.kafka.message.key'] = message.key
      const partition = message.position?.['partition']
      if (partition !== undefined) attributes['messaging.destination.partition.id'] = String(partition)
      const offset = message.position?.['offset']
      if (offset !== undefined) attributes['messaging.kafka.offset'] = Number(offset)
      const links: Link[] = linkMode && carriedSpan ? [{ context: carriedSpan }] : []
      const span = tracer.startSpan(
        `process ${message.topic}`,
        { kind: SpanKind.CONSUMER, attributes, links },
        parent,
      )
      const started = performance.now()
      try {
        const outcome = await context.with(trace.setSpan(parent, span), process)
        span.setAttribute('outboxkit.outcome', outcome)
        const counted: Attributes = {
          'messaging.system': system,
          'messaging.consumer.group.name': group,
          'messaging.destination.name': message.topic,
        }
        if (partition !== undefined) counted['messaging.destination.partition.id'] = String(partition)
        counters[outcome].add(1, counted)
        if (outcome === 'dead') {
          span.setAttribute('error.type', 'HANDLER_FAILED')
          span.setStatus({ code: SpanStatusCode.ERROR, message: 'dead-lettered' })
        }
        return outcome
      } catch (error) {
        recordFailure(span, error)
        throw error
      } finally {
        duration.record((performance.now() - started) / 1000, { 'messaging.system': system })
        span.end()
      }
    },

    // One span for a batch handler's call, linked to the context of each message (the messaging
    // conventions for batch processing): a handler run once for many messages has no one parent.
    async traceBatch(
      messages: readonly InboundMessage[],
      consumerName: string,
      process: () => Promise<void>,
    ) {
      const first = messages[0]
      const topics = new Set(messages.map((message) => message.topic))
      const topic = topics.size === 1 && first ? first.topic : 'multiple'
      const group = options.groupName ?? consumerName
      const attributes: Attributes = {
        'messaging.system': system,
        'messaging.operation.type': 'process',
        'messaging.operation.name': 'process',
        'messaging.destination.name': topic,
        'messaging.consumer.group.name': group,
        'messaging.batch.message_count': messages.length,
      }
      const partition = first?.position?.['partition']
      if (partition !== undefined) attributes['messaging.destination.partition.id'] = String(partition)
      const links: Link[] = []
      for (const message of messages) {
        const carried = extractContext(message.headers)
        const carriedSpan = carried && trace.getSpanContext(carried)
        if (carriedSpan)
          links.push({ context: carriedSpan, attributes: { 'messaging.message.id': message.id } })
      }
      const span = tracer.startSpan(
        `process ${topic}`,
        { kind: SpanKind.CONSUMER, attributes, links },
        ROOT_CONTEXT,
      )
      try {
        await context.with(trace.setSpan(ROOT_CONTEXT, span), process)
      } catch (error) {
        recordFailure(span, error)
        throw error
      } finally {
        span.end()
      }
    },
  }
}

export interface OtelConsumerRunnerMetricsOptions {
  /** Meter to use. Default: the global meter provider's `outboxkit` meter. */
  meter?: Meter
  /** Messaging system attribute. Default `kafka`. */
  system?: string
}

/**
 * Metrics of a consumer runner (`createKafkaConsumerRunner`, `createNatsConsumerRunner`), beside
 * the per-message ones of {@link otelConsumerInstrumentation}:
 *
 * - `outboxkit.consumer.lag` (gauge, `{message}`): records not processed yet, per partition
 *   (`messaging.destination.name`, `messaging.destination.partition.id`). Sampled with the
 *   runner's `lag()` when the meter's reader collects, not per message.
 * - `outboxkit.consumer.errors` (counter, `{error}`): the runner's `error` events, with
 *   `error.type` (the outboxkit code or the error's class), `outboxkit.fatal`, and the partition
 *   when the error is a batch's.
 *
 * Every series carries `messaging.system` and `messaging.consumer.group.name` (the group, or the
 * NATS durable). Returns a function that stops observing the runner.
 *
 * @example
 * ```ts
 * const runner = createKafkaConsumerRunner({ kafka, groupId: 'inventory', topics: ['order.events'], consumer })
 * const stopMetrics = otelConsumerRunnerMetrics(runner)
 * ```
 */
export function otelConsumerRunnerMetrics(
  runner: ObservableConsumerRunner,
  options: OtelConsumerRunnerMetricsOptions = {},
): () => void {
  const meter = options.meter ?? metrics.getMeter(INSTRUMENTATION_NAME, INSTRUMENTATION_VERSION)
  const system = options.system ?? 'kafka'
  const base = (): Attributes => ({
    'messaging.system': system,
    'messaging.consumer.group.name': runner.groupName,
  })
  const errors = meter.createCounter('outboxkit.consumer.errors', {
    description: 'Errors of consumer runners: failed batches, crashes, restarts that failed',
    unit: '{error}',
  })
  const unsubscribe = runner.on('error', (event) => {
    const attributes: Attributes = {
      ...base(),
      'error.type': errorType(event.error),
      'outboxkit.fatal': event.fatal,
    }
    if (event.topic !== undefined) attributes['messaging.destination.name'] = event.topic
    if (event.partition !== undefined)
      attributes['messaging.destination.partition.id'] = String(event.partition)
    errors.add(1, attributes)
  })
  const lag = meter.createObservableGauge('outboxkit.consumer.lag', {
    description: 'Records in a partition that the consumer group has not processed yet',
    unit: '{message}',
  })
  const observe = async (result: { observe(value: number, attributes?: Attributes): void }) => {
    // A sample the broker cannot answer leaves a gap: no value beats a stale one.
    const sample = await runner.lag().catch(() => [])
    for (const { topic, partition, lag: behind } of sample) {
      const attributes: Attributes = { ...base(), 'messaging.destination.name': topic }
      if (partition !== undefined) attributes['messaging.destination.partition.id'] = String(partition)
      result.observe(behind, attributes)
    }
  }
  lag.addCallback(observe)
  return () => {
    unsubscribe()
    lag.removeCallback(observe)
  }
}
