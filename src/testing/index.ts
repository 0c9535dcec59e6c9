export { type DrainConsumer, type DrainOptions, type DrainResult, drain } from './drain.js'
export { type InboxStoreHarness, type InboxStoreSuiteOptions, inboxStoreSuite } from './inbox-store-suite.js'
export {
  type InspectedOutboxRow,
  type OutboxStoreHarness,
  type OutboxStoreSuiteOptions,
  outboxStoreSuite,
} from './outbox-store-suite.js'
export { type ShardSuiteOptions, shardSuite } from './shard-suite.js'
export { captureError, type Matchers, skipTest, sleep, type TestApi, type TestFunction } from './test-api.js'
export {
  type TransportHarness,
  type TransportReadRecord,
  type TransportSuiteOptions,
  transportSuite,
} from './transport-suite.js'
