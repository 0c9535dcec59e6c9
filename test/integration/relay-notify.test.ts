/**
 * LISTEN/NOTIFY wake-ups: with a poll interval longer than the test's timeout, an event is only
 * published in time if the notification sent by the writer's commit wakes the idle relay.
 */
import { describe, expect, test } from 'bun:test'
import pg from 'pg'
import postgres from 'postgres'
import { createKafkaTransport } from '../../src/adapters/kafka/index.js'
import {
  createKyselyOutboxStore,
  ensureOutboxSchema,
  type PostgresListener,
  pgListener,
  pgliteListener,
  postgresJsListener,
} from '../../src/adapters/kysely/index.js'
import { ErrorCode, isOutboxKitError, Outbox, Relay } from '../../src/index.js'
import {
  type Backend,
  mysqlBackend,
  POSTGRES_URL,
  pgBackend,
  pgliteBackend,
  postgresJsBackend,
  sharedPgliteDatabase,
} from '../support/databases.js'
import { consumeMessages, createTopic, kafkaBrokers, testKafka, uniqueTopic } from '../support/kafka.js'
import { messageId } from '../support/relay-world.js'

const LONG_POLL_MS = 10 * 60_000

const listeners: {
  backend: Backend
  open(): Promise<{ listener: PostgresListener; close(): Promise<void> }>
}[] = [
  {
    backend: postgresJsBackend,
    async open() {
      const sql = postgres(POSTGRES_URL, { max: 1, onnotice: () => {} })
      return { listener: postgresJsListener(sql), close: () => sql.end() }
    },
  },
  {
    backend: pgBackend,
    async open() {
      const pool = new pg.Pool({ connectionString: POSTGRES_URL, max: 1 })
      return { listener: pgListener(pool), close: () => pool.end() }
    },
  },
  {
    backend: pgliteBackend,
    async open() {
      const { pglite } = await sharedPgliteDatabase()
      return { listener: pgliteListener(pglite), close: async () => {} }
    },
  },
]

describe('relay wake-up by LISTEN/NOTIFY', () => {
  for (const { backend, open } of listeners) {
    test(`${backend.name}: a committed event wakes an idle relay long before its next poll`, async () => {
      const database = await backend.open()
      const { listener, close } = await open()
      const topic = uniqueTopic('notify')
      await createTopic(kafkaBrokers(), topic)
      const transport = createKafkaTransport({ kafka: testKafka() })
      try {
        const { schema, dialect } = database
        await ensureOutboxSchema(database.db, { dialect, schema })
        const store = createKyselyOutboxStore({ db: database.db, schema, notify: true, listener })
        expect(store.capabilities.notify).toBe(true)
        const relay = new Relay({ store, transport, pollIntervalMs: LONG_POLL_MS })
        await relay.start()
        // Let the relay find the outbox empty and go idle.
        await new Promise((r) => setTimeout(r, 300))
        const outbox = new Outbox({ store })
        for (let round = 0; round < 3; round++) {
          const [id] = await store.transaction((trx) =>
            outbox.add(trx, [{ topic, key: 'k', type: 'Woken', payload: round }]),
          )
          const [message] = await consumeMessages(kafkaBrokers(), {
            topic,
            count: round + 1,
            timeoutMs: 20_000,
          }).then((m) => m.slice(round))
          expect(messageId(message!)).toBe(id!)
          await new Promise((r) => setTimeout(r, 100))
        }
        await relay.stop()
        await store.close()
      } finally {
        await transport.close()
        await close()
        await database.close()
      }
    }, 60_000)
  }

  test('notify and listener are refused on MySQL, where relays poll', async () => {
    const database = await mysqlBackend.open()
    try {
      let error: unknown
      try {
        createKyselyOutboxStore({ db: database.db, notify: true })
      } catch (e) {
        error = e
      }
      expect(isOutboxKitError(error, ErrorCode.InvalidOptions)).toBe(true)
    } finally {
      await database.close()
    }
  })
})
