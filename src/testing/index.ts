export { type InboxStoreHarness, type InboxStoreSuiteOptions, inboxStoreSuite } from './inbox-store-suite.js'
export {
  type InspectedOutboxRow,
  type OutboxStoreHarness,
  type OutboxStoreSuiteOptions,
  outboxStoreSuite,
} from './outbox-store-suite.js'
export { captureError, type Matchers, sleep, type TestApi } from './test-api.js'
