/**
 * Fails fast, with a message that says what to do, when a service the integration tests need is
 * not reachable. A missing service is a failure, never a skip.
 */
import { jetstreamManager } from '@nats-io/jetstream'
import { connect as connectNats } from '@nats-io/transport-node'
import { Kafka, logLevel } from 'kafkajs'
import mysql from 'mysql2/promise'
import postgres from 'postgres'
import { MYSQL_URL, POSTGRES_URL } from '../test/support/databases.js'
import { kafkaBrokers } from '../test/support/kafka.js'
import { natsServers } from '../test/support/nats.js'

async function check(name: string, hint: string, probe: () => Promise<void>): Promise<boolean> {
  try {
    await Promise.race([
      probe(),
      new Promise((_, reject) => setTimeout(() => reject(new Error('no answer within 15 s')), 15_000)),
    ])
    console.log(`  ok  ${name}`)
    return true
  } catch (error) {
    console.error(
      `  MISSING  ${name}: ${error instanceof Error ? error.message : String(error)}\n           ${hint}`,
    )
    return false
  }
}

const results = await Promise.all([
  check(`PostgreSQL at ${POSTGRES_URL}`, 'Start PostgreSQL or set OUTBOXKIT_POSTGRES_URL.', async () => {
    const sql = postgres(POSTGRES_URL, { max: 1, connect_timeout: 10, onnotice: () => {} })
    try {
      await sql`select 1`
    } finally {
      await sql.end()
    }
  }),
  check(`MariaDB/MySQL at ${MYSQL_URL}`, 'Start MariaDB or set OUTBOXKIT_MYSQL_URL.', async () => {
    const connection = await mysql.createConnection({ uri: MYSQL_URL, connectTimeout: 10_000 })
    try {
      await connection.query('select 1')
    } finally {
      await connection.end()
    }
  }),
  check(
    `Kafka at ${kafkaBrokers().join(',')}`,
    'Run `npm run kafka -- start` or set KAFKA_BROKERS.',
    async () => {
      const admin = new Kafka({
        brokers: kafkaBrokers(),
        logLevel: logLevel.NOTHING,
        retry: { retries: 2 },
      }).admin()
      await admin.connect()
      try {
        await admin.describeCluster()
      } finally {
        await admin.disconnect()
      }
    },
  ),
  check(
    `NATS with JetStream at ${natsServers().join(',')}`,
    'Start nats-server with JetStream (`nats-server -a 127.0.0.1 -p 4222 -js`; .ci/run starts it) or set NATS_SERVERS.',
    async () => {
      const nc = await connectNats({ servers: natsServers(), timeout: 10_000 })
      try {
        // Answers only when JetStream is enabled.
        await (await jetstreamManager(nc)).getAccountInfo()
      } finally {
        await nc.close()
      }
    },
  ),
])
if (results.includes(false)) process.exit(1)
