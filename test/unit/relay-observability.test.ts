/**
 * What a relay tells its operators: log lines (a given logger, the default console one, none) and
 * `health()`. A loop that keeps failing must be visible even when nobody listens to `error`.
 */
import { afterEach, beforeEach, describe, expect, test } from 'bun:test'
import { MemoryDatabase, MemoryOutboxStore, MemoryTransport } from '../../src/adapters/memory/index.js'
import {
  ErrorCode,
  fieldsFirstLogger,
  isOutboxKitError,
  type LogFields,
  type Logger,
  Outbox,
  OutboxKitError,
  Relay,
} from '../../src/index.js'

function setup(options: Partial<ConstructorParameters<typeof Relay>[0]> = {}) {
  const store = new MemoryOutboxStore(new MemoryDatabase())
  const transport = new MemoryTransport()
  const outbox = new Outbox({ store })
  const relay = new Relay({
    store,
    transport,
    pollIntervalMs: 5,
    backoff: { initialMs: 1, maxMs: 5 },
    ...options,
  })
  const add = (key: string, type: string) =>
    store.transaction((tx) => outbox.add(tx, { topic: 'orders', key, type, payload: { type } }))
  return { store, transport, relay, add }
}

async function until(condition: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time')
    await new Promise((r) => setTimeout(r, 2))
  }
}

interface Line {
  readonly level: keyof Logger
  readonly message: string
  readonly fields: LogFields
}

function recordingLogger(): Logger & { lines: Line[] } {
  const lines: Line[] = []
  const at =
    (level: keyof Logger) =>
    (message: string, fields: LogFields = {}) =>
      lines.push({ level, message, fields })
  return { lines, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') }
}

/** A transport whose publish throws a retriable TRANSPORT_FAILED for its first `times` calls. */
function failingPublishes(transport: MemoryTransport, times: number): { calls: number } {
  const counter = { calls: 0 }
  transport.throwWith = () =>
    counter.calls++ < times
      ? new OutboxKitError(ErrorCode.TransportFailed, 'broker unreachable', { retriable: true })
      : undefined
  return counter
}

describe('relay logging', () => {
  const original = { warn: console.warn, error: console.error, info: console.info, debug: console.debug }
  let consoleLines: { level: string; args: unknown[] }[]
  beforeEach(() => {
    consoleLines = []
    for (const level of ['warn', 'error', 'info', 'debug'] as const) {
      console[level] = (...args: unknown[]) => consoleLines.push({ level, args })
    }
  })
  afterEach(() => Object.assign(console, original))

  test('with no logger and no error listener, a transport that keeps failing is reported on the console, throttled', async () => {
    const { transport, relay, add } = setup()
    const publishes = failingPublishes(transport, Number.POSITIVE_INFINITY)
    await add('a', 'a1')
    await relay.start()
    await until(() => publishes.calls >= 20)
    await relay.stop()
    const failures = consoleLines.filter((l) => l.level === 'warn' || l.level === 'error')
    // The first failure of the run is written; the next ones wait for the throttle interval.
    expect(failures.length).toBe(1)
    expect(String(failures[0]!.args[0])).toContain('relay')
    expect(failures[0]!.args[1]).toMatchObject({ code: ErrorCode.TransportFailed, consecutiveErrors: 1 })
    // Start and stop are info lines: the default logger does not write them.
    expect(consoleLines.filter((l) => l.level === 'info' || l.level === 'debug')).toEqual([])
  })

  test('logger: false writes nothing, even while the loop fails', async () => {
    const { transport, relay, add } = setup({ logger: false })
    const publishes = failingPublishes(transport, Number.POSITIVE_INFINITY)
    await add('a', 'a1')
    await relay.start()
    await until(() => publishes.calls >= 5)
    await relay.stop()
    expect(consoleLines).toEqual([])
  })

  test('a given logger hears start, every failed cycle with its code, the recovery, and stop', async () => {
    const logger = recordingLogger()
    const { transport, relay, add } = setup({ logger })
    failingPublishes(transport, 3)
    await add('a', 'a1')
    await relay.start()
    await until(() => transport.delivered.length === 1)
    await relay.stop()
    const failed = logger.lines.filter((l) => l.level === 'warn')
    expect(failed.map((l) => [l.fields['code'], l.fields['consecutiveErrors']])).toEqual([
      [ErrorCode.TransportFailed, 1],
      [ErrorCode.TransportFailed, 2],
      [ErrorCode.TransportFailed, 3],
    ])
    const info = logger.lines.filter((l) => l.level === 'info').map((l) => l.message)
    expect(info[0]).toContain('relay started')
    expect(info.some((m) => m.includes('recovered'))).toBe(true)
    expect(info.at(-1)).toContain('relay stopped')
    expect(logger.lines.every((l) => l.fields['relayId'] === relay.relayId)).toBe(true)
    expect(logger.lines.some((l) => l.level === 'debug' && l.message.includes('published'))).toBe(true)
    expect(consoleLines).toEqual([])
  })

  test('a fenced transport stops the relay with an error line, whatever the throttle', async () => {
    const { transport, relay, add } = setup()
    transport.throwWith = () => new OutboxKitError(ErrorCode.Fenced, 'another producer took over')
    await add('a', 'a1')
    await relay.start()
    await until(() => !relay.running)
    const errors = consoleLines.filter((l) => l.level === 'error')
    expect(errors.length).toBe(1)
    expect(errors[0]!.args[1]).toMatchObject({ code: ErrorCode.Fenced })
  })

  test('a dead record is a warn line with its id', async () => {
    const logger = recordingLogger()
    const { transport, relay, add } = setup({ logger })
    transport.failWith = () => ({ status: 'failed', error: 'record too large', retriable: false })
    await add('a', 'a1')
    await relay.runOnce()
    const dead = logger.lines.filter((l) => l.level === 'warn' && l.message.includes('dead'))
    expect(dead.length).toBe(1)
    expect(dead[0]!.fields['error']).toBe('record too large')
  })

  test('a logger that throws does not stop the relay', async () => {
    const thrower = () => {
      throw new Error('log sink down')
    }
    const { transport, relay, add } = setup({ logger: { debug: thrower, info: thrower, warn: thrower } })
    failingPublishes(transport, 2)
    await add('a', 'a1')
    await relay.start()
    await until(() => transport.delivered.length === 1)
    await relay.stop()
  })

  test('fieldsFirstLogger hands pino-style loggers (fields, message)', () => {
    const calls: unknown[][] = []
    const pinoLike = { info: (fields: LogFields, message: string) => calls.push([fields, message]) }
    const logger = fieldsFirstLogger(pinoLike)
    logger.info?.('hello', { a: 1 })
    expect(calls).toEqual([[{ a: 1 }, 'hello']])
    expect(logger.warn).toBeUndefined()
  })

  test('a logger that is not an object of functions is INVALID_OPTIONS', () => {
    const store = new MemoryOutboxStore(new MemoryDatabase())
    const transport = new MemoryTransport()
    for (const logger of ['console', { warn: 'yes' }]) {
      try {
        // biome-ignore lint/suspicious/noExplicitAny: deliberately wrong input
        new Relay({ store, transport, logger: logger as any })
        throw new Error('accepted')
      } catch (error) {
        expect(isOutboxKitError(error, ErrorCode.InvalidOptions)).toBe(true)
      }
    }
  })
})

describe('relay health', () => {
  test('before start, while failing, after recovery and after stop', async () => {
    const { transport, relay, add } = setup({ logger: false })
    expect(relay.health()).toEqual({
      running: false,
      startedAt: undefined,
      lastSuccessAt: undefined,
      consecutiveErrors: 0,
      lastError: undefined,
      ownership: { mode: 'rows' },
    })
    const publishes = failingPublishes(transport, 4)
    await add('a', 'a1')
    let seenFailing = relay.health()
    relay.on('error', () => {
      seenFailing = relay.health()
    })
    await relay.start()
    await until(() => transport.delivered.length === 1)
    await until(() => relay.health().lastSuccessAt !== undefined)
    expect(publishes.calls).toBe(5)
    // Seen from the 4th error event: four errors in a row, the last one's code and message.
    expect(seenFailing.running).toBe(true)
    expect(seenFailing.consecutiveErrors).toBe(4)
    expect(seenFailing.lastError?.code).toBe(ErrorCode.TransportFailed)
    expect(seenFailing.lastError?.message).toContain('broker unreachable')
    expect(seenFailing.lastSuccessAt).toBeUndefined()
    const healthy = relay.health()
    expect(healthy.consecutiveErrors).toBe(0)
    expect(healthy.startedAt).toBeInstanceOf(Date)
    expect(healthy.lastSuccessAt!.getTime()).toBeGreaterThanOrEqual(healthy.startedAt!.getTime())
    // The last error stays visible after the recovery.
    expect(healthy.lastError?.code).toBe(ErrorCode.TransportFailed)
    await relay.stop()
    expect(relay.health().running).toBe(false)
  })

  test("ownership 'shards': owned shards and a success per settled batch", async () => {
    const logger = recordingLogger()
    const { transport, relay, add } = setup({ logger, ownership: 'shards', leaseMs: 300 })
    await add('a', 'a1')
    await relay.start()
    await until(() => transport.delivered.length === 1)
    await until(() => relay.health().lastSuccessAt !== undefined)
    const health = relay.health()
    expect(health.ownership).toMatchObject({ mode: 'shards', relayId: relay.relayId, drainingShards: 0 })
    expect(health.ownership.mode === 'shards' && health.ownership.ownedShards).toBe(relay.ownedShards.length)
    expect(relay.ownedShards.length).toBeGreaterThan(0)
    expect(logger.lines.some((l) => l.level === 'info' && l.message.includes('shards'))).toBe(true)
    await relay.stop()
    expect(relay.health().ownership).toMatchObject({ mode: 'shards', ownedShards: 0 })
  })

  test("ownership 'shards': a transport that keeps failing counts every failed batch", async () => {
    const { transport, relay, add } = setup({ logger: false, ownership: 'shards', leaseMs: 300 })
    const publishes = failingPublishes(transport, Number.POSITIVE_INFINITY)
    await add('a', 'a1')
    await relay.start()
    await until(() => publishes.calls >= 6)
    const health = relay.health()
    await relay.stop()
    // A claim that succeeds between failed publishes is not a successful cycle.
    expect(health.consecutiveErrors).toBeGreaterThanOrEqual(5)
    expect(health.lastSuccessAt).toBeUndefined()
  })
})
