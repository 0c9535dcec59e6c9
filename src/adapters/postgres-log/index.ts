export {
  decodeLogicalMessage,
  encodeLogicalMessage,
  LOGICAL_MESSAGE_VERSION,
  validateMessagePrefix,
} from '../kysely/logical-message.js'
export { formatLsn, parseLsn } from './lsn.js'
export {
  createPostgresChangeFeed,
  dropPostgresFeed,
  PostgresChangeFeed,
  type PostgresChangeFeedOptions,
} from './postgres-change-feed.js'
export { type PostgresFeedNames, postgresFeedDropSql, postgresFeedSetup } from './postgres-feed-setup.js'
