/**
 * Retention deletes what its horizons say, in bounded batches, one instance at a time, and tells
 * its operators what it deleted.
 */
import { describe, expect, test } from 'bun:test'
import {
  MemoryDatabase,
  MemoryInboxStore,
  MemoryOutboxStore,
  type OutboxRowStatus,
} from '../../src/adapters/memory/index.js'
import {
  ErrorCode,
  isOutboxKitError,
  type LogFields,
  Outbox,
  Retention,
  type RetentionReport,
} from '../../src/index.js'

const HOUR = 3_600_000

function setup() {
  let clock = 0
  const db = new MemoryDatabase({ now: () => clock })
  const store = new MemoryOutboxStore(db)
  const inbox = new MemoryInboxStore(db)
  const outbox = new Outbox({ store })
  /** Adds `count` rows of `status`, created at the current clock. */
  const rows = async (count: number, status: OutboxRowStatus) => {
    const ids = await store.transaction((tx) =>
      outbox.add(
        tx,
        Array.from({ length: count }, (_, i) => ({ topic: 't', key: `k${i}`, type: 'T', payload: { i } })),
      ),
    )
    for (const row of db.rows) if (ids.includes(row.record.id)) row.status = status
  }
  const processed = (count: number, consumer = 'billing') =>
    inbox.transaction(async (tx) => {
      for (let i = 0; i < count; i++) await inbox.markProcessed(tx, consumer, crypto.randomUUID())
    })
  const count = (status: OutboxRowStatus) => db.rows.filter((r) => r.status === status).length
  return { db, store, inbox, rows, processed, count, advance: (ms: number) => (clock += ms) }
}

describe('Retention', () => {
  test('a pass deletes published rows past the horizon in batches, keeps pending and dead rows', async () => {
    const w = setup()
    await w.rows(25, 'published')
    await w.rows(3, 'dead')
    await w.rows(2, 'pending')
    w.advance(2 * HOUR)
    await w.rows(4, 'published') // younger than the horizon
    const retention = new Retention({
      outbox: { store: w.store, publishedOlderThanMs: HOUR },
      batchSize: 10,
      pauseMs: 0,
      logger: false,
    })
    const report = await retention.runOnce()
    expect(report).toMatchObject({ acquired: true, published: 25, dead: 0, inbox: 0, batches: 3 })
    expect([w.count('published'), w.count('dead'), w.count('pending')]).toEqual([4, 3, 2])
  })

  test('pendingOlderThanMs (an outbox read by a LogRelay) deletes old pending rows too, never younger ones', async () => {
    const w = setup()
    await w.rows(6, 'pending')
    w.advance(3 * HOUR)
    await w.rows(2, 'pending')
    const keep = new Retention({
      outbox: { store: w.store, publishedOlderThanMs: HOUR },
      pauseMs: 0,
      logger: false,
    })
    expect(await keep.runOnce()).toMatchObject({ published: 0, pending: 0 })
    expect(w.count('pending')).toBe(8)
    const retention = new Retention({
      outbox: { store: w.store, publishedOlderThanMs: HOUR, pendingOlderThanMs: 2 * HOUR },
      batchSize: 4,
      pauseMs: 0,
      logger: false,
    })
    expect(await retention.runOnce()).toMatchObject({ pending: 6, batches: 3 })
    expect(w.count('pending')).toBe(2)
    expect(
      () => new Retention({ outbox: { store: w.store, publishedOlderThanMs: HOUR, pendingOlderThanMs: -1 } }),
    ).toThrow(/pendingOlderThanMs/)
  })

  test('dead rows go by their own horizon, inbox records by theirs', async () => {
    const w = setup()
    await w.rows(2, 'dead')
    await w.processed(7)
    w.advance(10 * HOUR)
    await w.rows(1, 'dead')
    await w.processed(1)
    w.advance(HOUR)
    const retention = new Retention({
      outbox: { store: w.store, publishedOlderThanMs: HOUR, deadOlderThanMs: 5 * HOUR },
      inbox: { store: w.inbox, olderThanMs: 5 * HOUR },
      pauseMs: 0,
      logger: false,
    })
    expect(await retention.runOnce()).toMatchObject({ dead: 2, inbox: 7 })
    expect(w.count('dead')).toBe(1)
    expect(w.db.inbox.size).toBe(1)
  })

  test('an instance that finds the lock taken skips its pass and deletes nothing', async () => {
    const w = setup()
    await w.rows(5, 'published')
    w.advance(2 * HOUR)
    const options = { outbox: { store: w.store, publishedOlderThanMs: HOUR }, logger: false as const }
    const first = new Retention(options)
    const second = new Retention(options)
    const skipped: string[] = []
    second.on('skipped', (e) => skipped.push(e.lock))
    let inFirst!: () => void
    const firstRuns = new Promise<void>((resolve) => {
      inFirst = resolve
    })
    let release!: () => void
    const gate = new Promise<void>((resolve) => {
      release = resolve
    })
    // The first instance's pass holds the lock until the gate opens.
    const purge = w.store.purge.bind(w.store)
    w.store.purge = async (o) => {
      inFirst()
      await gate
      w.store.purge = purge
      return purge(o)
    }
    const firstPass = first.runOnce()
    await firstRuns
    expect(await second.runOnce()).toMatchObject({ acquired: false, published: 0 })
    expect(skipped).toEqual(['retention'])
    release()
    expect(await firstPass).toMatchObject({ acquired: true, published: 5 })
    // Released: the next pass of the second instance runs.
    expect((await second.runOnce()).acquired).toBe(true)
  })

  test('the schedule runs a pass at start and reports it to the logger; stop ends it', async () => {
    const w = setup()
    await w.rows(3, 'published')
    w.advance(2 * HOUR)
    const lines: { message: string; fields: LogFields | undefined }[] = []
    const retention = new Retention({
      outbox: { store: w.store, publishedOlderThanMs: HOUR },
      logger: { info: (message, fields) => lines.push({ message, fields }) },
    })
    const passes: RetentionReport[] = []
    const first = new Promise<void>((resolve) =>
      retention.on('purged', (r) => {
        passes.push(r)
        resolve()
      }),
    )
    await retention.start()
    await first
    expect(retention.health()).toMatchObject({ running: true, lastPass: { published: 3 } })
    await retention.stop()
    expect(retention.running).toBe(false)
    expect(lines.find((l) => l.message === '[outboxkit] retention pass')?.fields).toMatchObject({
      published: 3,
      component: 'retention',
    })
  })

  test('a failing pass is reported and counted in health', async () => {
    const w = setup()
    w.store.purge = async () => {
      throw new Error('database down')
    }
    const retention = new Retention({ outbox: { store: w.store, publishedOlderThanMs: HOUR }, logger: false })
    const failed = new Promise<number>((resolve) => retention.on('error', (e) => resolve(e.retryInMs)))
    await retention.start()
    expect(await failed).toBeGreaterThan(0)
    await retention.stop()
    expect(retention.health()).toMatchObject({
      consecutiveErrors: 1,
      lastError: { message: 'database down' },
    })
  })

  test('options that cannot hold are refused with INVALID_OPTIONS', () => {
    const w = setup()
    const refused = (make: () => unknown) => {
      try {
        make()
      } catch (error) {
        return isOutboxKitError(error, ErrorCode.InvalidOptions) ? error.message : `other: ${error}`
      }
      return 'accepted'
    }
    expect(refused(() => new Retention({}))).toContain('needs `outbox`, `inbox` or both')
    expect(
      refused(
        () => new Retention({ outbox: { store: w.store, publishedOlderThanMs: HOUR, deadOlderThanMs: 1 } }),
      ),
    ).toContain('at least outbox.publishedOlderThanMs')
    expect(refused(() => new Retention({ inbox: { store: w.inbox, olderThanMs: -1 } }))).toContain(
      'inbox.olderThanMs',
    )
    const unlocked = { name: 'plain', purge: w.store.purge.bind(w.store) }
    expect(refused(() => new Retention({ outbox: { store: unlocked, publishedOlderThanMs: 0 } }))).toContain(
      'pass lock: false',
    )
    expect(
      refused(() => new Retention({ outbox: { store: unlocked, publishedOlderThanMs: 0 }, lock: false })),
    ).toBe('accepted')
  })
})
