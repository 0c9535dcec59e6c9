export { type BinlogPosition, comparePositions, formatPosition, parsePosition } from './binlog-position.js'
export {
  createMysqlChangeFeed,
  DEFAULT_FEED_NAME,
  DEFAULT_IDLE_POSITION_INTERVAL_MS,
  DEFAULT_MAX_BUFFERED_RECORDS,
  feedPositionTableSql,
  MysqlChangeFeed,
  type MysqlChangeFeedOptions,
} from './mysql-change-feed.js'
