export {
  MemoryDatabase,
  type MemoryDatabaseOptions,
  type MemoryInboxRow,
  MemoryInboxStore,
  type MemoryOutboxRow,
  MemoryOutboxStore,
  MemoryTransaction,
  type OutboxRowStatus,
} from './memory-store.js'
export { type DeliveredRecord, MemoryTransport } from './memory-transport.js'
