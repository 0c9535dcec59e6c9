export {
  describeError,
  ErrorCode,
  isOutboxKitError,
  OutboxKitError,
  type OutboxKitErrorOptions,
} from './errors.js'
export {
  type ClaimedRecord,
  DEFAULT_MAX_HEADER_BYTES,
  DEFAULT_MAX_PAYLOAD_BYTES,
  decodePayload,
  Headers,
  type JsonValue,
  MAX_KEY_LENGTH,
  MAX_TOPIC_LENGTH,
  MAX_TYPE_LENGTH,
  type MessageLimits,
  type OutboxMessageInput,
  type OutboxRecord,
  type Payload,
  publishedHeaders,
  RESERVED_HEADERS,
  toRecord,
} from './message.js'
export { Outbox, type OutboxOptions, type TraceContextCapture } from './outbox.js'
export type {
  Claim,
  ClaimOptions,
  DeadRecord,
  FailedRecord,
  InboxStore,
  OutboxStats,
  OutboxStore,
  PurgeOptions,
  SettleResult,
  StoreCapabilities,
  TransactionRunner,
} from './store.js'
export { isUuid, uuidv7, uuidv7Timestamp } from './uuid.js'
