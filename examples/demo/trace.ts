/**
 * OpenTelemetry for the demo: an SDK with an in-memory exporter, and the trace of one order
 * printed as a tree at the end (the write, the relay batch that published it, the processing).
 */
import { trace } from '@opentelemetry/api'
import { InMemorySpanExporter, type ReadableSpan, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base'
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node'

const exporter = new InMemorySpanExporter()

/** Registers the SDK (async context, W3C propagation) for this process. */
export function startTracing(): void {
  new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }).register()
}

export const tracer = trace.getTracer('outboxkit-demo')

const KINDS = ['internal', 'server', 'client', 'producer', 'consumer']

/** The spans of the trace whose root is named `rootName` and has `attribute` = `value`, as a tree. */
export function renderTrace(rootName: string, attribute: string, value: string): string | undefined {
  const spans = exporter.getFinishedSpans()
  const root = spans.find((s) => s.name === rootName && s.attributes[attribute] === value)
  if (!root) return undefined
  const traceId = root.spanContext().traceId
  const lines: string[] = [`trace ${traceId}`]
  const label = (s: ReadableSpan) => {
    const ms = (s.duration[0] * 1e3 + s.duration[1] / 1e6).toFixed(1)
    const outcome = s.attributes['outboxkit.outcome']
    return `${s.name} [${KINDS[s.kind]}] ${ms} ms${outcome ? ` → ${outcome}` : ''}`
  }
  const children = (parent: ReadableSpan) =>
    spans.filter((s) => s.parentSpanContext?.spanId === parent.spanContext().spanId)
  const walk = (span: ReadableSpan, indent: string) => {
    for (const link of spans.filter((s) =>
      s.links.some((l) => l.context.spanId === span.spanContext().spanId),
    )) {
      lines.push(
        `${indent}  ┄ linked: ${label(link)} (relay batch of ${link.attributes['messaging.batch.message_count'] ?? 1})`,
      )
    }
    for (const child of children(span)) {
      lines.push(`${indent}  └─ ${label(child)}`)
      walk(child, `${indent}     `)
    }
  }
  lines.push(label(root))
  walk(root, '')
  return lines.join('\n')
}
