/**
 * Type-checks every ```ts sample in README.md and docs/*.md against the library's sources, so
 * the documentation cannot drift from the API. Each sample becomes a module that sees the
 * declarations in PRELUDE (the application's own objects a sample refers to: `db`, `order`, ...)
 * and imports `outboxkit/*` mapped to src/. Exits non-zero, with the sample's location, on errors.
 *
 *   bun scripts/check-doc-samples.ts
 */
import { spawnSync } from 'node:child_process'
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join, relative } from 'node:path'

const ROOT = join(import.meta.dir, '..')
const OUT = join(ROOT, '.cache/doc-samples')

/** What the samples take from the surrounding application, by name; a sample that declares a name itself wins. */
const PRELUDE: Record<string, string> = {
  Database: `interface Database {
  orders: { id: string; sku: string; qty: number }
  stock: { sku: string; qty: number }
}`,
  db: `declare const db: import('kysely').Kysely<Database>`,
  dialect: `declare const dialect: import('kysely').Dialect`,
  order: `declare const order: { id: string; sku: string; qty: number }`,
  message: `declare const message: import('outboxkit').OutboxMessageInput`,
  orderEvents: `declare const orderEvents: import('outboxkit').EventCatalogue<{
  OrderCreated: { topic: string; schema: import('outboxkit').StandardSchemaV1<{ id: string; sku: string; qty: number }> }
  OrderCancelled: { topic: string; schema: import('outboxkit').StandardSchemaV1<{ id: string; reason: string }> }
}>`,
  outbox: `declare const outbox: import('outboxkit').Outbox<import('kysely').Kysely<Database>>`,
  store: `declare const store: import('outboxkit').OutboxStore<import('kysely').Kysely<Database>>`,
  inbox: `declare const inbox: import('outboxkit').InboxStore<import('kysely').Kysely<Database>>`,
  inboxStore: `declare const inboxStore: import('outboxkit').InboxStore<import('kysely').Kysely<Database>>`,
  transport: `declare const transport: import('outboxkit').Transport`,
  feed: `declare const feed: import('outboxkit').ChangeFeed`,
  handler: `declare const handler: import('outboxkit').MessageHandler<import('kysely').Kysely<Database>>`,
  relay: `declare const relay: import('outboxkit').Relay<import('kysely').Kysely<Database>>`,
  runner: `declare const runner: import('outboxkit/kafka-consumer').KafkaConsumerRunner`,
  inventory: `declare const inventory: import('outboxkit').IdempotentConsumer<import('kysely').Kysely<Database>>`,
  kafka: `declare const kafka: import('kafkajs').Kafka`,
  nc: `declare const nc: import('@nats-io/transport-node').NatsConnection`,
  openMyBrokerHarness: `declare function openMyBrokerHarness(): Promise<import('outboxkit/testing').TransportHarness>`,
  url: `declare const url: string`,
  trx: `declare const trx: import('kysely').Kysely<Database>`,
  yourMigrations: `declare const yourMigrations: Record<string, import('kysely').Migration>`,
  myMigrations: `declare const myMigrations: Record<string, import('kysely').Migration>`,
  log: `declare const log: { error(...args: unknown[]): void }`,
  metrics: `declare const metrics: { gauge(name: string, value: number): void }`,
  createIsolatedDatabase: `declare function createIsolatedDatabase(): Promise<import('kysely').Kysely<Database>>`,
  createMyOutboxStore: `declare function createMyOutboxStore(db: import('kysely').Kysely<Database>): import('outboxkit').OutboxStore<import('kysely').Kysely<Database>>`,
  connectAgain: `declare function connectAgain(db: import('kysely').Kysely<Database>): Promise<import('kysely').Kysely<Database>>`,
  readOutboxTableWithPlainSql: `declare function readOutboxTableWithPlainSql(db: import('kysely').Kysely<Database>): Promise<import('outboxkit/testing').InspectedOutboxRow[]>`,
  insertIntoATestTable: `declare function insertIntoATestTable(tx: import('kysely').Kysely<Database>, id: string): Promise<void>`,
  countTestTableWithPlainSql: `declare function countTestTableWithPlainSql(db: import('kysely').Kysely<Database>): Promise<number>`,
  shiftCreatedAtBack: `declare function shiftCreatedAtBack(db: import('kysely').Kysely<Database>, ms: number): Promise<void>`,
  dropIsolatedDatabase: `declare function dropIsolatedDatabase(db: import('kysely').Kysely<Database>): Promise<void>`,
}

/** The prelude entries a sample needs: those it uses but does not declare or import itself. */
function preludeFor(body: string): string[] {
  const declared = (name: string) =>
    new RegExp(
      `(?:const|let|var|function|class|interface|type)\\s+${name}\\b|import\\s+(?:type\\s+)?(?:\\{[^}]*\\b${name}\\b[^}]*\\}|${name}\\b)`,
    ).test(body)
  return Object.entries(PRELUDE)
    .filter(([name]) => name === 'Database' || (new RegExp(`\\b${name}\\b`).test(body) && !declared(name)))
    .map(([, declaration]) => declaration)
}

const files = [
  'README.md',
  ...readdirSync(join(ROOT, 'docs'))
    .filter((f) => f.endsWith('.md'))
    .map((f) => `docs/${f}`),
]
rmSync(OUT, { recursive: true, force: true })
mkdirSync(OUT, { recursive: true })
const origins = new Map<string, string>()
const offsets = new Map<string, number>()
let count = 0
for (const file of files) {
  const lines = readFileSync(join(ROOT, file), 'utf8').split('\n')
  for (let i = 0; i < lines.length; i++) {
    if (lines[i]!.trim() !== '```ts') continue
    const start = i + 1
    let end = start
    while (end < lines.length && lines[end]!.trim() !== '```') end++
    const body = lines.slice(start, end).join('\n')
    const name = `${file.replace(/[/.]/g, '_')}_${start + 1}.ts`
    const prelude = preludeFor(body).join('\n')
    writeFileSync(join(OUT, name), `${prelude}\nexport {}\n${body}\n`)
    offsets.set(name, prelude.split('\n').length + 1)
    origins.set(name, `${file}:${start + 1}`)
    count++
    i = end
  }
}

writeFileSync(
  join(OUT, 'tsconfig.json'),
  JSON.stringify({
    extends: '../../tsconfig.json',
    compilerOptions: {
      noEmit: true,
      noUnusedLocals: false,
      baseUrl: '.',
      paths: {
        outboxkit: ['../../src/index.ts'],
        'outboxkit/kysely': ['../../src/adapters/kysely/index.ts'],
        'outboxkit/kafka': ['../../src/adapters/kafka/index.ts'],
        'outboxkit/kafka-consumer': ['../../src/consumers/index.ts'],
        'outboxkit/memory': ['../../src/adapters/memory/index.ts'],
        'outboxkit/mysql-binlog': ['../../src/adapters/mysql-binlog/index.ts'],
        'outboxkit/postgres-log': ['../../src/adapters/postgres-log/index.ts'],
        'outboxkit/nats': ['../../src/adapters/nats/index.ts'],
        'outboxkit/otel': ['../../src/otel/index.ts'],
        'outboxkit/process': ['../../src/process/index.ts'],
        'outboxkit/testing': ['../../src/testing/index.ts'],
      },
    },
    include: ['*.ts'],
  }),
)
const result = spawnSync(join(ROOT, 'node_modules/.bin/tsc'), ['-p', join(OUT, 'tsconfig.json')], {
  encoding: 'utf8',
})
const output = `${result.stdout}${result.stderr}`
const report = output.replace(
  /^(?:\S*\/)?([\w.-]+\.ts)\((\d+),(\d+)\)/gm,
  (_, name: string, line: string) => {
    return `${origins.get(name) ?? name}, sample line ${Number(line) - (offsets.get(name) ?? 0)}`
  },
)
if (result.status !== 0) {
  console.error(report)
  console.error(`doc samples: type errors in ${relative(ROOT, OUT)} (${count} samples checked)`)
  process.exit(1)
}
console.log(`doc samples: ${count} samples type-check`)
