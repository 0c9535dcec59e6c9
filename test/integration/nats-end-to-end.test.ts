/**
 * Write → relay → NATS JetStream → IdempotentConsumer against Postgres, with a relay process and
 * consumer processes SIGKILLed mid-stream: nothing is lost, no effect is applied twice, each key's
 * effects are applied in the order its events were written, and JetStream's duplicate window keeps
 * one copy of each event in the stream even when the killed relay published a batch again.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { jetstreamManager } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import { createKyselyOutboxStore, ensureOutboxSchema } from '../../src/adapters/kysely/index.js'
import { Outbox, type OutboxMessageInput } from '../../src/index.js'
import { postgresJsBackend } from '../support/databases.js'
import { createStream, deleteStream, natsConnect, readStream, uniqueNatsName } from '../support/nats.js'
import { startWorker, type Worker } from '../support/processes.js'
import { waitFor } from '../support/relay-world.js'

const KEYS = 8
const EVENTS_PER_ROUND = 120
const ROUNDS = 3

describe('NATS JetStream end to end', () => {
  let nc: NatsConnection
  beforeAll(async () => {
    nc = await natsConnect()
  })
  afterAll(async () => {
    await nc?.close()
  })

  test('a relay and consumers killed mid-stream: nothing lost, no effect twice, each key in order, one copy per event in the stream', async () => {
    const database = await postgresJsBackend.open()
    const { schema } = database
    await ensureOutboxSchema(database.db, { dialect: 'postgres', schema })
    const store = createKyselyOutboxStore({ db: database.db, schema })
    const outbox = new Outbox({ store })
    const write = (messages: OutboxMessageInput[]) => store.transaction((trx) => outbox.add(trx, messages))
    const published = async () =>
      Number(
        (
          await database.query<{ n: unknown }>(
            `SELECT count(*) AS n FROM "${schema}"."outbox" WHERE status = 1`,
          )
        )[0]!.n,
      )
    const stream = uniqueNatsName('e2e')
    const topic = stream
    await createStream(nc, stream, [topic])
    const workers: Worker[] = []
    const start = async (name: string, env: Record<string, string>) => {
      const worker = await startWorker(name, env)
      workers.push(worker)
      return worker
    }
    try {
      await database.query(
        `CREATE TABLE "${schema}"."effects" (n bigserial PRIMARY KEY, message_id text NOT NULL, k text NOT NULL, i integer NOT NULL)`,
      )
      const effects = async () =>
        database.query<{ message_id: string; k: string; i: number }>(
          `SELECT message_id, k, i FROM "${schema}"."effects" ORDER BY n`,
        )
      const written: string[] = []
      const writeRound = async (round: number) => {
        const batch = Array.from({ length: EVENTS_PER_ROUND }, (_, j) => ({
          topic,
          key: `key-${j % KEYS}`,
          type: 'E',
          payload: { i: round * EVENTS_PER_ROUND + j },
        }))
        // Several transactions per round, so keys interleave across commits.
        for (let t = 0; t < batch.length; t += 10) written.push(...(await write(batch.slice(t, t + 10))))
      }

      const relayEnv = { SCHEMA: schema, BATCH_SIZE: '15', LEASE_MS: '1500' }
      const consumerEnv = { SCHEMA: schema, STREAM: stream, DURABLE: 'inventory', ACK_WAIT_MS: '1000' }
      await writeRound(0)
      const relay1 = await start('nats-relay-worker', relayEnv)
      // The first consumer kills itself after a commit, before its ack.
      const consumer1 = await start('nats-consumer-worker', { ...consumerEnv, KILL_AFTER: '40' })
      await waitFor('the first relay to publish', () => relay1.output().includes('published'))
      await writeRound(1)
      await relay1.kill('SIGKILL')
      expect(relay1.process.signalCode).toBe('SIGKILL')
      await waitFor('the first consumer to kill itself', () => consumer1.process.signalCode === 'SIGKILL')

      const relay2 = await start('nats-relay-worker', relayEnv)
      const consumer2 = await start('nats-consumer-worker', consumerEnv)
      await writeRound(2)
      // Killed from outside, wherever it is.
      await waitFor('the second consumer to process some', async () => (await effects()).length >= 150)
      await consumer2.kill('SIGKILL')
      const consumer3 = await start('nats-consumer-worker', consumerEnv)

      const total = EVENTS_PER_ROUND * ROUNDS
      await waitFor('every event to be published', async () => (await published()) === total, 90_000)
      await waitFor('every event to take effect', async () => (await effects()).length >= total, 90_000)
      await relay2.kill('SIGTERM')
      await consumer3.kill('SIGTERM')

      const applied = await effects()
      // Nothing lost, nothing applied twice.
      expect(applied.map((e) => e.message_id).sort()).toEqual([...written].sort())
      // Each key's effects in write order.
      const byKey = new Map<string, number[]>()
      for (const e of applied) byKey.set(e.k, [...(byKey.get(e.k) ?? []), e.i])
      expect(byKey.size).toBe(KEYS)
      for (const order of byKey.values()) expect(order).toEqual([...order].sort((a, b) => a - b))
      // The consumer that died after its commit saw its message again and skipped it.
      expect([consumer1, consumer2, consumer3].some((w) => w.output().includes('duplicate'))).toBe(true)
      // One copy of each event in the stream, whatever the killed relay published again.
      const inStream = await readStream(nc, stream, written)
      expect(inStream.map((r) => r.id).sort()).toEqual([...written].sort())
      const jsm = await jetstreamManager(nc)
      expect((await jsm.streams.info(stream)).state.messages).toBe(total)
    } finally {
      for (const worker of workers) await worker.kill('SIGKILL')
      await deleteStream(nc, stream)
      await database.close()
    }
  }, 240_000)
})
