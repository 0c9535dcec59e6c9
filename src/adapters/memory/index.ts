export { MemoryChangeFeed, type MemoryChangeFeedOptions, MemoryChangeLog } from './memory-feed.js'
export {
  MEMORY_SHARD_COUNT,
  MemoryDatabase,
  type MemoryDatabaseOptions,
  type MemoryInboxRow,
  MemoryInboxStore,
  type MemoryOutboxRow,
  MemoryOutboxStore,
  type MemoryShard,
  MemoryTransaction,
  memoryShardOf,
  type OutboxRowStatus,
} from './memory-store.js'
export { type DeliveredRecord, MemoryTransport, type MemoryTransportOptions } from './memory-transport.js'
