/**
 * `transportSuite` from the built package under node:test, on Node and on Deno: the suite takes
 * the runner's describe/test and an `expect` built here on node:assert, so it needs no runner of
 * its own.
 *
 *   node --test --test-reporter=tap test/runtimes/transport-suite.mjs
 *   deno test --no-lock --allow-env --allow-net --allow-read --allow-sys test/runtimes/transport-suite.mjs
 *
 * Needs `npm run build` first, Kafka, and NATS with JetStream.
 */
import assert from 'node:assert/strict'
import { describe, test as nodeTest } from 'node:test'
import { jetstreamManager } from '@nats-io/jetstream'
import { connect } from '@nats-io/transport-node'
import { Kafka, logLevel } from 'kafkajs'
import { ErrorCode, Headers, OutboxKitError } from 'outboxkit'
import { createKafkaTransport } from 'outboxkit/kafka'
import { MemoryTransport } from 'outboxkit/memory'
import { createNatsTransport, NATS_KEY_HEADER } from 'outboxkit/nats'
import { transportSuite } from 'outboxkit/testing'
import { kafkaBrokers, uniqueName } from './scenario.mjs'

/** Jest-style matchers on node:assert: the subset the conformance suites use. */
function matchers(actual, negate = false) {
  const check = (ok, message) => assert.ok(negate ? !ok : ok, negate ? `not: ${message}` : message)
  const equal = (expected) => {
    try {
      assert.deepStrictEqual(actual, expected)
      return true
    } catch {
      return false
    }
  }
  const show = (value) => {
    try {
      return JSON.stringify(value, (_, v) => (v instanceof Uint8Array ? `bytes(${v.length})` : v))
    } catch {
      return String(value)
    }
  }
  const m = {
    toBe: (expected) => check(Object.is(actual, expected), `${show(actual)} is ${show(expected)}`),
    toEqual: (expected) => {
      if (!negate) assert.deepStrictEqual(actual, expected)
      else check(equal(expected), `${show(actual)} equals ${show(expected)}`)
    },
    toBeGreaterThan: (n) => check(actual > n, `${actual} > ${n}`),
    toBeGreaterThanOrEqual: (n) => check(actual >= n, `${actual} >= ${n}`),
    toBeLessThan: (n) => check(actual < n, `${actual} < ${n}`),
    toBeLessThanOrEqual: (n) => check(actual <= n, `${actual} <= ${n}`),
    toHaveLength: (n) => check(actual?.length === n, `length ${actual?.length} is ${n}`),
    toBeTruthy: () => check(Boolean(actual), `${show(actual)} is truthy`),
    toContain: (item) => check(actual?.includes?.(item), `${show(actual)} contains ${show(item)}`),
  }
  if (!negate) m.not = matchers(actual, true)
  return m
}

const test = (name, fn, timeout) => nodeTest(name, { timeout: timeout ?? 90_000 }, fn)
test.skip = (name, fn) => nodeTest.skip(name, fn)
export const api = { describe, test, expect: (actual) => matchers(actual) }

// The memory transport: its `delivered` list is the broker.
const MEMORY_LIMIT = 10_000
transportSuite(
  api,
  'memory',
  async () => {
    const transport = new MemoryTransport({ maxPayloadBytes: MEMORY_LIMIT })
    let topics = 0
    return {
      transport,
      topic: async () => `memory-topic-${++topics}`,
      read: async (topic) =>
        transport.delivered
          .filter((r) => r.topic === topic)
          .map((r) => ({
            id: r.id,
            topic,
            key: r.key,
            payload: r.payload,
            headers: { ...r.headers, [Headers.messageId]: r.id, [Headers.messageType]: r.type },
          })),
      unreachable: async () => {
        const down = new MemoryTransport()
        down.throwWith = () =>
          new OutboxKitError(ErrorCode.TransportFailed, 'The memory broker is down.', {
            source: 'memory',
            retriable: true,
          })
        return down
      },
      close: () => transport.close(),
    }
  },
  { oversizePayloadBytes: MEMORY_LIMIT + 1 },
)

// The Kafka transport against the real broker, read back with a plain kafkajs consumer.
const KAFKA_LIMIT = 100_000
const kafka = (brokers = kafkaBrokers(), extra = {}) =>
  new Kafka({
    brokers,
    clientId: 'outboxkit-suite',
    logLevel: logLevel.NOTHING,
    connectionTimeout: 5_000,
    ...extra,
  })

async function readKafka(topic, ids) {
  const consumer = kafka().consumer({ groupId: uniqueName('suite-reader'), maxWaitTimeInMs: 200 })
  const read = []
  const waiting = new Set(ids)
  let timer
  try {
    await consumer.connect()
    await consumer.subscribe({ topics: [topic], fromBeginning: true })
    await new Promise((resolve, reject) => {
      timer = setTimeout(
        () => reject(new Error(`${waiting.size} records did not arrive in ${topic}`)),
        60_000,
      )
      consumer
        .run({
          eachMessage: async ({ message }) => {
            const headers = {}
            for (const [name, value] of Object.entries(message.headers ?? {})) headers[name] = String(value)
            const id = headers[Headers.messageId] ?? ''
            read.push({
              id,
              topic,
              key: message.key?.toString('utf8') ?? '',
              payload: new Uint8Array(message.value ?? []),
              headers,
            })
            waiting.delete(id)
            if (waiting.size === 0) resolve()
          },
        })
        .catch(reject)
    })
    return read
  } finally {
    clearTimeout(timer)
    await consumer.disconnect()
  }
}

transportSuite(
  api,
  'kafka',
  async () => {
    const transports = []
    const make = (client) => {
      const transport = createKafkaTransport({ kafka: client, maxRecordBytes: KAFKA_LIMIT })
      transports.push(transport)
      return transport
    }
    const admin = kafka().admin()
    await admin.connect()
    return {
      transport: make(kafka()),
      topic: async () => {
        const topic = uniqueName('suite').replaceAll('_', '-')
        await admin.createTopics({ topics: [{ topic, numPartitions: 3 }], waitForLeaders: true })
        return topic
      },
      read: readKafka,
      unreachable: async () =>
        make(
          kafka(['127.0.0.1:1'], {
            connectionTimeout: 300,
            requestTimeout: 1_000,
            retry: { retries: 1, initialRetryTime: 100, maxRetryTime: 300 },
          }),
        ),
      close: async () => {
        for (const transport of transports) await transport.close()
        await admin.disconnect()
      },
    }
  },
  { oversizePayloadBytes: KAFKA_LIMIT + 1 },
)

// The NATS JetStream transport, one stream per topic, read back message by message from the stream.
const NATS_LIMIT = 100_000
const natsServers = (process.env.NATS_SERVERS ?? '127.0.0.1:4222').split(',')

async function readNats(jsm, stream, ids) {
  const read = []
  const waiting = new Set(ids)
  const deadline = Date.now() + 60_000
  let seq = 1
  for (;;) {
    const { state } = await jsm.streams.info(stream)
    for (; seq <= state.last_seq; seq++) {
      const message = await jsm.streams.getMessage(stream, { seq }).catch(() => null)
      if (!message) continue
      const headers = {}
      for (const name of message.header?.keys() ?? []) headers[name] = message.header.get(name)
      const id = headers[Headers.messageId] ?? ''
      read.push({
        id,
        topic: message.subject,
        key: headers[NATS_KEY_HEADER] ?? '',
        payload: message.data,
        headers,
      })
      waiting.delete(id)
    }
    if (waiting.size === 0) return read
    if (Date.now() > deadline) throw new Error(`${waiting.size} records did not reach ${stream}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

transportSuite(
  api,
  'nats',
  async () => {
    const nc = await connect({ servers: natsServers, timeout: 5_000 })
    const jsm = await jetstreamManager(nc)
    const streams = []
    const transports = []
    const make = (options) => {
      const transport = createNatsTransport({ maxRecordBytes: NATS_LIMIT, ...options })
      transports.push(transport)
      return transport
    }
    return {
      transport: make({ servers: natsServers }),
      topic: async () => {
        const topic = uniqueName('suite').replaceAll('_', '-')
        await jsm.streams.add({ name: topic, subjects: [topic], duplicate_window: 120_000_000_000 })
        streams.push(topic)
        return topic
      },
      read: (topic, ids) => readNats(jsm, topic, ids),
      unreachable: async () => make({ servers: '127.0.0.1:1', connectTimeoutMs: 500 }),
      close: async () => {
        for (const transport of transports) await transport.close()
        for (const stream of streams) await jsm.streams.delete(stream).catch(() => {})
        await nc.close()
      },
    }
  },
  { oversizePayloadBytes: NATS_LIMIT + 1 },
)
