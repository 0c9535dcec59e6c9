export { type BackoffOptions, backoffDelay, DEFAULT_BACKOFF, sleep } from './backoff.js'
export type { ChangeFeed, DeadFeedRecord, FeedBatch, FeedLag, FeedPosition } from './change-feed.js'
export { CLAIM_KEY_SHARE, claimKeyShare, shareClaim, withinShares } from './claim-share.js'
export {
  type BatchMessageHandler,
  type ConsumerEvents,
  type ConsumerInstrumentation,
  IdempotentConsumer,
  type IdempotentConsumerOptions,
  type InboundMessage,
  inboundMessage,
  type MessageHandler,
  type MessageProcessor,
  type ProcessBatchOptions,
  type ProcessOutcome,
} from './consumer.js'
export {
  type ConsumerLag,
  type ConsumerRunnerOutcomeEvents,
  ConsumerRunnerReport,
  type ObservableConsumerRunner,
} from './consumer-runner.js'
export { isDatabaseOutage } from './database-outage.js'
export { driverMissing, isModuleNotFound, loadDriver } from './driver.js'
export {
  describeError,
  ErrorCode,
  isOutboxKitError,
  OutboxKitError,
  type OutboxKitErrorOptions,
} from './errors.js'
export {
  type AddEventOptions,
  type CatalogueEvent,
  defineEvents,
  EventCatalogue,
  type EventDefinition,
  type EventDefinitions,
  type EventHandlers,
  type EventHandlersOptions,
  type EventInput,
  type EventOutput,
  type EventType,
  type TypedInboundMessage,
  type TypedOutbox,
} from './event-catalogue.js'
export type { ReconciledEvent } from './exactly-once.js'
export type { ComponentHealth } from './health.js'
export {
  Lifecycle,
  type LifecycleClosable,
  type LifecycleComponent,
  type LifecycleFailure,
  type LifecycleHealth,
  type LifecycleOptions,
  type LifecycleStopResult,
} from './lifecycle.js'
export {
  LogRelay,
  type LogRelayEvents,
  type LogRelayHealth,
  type LogRelayListener,
  type LogRelayOptions,
} from './log-relay.js'
export {
  DEFAULT_LOG_FAILURE_INTERVAL_MS,
  type ErrorSummary,
  type FieldsFirstLogger,
  fieldsFirstLogger,
  type LogFields,
  type Logger,
  type LoggerOption,
  type LogMethod,
} from './logger.js'
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
export { MAX_MESSAGE_ID_LENGTH, messageIdProblem } from './message-id.js'
export {
  checkClaimOptions,
  checkClaimOwnedOptions,
  checkPurgeOptions,
  checkRelayId,
  checkSyncShardsOptions,
  MAX_CLAIM_LIMIT,
  MAX_PURGE_LIMIT,
  MAX_RELAY_ID_LENGTH,
} from './options.js'
export { Outbox, type OutboxOptions, type TraceContextCapture } from './outbox.js'
export {
  DEAD_REASON_HEADER,
  type DeadLetterOptions,
  ORIGINAL_TOPIC_HEADER,
  Relay,
  type RelayEvents,
  type RelayHealth,
  type RelayInstrumentation,
  type RelayListener,
  type RelayOptions,
  type RelayOwnership,
  type RelayOwnershipHealth,
} from './relay.js'
export {
  type InboxRetention,
  MAX_RETENTION_BATCH_SIZE,
  type OutboxRetention,
  Retention,
  type RetentionEvents,
  type RetentionInboxStore,
  type RetentionOptions,
  type RetentionOutboxStore,
  type RetentionReport,
} from './retention.js'
export type { StandardSchemaV1 } from './standard-schema.js'
export type {
  Claim,
  ClaimOptions,
  ClaimOwnedOptions,
  DeadRecord,
  ExclusiveOutcome,
  ExclusiveRunner,
  FailedRecord,
  InboxStore,
  OutboxStats,
  OutboxStore,
  PurgeOptions,
  RequeueResult,
  SettleResult,
  ShardLease,
  ShardState,
  StoreCapabilities,
  SyncShardsOptions,
  TransactionRunner,
} from './store.js'
export type {
  ExactlyOnceSession,
  ExactlyOnceTransport,
  PublishOutcome,
  Transport,
  TransportCapabilities,
} from './transport.js'
export { isUuid, uuidv7, uuidv7Timestamp } from './uuid.js'
