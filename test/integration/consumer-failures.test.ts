/**
 * The consumer when things break: a consumer process killed with SIGKILL right after its database
 * commit (before the offset commit) and right before it, then restarted in the same group; and
 * thousands of events through relays killed at random points into a consumer that must apply
 * each side effect once. Real processes, real services.
 */
import { beforeAll, describe, expect, test } from 'bun:test'
import { Kysely, MysqlDialect, PostgresDialect, sql } from 'kysely'
import { PostgresJSDialect } from 'kysely-postgres-js'
import { createPool } from 'mysql2'
import { createConnection } from 'mysql2/promise'
import pg from 'pg'
import postgres from 'postgres'
import { createKyselyInboxStore, ensureOutboxSchema } from '../../src/adapters/kysely/index.js'
import {
  IdempotentConsumer,
  type InboundMessage,
  inboundMessage,
  type OutboxMessageInput,
  uuidv7,
} from '../../src/index.js'
import { type ConsumerWorld, openConsumerWorld } from '../support/consumer-world.js'
import {
  type AnyDB,
  type Backend,
  MYSQL_URL,
  mysqlBackend,
  POSTGRES_URL,
  pgBackend,
  postgresJsBackend,
  type TestDatabase,
} from '../support/databases.js'
import { groupSessionTimeoutMs, testKafka, uniqueName } from '../support/kafka.js'
import { startWorker, type Worker } from '../support/processes.js'
import { recordCount, waitFor } from '../support/relay-world.js'
import { startTcpProxy } from '../support/tcp-proxy.js'

const BACKENDS = [postgresJsBackend, mysqlBackend]
const CONSUMER = 'inventory'
// The group's session timeout in the consumer processes: a killed member is dropped after it,
// and the restarted process can join. 2.5 s where the broker allows it (scripts/kafka's does),
// else the broker's minimum.
let SESSION_TIMEOUT_MS = '6000'
beforeAll(async () => {
  SESSION_TIMEOUT_MS = String(await groupSessionTimeoutMs())
})

function exited(worker: Worker): boolean {
  return worker.process.exitCode !== null || worker.process.signalCode !== null
}

/** Ids the worker reported with `word` ('processed' or 'duplicate'). */
function reported(worker: Worker, word: string): string[] {
  return worker
    .output()
    .split('\n')
    .filter((line) => line.startsWith(`${word} `))
    .map((line) => line.slice(word.length + 1))
}

async function effectsOf(world: ConsumerWorld, ids: readonly string[]): Promise<number[]> {
  const effects = await world.effects()
  return ids.map((id) => effects.get(id) ?? 0)
}

async function covers(world: ConsumerWorld, ids: readonly string[]): Promise<boolean> {
  return (await effectsOf(world, ids)).every((n) => n > 0)
}

async function inboxHas(world: ConsumerWorld, id: string): Promise<boolean> {
  const q = (name: string) => (world.database.dialect === 'mysql' ? `\`${name}\`` : `"${name}"`)
  const rows = await world.database.query<{ n: unknown }>(
    `SELECT count(*) AS n FROM ${q(world.database.schema)}.${q('outbox_inbox')} WHERE consumer = '${CONSUMER}' AND message_id = '${id}'`,
  )
  return Number(rows[0]!.n) === 1
}

async function publishedCount(world: ConsumerWorld): Promise<number> {
  const q = (name: string) => (world.database.dialect === 'mysql' ? `\`${name}\`` : `"${name}"`)
  const rows = await world.database.query<{ n: unknown }>(
    `SELECT count(*) AS n FROM ${q(world.database.schema)}.${q('outbox')} WHERE status = 1`,
  )
  return Number(rows[0]!.n)
}

/** Produces records as a relay would, directly, with the given ids, in order. */
async function produceIds(world: ConsumerWorld, ids: readonly string[]): Promise<void> {
  const producer = testKafka(world.brokers).producer()
  await producer.connect()
  try {
    await producer.send({
      topic: world.topic,
      messages: ids.map((id, i) => ({
        key: `item-${i % 4}`,
        value: JSON.stringify({ i }),
        headers: { 'outboxkit-id': id, 'outboxkit-type': 'ItemReserved', 'content-type': 'application/json' },
      })),
    })
  } finally {
    await producer.disconnect()
  }
}

interface KillOptions {
  /** The runner's mode in both processes. Default 'message'. */
  readonly runner?: 'message' | 'batch'
  /** Which of the 20 records the process dies at. Default 4 (the 5th). */
  readonly victimIndex?: number
  /** Make the victim a poison message (its handler always throws), dead-lettered after 2 attempts. */
  readonly poison?: boolean
}

/**
 * Runs a consumer process that kills itself at one of 20 records (`mode` says where), restarts
 * it in the same group, checks that every side effect was applied once (none for a poison
 * message), and returns the restarted worker for the caller's checks of what it saw.
 */
async function killAndRestart(
  world: ConsumerWorld,
  mode: 'after-commit' | 'before-commit' | 'at-failure',
  workers: Worker[],
  options: KillOptions = {},
): Promise<{ ids: string[]; victim: string; restarted: Worker }> {
  const ids = Array.from({ length: 20 }, () => uuidv7())
  const victim = ids[options.victimIndex ?? 4]!
  const env = {
    MODE: options.runner ?? 'message',
    ...(options.poison ? { POISON: victim, MAX_ATTEMPTS: '2' } : {}),
    BACKEND: world.database.backend,
    SCHEMA: world.database.schema,
    BROKERS: world.brokers.join(','),
    TOPIC: world.topic,
    GROUP: uniqueName('group'),
    CONSUMER_NAME: CONSUMER,
    SESSION_TIMEOUT_MS,
  }
  // The worker is running before the records exist, so it cannot die before it reports ready.
  const first = await startWorker('consumer-worker', { ...env, KILL_AT: `${mode}:${victim}` })
  workers.push(first)
  await produceIds(world, ids)
  await waitFor('the consumer process to kill itself', () => exited(first), 60_000)
  expect(first.process.signalCode).toBe('SIGKILL')

  if (mode === 'after-commit') {
    expect(await effectsOf(world, [victim])).toEqual([1])
    expect(await inboxHas(world, victim)).toBe(true)
  } else if (mode === 'at-failure') {
    // Died while the poison message waited for its retry: nothing of it was committed.
    expect(await inboxHas(world, victim)).toBe(false)
    expect(await effectsOf(world, [victim])).toEqual([0])
  } else {
    expect(reported(first, 'processed')).not.toContain(victim)
    // The killed transaction wrote the side effect and the inbox row; neither committed.
    expect(await inboxHas(world, victim)).toBe(false)
    expect(await effectsOf(world, [victim])).toEqual([0])
  }

  const restarted = await startWorker('consumer-worker', env)
  workers.push(restarted)
  const applied = options.poison ? ids.filter((id) => id !== victim) : ids
  await waitFor('every side effect applied', () => covers(world, applied), 90_000)
  // The redeliveries were handled too (the victim's among them) before counting.
  const handledFirst = new Set(reported(first, 'processed'))
  await waitFor(
    'every record handled',
    () => {
      const handled = new Set(['processed', 'duplicate', 'dead'].flatMap((word) => reported(restarted, word)))
      return handled.has(victim) && ids.every((id) => handledFirst.has(id) || handled.has(id))
    },
    30_000,
  )
  await restarted.kill('SIGTERM')
  expect(restarted.process.exitCode).toBe(0)

  expect(await effectsOf(world, ids)).toEqual(ids.map((id) => (options.poison && id === victim ? 0 : 1)))
  expect((await world.effects()).size).toBe(applied.length)
  expect(await world.inboxCount(CONSUMER)).toBe(ids.length)
  return { ids, victim, restarted }
}

for (const backend of BACKENDS) {
  describe(`consumer failures on ${backend.name}`, () => {
    test('a consumer killed after its DB commit but before the offset commit applies each side effect once', async () => {
      const world = await openConsumerWorld(backend, { partitions: 2 })
      const workers: Worker[] = []
      try {
        const { victim, restarted } = await killAndRestart(world, 'after-commit', workers)
        // The victim's offset was never committed: it came again and the inbox turned it away.
        expect(reported(restarted, 'duplicate')).toContain(victim)
        expect(reported(restarted, 'processed')).not.toContain(victim)
      } finally {
        for (const worker of workers) await worker.kill('SIGKILL')
        await world.close()
      }
    }, 240_000)

    test('a consumer killed before its DB commit applies the side effect exactly once after restart', async () => {
      const world = await openConsumerWorld(backend, { partitions: 2 })
      const workers: Worker[] = []
      try {
        const { victim, restarted } = await killAndRestart(world, 'before-commit', workers)
        // Nothing of the killed attempt survived: the restarted process applied it for real.
        expect(reported(restarted, 'processed')).toContain(victim)
        expect(reported(restarted, 'duplicate')).not.toContain(victim)
      } finally {
        for (const worker of workers) await worker.kill('SIGKILL')
        await world.close()
      }
    }, 240_000)

    // Batch mode: one transaction holds the records of a partition's fetch, so a kill inside it
    // loses (and redoes) the whole batch's uncommitted work, and a kill after it redelivers the
    // whole batch, which the inbox turns into duplicates.
    test('batch mode: a consumer killed after the batch committed but before the offset commit applies each side effect once', async () => {
      const world = await openConsumerWorld(backend, { partitions: 2 })
      const workers: Worker[] = []
      try {
        const { victim, restarted } = await killAndRestart(world, 'after-commit', workers, {
          runner: 'batch',
        })
        expect(reported(restarted, 'duplicate')).toContain(victim)
        expect(reported(restarted, 'processed')).not.toContain(victim)
      } finally {
        for (const worker of workers) await worker.kill('SIGKILL')
        await world.close()
      }
    }, 240_000)

    for (const [where, victimIndex] of [
      ['at the first record of a batch (after its inbox statement)', 0],
      ['in the middle of a batch', 9],
    ] as const) {
      test(`batch mode: a consumer killed ${where}, before the commit, applies every side effect exactly once after restart`, async () => {
        const world = await openConsumerWorld(backend, { partitions: 2 })
        const workers: Worker[] = []
        try {
          const { ids, victim, restarted } = await killAndRestart(world, 'before-commit', workers, {
            runner: 'batch',
            victimIndex,
          })
          expect(reported(restarted, 'processed')).toContain(victim)
          expect(reported(restarted, 'duplicate')).not.toContain(victim)
          // No record of the killed batch was committed: the restarted process applied them all.
          const processedFirst = new Set(reported(workers[0]!, 'processed'))
          expect(processedFirst.size).toBeLessThan(ids.length)
        } finally {
          for (const worker of workers) await worker.kill('SIGKILL')
          await world.close()
        }
      }, 240_000)
    }

    test('batch mode: a consumer killed while a poison message waits for its retry (the records before it committed) loses nothing, redoes nothing, and dead-letters it', async () => {
      const world = await openConsumerWorld(backend, { partitions: 2 })
      const workers: Worker[] = []
      try {
        const { victim, restarted } = await killAndRestart(world, 'at-failure', workers, {
          runner: 'batch',
          victimIndex: 9,
          poison: true,
        })
        expect(reported(restarted, 'dead')).toEqual([victim])
        expect(reported(restarted, 'processed')).not.toContain(victim)
      } finally {
        for (const worker of workers) await worker.kill('SIGKILL')
        await world.close()
      }
    }, 240_000)

    test('end to end: thousands of events through relays restarted at random points, each side effect exactly once', async () => {
      const world = await openConsumerWorld(backend, { partitions: 3 })
      const workers: Worker[] = []
      try {
        const total = 3000
        const ids: string[] = []
        for (let t = 0; t < 6; t++) {
          const batch: OutboxMessageInput[] = Array.from({ length: total / 6 }, (_, i) => ({
            topic: world.topic,
            key: `order-${(t * 500 + i) % 97}`,
            type: 'OrderPlaced',
            payload: { t, i },
          }))
          ids.push(...(await world.database.db.transaction().execute((trx) => world.outbox.add(trx, batch))))
        }

        let handled = 0
        let skipped = 0
        const consumer = world.consumer({ handler: async (m, tx) => world.applyEffect(tx, m) })
        consumer.on('processed', () => handled++)
        consumer.on('duplicate', () => {
          handled++
          skipped++
        })
        await world.run(consumer)

        const env = {
          BACKEND: backend.name,
          SCHEMA: world.database.schema,
          BROKERS: world.brokers.join(','),
          BATCH_SIZE: '100',
          LEASE_MS: '1500',
        }
        // Each relay is killed past a random progress point, aimed (for up to 3 s) at a moment when
        // records reached the topic but their rows were not yet marked published: the records the
        // next relay publishes again.
        const admin = testKafka(world.brokers).admin()
        await admin.connect()
        const killedAt: string[] = []
        try {
          const inTopic = async () =>
            (await admin.fetchTopicOffsets(world.topic)).reduce(
              (sum, p) => sum + Number(p.high) - Number(p.low),
              0,
            )
          for (let round = 1; round <= 3; round++) {
            const worker = await startWorker('relay-worker', env)
            workers.push(worker)
            const from = await publishedCount(world)
            const target = Math.min(total - 600, from + 100 + Math.floor(Math.random() * 700))
            await waitFor(
              `relay round ${round} progress`,
              async () => (await publishedCount(world)) >= target,
              60_000,
            )
            let lowest = Number.POSITIVE_INFINITY
            let aimed = false
            for (const until = Date.now() + 3_000; Date.now() < until && !aimed; ) {
              const records = await inTopic()
              const unmarked = records - (await publishedCount(world))
              aimed = unmarked > lowest
              lowest = Math.min(lowest, unmarked)
            }
            await worker.kill('SIGKILL')
            killedAt.push(`${await publishedCount(world)}${aimed ? ' (aimed)' : ''}`)
          }
        } finally {
          await admin.disconnect()
        }
        const last = await startWorker('relay-worker', env)
        workers.push(last)
        await waitFor('everything published', async () => (await publishedCount(world)) === total, 120_000)
        await last.kill('SIGTERM')

        const records = await recordCount(world.brokers, world.topic)
        await waitFor('every side effect applied', () => covers(world, ids), 120_000)
        await waitFor('every record handled', () => handled >= records, 60_000)

        const effects = await world.effects()
        expect(effects.size).toBe(total)
        expect(await effectsOf(world, ids)).toEqual(ids.map(() => 1))
        expect(await world.inboxCount(CONSUMER)).toBe(total)
        const effectRows = [...effects.values()].reduce((sum, n) => sum + n, 0)
        console.log(
          `${backend.name}: relays killed at ${killedAt.join(', ')} published rows; the topic had ${records - total} duplicate records, the consumer skipped ${skipped}, effects have ${effectRows - total} duplicates`,
        )
        expect(records).toBeGreaterThanOrEqual(total)
      } finally {
        for (const worker of workers) await worker.kill('SIGKILL')
        await world.close()
      }
    }, 240_000)
  })
}

// ---------------------------------------------------------------------------------------------
// Database outages: real connection failures while a message is in hand. Each consumer has
// maxAttempts 1, so a single outage counted as a handler failure would dead-letter the message.

interface OutageSetup {
  readonly database: TestDatabase
  /** The consumer's own Kysely instance (through a proxy, or with a small pool). */
  readonly db: Kysely<AnyDB>
  readonly consumer: IdempotentConsumer<Kysely<AnyDB>>
  readonly seen: { unavailable: unknown[]; dead: string[]; processedAttempts: number[] }
  effects(id: string): Promise<number>
}

async function outageSetup(
  backend: Backend,
  db: (database: TestDatabase) => Kysely<AnyDB>,
  handler: (message: InboundMessage, tx: Kysely<AnyDB>, setup: () => OutageSetup) => Promise<void>,
): Promise<OutageSetup> {
  const database = await backend.open()
  const { schema, dialect } = database
  await ensureOutboxSchema(database.db, { dialect, schema })
  const q = (name: string) => (dialect === 'mysql' ? `\`${name}\`` : `"${name}"`)
  const effects = `${q(schema)}.${q('effects')}`
  await database.query(`CREATE TABLE ${effects} (message_id varchar(255) NOT NULL)`)
  const consumerDb = db(database)
  const seen = { unavailable: [] as unknown[], dead: [] as string[], processedAttempts: [] as number[] }
  let setup: OutageSetup | undefined
  const consumer = new IdempotentConsumer<Kysely<AnyDB>>({
    store: createKyselyInboxStore({ db: consumerDb, schema }),
    name: CONSUMER,
    maxAttempts: 1,
    backoff: { initialMs: 50, maxMs: 200 },
    handler: async (message, tx) => {
      await handler(message, tx, () => setup!)
      await sql`INSERT INTO ${sql.raw(effects)} (message_id) VALUES (${message.id})`.execute(tx)
    },
  })
  consumer.on('unavailable', (e) => seen.unavailable.push(e.error))
  consumer.on('deadLettered', (e) => seen.dead.push(e.reason))
  consumer.on('processed', (e) => seen.processedAttempts.push(e.attempts))
  setup = {
    database,
    db: consumerDb,
    consumer,
    seen,
    async effects(id) {
      const rows = await database.query<{ n: unknown }>(
        `SELECT count(*) AS n FROM ${effects} WHERE message_id = '${id}'`,
      )
      return Number(rows[0]!.n)
    },
  }
  return setup
}

function outageMessage(id: string): InboundMessage {
  return inboundMessage({ id, topic: 'orders', key: 'order-1', payload: new Uint8Array(), headers: {} })
}

/** Processes one message through an outage and checks it was applied once, no attempt spent. */
async function expectProcessedOnceThroughOutage(
  setup: OutageSetup,
  id: string,
  beforeClose: () => void = () => {},
): Promise<void> {
  try {
    const outcome = await setup.consumer.process(outageMessage(id))
    expect(setup.seen.dead).toEqual([])
    expect(outcome).toBe('processed')
    expect(setup.seen.unavailable.length).toBeGreaterThan(0)
    expect(setup.seen.processedAttempts).toEqual([1])
    expect(await setup.effects(id)).toBe(1)
    expect(await setup.consumer.process(outageMessage(id))).toBe('duplicate')
    expect(await setup.effects(id)).toBe(1)
  } finally {
    beforeClose()
    await setup.db.destroy().catch(() => {})
    await setup.database.close()
  }
}

function pgKysely(url: string, pool: Partial<pg.PoolConfig> = {}): Kysely<AnyDB> {
  const p = new pg.Pool({ connectionString: url, max: 2, ...pool })
  // pg reports a lost connection as an 'error' event too; the failed query carries it as well.
  p.on('error', () => {})
  p.on('connect', (client) => client.on('error', () => {}))
  return new Kysely<AnyDB>({ dialect: new PostgresDialect({ pool: p }) })
}

function proxiedUrl(url: string, port: number): string {
  const parsed = new URL(url)
  parsed.port = String(port)
  return parsed.toString()
}

describe('database outages while a message is in hand', () => {
  test('pg: the consumer connection terminated mid-handler (pg_terminate_backend) waits for the database, then processes once', async () => {
    let terminated = false
    const setup = await outageSetup(
      pgBackend,
      () => pgKysely(POSTGRES_URL),
      async (_m, tx, s) => {
        if (terminated) return
        terminated = true
        const [row] = (await sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`.execute(tx)).rows
        await s().database.query(`SELECT pg_terminate_backend(${row!.pid})`)
      },
    )
    await expectProcessedOnceThroughOutage(setup, uuidv7())
  }, 60_000)

  test('pg: the connection cut by a proxy mid-handler, then the port refusing connections, until it listens again', async () => {
    let cut = false
    const proxy = await startTcpProxy({ port: 15411, targetHost: '127.0.0.1', targetPort: 5432 })
    try {
      const setup = await outageSetup(
        pgBackend,
        () => pgKysely(proxiedUrl(POSTGRES_URL, proxy.port)),
        async () => {
          // The connection in use is cut mid-handler, and no new one can be made for a while.
          if (!cut) {
            cut = true
            await proxy.refuse()
          }
        },
      )
      setup.consumer.on('unavailable', ({ outages }) => {
        if (outages === 3) void proxy.restore()
      })
      await expectProcessedOnceThroughOutage(setup, uuidv7())
      expect(setup.seen.unavailable.length).toBeGreaterThanOrEqual(3)
      expect(setup.seen.unavailable.some((e) => describeChain(e).includes('ECONNREFUSED'))).toBe(true)
    } finally {
      await proxy.close()
    }
  }, 60_000)

  test('pg: a pool exhausted (max 1, held elsewhere, short acquire timeout) waits until a connection is free', async () => {
    const pool = new pg.Pool({ connectionString: POSTGRES_URL, max: 1, connectionTimeoutMillis: 100 })
    pool.on('error', () => {})
    const db = new Kysely<AnyDB>({ dialect: new PostgresDialect({ pool }) })
    const setup = await outageSetup(
      pgBackend,
      () => db,
      async () => {},
    )
    const holder = await pool.connect()
    let released = false
    const release = () => {
      if (!released) holder.release()
      released = true
    }
    setup.consumer.on('unavailable', ({ outages }) => {
      if (outages === 2) release()
    })
    await expectProcessedOnceThroughOutage(setup, uuidv7(), release)
    expect(describeChain(setup.seen.unavailable[0])).toContain('timeout exceeded when trying to connect')
  }, 60_000)

  // postgres.js 3.4.9 is tested with a database that refuses connections from the start: a
  // connection it loses is put back into its pool broken and the next transaction on it never
  // settles (porsager/postgres#1208, #1186), which no consumer can tell from a slow handler.
  test('postgres.js: a port that refuses connections, until it listens again', async () => {
    const proxy = await startTcpProxy({ port: 15412, targetHost: '127.0.0.1', targetPort: 5432 })
    try {
      await proxy.refuse()
      const setup = await outageSetup(
        postgresJsBackend,
        () =>
          new Kysely<AnyDB>({
            dialect: new PostgresJSDialect({
              postgres: postgres(proxiedUrl(POSTGRES_URL, proxy.port), { max: 2, onnotice: () => {} }),
            }),
          }),
        async () => {},
      )
      setup.consumer.on('unavailable', ({ outages }) => {
        if (outages === 3) void proxy.restore()
      })
      await expectProcessedOnceThroughOutage(setup, uuidv7())
      expect(describeChain(setup.seen.unavailable[0])).toContain('ECONNREFUSED')
    } finally {
      await proxy.close()
    }
  }, 60_000)

  test('mariadb: the consumer connection killed mid-handler (KILL) waits for the database, then processes once', async () => {
    let killed = false
    const setup = await outageSetup(
      mysqlBackend,
      (database) =>
        new Kysely<AnyDB>({
          dialect: new MysqlDialect({
            pool: createPool({ uri: MYSQL_URL, connectionLimit: 2, database: database.schema }),
          }),
        }),
      async (_m, tx, s) => {
        if (killed) return
        killed = true
        const [row] = (await sql<{ id: number }>`SELECT CONNECTION_ID() AS id`.execute(tx)).rows
        await s().database.query(`KILL ${row!.id}`)
      },
    )
    await expectProcessedOnceThroughOutage(setup, uuidv7())
  }, 60_000)

  test('mariadb: the connection cut by a proxy mid-handler, then the port refusing connections, until it listens again', async () => {
    let cut = false
    const proxy = await startTcpProxy({ port: 15413, targetHost: '127.0.0.1', targetPort: 3306 })
    try {
      const setup = await outageSetup(
        mysqlBackend,
        () =>
          new Kysely<AnyDB>({
            dialect: new MysqlDialect({
              pool: createPool({ uri: proxiedUrl(MYSQL_URL, proxy.port), connectionLimit: 2 }),
            }),
          }),
        async () => {
          // The connection in use is cut mid-handler, and no new one can be made for a while.
          if (!cut) {
            cut = true
            await proxy.refuse()
          }
        },
      )
      setup.consumer.on('unavailable', ({ outages }) => {
        if (outages === 3) void proxy.restore()
      })
      await expectProcessedOnceThroughOutage(setup, uuidv7())
    } finally {
      await proxy.close()
    }
  }, 60_000)
})

describe('a handler that catches a database error and goes on', () => {
  test('mariadb: a deadlock the handler caught (InnoDB rolled its transaction back) is retried, and the effect is applied exactly once', async () => {
    const database = await mysqlBackend.open()
    const peer = await createConnection({ uri: MYSQL_URL, database: database.schema })
    try {
      const { schema } = database
      await ensureOutboxSchema(database.db, { dialect: 'mysql', schema })
      await database.query(`CREATE TABLE \`${schema}\`.locks (id varchar(8) PRIMARY KEY, n int NOT NULL)`)
      await database.query(`INSERT INTO \`${schema}\`.locks VALUES ('a', 0), ('b', 0)`)
      await database.query(`CREATE TABLE \`${schema}\`.ballast (id int PRIMARY KEY)`)
      await database.query(`CREATE TABLE \`${schema}\`.effects (message_id varchar(255) NOT NULL)`)
      const caught: unknown[] = []
      const table = (name: string) => sql.raw(`\`${schema}\`.${name}`)
      const consumer = new IdempotentConsumer<Kysely<AnyDB>>({
        store: createKyselyInboxStore({ db: database.db, schema }),
        name: CONSUMER,
        backoff: { initialMs: 10, maxMs: 20 },
        handler: async (message, tx) => {
          if (caught.length === 0) {
            await sql`UPDATE ${table('locks')} SET n = n + 1 WHERE id = 'a'`.execute(tx)
            // The other transaction holds b and is heavier (more rows written), so InnoDB
            // picks the handler's transaction as the deadlock victim.
            await peer.query('START TRANSACTION')
            await peer.query(
              `INSERT INTO ballast VALUES ${Array.from({ length: 50 }, (_, i) => `(${i})`).join(',')}`,
            )
            await peer.query(`UPDATE locks SET n = n + 1 WHERE id = 'b'`)
            const mine = sql`UPDATE ${table('locks')} SET n = n + 1 WHERE id = 'b'`.execute(tx).then(
              () => undefined,
              (error: unknown) => error,
            )
            const theirs = peer.query(`UPDATE locks SET n = n + 1 WHERE id = 'a'`)
            const error = await mine
            await theirs
            await peer.query('COMMIT')
            caught.push(error) // and goes on, as if nothing happened
          }
          await sql`INSERT INTO ${table('effects')} (message_id) VALUES (${message.id})`.execute(tx)
        },
      })
      const id = uuidv7()
      const message = inboundMessage({
        id,
        topic: 'orders',
        key: 'k',
        payload: new Uint8Array(),
        headers: {},
      })
      expect(await consumer.process(message)).toBe('processed')
      // A redelivery (a duplicate in the topic, a rebalance) must find the message recorded.
      expect(await consumer.process(message)).toBe('duplicate')
      expect((caught[0] as { code?: unknown }).code).toBe('ER_LOCK_DEADLOCK')
      const rows = await database.query<{ n: unknown }>(
        `SELECT count(*) AS n FROM \`${schema}\`.effects WHERE message_id = '${id}'`,
      )
      expect(Number(rows[0]!.n)).toBe(1)
    } finally {
      await peer.end()
      await database.close()
    }
  }, 60_000)

  test('postgres: a failed statement the handler caught (the transaction is aborted) is retried, and the effect is applied once', async () => {
    const database = await postgresJsBackend.open()
    try {
      const { schema } = database
      await ensureOutboxSchema(database.db, { dialect: 'postgres', schema })
      await database.query(`CREATE TABLE "${schema}".effects (message_id varchar(255) NOT NULL)`)
      let calls = 0
      const consumer = new IdempotentConsumer<Kysely<AnyDB>>({
        store: createKyselyInboxStore({ db: database.db, schema }),
        name: CONSUMER,
        backoff: { initialMs: 10, maxMs: 20 },
        handler: async (message, tx) => {
          await sql`INSERT INTO ${sql.raw(`"${schema}".effects`)} (message_id) VALUES (${message.id})`.execute(
            tx,
          )
          if (++calls === 1) await sql`SELECT 1 / 0`.execute(tx).catch(() => {}) // caught: goes on
        },
      })
      const id = uuidv7()
      const message = inboundMessage({
        id,
        topic: 'orders',
        key: 'k',
        payload: new Uint8Array(),
        headers: {},
      })
      expect(await consumer.process(message)).toBe('processed')
      expect(calls).toBe(2)
      const rows = await database.query<{ n: unknown }>(
        `SELECT count(*) AS n FROM "${schema}".effects WHERE message_id = '${id}'`,
      )
      expect(Number(rows[0]!.n)).toBe(1)
    } finally {
      await database.close()
    }
  }, 60_000)
})

/** The messages and codes of an error and its causes, for assertions. */
function describeChain(error: unknown): string {
  const parts: string[] = []
  for (
    let e = error as { message?: unknown; code?: unknown; cause?: unknown } | undefined;
    e;
    e = e.cause as typeof e
  ) {
    parts.push(`${String(e.code ?? '')} ${String(e.message ?? '')}`)
  }
  return parts.join(' <- ')
}
