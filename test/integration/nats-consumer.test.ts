/**
 * The NATS consumer runner against the real server and Postgres: poison messages go to the dead
 * letter per the consumer's rules without blocking the others, a message cut short is delivered
 * again and applied once, and a message without an id is never processed without dedupe.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { jetstream, jetstreamManager } from '@nats-io/jetstream'
import { headers, type NatsConnection } from '@nats-io/transport-node'
import { type Kysely, sql } from 'kysely'
import { createKyselyInboxStore, ensureOutboxSchema } from '../../src/adapters/kysely/index.js'
import {
  createNatsConsumerRunner,
  createNatsTransport,
  NATS_KEY_HEADER,
  type NatsConsumerRunner,
} from '../../src/adapters/nats/index.js'
import { DEAD_REASON_HEADER, IdempotentConsumer, type InboundMessage, uuidv7 } from '../../src/index.js'
import { type AnyDB, postgresJsBackend, type TestDatabase } from '../support/databases.js'
import { createStream, deleteStream, natsConnect, readStream, uniqueNatsName } from '../support/nats.js'
import { waitFor } from '../support/relay-world.js'

let nc: NatsConnection
beforeAll(async () => {
  nc = await natsConnect()
})
afterAll(async () => {
  await nc?.close()
})

interface World {
  database: TestDatabase
  stream: string
  dead: string
  /** Publishes events as the NATS transport would, in order; returns their ids. */
  publish(keys: string[]): Promise<string[]>
  effects(): Promise<{ id: string; k: string }[]>
  /** A consumer whose handler runs `handler` then records the effect; `backoffMs` between attempts. */
  consumer(
    handler?: (m: InboundMessage, tx: Kysely<AnyDB>) => Promise<void>,
    backoffMs?: number,
  ): IdempotentConsumer<Kysely<AnyDB>>
  run(consumer: IdempotentConsumer<Kysely<AnyDB>>): Promise<NatsConsumerRunner>
  close(): Promise<void>
}

async function openWorld(): Promise<World> {
  const database = await postgresJsBackend.open()
  const { schema } = database
  await ensureOutboxSchema(database.db, { dialect: 'postgres', schema })
  await database.query(
    `CREATE TABLE "${schema}"."effects" (n bigserial PRIMARY KEY, id text NOT NULL, k text NOT NULL)`,
  )
  const stream = uniqueNatsName('runner')
  const dead = `${stream}-dead`
  await createStream(nc, stream, [stream])
  await createStream(nc, dead, [dead])
  const transport = createNatsTransport({ connection: nc })
  const runners: NatsConsumerRunner[] = []
  const effects = sql.raw(`"${schema}"."effects"`)
  return {
    database,
    stream,
    dead,
    async publish(keys) {
      const records = keys.map((key, i) => ({
        id: uuidv7(),
        topic: stream,
        key,
        type: 'E',
        payload: new TextEncoder().encode(JSON.stringify({ i })),
        headers: { 'content-type': 'application/json' },
        attempts: 1,
        createdAt: new Date(),
      }))
      const outcomes = await transport.publish(records)
      expect(outcomes.every((o) => o.status === 'published')).toBe(true)
      return records.map((r) => r.id)
    },
    async effects() {
      return database.query<{ id: string; k: string }>(`SELECT id, k FROM "${schema}"."effects" ORDER BY n`)
    },
    consumer(handler, backoffMs = 20) {
      return new IdempotentConsumer<Kysely<AnyDB>>({
        store: createKyselyInboxStore({ db: database.db, schema }),
        name: 'inventory',
        maxAttempts: 3,
        backoff: { initialMs: backoffMs, maxMs: backoffMs },
        deadLetter: { topic: dead, transport },
        handler: async (message, tx) => {
          await handler?.(message, tx)
          await sql`INSERT INTO ${effects} (id, k) VALUES (${message.id}, ${message.key ?? ''})`.execute(tx)
        },
      })
    },
    async run(consumer) {
      const runner = createNatsConsumerRunner({
        connection: nc,
        stream,
        durable: 'inventory',
        consumer,
        ackWaitMs: 1_000,
      })
      runners.push(runner)
      await runner.start()
      return runner
    },
    async close() {
      for (const runner of runners) await runner.stop()
      await transport.close()
      await deleteStream(nc, stream)
      await deleteStream(nc, dead)
      await database.close()
    },
  }
}

describe('NATS consumer runner', () => {
  test('a poison message goes to the dead letter after maxAttempts; the messages after it take effect', async () => {
    const world = await openWorld()
    try {
      const ids = await world.publish(['a', 'b', 'a', 'c'])
      const poison = ids[1]!
      const consumer = world.consumer(async (message) => {
        if (message.id === poison) throw new Error('cannot handle this one')
      })
      await world.run(consumer)
      await waitFor('the other messages to take effect', async () => (await world.effects()).length === 3)
      const applied = await world.effects()
      // Keys are published side by side: each key keeps its order, keys interleave.
      expect(applied.map((e) => e.id).sort()).toEqual([ids[0]!, ids[2]!, ids[3]!].sort())
      expect(applied.filter((e) => e.k === 'a').map((e) => e.id)).toEqual([ids[0]!, ids[2]!])
      const [letter] = await readStream(nc, world.dead, [poison])
      expect(letter!.headers[DEAD_REASON_HEADER]).toContain('HANDLER_FAILED')
      expect(letter!.headers[DEAD_REASON_HEADER]).toContain('cannot handle this one')
    } finally {
      await world.close()
    }
  }, 60_000)

  test('a message cut short by stop is delivered again to the next runner and applied once', async () => {
    const world = await openWorld()
    try {
      const [id] = await world.publish(['a'])
      let failures = 0
      // Fails, then backs off for a minute: the runner stops during the backoff.
      const first = await world.run(
        world.consumer(async () => {
          failures++
          throw new Error('not yet')
        }, 60_000),
      )
      await waitFor('the first attempt', () => failures >= 1)
      await first.stop()
      expect(await world.effects()).toEqual([])
      await world.run(world.consumer())
      await waitFor('the message to take effect', async () => (await world.effects()).length === 1)
      expect(await world.effects()).toEqual([{ id: id!, k: 'a' }])
    } finally {
      await world.close()
    }
  }, 60_000)

  test('a message without a message id goes to the dead letter, never processed without dedupe', async () => {
    const world = await openWorld()
    try {
      const h = headers()
      h.set(NATS_KEY_HEADER, 'a')
      await jetstream(nc).publish(world.stream, new TextEncoder().encode('{}'), { headers: h })
      const [after] = await world.publish(['a'])
      await world.run(world.consumer())
      await waitFor('the next message to take effect', async () => (await world.effects()).length === 1)
      expect((await world.effects()).map((e) => e.id)).toEqual([after!])
      const jsm = await jetstreamManager(nc)
      await waitFor('the dead letter', async () => (await jsm.streams.info(world.dead)).state.messages === 1)
      const letter = await jsm.streams.getMessage(world.dead, { seq: 1 })
      expect(letter?.header?.get(DEAD_REASON_HEADER)).toContain('MISSING_MESSAGE_ID')
    } finally {
      await world.close()
    }
  }, 60_000)
})
