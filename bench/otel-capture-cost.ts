/**
 * The cost of trace capture on the write path when no OpenTelemetry SDK is registered:
 * `outbox.prepare()` (validation and encoding, what `add` does before its INSERT) with and
 * without `otelTraceCapture()`, alternated, median of 7 rounds of 100 000 messages.
 *
 *   bun bench/otel-capture-cost.ts
 */

import { MemoryDatabase, MemoryOutboxStore } from '../src/adapters/memory/index.js'
import { Outbox } from '../src/index.js'
import { otelTraceCapture } from '../src/otel/index.js'

const store = new MemoryOutboxStore(new MemoryDatabase())
const plain = new Outbox({ store })
const traced = new Outbox({ store, tracing: otelTraceCapture() })
const msg = [
  {
    topic: 'orders',
    key: 'order-1',
    type: 'OrderCreated',
    payload: { id: 'order-1', total: 12.5, items: [{ sku: 'A', qty: 2 }] },
  },
]
function run(o: Outbox<unknown>, n: number): number {
  const t = performance.now()
  for (let i = 0; i < n; i++) o.prepare(msg)
  return ((performance.now() - t) / n) * 1e6
}
run(plain, 50000)
run(traced, 50000)
const a: number[] = [],
  b: number[] = []
for (let r = 0; r < 7; r++) {
  a.push(run(plain, 100000))
  b.push(run(traced, 100000))
}
a.sort((x, y) => x - y)
b.sort((x, y) => x - y)
console.log(
  `prepare(): without tracing ${a[3]!.toFixed(0)} ns, with otelTraceCapture and no SDK ${b[3]!.toFixed(0)} ns per message (median of 7)`,
)
