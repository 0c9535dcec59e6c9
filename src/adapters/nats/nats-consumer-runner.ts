import {
  AckPolicy,
  type ConsumerMessages,
  DeliverPolicy,
  type JsMsg,
  jetstream,
  jetstreamManager,
} from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import {
  type ComponentHealth,
  type ConsumerLag,
  ConsumerRunnerReport,
  describeError,
  ErrorCode,
  Headers,
  type InboundMessage,
  inboundMessage,
  type LoggerOption,
  type MessageProcessor,
  type ObservableConsumerRunner,
  OutboxKitError,
} from '../../index.js'
import { optionInteger } from './nats-errors.js'
import { NATS_KEY_HEADER, NATS_MSG_ID_HEADER } from './nats-transport.js'

/** A JetStream message as the id extractor sees it. */
export interface NatsRecord {
  readonly stream: string
  readonly subject: string
  /** The message's sequence number in the stream. */
  readonly seq: number
  /** How many times it was delivered, this time included. */
  readonly deliveryCount: number
  readonly headers: Readonly<Record<string, string>>
  readonly data: Uint8Array
}

export interface NatsConsumerRunnerOptions {
  /** Your NATS connection. It stays yours: `stop()` leaves it open. */
  connection: NatsConnection
  /** The stream to consume. */
  stream: string
  /**
   * The durable JetStream consumer. Created on `start()` if it does not exist (explicit acks,
   * from the first message, `maxAckPending` and `ackWaitMs` below); an existing one is used as
   * it is. Several runners with the same durable share its messages.
   */
  durable: string
  /** Only messages whose subject matches (NATS wildcards allowed), when the consumer is created. */
  filterSubject?: string
  /** The consumer that applies each message exactly once in effect. */
  consumer: MessageProcessor
  /**
   * Messages delivered and not yet acknowledged, across every runner of the durable, when the
   * consumer is created. Default 1: the only setting under which a message redelivered after a
   * crash comes before every later message, so each key keeps its order. Raise it for throughput
   * when keys need no order.
   */
  maxAckPending?: number
  /**
   * How long the server waits for an ack before it redelivers, ms, when the consumer is created.
   * A message in hand is kept alive (`working`) meanwhile, so this bounds only how soon the message
   * of a runner that died is redelivered. Default 30 000.
   */
  ackWaitMs?: number
  /**
   * The message id of a record. Default: the `outboxkit-id` header, else `Nats-Msg-Id`. Return
   * undefined when it has none: it then goes to the dead letter with `MISSING_MESSAGE_ID`.
   */
  messageId?: (record: NatsRecord) => string | undefined
  /**
   * Called with every error the runner reports (as the `error` event, which has more). Kept for
   * code written before the events; prefer `runner.on('error', ...)`.
   */
  onError?: (error: unknown) => void
  /**
   * Where the runner writes what it does, as the Kafka runner does: start and stop (info), dead
   * letters (warn), failures (warn, or error when fatal) with the error's code. `false` writes
   * nothing. Default: failures only, to the console, throttled.
   */
  logger?: LoggerOption
}

/** Where a JetStream message came from. */
export interface NatsRecordEvent {
  readonly message: InboundMessage
  readonly stream: string
  readonly subject: string
  /** The message's sequence number in the stream. */
  readonly seq: number
}

/**
 * What a NATS runner reports while it runs, the same events as the Kafka runner's
 * (`KafkaConsumerRunnerEvents`) with where the message came from. Subscribe with
 * {@link NatsConsumerRunner.on}.
 */
export interface NatsConsumerRunnerEvents {
  /** The handler ran and its transaction committed (the message is acknowledged next). */
  processed: NatsRecordEvent
  /** The consumer had already processed this message id: the handler did not run. */
  duplicate: NatsRecordEvent
  /** The message went to the dead letter (its handler kept failing, or it has no usable id). */
  dead: NatsRecordEvent
  /**
   * Processing a message failed (it is negatively acknowledged and delivered again; `subject`
   * and `seq` say which), an acknowledgement failed (the message may come again, as a duplicate),
   * or the consume loop failed (it starts again after a second). Never `fatal`: the runner keeps
   * consuming until it is stopped.
   */
  error: {
    readonly error: unknown
    readonly fatal: boolean
    /** The stream. */
    readonly topic: string
    readonly subject?: string
    readonly seq?: number
  }
}

/** What {@link NatsConsumerRunner.health} returns: a cycle is a message whose outcome is durable. */
export interface NatsConsumerRunnerHealth extends ComponentHealth {
  readonly stream: string
  readonly durable: string
}

const RESTART_DELAY_MS = 1_000

/**
 * Feeds an `IdempotentConsumer` from a JetStream durable consumer, one message at a time. A
 * message is acknowledged only after its transaction committed (or it went to the dead letter);
 * a runner that dies before that leaves it unacknowledged, the server redelivers it, and the inbox
 * turns the copy into a skipped duplicate. A message whose processing is cut short (stop, a dead
 * letter that could not be sent) is negatively acknowledged, so it is redelivered at once.
 *
 * @example
 * ```ts
 * const runner = createNatsConsumerRunner({ connection: nc, stream: 'ORDERS', durable: 'inventory', consumer })
 * await runner.start()
 * ```
 */
export function createNatsConsumerRunner(options: NatsConsumerRunnerOptions): NatsConsumerRunner {
  return new NatsConsumerRunner(options)
}

export class NatsConsumerRunner implements ObservableConsumerRunner {
  readonly #options: NatsConsumerRunnerOptions
  readonly #report: ConsumerRunnerReport<NatsConsumerRunnerEvents>
  readonly #messageId: (record: NatsRecord) => string | undefined
  readonly #maxAckPending: number
  readonly #ackWaitMs: number
  #stopping: AbortController | undefined
  #messages: ConsumerMessages | undefined
  #loop: Promise<void> | undefined

  constructor(options: NatsConsumerRunnerOptions) {
    if (!options?.connection || typeof options.connection.request !== 'function') {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        'createNatsConsumerRunner needs `connection` (a NATS connection).',
        { source: 'nats' },
      )
    }
    if (!options.stream || !options.durable) {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        'createNatsConsumerRunner needs `stream` and `durable` (the JetStream consumer name).',
        { source: 'nats' },
      )
    }
    if (!options.consumer || typeof options.consumer.process !== 'function') {
      throw new OutboxKitError(
        ErrorCode.InvalidOptions,
        'createNatsConsumerRunner needs an IdempotentConsumer as `consumer`.',
        { source: 'nats' },
      )
    }
    this.#maxAckPending = optionInteger('maxAckPending', options.maxAckPending, 1)
    this.#ackWaitMs = optionInteger('ackWaitMs', options.ackWaitMs, 30_000)
    this.#options = options
    this.#messageId =
      options.messageId ??
      ((record) => record.headers[Headers.messageId] ?? record.headers[NATS_MSG_ID_HEADER])
    this.#report = new ConsumerRunnerReport(
      options.logger,
      { stream: options.stream, durable: options.durable },
      'nats',
    )
  }

  /** The durable consumer's name. */
  get groupName(): string {
    return this.#options.durable
  }

  /** Subscribes to an event. Returns a function that unsubscribes. */
  on<E extends keyof NatsConsumerRunnerEvents>(
    event: E,
    listener: (event: NatsConsumerRunnerEvents[E]) => void,
  ): () => void {
    return this.#report.on(event, listener)
  }

  /**
   * The runner's state for health checks: whether it consumes, when a message's outcome was last
   * durable, the errors since, the last error. A plain object, safe to serialise.
   */
  health(): NatsConsumerRunnerHealth {
    return { ...this.#report.snapshot(), stream: this.#options.stream, durable: this.#options.durable }
  }

  /**
   * How far the durable consumer is behind, from the server's consumer info (one request):
   * messages not yet delivered plus those delivered and not yet acknowledged. One entry, for the
   * stream (NATS streams have no partitions).
   */
  async lag(): Promise<readonly ConsumerLag[]> {
    const jsm = await jetstreamManager(this.#options.connection)
    const info = await jsm.consumers.info(this.#options.stream, this.#options.durable)
    return [{ topic: this.#options.stream, lag: info.num_pending + info.num_ack_pending }]
  }

  #failed(message: string, error: unknown, where: { subject?: string; seq?: number } = {}): void {
    this.#report.failed(message, { error, fatal: false, topic: this.#options.stream, ...where }, where)
    this.#options.onError?.(error)
  }

  /** Creates the durable consumer if needed and starts consuming. Resolves once it is running. */
  async start(): Promise<void> {
    if (this.#stopping)
      throw new OutboxKitError(
        ErrorCode.AlreadyStarted,
        'This runner is already running; call stop() first.',
        {
          source: 'nats',
        },
      )
    const stopping = new AbortController()
    this.#stopping = stopping
    try {
      const { connection, stream, durable } = this.#options
      await this.#ensureConsumer()
      const consumer = await jetstream(connection).consumers.get(stream, durable)
      const consume = async () => {
        this.#messages = await consumer.consume({ max_messages: this.#maxAckPending })
        return this.#messages
      }
      this.#report.health.started()
      this.#loop = this.#run(stopping.signal, await consume(), consume)
    } catch (error) {
      // Not running: a later start() may try again.
      this.#stopping = undefined
      this.#report.failed('consumer runner could not start', {
        error,
        fatal: true,
        topic: this.#options.stream,
      })
      this.#report.health.stopped()
      throw error
    }
    this.#report.info('consumer runner started', { stream: this.#options.stream })
  }

  /** Creates the durable consumer unless it exists (another runner may create it meanwhile). */
  async #ensureConsumer(): Promise<void> {
    const { connection, stream, durable } = this.#options
    const jsm = await jetstreamManager(connection)
    const exists = () =>
      jsm.consumers.info(stream, durable).then(
        () => true,
        () => false,
      )
    if (await exists()) return
    try {
      await jsm.consumers.add(stream, {
        durable_name: durable,
        ack_policy: AckPolicy.Explicit,
        deliver_policy: DeliverPolicy.All,
        max_ack_pending: this.#maxAckPending,
        ack_wait: this.#ackWaitMs * 1_000_000,
        ...(this.#options.filterSubject ? { filter_subject: this.#options.filterSubject } : {}),
      })
    } catch (error) {
      if (!(await exists())) throw error
    }
  }

  async #run(
    signal: AbortSignal,
    first: ConsumerMessages,
    restart: () => Promise<ConsumerMessages>,
  ): Promise<void> {
    let messages = first
    while (!signal.aborted) {
      try {
        for await (const message of messages) {
          if (signal.aborted) {
            // Not ours to handle any more: let the server give it to another runner now.
            message.nak()
            break
          }
          await this.#handle(message, signal)
        }
        if (signal.aborted) return
      } catch (error) {
        if (signal.aborted) return
        this.#failed('consumer runner consume loop failed, it starts again', error)
      }
      await new Promise((resolve) => setTimeout(resolve, RESTART_DELAY_MS))
      if (signal.aborted) return
      try {
        messages = await restart()
      } catch (error) {
        this.#failed('consumer runner consume loop failed, it starts again', error)
      }
    }
  }

  /** Processes one message and keeps it alive meanwhile; acks it once its outcome is durable. */
  async #handle(message: JsMsg, signal: AbortSignal): Promise<void> {
    const headers: Record<string, string> = {}
    for (const name of message.headers?.keys() ?? []) headers[name] = message.headers!.get(name)
    const record: NatsRecord = {
      stream: this.#options.stream,
      subject: message.subject,
      seq: message.seq,
      deliveryCount: message.info.deliveryCount,
      headers,
      data: message.data,
    }
    const id = this.#messageId(record)
    const inbound = inboundMessage({
      id: typeof id === 'string' ? id : '',
      topic: message.subject,
      key: headers[NATS_KEY_HEADER] ?? null,
      payload: message.data,
      headers,
      position: { stream: record.stream, seq: message.seq },
    })
    const where = { subject: message.subject, seq: message.seq }
    const alive = setInterval(() => message.working(), Math.max(100, Math.floor(this.#ackWaitMs / 3)))
    let outcome: Awaited<ReturnType<MessageProcessor['process']>>
    try {
      outcome = await this.#options.consumer.process(inbound, signal)
    } catch (error) {
      // Not durable: the message must come again (at once; the consumer backs off itself).
      message.nak()
      if (!signal.aborted) this.#failed('consumer runner message failed, it is delivered again', error, where)
      return
    } finally {
      clearInterval(alive)
    }
    this.#report.settled(
      outcome,
      { message: inbound, stream: record.stream, ...where },
      { stream: record.stream, ...where },
    )
    this.#report.succeeded()
    try {
      await message.ackAck()
    } catch (error) {
      // The ack may be lost: the message is redelivered and the inbox skips it.
      this.#failed(
        'consumer runner could not acknowledge a message; it may come again, as a duplicate',
        new OutboxKitError(
          ErrorCode.TransportFailed,
          `Acknowledging a NATS message failed: ${describeError(error)}`,
          {
            source: 'nats',
            retriable: true,
            cause: error,
          },
        ),
        where,
      )
    }
  }

  /**
   * Stops consuming: the message in hand is finished or cut short (then redelivered), and the
   * loop ends. The connection stays open.
   */
  async stop(): Promise<void> {
    const stopping = this.#stopping
    if (!stopping) return
    stopping.abort()
    await this.#messages?.close().catch(() => {})
    await this.#loop
    this.#stopping = undefined
    this.#messages = undefined
    this.#loop = undefined
    this.#report.health.stopped()
    this.#report.info('consumer runner stopped')
  }
}
