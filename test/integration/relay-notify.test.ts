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

  // The listening connection is cut by the server; a later commit must still wake a waiter.
  const reconnecting: {
    name: string
    open(app: string): { listener: PostgresListener; close(): Promise<void> }
  }[] = [
    {
      name: 'postgres.js',
      open(app) {
        const sql = postgres(POSTGRES_URL, {
          max: 1,
          onnotice: () => {},
          connection: { application_name: app },
        })
        return { listener: postgresJsListener(sql), close: () => sql.end() }
      },
    },
    {
      name: 'pg',
      open(app) {
        const pool = new pg.Pool({ connectionString: POSTGRES_URL, max: 2, application_name: app })
        pool.on('error', () => {})
        return { listener: pgListener(pool), close: () => pool.end() }
      },
    },
  ]
  for (const { name, open } of reconnecting) {
    test(`${name}: after the listening backend is terminated, a later commit still wakes a waiting relay`, async () => {
      const database = await postgresJsBackend.open()
      const app = `outboxkit_listen_${Math.random().toString(36).slice(2, 10)}`
      const { listener, close } = open(app)
      const admin = postgres(POSTGRES_URL, { max: 1, onnotice: () => {} })
      try {
        const { schema, dialect } = database
        await ensureOutboxSchema(database.db, { dialect, schema })
        const store = createKyselyOutboxStore({ db: database.db, schema, notify: true, listener })
        const outbox = new Outbox({ store })
        const listening = async () =>
          admin<{ pid: number }[]>`SELECT pid FROM pg_stat_activity
            WHERE application_name = ${app} AND query ILIKE 'listen%'`
        // An already aborted wait returns once the subscription is established.
        await store.waitForChange(AbortSignal.abort())
        const before = await listening()
        expect(before).toHaveLength(1)
        await admin`SELECT pg_terminate_backend(${before[0]!.pid})`
        // Wait (bounded) for a new listening backend; without reconnects none appears.
        for (let i = 0; i < 100; i++) {
          const now = await listening()
          if (now.length === 1 && now[0]!.pid !== before[0]!.pid) break
          await new Promise((r) => setTimeout(r, 100))
        }
        // Two rounds: the first may be answered by the wake-up a reconnect gives, the second
        // only by a notification.
        for (let round = 0; round < 2; round++) {
          const controller = new AbortController()
          let timedOut = false
          const timer = setTimeout(() => {
            timedOut = true
            controller.abort()
          }, 15_000)
          const woken = store.waitForChange(controller.signal)
          await store.transaction((trx) =>
            outbox.add(trx, [{ topic: 't', key: 'k', type: 'Woken', payload: round }]),
          )
          await woken
          clearTimeout(timer)
          expect(timedOut).toBe(false)
        }
        await store.close()
      } finally {
        await admin.end()
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
