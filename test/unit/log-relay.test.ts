import { describe, expect, test } from 'bun:test'
import { MemoryChangeFeed, MemoryChangeLog, MemoryTransport } from '../../src/adapters/memory/index.js'
import {
  ErrorCode,
  LogRelay,
  type LogRelayEvents,
  OutboxKitError,
  type OutboxRecord,
} from '../../src/index.js'

const FAST = { initialMs: 5, maxMs: 20, multiplier: 2 }

let seq = 0
function record(key: string, n: number, topic = 'orders'): OutboxRecord {
  seq++
  return {
    id: `00000000-0000-7000-8000-${String(seq).padStart(12, '0')}`,
    topic,
    key,
    type: 'Test',
    payload: new TextEncoder().encode(JSON.stringify({ key, n })),
    headers: {},
  }
}

function payloadOf(d: { payload: Uint8Array }): { key: string; n: number } {
  return JSON.parse(new TextDecoder().decode(d.payload))
}

async function until(check: () => boolean, what: string, ms = 5_000): Promise<void> {
  const end = Date.now() + ms
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 5))
  }
}

function collect<E extends keyof LogRelayEvents>(relay: LogRelay, event: E): LogRelayEvents[E][] {
  const seen: LogRelayEvents[E][] = []
  relay.on(event, (e) => seen.push(e))
  return seen
}

describe('LogRelay over the memory feed', () => {
  test('publishes committed transactions in commit order and confirms the position after them', async () => {
    const log = new MemoryChangeLog()
    const transport = new MemoryTransport()
    const relay = new LogRelay({
      feed: new MemoryChangeFeed(log),
      transport,
      batchSize: 3,
      pollIntervalMs: 10,
    })
    for (let t = 0; t < 5; t++) log.commit([record('a', t * 2), record('b', t * 2 + 1)])
    await relay.start()
    await until(() => log.confirmed === 5, 'all 5 transactions confirmed')
    await relay.stop()
    expect(transport.delivered.map((d) => payloadOf(d).n)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
  })

  test('a relay that stops without settling everything leaves the rest to be read again, with the same ids', async () => {
    const log = new MemoryChangeLog()
    const transport = new MemoryTransport()
    let fail = true
    transport.failWith = (r) =>
      fail && r.key === 'slow' ? { status: 'failed', error: 'broker busy', retriable: true } : undefined
    log.commit([record('fast', 1)])
    log.commit([record('slow', 2)])
    log.commit([record('fast', 3)])
    const first = new LogRelay({
      feed: new MemoryChangeFeed(log),
      transport,
      pollIntervalMs: 10,
      backoff: FAST,
    })
    await first.start()
    await until(() => transport.delivered.length === 2, 'the fast key published past the failing one')
    await first.stop()
    // The three transactions came in one batch, and its failing record keeps it unconfirmed.
    expect(log.confirmed).toBe(0)
    fail = false
    const second = new LogRelay({ feed: new MemoryChangeFeed(log), transport, pollIntervalMs: 10 })
    await second.start()
    await until(() => log.confirmed === 3, 'everything confirmed')
    await second.stop()
    const ids = transport.delivered.map((d) => d.id)
    const byKey = transport.delivered.map((d) => `${d.key}${payloadOf(d).n}`)
    // The fast key's records went out again after the restart, slow2 once; copies keep their id.
    expect(byKey).toEqual(['fast1', 'fast3', 'fast1', 'slow2', 'fast3'])
    expect(new Set(ids).size).toBe(3)
  })

  test('a failing key holds back its later records while other keys go on, then goes on in order', async () => {
    const log = new MemoryChangeLog()
    const transport = new MemoryTransport()
    let failures = 3
    transport.failWith = (r) =>
      r.key === 'poison' && payloadOf(r).n === 0 && failures-- > 0
        ? { status: 'failed', error: 'leader not available', retriable: true }
        : undefined
    const relay = new LogRelay({
      feed: new MemoryChangeFeed(log),
      transport,
      pollIntervalMs: 10,
      backoff: FAST,
    })
    const failed = collect(relay, 'failed')
    await relay.start()
    log.commit([record('poison', 0), record('other', 0)])
    // The key's later records arrive while its head waits for a retry.
    await until(() => failed.length > 0, 'the first failure')
    log.commit([record('poison', 1), record('other', 1)])
    log.commit([record('poison', 2), record('other', 2)])
    await until(() => transport.delivered.length === 6, 'all six published')
    await until(() => log.confirmed === 3, 'all confirmed')
    await relay.stop()
    const poison = transport.delivered.filter((d) => d.key === 'poison').map((d) => payloadOf(d).n)
    expect(poison).toEqual([0, 1, 2])
    // The other key did not wait for the poison key's retries.
    const order = transport.delivered.map((d) => `${d.key}${payloadOf(d).n}`)
    expect(order.indexOf('other2')).toBeLessThan(order.indexOf('poison0'))
    expect(failed.length).toBe(3)
  })

  test('a record that keeps failing is marked dead through the feed after maxAttempts, and its key goes on', async () => {
    const log = new MemoryChangeLog()
    const transport = new MemoryTransport()
    transport.failWith = (r) =>
      r.topic === 'orders' && payloadOf(r).n === 0
        ? { status: 'failed', error: 'always', retriable: true }
        : undefined
    const relay = new LogRelay({
      feed: new MemoryChangeFeed(log),
      transport,
      pollIntervalMs: 10,
      backoff: FAST,
      maxAttempts: 3,
      deadLetter: { topic: 'orders.dead' },
    })
    const dead = collect(relay, 'deadLettered')
    const first = record('k', 0)
    log.commit([first, record('k', 1)])
    await relay.start()
    await until(() => log.confirmed === 1, 'confirmed after the dead record')
    await relay.stop()
    expect(log.dead.get(first.id)).toBe('always')
    expect(dead.map((d) => d.ids)).toEqual([[first.id]])
    // 3 attempts on the topic failed; the dead letter and the key's next record went out.
    expect(transport.delivered.map((d) => `${d.topic}:${payloadOf(d).n}`)).toEqual([
      'orders.dead:0',
      'orders:1',
    ])
  })

  test('a record the broker refuses is dead at once', async () => {
    const log = new MemoryChangeLog()
    const transport = new MemoryTransport({ maxPayloadBytes: 10 })
    const relay = new LogRelay({ feed: new MemoryChangeFeed(log), transport, pollIntervalMs: 10 })
    const big = record('k', 12345)
    log.commit([big])
    await relay.start()
    await until(() => log.confirmed === 1, 'confirmed')
    await relay.stop()
    expect(log.dead.get(big.id)).toContain('limit')
    expect(transport.delivered).toEqual([])
  })

  test('a publish that throws counts no attempt: the records wait out the backoff and go out in order', async () => {
    const log = new MemoryChangeLog()
    const transport = new MemoryTransport()
    let throws = 4
    transport.throwWith = () => (throws-- > 0 ? new Error('connection reset') : undefined)
    const relay = new LogRelay({
      feed: new MemoryChangeFeed(log),
      transport,
      pollIntervalMs: 10,
      backoff: FAST,
      maxAttempts: 2,
    })
    const errors = collect(relay, 'error')
    for (let n = 0; n < 4; n++) log.commit([record('k', n)])
    await relay.start()
    await until(() => log.confirmed === 4, 'confirmed')
    await relay.stop()
    expect(transport.delivered.map((d) => payloadOf(d).n)).toEqual([0, 1, 2, 3])
    expect(log.dead.size).toBe(0)
    expect(errors.length).toBeGreaterThanOrEqual(4)
  })

  test('a second relay is a standby until the first one is gone, then goes on from the confirmed position', async () => {
    const log = new MemoryChangeLog()
    const transport = new MemoryTransport()
    const active = new LogRelay({ feed: new MemoryChangeFeed(log), transport, pollIntervalMs: 10 })
    const standby = new LogRelay({
      feed: new MemoryChangeFeed(log),
      transport,
      pollIntervalMs: 10,
      standbyRetryMs: 10,
    })
    const waits = collect(standby, 'standby')
    await active.start()
    await until(() => log.reader !== undefined, 'the first relay reading')
    await standby.start()
    log.commit([record('k', 0)])
    await until(() => log.confirmed === 1 && waits.length > 0, 'the first relay published, the second waits')
    await active.stop()
    log.commit([record('k', 1)])
    await until(() => log.confirmed === 2, 'the standby took over')
    await standby.stop()
    expect(transport.delivered.map((d) => payloadOf(d).n)).toEqual([0, 1])
  })

  test('a lost feed stops the relay with FEED_LOST; nothing is skipped silently', async () => {
    const log = new MemoryChangeLog()
    const transport = new MemoryTransport()
    const relay = new LogRelay({ feed: new MemoryChangeFeed(log), transport, pollIntervalMs: 10 })
    const errors = collect(relay, 'error')
    await relay.start()
    log.commit([record('k', 0)])
    await until(() => log.confirmed === 1, 'confirmed')
    log.lose()
    await until(() => !relay.running, 'the relay stopped')
    const last = errors.at(-1)!
    expect(last.retryInMs).toBe(-1)
    expect(last.error).toBeInstanceOf(OutboxKitError)
    expect((last.error as OutboxKitError).code).toBe(ErrorCode.FeedLost)
  })

  test('a markDead that fails leaves the position unconfirmed; the records are read again and settled', async () => {
    const log = new MemoryChangeLog()
    const transport = new MemoryTransport()
    transport.failWith = (r) =>
      r.key === 'k' ? { status: 'failed', error: 'refused', retriable: false } : undefined
    let outage = 2
    const relay = new LogRelay({
      feed: new MemoryChangeFeed(log, { failMarkDead: () => outage-- > 0 }),
      transport,
      pollIntervalMs: 10,
      backoff: FAST,
    })
    const errors = collect(relay, 'error')
    const refused = record('k', 0)
    log.commit([refused])
    log.commit([record('j', 1)])
    await relay.start()
    await until(() => log.confirmed === 2, 'confirmed')
    await relay.stop()
    expect(log.dead.get(refused.id)).toBe('refused')
    expect(errors.filter((e) => (e.error as OutboxKitError).code === ErrorCode.StoreFailed).length).toBe(2)
    // j was read three times (two outages, then the settle) and published each time, same id.
    expect(transport.delivered.filter((d) => d.key === 'j').length).toBe(3)
  })

  test('a confirm that fails reopens the feed; what was read since the last confirm is read again', async () => {
    const log = new MemoryChangeLog()
    const transport = new MemoryTransport()
    let outage = 1
    const relay = new LogRelay({
      feed: new MemoryChangeFeed(log, { failConfirm: () => outage-- > 0 }),
      transport,
      pollIntervalMs: 10,
      backoff: FAST,
    })
    const errors = collect(relay, 'error')
    const opened = collect(relay, 'opened')
    log.commit([record('k', 0), record('k', 1)])
    await relay.start()
    await until(() => log.confirmed === 1, 'confirmed')
    await relay.stop()
    expect(errors.map((e) => (e.error as OutboxKitError).code)).toEqual([ErrorCode.StoreFailed])
    expect(opened.length).toBe(2)
    // Published, confirm lost, read and published again: the same two ids, in order.
    expect(transport.delivered.map((d) => payloadOf(d).n)).toEqual([0, 1, 0, 1])
  })

  test('a transaction larger than the batch is confirmed only after its last part', async () => {
    const log = new MemoryChangeLog()
    const transport = new MemoryTransport()
    const relay = new LogRelay({
      feed: new MemoryChangeFeed(log),
      transport,
      batchSize: 4,
      pollIntervalMs: 10,
    })
    const confirmed = collect(relay, 'confirmed')
    log.commit(Array.from({ length: 10 }, (_, n) => record(`k${n % 3}`, n)))
    await relay.start()
    await until(() => log.confirmed === 1, 'confirmed')
    await relay.stop()
    expect(confirmed).toEqual([{ position: '1', records: 10 }])
    expect(transport.delivered.map((d) => payloadOf(d).n)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
  })

  test('a stopped relay refuses to start again, saying what to do', async () => {
    const relay = new LogRelay({
      feed: new MemoryChangeFeed(new MemoryChangeLog()),
      transport: new MemoryTransport(),
    })
    await relay.start()
    await relay.stop()
    await expect(relay.start()).rejects.toThrow('create a new LogRelay')
  })

  test('options are checked', () => {
    expect(() => new LogRelay({ feed: undefined as never, transport: new MemoryTransport() })).toThrow(
      'ChangeFeed',
    )
    expect(
      () =>
        new LogRelay({
          feed: new MemoryChangeFeed(new MemoryChangeLog()),
          transport: new MemoryTransport(),
          batchSize: 0,
        }),
    ).toThrow('batchSize')
  })
})

describe('LogRelay health and logs', () => {
  test('health reports reading, the confirmed position and errors; a logger sees failures', async () => {
    const log = new MemoryChangeLog()
    const transport = new MemoryTransport()
    let throws = 2
    transport.throwWith = () => (throws-- > 0 ? new Error('connection reset') : undefined)
    const lines: string[] = []
    const logger = {
      warn: (message: string) => lines.push(message),
      error: (message: string) => lines.push(message),
    }
    const relay = new LogRelay({
      feed: new MemoryChangeFeed(log),
      transport,
      pollIntervalMs: 10,
      backoff: FAST,
      logger,
    })
    expect(relay.health().running).toBe(false)
    log.commit([record('k', 0)])
    await relay.start()
    await until(() => log.confirmed === 1, 'confirmed')
    const health = relay.health()
    expect(health).toMatchObject({
      running: true,
      reading: true,
      confirmedPosition: '1',
      heldRecords: 0,
      consecutiveErrors: 0,
    })
    expect(health.lastError?.message).toBe('connection reset')
    expect(lines.filter((l) => l.includes('cycle failed')).length).toBe(2)
    await relay.stop()
    expect(relay.health()).toMatchObject({ running: false, reading: false })
  })
})

describe('LogRelay feed lag', () => {
  test('samples the lag only while something uses it, emits it and keeps it in health', async () => {
    const log = new MemoryChangeLog()
    const feed = new MemoryChangeFeed(log)
    let calls = 0
    const lag = feed.lag.bind(feed)
    feed.lag = () => {
      calls++
      return lag()
    }
    const relay = new LogRelay({
      feed,
      transport: new MemoryTransport(),
      pollIntervalMs: 5,
      lagIntervalMs: 1,
    })
    await relay.start()
    await new Promise((r) => setTimeout(r, 40))
    expect(calls).toBe(0)
    expect(relay.health().lag).toBeUndefined()
    const samples = collect(relay, 'lag')
    await until(() => samples.length >= 2, 'lag samples')
    await relay.stop()
    expect(samples[0]).toEqual({ bytes: 0, ageMs: 0 })
    expect(relay.health().lag).toEqual({ bytes: 0, ageMs: 0 })
    expect(relay.health().lagExceeded).toBe(false)
  })

  test('a feed behind by more than maxLagBytes is reported loudly: lagExceeded events, a warning, health; and when it is back', async () => {
    const log = new MemoryChangeLog()
    const transport = new MemoryTransport()
    // The broker is down: nothing is confirmed while records pile up in the log.
    let down = true
    transport.throwWith = () => (down ? new Error('broker down') : undefined)
    const lines: { level: string; message: string; fields: unknown }[] = []
    const logger = {
      info: (message: string, fields?: unknown) => lines.push({ level: 'info', message, fields }),
      warn: (message: string, fields?: unknown) => lines.push({ level: 'warn', message, fields }),
      error: (message: string, fields?: unknown) => lines.push({ level: 'error', message, fields }),
    }
    const relay = new LogRelay({
      feed: new MemoryChangeFeed(log),
      transport,
      pollIntervalMs: 5,
      backoff: FAST,
      lagIntervalMs: 1,
      maxLagBytes: 100,
      logger,
    })
    const exceeded = collect(relay, 'lagExceeded')
    for (let t = 0; t < 10; t++) log.commit([record(`k${t}`, t)])
    const bytes = log.transactions.reduce((n, t) => n + t.records[0]!.payload.byteLength, 0)
    expect(bytes).toBeGreaterThan(100)
    await relay.start()
    await until(() => exceeded.length >= 3, 'lagExceeded events')
    expect(exceeded[0]).toMatchObject({ bytes, maxLagBytes: 100 })
    expect(relay.health()).toMatchObject({ lagExceeded: true, lag: { bytes } })
    const warnings = lines.filter((l) => l.level === 'warn' && l.message.includes('maxLagBytes'))
    // Once while it lasts (then at most once a minute), not with every sample.
    expect(warnings.length).toBe(1)
    expect(warnings[0]!.fields).toMatchObject({ bytes, maxLagBytes: 100 })
    down = false
    await until(() => relay.health().lagExceeded === false, 'back within the limit')
    await relay.stop()
    expect(log.confirmed).toBe(10)
    expect(lines.some((l) => l.level === 'info' && l.message.includes('back within maxLagBytes'))).toBe(true)
  })

  test('a lag sample that fails is reported and the relay goes on', async () => {
    const log = new MemoryChangeLog()
    const feed = new MemoryChangeFeed(log)
    feed.lag = () => Promise.reject(new Error('lag query failed'))
    const transport = new MemoryTransport()
    const relay = new LogRelay({
      feed,
      transport,
      pollIntervalMs: 5,
      lagIntervalMs: 1,
      maxLagBytes: 1,
      logger: false,
    })
    const errors = collect(relay, 'error')
    log.commit([record('a', 1)])
    await relay.start()
    await until(() => errors.length > 0 && log.confirmed === 1, 'error reported and record confirmed')
    await relay.stop()
    expect(errors[0]).toMatchObject({ retryInMs: 0 })
    expect(transport.delivered.length).toBe(1)
  })

  test('a slow lag sample never holds publishing back', async () => {
    const log = new MemoryChangeLog()
    const feed = new MemoryChangeFeed(log)
    let slow = 0
    feed.lag = () => {
      slow++
      return new Promise((resolve) => setTimeout(() => resolve({ bytes: 0, ageMs: 0 }), 1_500))
    }
    const transport = new MemoryTransport()
    const relay = new LogRelay({ feed, transport, pollIntervalMs: 5, lagIntervalMs: 1, maxLagBytes: 1 })
    await relay.start()
    await until(() => slow === 1, 'a lag sample started')
    log.commit([record('a', 1)])
    await until(() => transport.delivered.length === 1, 'published while the sample runs', 1_000)
    await relay.stop()
    expect(slow).toBe(1)
  })

  test('lag is still sampled, and reported, while a publish hangs (a broker that does not answer)', async () => {
    const log = new MemoryChangeLog()
    const memory = new MemoryTransport()
    let release!: () => void
    const released = new Promise<void>((resolve) => {
      release = resolve
    })
    const transport = {
      name: memory.name,
      capabilities: memory.capabilities,
      publish: async (records: Parameters<MemoryTransport['publish']>[0]) => {
        await released
        return memory.publish(records)
      },
      close: () => memory.close(),
    }
    const relay = new LogRelay({
      feed: new MemoryChangeFeed(log),
      transport,
      pollIntervalMs: 5,
      lagIntervalMs: 5,
      maxLagBytes: 50,
      logger: false,
    })
    const exceeded = collect(relay, 'lagExceeded')
    await relay.start()
    log.commit([record('a', 0)])
    await until(() => relay.health().lag !== undefined, 'a first sample')
    // The relay now waits on the broker with the first record; more is written behind it.
    for (let t = 1; t <= 10; t++) log.commit([record(`k${t}`, t)])
    await until(() => exceeded.length >= 2, 'lagExceeded while the publish hangs')
    release()
    await until(() => log.confirmed === 11, 'everything confirmed')
    await relay.stop()
  })

  test('lag options are checked', () => {
    const feed = new MemoryChangeFeed(new MemoryChangeLog())
    expect(() => new LogRelay({ feed, transport: new MemoryTransport(), lagIntervalMs: -1 })).toThrow(
      'lagIntervalMs',
    )
    expect(() => new LogRelay({ feed, transport: new MemoryTransport(), maxLagBytes: 0 })).toThrow(
      'maxLagBytes',
    )
  })
})
