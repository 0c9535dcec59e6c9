/**
 * The demo's Kafka: the brokers in KAFKA_BROKERS, or the local broker `scripts/kafka start`
 * runs (started if needed, reused if it already runs, left running afterwards).
 */
import { spawn, spawnSync } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { type Admin, Kafka, logLevel } from 'kafkajs'

/** Raised when no broker can be had; the message says what to do. */
export class KafkaUnavailable extends Error {}

/** The brokers from KAFKA_BROKERS (comma separated), or none. */
export function brokersFromEnv(): string[] {
  return (process.env['KAFKA_BROKERS'] ?? '')
    .split(',')
    .map((broker) => broker.trim())
    .filter((broker) => broker.length > 0)
}

/**
 * Starts (or reuses) the project's local broker with `scripts/kafka start` and returns its
 * bootstrap list and the script's last word (e.g. "reusing the running 1-node cluster ...").
 */
export async function startLocalBroker(repoRoot: string): Promise<{ brokers: string[]; note: string }> {
  const result = await run('bash', ['scripts/kafka', 'start'], repoRoot)
  if (result.code !== 0) {
    const missing = ['java', 'mvn'].filter((tool) => !onPath(tool))
    const lines = [`could not start a local Kafka broker (scripts/kafka start exited with ${result.code}).`]
    if (missing.includes('java')) {
      lines.push(
        'Java is missing: install a Java 17+ runtime (e.g. `apt-get install openjdk-17-jre-headless`,',
        '`brew install openjdk@17`).',
      )
    }
    if (missing.includes('mvn')) {
      lines.push(
        'Maven is missing: install Apache Maven 3.6+ (e.g. `apt-get install maven`, `brew install maven`);',
        'it fetches the Kafka jars once.',
      )
    }
    lines.push('Or point the demo at a running broker: KAFKA_BROKERS=host:9092 npm run demo')
    if (missing.length === 0 && result.output.trim()) {
      lines.push('', 'Output of scripts/kafka start:', ...indent(result.output.trim().split('\n').slice(-20)))
    }
    throw new KafkaUnavailable(lines.join('\n'))
  }
  const listed = await run('bash', ['scripts/kafka', 'brokers'], repoRoot)
  const brokers = listed.stdout
    .trim()
    .split(',')
    .filter((broker) => broker.length > 0)
  const note =
    result.output
      .trim()
      .split('\n')
      .at(-1)
      ?.replace(/^kafka: /, '') ?? ''
  return { brokers: brokers.length > 0 ? brokers : ['127.0.0.1:9092'], note }
}

function indent(lines: readonly string[]): string[] {
  return lines.map((line) => `  ${line}`)
}

function onPath(tool: string): boolean {
  return spawnSync('bash', ['-c', `command -v ${tool}`], { stdio: 'ignore' }).status === 0
}

function run(
  command: string,
  args: readonly string[],
  cwd: string,
): Promise<{ code: number; stdout: string; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let output = ''
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString()
      output += chunk.toString()
    })
    child.stderr.on('data', (chunk: Buffer) => {
      output += chunk.toString()
    })
    child.on('error', (error) => resolve({ code: 127, stdout, output: `${output}${error.message}\n` }))
    child.on('close', (code) => resolve({ code: code ?? 1, stdout, output }))
  })
}

/** A quiet kafkajs client: kafkajs logs retriable broker errors at ERROR, which reads like a failure. */
export function demoKafka(brokers: string[]): Kafka {
  return new Kafka({
    clientId: 'outboxkit-demo',
    brokers,
    logLevel: logLevel.NOTHING,
    connectionTimeout: 5_000,
    requestTimeout: 30_000,
  })
}

export function uniqueTopic(prefix: string): string {
  return `${prefix}-${randomUUID().slice(0, 8)}`
}

/** Creates a topic and waits until each of its partitions has a leader. */
export async function createTopic(admin: Admin, topic: string, partitions: number): Promise<void> {
  await admin.createTopics({
    waitForLeaders: false,
    timeout: 30_000,
    topics: [{ topic, numPartitions: partitions, replicationFactor: 1 }],
  })
  const deadline = Date.now() + 30_000
  for (;;) {
    const led = await admin
      .fetchTopicMetadata({ topics: [topic] })
      .then(({ topics }) => topics[0]?.partitions.filter((p) => p.leader >= 0).length ?? 0)
      .catch(() => 0)
    if (led === partitions) return
    if (Date.now() > deadline)
      throw new Error(`topic ${topic} has a leader for ${led} of ${partitions} partitions`)
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

/** Records in a topic written without Kafka transactions: the sum of its partitions' offsets. */
export async function recordCount(admin: Admin, topic: string): Promise<number> {
  const offsets = await admin.fetchTopicOffsets(topic)
  return offsets.reduce((sum, p) => sum + Number(p.high) - Number(p.low), 0)
}

/**
 * Reads a topic from the beginning to its end as a `read_committed` consumer sees it (records of
 * aborted or open Kafka transactions left out) and counts its records and the copies of each
 * message id (`outboxkit-id` header) beyond the first. Call it once nothing writes to the topic.
 */
export async function readCommitted(
  kafka: Kafka,
  admin: Admin,
  topic: string,
): Promise<{ records: number; duplicates: number }> {
  // The end of each partition: with transactions its last offset can be a commit marker, which a
  // consumer never receives, so the end is recognised by the offsets the fetched batches cover.
  const ends = new Map(
    (await admin.fetchTopicOffsets(topic)).map((p) => [p.partition, Number(p.high)] as const),
  )
  const reached = new Set([...ends].filter(([, end]) => end === 0).map(([partition]) => partition))
  let records = 0
  const ids = new Set<string>()
  if (reached.size === ends.size) return { records, duplicates: 0 }
  const groupId = uniqueTopic('demo-read-committed')
  const consumer = kafka.consumer({
    groupId,
    readUncommitted: false,
    maxWaitTimeInMs: 100,
  })
  let timer: ReturnType<typeof setTimeout> | undefined
  try {
    await consumer.connect()
    await consumer.subscribe({ topics: [topic], fromBeginning: true })
    await new Promise<void>((resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`could not read ${topic} to its end within 60 s`)), 60_000)
      // Emitted for every fetched batch, also one holding only commit markers.
      consumer.on(consumer.events.END_BATCH_PROCESS, ({ payload }) => {
        if (Number(payload.lastOffset) + 1 >= (ends.get(payload.partition) ?? 0))
          reached.add(payload.partition)
        if (reached.size === ends.size) resolve()
      })
      consumer
        .run({
          eachMessage: async ({ partition, message }) => {
            if (Number(message.offset) >= (ends.get(partition) ?? 0)) return
            records++
            const id = message.headers?.['outboxkit-id']?.toString()
            if (id) ids.add(id)
          },
        })
        .catch(reject)
    })
  } finally {
    clearTimeout(timer)
    await consumer.disconnect().catch(() => {})
    await admin.deleteGroups([groupId]).catch(() => {})
  }
  return { records, duplicates: records - ids.size }
}
