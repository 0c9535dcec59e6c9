export { isConnectionError, isRetriableDatabaseError, runStoreOperation } from './database-errors.js'
export { detectDialect } from './dialect.js'
export { createKyselyInboxStore, KyselyInboxStore } from './kysely-inbox-store.js'
export {
  createKyselyOutboxStore,
  KyselyOutboxStore,
  type KyselyStoreOptions,
  MAX_CLAIM_LIMIT,
} from './kysely-outbox-store.js'
export { ensureOutboxSchema, outboxMigrations } from './migrations.js'
export {
  ChangeSignal,
  type PGliteListenLike,
  type PgClientLike,
  type PgPoolLike,
  type PostgresJsLike,
  type PostgresListener,
  pgListener,
  pgliteListener,
  postgresJsListener,
} from './notify.js'
export { PGliteDialect, type PGliteDialectConfig, type PGliteLike } from './pglite-dialect.js'
export {
  DEFAULT_INBOX_TABLE,
  DEFAULT_OUTBOX_TABLE,
  dropOutboxSchemaSql,
  LAYOUTS,
  MAX_RELAY_ID_LENGTH,
  type OutboxColumns,
  type OutboxLayout,
  outboxDowngradeSql,
  outboxSchemaSql,
  outboxShardsUpgradeSql,
  outboxUpgradeSql,
  SHARD_COUNT,
  type SqlDialect,
  Status,
  shardExpression,
  type TableOptions,
  validateIdentifier,
} from './schema.js'
