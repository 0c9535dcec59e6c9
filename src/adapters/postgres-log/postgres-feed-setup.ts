/**
 * The database objects of a Postgres change feed: a publication of the outbox table's INSERTs, a
 * permanent logical replication slot (pgoutput), a marker row that says the slot was made, and a
 * dead table for dead records that have no row to be marked in.
 */
import { ErrorCode, OutboxKitError } from '../../core/errors.js'
import {
  DEFAULT_OUTBOX_TABLE,
  LAYOUTS,
  type OutboxColumns,
  type OutboxLayout,
  quote,
  validateIdentifier,
} from '../kysely/schema.js'

/** Names of a feed's objects. */
export interface PostgresFeedNames {
  /**
   * The replication slot: 1–63 lower-case letters, digits or `_` (Postgres' rule for slot names).
   * One slot per relay group; two feeds never share one.
   */
  slot: string
  /** The publication that limits the slot to the outbox table. A valid identifier. */
  publication: string
  /** Schema of the outbox table. Default: the connection's current schema. */
  schema?: string
  /** Outbox table name. Default `outbox`. */
  outboxTable?: string
  /** Column layout of the outbox table. Default `outboxkit`. */
  layout?: OutboxLayout
  /**
   * Whether the feed reads the outbox table's INSERTs. Default `true`. `false` is for a feed of
   * logical decoding messages only (`messagePrefix`), where the outbox table need not exist: the
   * publication then publishes no table (pgoutput needs one all the same).
   */
  table?: boolean
}

/** Validated names, quoted where SQL needs them. */
export interface ResolvedFeedNames {
  readonly slot: string
  readonly publication: string
  readonly schema: string | undefined
  readonly outboxTable: string
  /** The quoted (schema-qualified when given) outbox table. */
  readonly outbox: string
  /** The quoted marker table, `<outboxTable>_feeds`, beside the outbox table. */
  readonly feeds: string
  /** The quoted dead table, `<outboxTable>_dead`, beside the outbox table. */
  readonly dead: string
  readonly table: boolean
  readonly columns: OutboxColumns
  readonly layout: OutboxLayout
}

const SLOT_NAME = /^[a-z0-9_]{1,63}$/

export function resolveFeedNames(names: PostgresFeedNames): ResolvedFeedNames {
  if (typeof names.slot !== 'string' || !SLOT_NAME.test(names.slot)) {
    throw new OutboxKitError(
      ErrorCode.InvalidIdentifier,
      `The replication slot name ${JSON.stringify(names.slot)} is not allowed: use 1–63 lower-case letters, digits or '_'.`,
      { details: { kind: 'slot', value: names.slot } },
    )
  }
  const publication = validateIdentifier('publication', names.publication)
  const schema = names.schema === undefined ? undefined : validateIdentifier('schema', names.schema)
  const outboxTable = validateIdentifier('outbox table', names.outboxTable ?? DEFAULT_OUTBOX_TABLE)
  const layout = names.layout ?? 'outboxkit'
  const columns = LAYOUTS[layout]
  if (!columns) {
    throw new OutboxKitError(
      ErrorCode.InvalidOptions,
      `layout must be 'outboxkit' or 'debezium', got ${String(layout)}.`,
    )
  }
  const qualify = (name: string) =>
    schema === undefined ? quote('postgres', name) : `${quote('postgres', schema)}.${quote('postgres', name)}`
  return {
    slot: names.slot,
    publication,
    schema,
    outboxTable,
    outbox: qualify(outboxTable),
    feeds: qualify(`${outboxTable}_feeds`),
    dead: qualify(`${outboxTable}_dead`),
    table: names.table !== false,
    columns,
    layout,
  }
}

/**
 * The SQL that sets a feed up, one statement per string, each idempotent. Run them in order, each
 * in its own transaction (autocommit), after the outbox table exists: Postgres refuses to create a
 * logical slot in a transaction that has written anything, and a publication must be committed
 * before the slot is created, or pgoutput fails to find it when it decodes the log from the slot's
 * start. `createPostgresChangeFeed(...).open()` runs the same statements itself.
 *
 * 1. the marker table `<outboxTable>_feeds` (one row per slot that was created), and the dead
 *    table `<outboxTable>_dead` (dead records that have no outbox row: logical messages, rows
 *    deleted as they were added);
 * 2. the publication, of the outbox table's INSERTs only (of no table with `table: false`);
 * 3. the slot, unless it exists or its marker row does: a slot whose marker row exists was made
 *    before and dropped since, and making it again would skip every record written meanwhile (the
 *    feed reports `FEED_LOST` instead);
 * 4. the marker row, once the slot exists.
 */
export function postgresFeedSetup(names: PostgresFeedNames): string[] {
  const n = resolveFeedNames(names)
  const slot = literal(n.slot)
  const publication = literal(n.publication)
  return [
    `CREATE TABLE IF NOT EXISTS ${n.feeds} (
  "slot_name" text PRIMARY KEY,
  "publication" text NOT NULL,
  "created_at" timestamptz NOT NULL DEFAULT now()
)`,
    `CREATE TABLE IF NOT EXISTS ${n.dead} (
  "slot_name" text NOT NULL,
  "id" text NOT NULL,
  "topic" text,
  "key" text,
  "type" text,
  "payload" bytea,
  "headers" jsonb,
  "created_at" timestamptz,
  "content" bytea,
  "last_error" text NOT NULL,
  "dead_at" timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY ("slot_name", "id")
)`,
    `DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = ${publication}) THEN
    CREATE PUBLICATION ${quote('postgres', n.publication)} ${n.table ? `FOR TABLE ${n.outbox} ` : ''}WITH (publish = 'insert');
  END IF;
END $$`,
    `SELECT pg_catalog.pg_create_logical_replication_slot(${slot}, 'pgoutput')
WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = ${slot})
  AND NOT EXISTS (SELECT 1 FROM ${n.feeds} WHERE "slot_name" = ${slot})`,
    `INSERT INTO ${n.feeds} ("slot_name", "publication")
SELECT ${slot}, ${publication}
WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = ${slot})
ON CONFLICT ("slot_name") DO NOTHING`,
  ]
}

/**
 * The SQL that removes a feed: its slot (which must not be in use: stop the relay first), its
 * marker row and its publication. Each statement is idempotent; run them in order, each on its
 * own. Dropping the slot lets Postgres recycle the WAL it held, and a feed opened afterwards starts
 * at the end of the log.
 */
export function postgresFeedDropSql(names: PostgresFeedNames): string[] {
  const n = resolveFeedNames(names)
  const slot = literal(n.slot)
  return [
    `SELECT pg_catalog.pg_drop_replication_slot(slot_name) FROM pg_catalog.pg_replication_slots WHERE slot_name = ${slot}`,
    `DO $$ BEGIN
  IF to_regclass(${literal(n.feeds)}) IS NOT NULL THEN
    DELETE FROM ${n.feeds} WHERE "slot_name" = ${slot};
  END IF;
END $$`,
    `DROP PUBLICATION IF EXISTS ${quote('postgres', n.publication)}`,
  ]
}

/** A SQL string literal of a validated name (letters, digits, `_` and the quotes of identifiers). */
function literal(value: string): string {
  return `'${value.replaceAll("'", "''")}'`
}
