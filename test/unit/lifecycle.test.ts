/** Lifecycle starts components together and stops them together, within its timeout. */
import { describe, expect, test } from 'bun:test'
import {
  MemoryChangeFeed,
  MemoryChangeLog,
  MemoryDatabase,
  MemoryOutboxStore,
  MemoryTransport,
} from '../../src/adapters/memory/index.js'
import {
  ErrorCode,
  isOutboxKitError,
  Lifecycle,
  type LifecycleComponent,
  LogRelay,
  Outbox,
  OutboxKitError,
  Relay,
} from '../../src/index.js'
import { runUntilSignal } from '../../src/process/index.js'

function component(
  log: string[],
  name: string,
  stop: () => Promise<void> = async () => {},
): LifecycleComponent {
  return {
    start: async () => {
      log.push(`start ${name}`)
    },
    stop: async () => {
      log.push(`stop ${name}`)
      await stop()
      log.push(`stopped ${name}`)
    },
  }
}

describe('Lifecycle', () => {
  test('starts runners, relays, then retention; stops them all, then closes the transports', async () => {
    const log: string[] = []
    const lifecycle = new Lifecycle({
      relays: [component(log, 'relay')],
      runners: [component(log, 'runner')],
      retention: component(log, 'retention'),
      close: [{ close: async () => void log.push('close transport') }],
      logger: false,
    })
    await lifecycle.start()
    expect(log).toEqual(['start runner', 'start relay', 'start retention'])
    log.length = 0
    expect(await lifecycle.stop()).toEqual({ clean: true, timedOut: [], failed: [] })
    expect(log.at(-1)).toBe('close transport')
    expect(log.filter((l) => l.startsWith('stopped')).sort()).toEqual([
      'stopped relay',
      'stopped retention',
      'stopped runner',
    ])
  })

  test('a component that does not stop in time is named, and the transports are closed all the same', async () => {
    const log: string[] = []
    const lifecycle = new Lifecycle({
      relays: [component(log, 'stuck', () => new Promise(() => {})), component(log, 'fine')],
      close: [{ close: async () => void log.push('close transport') }],
      timeoutMs: 50,
      logger: false,
    })
    await lifecycle.start()
    const result = await lifecycle.stop()
    expect(result).toEqual({ clean: false, timedOut: ['relay[0]'], failed: [] })
    expect(log).toContain('close transport')
    expect(log).toContain('stopped fine')
  })

  test('a stop that throws is reported, not thrown; a failed start stops what had started', async () => {
    const log: string[] = []
    const failing = new Lifecycle({
      relays: [
        component(log, 'bad', async () => {
          throw new Error('stop failed')
        }),
      ],
      logger: false,
    })
    await failing.start()
    const result = await failing.stop()
    expect(result.clean).toBe(false)
    expect(result.failed.map((f) => [f.name, String(f.error)])).toEqual([['relay[0]', 'Error: stop failed']])

    log.length = 0
    const broken = new Lifecycle({
      runners: [component(log, 'runner')],
      relays: [
        {
          start: async () => {
            throw new Error('no broker')
          },
          stop: async () => {},
        },
      ],
      logger: false,
    })
    await expect(broken.start()).rejects.toThrow('no broker')
    expect(log).toEqual(['start runner', 'stop runner', 'stopped runner'])
  })

  test('a relay stopped by the lifecycle finishes its records: none is left claimed', async () => {
    const store = new MemoryOutboxStore(new MemoryDatabase())
    const transport = new MemoryTransport()
    const outbox = new Outbox({ store })
    await store.transaction((tx) =>
      outbox.add(
        tx,
        Array.from({ length: 50 }, (_, i) => ({ topic: 't', key: `k${i % 5}`, type: 'T', payload: { i } })),
      ),
    )
    let publishing!: () => void
    const published = new Promise<void>((resolve) => {
      publishing = resolve
    })
    transport.throwWith = () => {
      publishing()
      return undefined
    }
    const relay = new Relay({ store, transport, batchSize: 10, logger: false })
    const lifecycle = new Lifecycle({ relays: [relay], close: [transport], logger: false })
    await lifecycle.start()
    await published
    expect((await lifecycle.stop()).clean).toBe(true)
    expect(transport.closed).toBe(true)
    expect(store.rows.filter((r) => r.status === 'pending' && r.claimToken !== null)).toEqual([])
    expect(lifecycle.health()['relay[0]']?.running).toBe(false)
  })

  test('options that cannot work are refused with INVALID_OPTIONS', () => {
    for (const options of [{ relays: [{}] }, { close: [{}] }, { timeoutMs: 0 }]) {
      let error: unknown
      try {
        new Lifecycle(options as never)
      } catch (e) {
        error = e
      }
      expect(isOutboxKitError(error, ErrorCode.InvalidOptions)).toBe(true)
    }
  })
})

describe('runUntilSignal', () => {
  test('runs until the signal, then stops everything and resolves with the signal', async () => {
    const log: string[] = []
    const running = runUntilSignal({
      relays: [component(log, 'relay')],
      signals: ['SIGUSR2'],
      logger: false,
    })
    while (!log.includes('start relay')) await new Promise((r) => setTimeout(r, 1))
    process.emit('SIGUSR2')
    expect(await running).toEqual({ clean: true, timedOut: [], failed: [], signal: 'SIGUSR2' })
    expect(log).toContain('stopped relay')
    expect(process.listenerCount('SIGUSR2')).toBe(0)
  })

  test('a relay fenced by another producer stops by itself: runUntilSignal stops the rest and reports it', async () => {
    const db = new MemoryDatabase()
    const store = new MemoryOutboxStore(db)
    const transport = new MemoryTransport()
    const relay = new Relay({ store, transport, pollIntervalMs: 5, logger: false })
    await db.transaction((tx) =>
      new Outbox({ store }).add(tx, { topic: 't', key: 'k', type: 'E', payload: {} }),
    )
    transport.throwWith = () => new OutboxKitError(ErrorCode.Fenced, 'another producer took over')
    const log: string[] = []
    const result = await runUntilSignal({
      relays: [relay],
      runners: [component(log, 'runner')],
      signals: ['SIGUSR2'],
      logger: false,
    })
    expect(result.clean).toBe(false)
    expect(result.failure?.name).toBe('relay[0]')
    expect(isOutboxKitError(result.failure?.error, ErrorCode.Fenced)).toBe(true)
    expect(log).toContain('stopped runner')
  })

  test('a component that stops by itself for good stops the others; the result is not clean and names it', async () => {
    const log: string[] = []
    let fatal: (error: unknown) => void = () => {}
    const runner: LifecycleComponent = {
      ...component(log, 'runner'),
      onFatal: (listener) => {
        fatal = listener
        return () => {
          fatal = () => {}
        }
      },
    }
    const running = runUntilSignal({
      runners: [runner],
      relays: [component(log, 'relay')],
      signals: ['SIGUSR2'],
      logger: false,
    })
    while (!log.includes('start relay')) await new Promise((r) => setTimeout(r, 1))
    const error = new Error('gave up restarting')
    fatal(error)
    const result = await running
    expect(result).toMatchObject({ clean: false, signal: undefined, failure: { name: 'runner[0]', error } })
    expect(log).toContain('stopped relay')
    expect(log).toContain('stopped runner')
    expect(process.listenerCount('SIGUSR2')).toBe(0)
  })

  test('a LogRelay whose feed is lost stops the service: runUntilSignal reports the failure', async () => {
    const log = new MemoryChangeLog()
    const relay = new LogRelay({
      feed: new MemoryChangeFeed(log),
      transport: new MemoryTransport(),
      pollIntervalMs: 5,
      logger: false,
    })
    const running = runUntilSignal({ relays: [relay], signals: ['SIGUSR2'], logger: false })
    while (!relay.running) await new Promise((r) => setTimeout(r, 1))
    log.lose()
    const result = await running
    expect(result.clean).toBe(false)
    expect(result.signal).toBeUndefined()
    expect(isOutboxKitError(result.failure?.error, ErrorCode.FeedLost)).toBe(true)
    // Read again: the loop's `while` narrowed it to true.
    expect(relay.running as boolean).toBe(false)
  })
})
