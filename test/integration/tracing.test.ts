/**
 * One trace from the request to every handler (G6), across three OS processes: a writer adds an
 * event inside a span, a relay publishes it (with instrumentation-kafkajs patched in, which would
 * otherwise overwrite `traceparent`), and a consumer processes it. Each process has its own
 * OpenTelemetry SDK; the spans they export are joined here.
 */
import { describe, expect, test } from 'bun:test'
import { spawnSync } from 'node:child_process'
import { join } from 'node:path'
import { Partitioners } from 'kafkajs'
import { ensureOutboxSchema } from '../../src/adapters/kysely/index.js'
import { uuidv7 } from '../../src/index.js'
import { mysqlBackend, postgresJsBackend } from '../support/databases.js'
import {
  consumeMessages,
  createTopic,
  headerValues,
  kafkaBrokers,
  testKafka,
  uniqueName,
  uniqueTopic,
} from '../support/kafka.js'

interface ExportedSpan {
  name: string
  scope: string
  kind: number
  traceId: string
  spanId: string
  parentSpanId?: string
  attributes: Record<string, unknown>
  links: { traceId: string; spanId: string }[]
}
interface WorkerResult {
  traced?: string
  untraced?: string
  spans: ExportedSpan[]
}

function runWorker(env: Record<string, string>): WorkerResult {
  const result = spawnSync(process.execPath, [join(import.meta.dir, '../fixtures/trace-worker.ts')], {
    env: { ...process.env, ...env },
    encoding: 'utf8',
    timeout: 120_000,
  })
  const line = result.stdout.split('\n').find((l) => l.startsWith('RESULT '))
  if (!line)
    throw new Error(
      `trace worker ${env['ROLE']} failed (${result.status}):\n${result.stdout}\n${result.stderr}`,
    )
  return JSON.parse(line.slice('RESULT '.length)) as WorkerResult
}

const SPAN_KIND = { PRODUCER: 3, CONSUMER: 4 }
const KIND_NAMES = ['internal', 'server', 'client', 'producer', 'consumer']

/** The spans of one trace as an indented tree, with the spans linked to it shown under their link. */
function renderTree(spans: ExportedSpan[], traceId: string): string {
  const inTrace = spans.filter((s) => s.traceId === traceId)
  const linked = spans.filter((s) => s.traceId !== traceId && s.links.some((l) => l.traceId === traceId))
  const lines: string[] = []
  const label = (s: ExportedSpan) => `${s.name} [${KIND_NAMES[s.kind]}] (${s.scope})`
  const walk = (parent: ExportedSpan, depth: number) => {
    lines.push(`${'  '.repeat(depth)}${depth === 0 ? '' : '└─ '}${label(parent)}`)
    for (const link of linked.filter((s) => s.links.some((l) => l.spanId === parent.spanId))) {
      lines.push(`${'  '.repeat(depth + 1)}┄ linked from ${label(link)}, trace ${link.traceId.slice(0, 8)}…`)
      for (const child of spans.filter((s) => s.parentSpanId === link.spanId)) {
        lines.push(`${'  '.repeat(depth + 2)}└─ ${label(child)}`)
      }
    }
    for (const child of inTrace.filter((s) => s.parentSpanId === parent.spanId)) walk(child, depth + 1)
  }
  for (const top of inTrace.filter((s) => !inTrace.some((p) => p.spanId === s.parentSpanId))) walk(top, 0)
  return lines.join('\n')
}

for (const backend of [postgresJsBackend, mysqlBackend]) {
  describe(`tracing across processes on ${backend.name}`, () => {
    test('one trace from the write to the handler, kept through a relay with kafkajs instrumentation', async () => {
      const database = await backend.open()
      try {
        await ensureOutboxSchema(database.db, { dialect: database.dialect, schema: database.schema })
        const brokers = kafkaBrokers()
        const topic = uniqueTopic('trace')
        const chained = uniqueTopic('trace-chained')
        await createTopic(brokers, topic)
        await createTopic(brokers, chained)
        const common = {
          BACKEND: backend.name,
          SCHEMA: database.schema,
          TOPIC: topic,
          CHAINED_TOPIC: chained,
          BROKERS: brokers.join(','),
        }

        const writer = runWorker({ ...common, ROLE: 'writer' })
        const root = writer.spans.find((s) => s.name === 'place-order')!
        expect(root).toBeTruthy()

        const relay = runWorker({ ...common, ROLE: 'relay' })
        // A malformed trace context from some other producer: ignored, never fatal.
        const malformedId = uuidv7()
        const producer = testKafka(brokers).producer({ createPartitioner: Partitioners.DefaultPartitioner })
        await producer.connect()
        await producer.send({
          topic,
          messages: [
            {
              key: 'order-3',
              value: '{}',
              headers: {
                'outboxkit-id': malformedId,
                traceparent: 'zz-not-a-trace',
                'content-type': 'application/json',
              },
            },
          ],
        })
        await producer.disconnect()

        const consumer = runWorker({
          ...common,
          ROLE: 'consumer',
          GROUP: uniqueName('trace-group'),
          EXPECTED: '3',
        })

        // The relay's batch span follows the conventions and links to the event's creation context.
        const send = relay.spans.find((s) => s.scope === 'outboxkit' && s.name === `send ${topic}`)!
        expect(send.kind).toBe(SPAN_KIND.PRODUCER)
        expect(send.attributes['messaging.system']).toBe('kafka')
        expect(send.attributes['messaging.destination.name']).toBe(topic)
        expect(send.attributes['messaging.operation.type']).toBe('send')
        expect(send.attributes['messaging.batch.message_count']).toBe(2)
        expect(send.links).toContainEqual({ traceId: root.traceId, spanId: root.spanId })
        // kafkajs instrumentation was active in the relay...
        expect(relay.spans.some((s) => s.scope === '@opentelemetry/instrumentation-kafkajs')).toBe(true)
        // ...and the record still carries the writer's context.
        const records = await consumeMessages(brokers, { topic, count: 3 })
        const tracedRecord = records.find(
          (m) => headerValues(m.headers, 'outboxkit-id')[0] === writer.traced,
        )!
        expect(headerValues(tracedRecord.headers, 'traceparent')[0]).toBe(
          `00-${root.traceId}-${root.spanId}-01`,
        )

        // The consumer's process span continues the writer's trace; the handler's span is its child.
        const processSpans = consumer.spans.filter(
          (s) => s.scope === 'outboxkit' && s.name === `process ${topic}`,
        )
        expect(processSpans).toHaveLength(3)
        const processTraced = processSpans.find(
          (s) => s.attributes['messaging.message.id'] === writer.traced,
        )!
        expect(processTraced.kind).toBe(SPAN_KIND.CONSUMER)
        expect(processTraced.traceId).toBe(root.traceId)
        expect(processTraced.parentSpanId).toBe(root.spanId)
        expect(processTraced.attributes['messaging.consumer.group.name']).toBe('inventory')
        expect(processTraced.attributes['messaging.destination.partition.id']).toBe('0')
        expect(typeof processTraced.attributes['messaging.kafka.offset']).toBe('number')
        const handlerSpan = consumer.spans.find(
          (s) => s.name === 'reserve-stock' && s.traceId === root.traceId,
        )!
        expect(handlerSpan.parentSpanId).toBe(processTraced.spanId)

        // The chained event stored by the handler extends the same trace.
        const table =
          database.dialect === 'mysql' ? `\`${database.schema}\`.outbox` : `"${database.schema}".outbox`
        const chainedRows = await database.query<{ headers: unknown; payload: unknown }>(
          `SELECT headers FROM ${table} WHERE topic = '${chained}'`,
        )
        const chainedTraceparents = chainedRows.map(
          (r) =>
            (typeof r.headers === 'string' ? JSON.parse(r.headers) : (r.headers as Record<string, string>))[
              'traceparent'
            ],
        )
        expect(chainedTraceparents).toContain(`00-${root.traceId}-${handlerSpan.spanId}-01`)

        const all = [...writer.spans, ...relay.spans, ...consumer.spans]
        console.log(`trace of one order (${backend.name}):\n${renderTree(all, root.traceId)}`)

        // No span around the write: the consumer starts a fresh trace. A malformed one: also fresh.
        for (const id of [writer.untraced, malformedId]) {
          const span = processSpans.find((s) => s.attributes['messaging.message.id'] === id)!
          expect(span.parentSpanId).toBeUndefined()
          expect(span.traceId).not.toBe(root.traceId)
        }
      } finally {
        await database.close()
      }
    }, 240_000)
  })
}
