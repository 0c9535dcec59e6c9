/**
 * `transportSuite` from the built package under node:test, on Node and on Deno: the suite takes
 * the runner's describe/test and an `expect` built here on node:assert, so it needs no runner of
 * its own.
 *
 *   node --test --test-reporter=tap test/runtimes/transport-suite.mjs
 *   deno test --no-lock --allow-env --allow-net --allow-read --allow-sys test/runtimes/transport-suite.mjs
 *
 * Needs `npm run build` first, and Kafka.
 */
import assert from 'node:assert/strict'
import { describe, test as nodeTest } from 'node:test'
import { Kafka, logLevel } from 'kafkajs'
import { ErrorCode, Headers, OutboxKitError } from 'outboxkit'
import { createKafkaTransport } from 'outboxkit/kafka'
import { MemoryTransport } from 'outboxkit/memory'
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
