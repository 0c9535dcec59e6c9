/**
 * Table layout and DDL for the Kysely stores. Names are validated here, once, before any SQL is
 * built; every statement elsewhere quotes the validated names with {@link quote}.
 */
import { ErrorCode, OutboxKitError } from '../../core/errors.js'

export type SqlDialect = 'postgres' | 'mysql'

/**
 * Column names of the outbox table. `outboxkit` is the default; `debezium` uses the column names
 * of Debezium's outbox event router (`id`, `aggregatetype`, `aggregateid`, `type`, `payload`) so
 * Debezium can read the same table.
 */
export type OutboxLayout = 'outboxkit' | 'debezium'

export interface OutboxColumns {
  readonly seq: string
  readonly id: string
  readonly topic: string
  readonly key: string
  readonly type: string
  readonly payload: string
  readonly headers: string
  readonly createdAt: string
  readonly status: string
  readonly attempts: string
  readonly availableAt: string
  readonly leaseUntil: string
  readonly claimToken: string
  readonly publishedAt: string
  readonly lastError: string
}

const BASE_COLUMNS: OutboxColumns = {
  seq: 'seq',
  id: 'id',
  topic: 'topic',
  key: 'key',
  type: 'type',
  payload: 'payload',
  headers: 'headers',
  createdAt: 'created_at',
  status: 'status',
  attempts: 'attempts',
  availableAt: 'available_at',
  leaseUntil: 'lease_until',
  claimToken: 'claim_token',
  publishedAt: 'published_at',
  lastError: 'last_error',
}

export const LAYOUTS: Readonly<Record<OutboxLayout, OutboxColumns>> = {
  outboxkit: BASE_COLUMNS,
  debezium: { ...BASE_COLUMNS, topic: 'aggregatetype', key: 'aggregateid' },
}

/** Row states in the `status` column. */
export const Status = { pending: 0, published: 1, dead: 2 } as const

export interface TableOptions {
  /** `postgres` (also PGlite) or `mysql` (also MariaDB). */
  dialect: SqlDialect
  /** Postgres schema or MySQL database holding the tables. Default: the connection's current one. */
  schema?: string
  /** Outbox table name. Default `outbox`. */
  outboxTable?: string
  /** Inbox table name. Default `outbox_inbox`. */
  inboxTable?: string
  /** Column layout of the outbox table. Default `outboxkit`. */
  layout?: OutboxLayout
}

/** Validated, quoted names. */
export interface ResolvedTables {
  readonly dialect: SqlDialect
  readonly outbox: string
  readonly inbox: string
  /** Unquoted names, for index names and messages. */
  readonly outboxName: string
  readonly inboxName: string
  readonly columns: Readonly<Record<keyof OutboxColumns, string>>
  readonly layout: OutboxLayout
}

export const DEFAULT_OUTBOX_TABLE = 'outbox'
export const DEFAULT_INBOX_TABLE = 'outbox_inbox'

/** Letters, digits and `_`, not starting with a digit; short enough to leave room for index names. */
const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/
const MAX_IDENTIFIER_LENGTH = 48

export function validateIdentifier(kind: string, value: unknown): string {
  if (typeof value !== 'string' || !IDENTIFIER.test(value) || value.length > MAX_IDENTIFIER_LENGTH) {
    throw new OutboxKitError(
      ErrorCode.InvalidIdentifier,
      `The ${kind} name ${JSON.stringify(value)} is not allowed: use 1–${MAX_IDENTIFIER_LENGTH} letters, digits or '_', not starting with a digit.`,
      { details: { kind, value } },
    )
  }
  return value
}

export function quote(dialect: SqlDialect, identifier: string): string {
  return dialect === 'mysql' ? `\`${identifier}\`` : `"${identifier}"`
}

export function resolveTables(options: TableOptions): ResolvedTables {
  const { dialect } = options
  if (dialect !== 'postgres' && dialect !== 'mysql') {
    throw new OutboxKitError(
      ErrorCode.InvalidOptions,
      `dialect must be 'postgres' or 'mysql', got ${JSON.stringify(dialect)}.`,
    )
  }
  const layout = options.layout ?? 'outboxkit'
  const columns = LAYOUTS[layout]
  if (!columns) {
    throw new OutboxKitError(
      ErrorCode.InvalidOptions,
      `layout must be 'outboxkit' or 'debezium', got ${String(layout)}.`,
    )
  }
  const schema = options.schema === undefined ? undefined : validateIdentifier('schema', options.schema)
  const outboxName = validateIdentifier('outbox table', options.outboxTable ?? DEFAULT_OUTBOX_TABLE)
  const inboxName = validateIdentifier('inbox table', options.inboxTable ?? DEFAULT_INBOX_TABLE)
  const qualify = (name: string) =>
    schema === undefined ? quote(dialect, name) : `${quote(dialect, schema)}.${quote(dialect, name)}`
  const quoted = Object.fromEntries(
    Object.entries(columns).map(([field, name]) => [field, quote(dialect, name)]),
  ) as Record<keyof OutboxColumns, string>
  return {
    dialect,
    outbox: qualify(outboxName),
    inbox: qualify(inboxName),
    outboxName,
    inboxName,
    columns: quoted,
    layout,
  }
}

/**
 * MariaDB's `utf8mb4_bin` is PAD SPACE: `'abc' = 'abc '`, so two message ids or keys that differ
 * only by trailing spaces would be one. Keys, consumer names and message ids use the NO PAD
 * binary collation. The clause is a MariaDB executable comment (run by MariaDB ≥ 10.2.2 only), so
 * the same DDL still runs on MySQL, where these columns keep the table's `utf8mb4_bin`.
 */
export const MYSQL_NO_PAD = '/*M!100202 CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin */'

/** The MySQL/MariaDB column type of keys, consumer names and message ids. */
function mysqlIdColumn(): string {
  return `VARCHAR(255) ${MYSQL_NO_PAD} NOT NULL`
}

/**
 * Statements that bring tables created by an earlier version to the current layout: on MariaDB,
 * the NO PAD collation for the key, consumer and message id columns. Nothing on Postgres, whose
 * text comparison never ignores trailing spaces.
 */
export function outboxUpgradeSql(options: TableOptions): string[] {
  const t = resolveTables(options)
  if (t.dialect === 'postgres') return []
  return [
    `ALTER TABLE ${t.outbox} MODIFY ${t.columns.key} ${mysqlIdColumn()}`,
    `ALTER TABLE ${t.inbox} MODIFY \`consumer\` ${mysqlIdColumn()}, MODIFY \`message_id\` ${mysqlIdColumn()}`,
  ]
}

/** The reverse of {@link outboxUpgradeSql} (the `down` of the collation migration). */
export function outboxDowngradeSql(options: TableOptions): string[] {
  const t = resolveTables(options)
  if (t.dialect === 'postgres') return []
  const padded = 'VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL'
  return [
    `ALTER TABLE ${t.outbox} MODIFY ${t.columns.key} ${padded}`,
    `ALTER TABLE ${t.inbox} MODIFY \`consumer\` ${padded}, MODIFY \`message_id\` ${padded}`,
  ]
}

/**
 * The DDL that creates the outbox and inbox tables, one statement per string. Every statement is
 * idempotent (`IF NOT EXISTS`). Use it with any migration tool, or use {@link outboxMigrations}.
 */
export function outboxSchemaSql(options: TableOptions): string[] {
  const t = resolveTables(options)
  const c = t.columns
  const name = (suffix: string) => quote(t.dialect, `${t.outboxName}_${suffix}`)
  const inboxIndex = quote(t.dialect, `${t.inboxName}_processed_at`)
  if (t.dialect === 'postgres') {
    return [
      `CREATE TABLE IF NOT EXISTS ${t.outbox} (
  ${c.seq} bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  ${c.id} uuid NOT NULL,
  ${c.topic} varchar(249) NOT NULL,
  ${c.key} varchar(255) NOT NULL,
  ${c.type} varchar(255) NOT NULL,
  ${c.payload} bytea NOT NULL,
  ${c.headers} jsonb NOT NULL DEFAULT '{}',
  ${c.createdAt} timestamptz NOT NULL DEFAULT now(),
  ${c.status} smallint NOT NULL DEFAULT 0,
  ${c.attempts} integer NOT NULL DEFAULT 0,
  ${c.availableAt} timestamptz NOT NULL DEFAULT now(),
  ${c.leaseUntil} timestamptz,
  ${c.claimToken} uuid,
  ${c.publishedAt} timestamptz,
  ${c.lastError} text,
  CONSTRAINT ${name('id_key')} UNIQUE (${c.id})
)`,
      `CREATE INDEX IF NOT EXISTS ${name('pending')} ON ${t.outbox} (${c.seq}) WHERE ${c.status} = 0`,
      `CREATE INDEX IF NOT EXISTS ${name('pending_key')} ON ${t.outbox} (${c.key}, ${c.seq}) WHERE ${c.status} = 0`,
      `CREATE INDEX IF NOT EXISTS ${name('claim')} ON ${t.outbox} (${c.claimToken}) WHERE ${c.claimToken} IS NOT NULL`,
      `CREATE INDEX IF NOT EXISTS ${name('settled')} ON ${t.outbox} (${c.createdAt}) WHERE ${c.status} <> 0`,
      `CREATE TABLE IF NOT EXISTS ${t.inbox} (
  "consumer" varchar(255) NOT NULL,
  "message_id" varchar(255) NOT NULL,
  "processed_at" timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY ("consumer", "message_id")
)`,
      `CREATE INDEX IF NOT EXISTS ${inboxIndex} ON ${t.inbox} ("processed_at")`,
    ]
  }
  return [
    `CREATE TABLE IF NOT EXISTS ${t.outbox} (
  ${c.seq} BIGINT NOT NULL AUTO_INCREMENT,
  ${c.id} CHAR(36) CHARACTER SET ascii NOT NULL,
  ${c.topic} VARCHAR(249) NOT NULL,
  ${c.key} ${mysqlIdColumn()},
  ${c.type} VARCHAR(255) NOT NULL,
  ${c.payload} LONGBLOB NOT NULL,
  ${c.headers} LONGTEXT NOT NULL,
  ${c.createdAt} DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  ${c.status} TINYINT NOT NULL DEFAULT 0,
  ${c.attempts} INT NOT NULL DEFAULT 0,
  ${c.availableAt} DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  ${c.leaseUntil} DATETIME(6) NULL,
  ${c.claimToken} CHAR(36) CHARACTER SET ascii NULL,
  ${c.publishedAt} DATETIME(6) NULL,
  ${c.lastError} TEXT NULL,
  PRIMARY KEY (${c.seq}),
  UNIQUE KEY ${name('id_key')} (${c.id}),
  KEY ${name('status_seq')} (${c.status}, ${c.seq}),
  KEY ${name('key_status_seq')} (${c.key}, ${c.status}, ${c.seq}),
  KEY ${name('status_key_seq')} (${c.status}, ${c.key}, ${c.seq}),
  KEY ${name('claim')} (${c.claimToken}),
  KEY ${name('status_created')} (${c.status}, ${c.createdAt})
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin`,
    `CREATE TABLE IF NOT EXISTS ${t.inbox} (
  \`consumer\` ${mysqlIdColumn()},
  \`message_id\` ${mysqlIdColumn()},
  \`processed_at\` DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  PRIMARY KEY (\`consumer\`, \`message_id\`),
  KEY ${inboxIndex} (\`processed_at\`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin`,
  ]
}

/** The DDL that drops both tables (the `down` of {@link outboxMigrations}). */
export function dropOutboxSchemaSql(options: TableOptions): string[] {
  const t = resolveTables(options)
  return [`DROP TABLE IF EXISTS ${t.inbox}`, `DROP TABLE IF EXISTS ${t.outbox}`]
}
