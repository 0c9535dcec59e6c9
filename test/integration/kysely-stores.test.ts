import { beforeAll, describe, expect, test } from 'bun:test'
import { inboxStoreSuite, outboxStoreSuite } from '../../src/testing/index.js'
import { assertReachable, mysqlBackend, postgresJsBackend, SQL_BACKENDS } from '../support/databases.js'
import { openInboxHarness, openOutboxHarness } from '../support/kysely-harness.js'

const api = { describe, test, expect }

beforeAll(async () => {
  for (const backend of SQL_BACKENDS) await assertReachable(backend)
})

for (const backend of SQL_BACKENDS) {
  const concurrentTransactions = backend.name !== 'pglite'
  outboxStoreSuite(api, backend.name, () => openOutboxHarness(backend), { concurrentTransactions })
  inboxStoreSuite(api, backend.name, () => openInboxHarness(backend), { concurrentTransactions })
}

// The Debezium-compatible column layout runs the same suite.
for (const backend of [postgresJsBackend, mysqlBackend]) {
  outboxStoreSuite(api, `${backend.name}, debezium layout`, () => openOutboxHarness(backend, 'debezium'), {
    concurrentTransactions: true,
  })
}
