/**
 * A real Kafka Connect worker running Debezium's Postgres connector and outbox event router,
 * driven through `scripts/debezium` (docs/debezium.md). Every failure to fetch, start or stop it
 * throws with the script's output: the interop tests fail, they never skip.
 */
import { spawn } from 'node:child_process'
import { rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { POSTGRES_URL } from './databases.js'
import { kafkaBrokers } from './kafka.js'

const SCRIPT = join(import.meta.dir, '../../scripts/debezium')

/** The worker's REST port: `DEBEZIUM_REST_PORT`, or 18083. */
export function debeziumRestPort(): string {
  return process.env['DEBEZIUM_REST_PORT'] ?? '18083'
}

/** Runs `scripts/debezium <args>`; rejects with its output if it exits non-zero. */
export function debeziumScript(args: string[], env: Record<string, string> = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', [SCRIPT, ...args], {
      env: {
        ...process.env,
        KAFKA_BROKERS: kafkaBrokers().join(','),
        DEBEZIUM_REST_PORT: debeziumRestPort(),
        ...env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let output = ''
    child.stdout.on('data', (chunk: Buffer) => {
      output += chunk.toString()
    })
    child.stderr.on('data', (chunk: Buffer) => {
      output += chunk.toString()
    })
    child.on('error', reject)
    child.on('close', (code) => {
      if (code === 0) resolve(output)
      else reject(new Error(`scripts/debezium ${args.join(' ')} exited with ${code}:\n${output}`))
    })
  })
}

export interface ConnectorOptions {
  /** Connector name, topic prefix, and the stem of the slot and publication names. */
  name: string
  /** Postgres schema of the outbox table. */
  schema: string
  /** Extra or overriding connector properties. */
  extra?: Record<string, string>
}

/**
 * The connector config of docs/debezium.md: pgoutput, its own slot and a filtered publication for
 * the one outbox table, no snapshot, the outbox event router with `aggregatetype` as the topic,
 * and the columns outboxkit's consumer reads placed in headers.
 */
export function connectorProperties({ name, schema, extra = {} }: ConnectorOptions): Record<string, string> {
  const url = new URL(POSTGRES_URL)
  return {
    name,
    'connector.class': 'io.debezium.connector.postgresql.PostgresConnector',
    'tasks.max': '1',
    'database.hostname': url.hostname,
    'database.port': url.port || '5432',
    'database.user': decodeURIComponent(url.username || 'postgres'),
    'database.password': decodeURIComponent(url.password),
    'database.dbname': url.pathname.slice(1),
    'topic.prefix': name,
    'plugin.name': 'pgoutput',
    'slot.name': `${name}_slot`,
    'publication.name': `${name}_pub`,
    'publication.autocreate.mode': 'filtered',
    'table.include.list': `${schema}.outbox`,
    'snapshot.mode': 'no_data',
    'tombstones.on.delete': 'false',
    // Logical decoding messages (pg_logical_emit_message) of any application reach every slot;
    // the router passes them on unchanged and the ByteArrayConverter fails the task on them.
    'message.prefix.exclude.list': '.*',
    'key.converter': 'org.apache.kafka.connect.storage.StringConverter',
    'value.converter': 'org.apache.kafka.connect.converters.ByteArrayConverter',
    transforms: 'outbox',
    'transforms.outbox.type': 'io.debezium.transforms.outbox.EventRouter',
    // The router's own placeholder (the value of `aggregatetype`), not a template.
    // biome-ignore lint/suspicious/noTemplateCurlyInString: Debezium expands it.
    'transforms.outbox.route.topic.replacement': '${routedByValue}',
    'transforms.outbox.table.fields.additional.placement': [
      'type:header:outboxkit-type',
      'content_type:header:content-type',
      'traceparent:header:traceparent',
      'tracestate:header:tracestate',
      'headers:header:outboxkit-headers',
    ].join(','),
    ...extra,
  }
}

/** `key=value` lines; backslashes escaped as java.util.Properties reads them. */
function propertiesText(properties: Record<string, string>): string {
  return `${Object.entries(properties)
    .map(([key, value]) => `${key}=${value.replaceAll('\\', '\\\\')}`)
    .join('\n')}\n`
}

/** One Connect worker with one connector; `stop` drops its slot and publication. */
export class DebeziumWorker {
  readonly #file: string
  readonly properties: Record<string, string>
  readonly #env: Record<string, string>

  constructor(properties: Record<string, string>, env: Record<string, string> = {}) {
    this.properties = properties
    this.#env = env
    this.#file = join(tmpdir(), `${properties['name']}.connector.properties`)
    writeFileSync(this.#file, propertiesText(properties))
  }

  get slot(): string {
    return this.properties['slot.name']!
  }

  /** Starts the worker; resolves once the task runs and its slot is active. */
  start(): Promise<string> {
    return debeziumScript(['start', this.#file], this.#env)
  }

  /** SIGKILL: offsets not yet flushed are lost, the slot stays where it was last confirmed. */
  kill(): Promise<string> {
    return debeziumScript(['kill'], this.#env)
  }

  /** SIGTERM, then drops the slot and the publication. */
  async stop(): Promise<string> {
    const output = await debeziumScript(['stop'], this.#env)
    rmSync(this.#file, { force: true })
    return output
  }
}

/**
 * Columns that carry what outboxkit keeps in the `headers` JSON into the router's header
 * placement (it places columns, not JSON fields), filled by a trigger so `outbox.add` and the
 * relay need no change. docs/debezium.md shows the same SQL.
 */
export function debeziumHeaderColumnsSql(schema: string): string[] {
  const table = `"${schema}"."outbox"`
  const fn = `"${schema}"."outbox_debezium_headers"`
  return [
    `ALTER TABLE ${table} ADD COLUMN IF NOT EXISTS content_type varchar(255), ADD COLUMN IF NOT EXISTS traceparent varchar(55), ADD COLUMN IF NOT EXISTS tracestate varchar(512)`,
    `CREATE OR REPLACE FUNCTION ${fn}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.content_type := NEW.headers ->> 'content-type';
  NEW.traceparent := NEW.headers ->> 'traceparent';
  NEW.tracestate := NEW.headers ->> 'tracestate';
  RETURN NEW;
END $$`,
    `CREATE OR REPLACE TRIGGER outbox_debezium_headers BEFORE INSERT ON ${table} FOR EACH ROW EXECUTE FUNCTION ${fn}()`,
  ]
}

/**
 * The column Debezium's own tracing reads (`tracing.span.context.field`, default
 * `tracingspancontext`): the trace context as `java.util.Properties` text, filled by a trigger
 * from the `headers` JSON; NULL for an event written without one.
 */
export function debeziumTracingColumnSql(schema: string): string[] {
  const table = `"${schema}"."outbox"`
  const fn = `"${schema}"."outbox_debezium_tracing"`
  return [
    `ALTER TABLE ${table} ADD COLUMN IF NOT EXISTS tracingspancontext text`,
    `CREATE OR REPLACE FUNCTION ${fn}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.tracingspancontext := NULLIF(concat_ws(E'\\n',
    'traceparent=' || (NEW.headers ->> 'traceparent'),
    'tracestate=' || (NEW.headers ->> 'tracestate')), '');
  RETURN NEW;
END $$`,
    `CREATE OR REPLACE TRIGGER outbox_debezium_tracing BEFORE INSERT ON ${table} FOR EACH ROW EXECUTE FUNCTION ${fn}()`,
  ]
}
