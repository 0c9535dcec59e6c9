import type { InboundMessage, ProcessOutcome } from './consumer.js'
import { Emitter } from './events.js'
import { type ComponentHealth, HealthTracker } from './health.js'
import { FailureLog, Log, type LogFields, type LoggerOption } from './logger.js'

/**
 * The events every consumer runner emits (the Kafka one, the NATS one), whatever the broker. Each
 * runner adds where the record came from (Kafka: topic, partition, offset; NATS: stream, subject,
 * sequence) and its own events (Kafka: `rebalance`).
 */
export interface ConsumerRunnerOutcomeEvents {
  /** The handler ran and its transaction committed. */
  processed: { readonly message: InboundMessage }
  /** The consumer had already processed this message id: the handler did not run. */
  duplicate: { readonly message: InboundMessage }
  /** The record went to the dead letter. */
  dead: { readonly message: InboundMessage }
  /** Processing failed (the record comes again), or the runner stopped consuming (`fatal`). */
  error: { readonly error: unknown; readonly fatal: boolean }
}

/** How far a group is behind in one partition (or, on brokers without partitions, one stream). */
export interface ConsumerLag {
  /** The topic (Kafka) or stream (NATS). */
  readonly topic: string
  /** The partition; undefined where the broker has none. */
  readonly partition?: number
  /** Records the group has not processed yet. */
  readonly lag: number
}

/** A runner whose lag and errors can be observed (see `otelConsumerRunnerMetrics` in `outboxkit/otel`). */
export interface ObservableConsumerRunner {
  on(
    event: 'error',
    listener: (
      event: ConsumerRunnerOutcomeEvents['error'] & { readonly topic?: string; readonly partition?: number },
    ) => void,
  ): () => void
  /** Samples the lag now (it may ask the broker). */
  lag(): Promise<readonly ConsumerLag[]>
  /** The consumer group (Kafka) or durable consumer (NATS) name. */
  readonly groupName: string
}

/**
 * What a runner reports and how: its typed events, its {@link ComponentHealth} and its log (the
 * `logger` option, failures throttled), kept the same way by every runner. Exported for runners
 * of other brokers.
 */
export class ConsumerRunnerReport<Events extends ConsumerRunnerOutcomeEvents> {
  readonly events = new Emitter<Events>()
  readonly health = new HealthTracker()
  readonly #log: Log
  readonly #failures: FailureLog

  /** `fields` go on every log line (e.g. the group); `source` prefixes its messages (`[kafka]`). */
  constructor(logger: LoggerOption | undefined, fields: LogFields, source?: string) {
    this.#log = new Log(logger, fields, source)
    this.#failures = new FailureLog(this.#log)
  }

  /** Writes an info line (start, stop, partition changes), unless the logger is off. */
  info(message: string, fields?: LogFields): void {
    this.#log.write('info', message, fields)
  }

  on<E extends keyof Events>(event: E, listener: (event: Events[E]) => void): () => void {
    return this.events.on(event, listener)
  }

  /** A cycle (a batch, a message, an idle poll) succeeded. */
  succeeded(): void {
    const ended = this.health.succeeded()
    if (ended > 0) this.#failures.recovered('consumer runner recovered', ended)
  }

  /** Reports an error; `counted` is false when it was reported already (a batch error that ended in a crash). */
  failed(
    message: string,
    event: Events['error'],
    where: Readonly<Record<string, unknown>> = {},
    counted = true,
  ): void {
    const consecutiveErrors = counted ? this.health.failed(event.error) : this.health.consecutiveErrors
    this.#failures.failed(message, event.error, consecutiveErrors, event.fatal, where)
    this.events.emit('error', event)
  }

  /** A record's outcome is durable. */
  settled<O extends ProcessOutcome>(
    outcome: O,
    event: Events[O],
    where: Readonly<Record<string, unknown>>,
  ): void {
    if (outcome === 'dead') {
      this.#log.write('warn', 'consumer runner record dead-lettered', {
        ...where,
        messageId: event.message.id,
      })
    }
    this.events.emit(outcome, event)
  }

  snapshot(): ComponentHealth {
    return this.health.snapshot()
  }
}
