import { describe, expect, test } from 'bun:test'
import {
  MemoryDatabase,
  MemoryInboxStore,
  MemoryOutboxStore,
  type MemoryTransaction,
} from '../../src/adapters/memory/index.js'
import {
  type InspectedOutboxRow,
  inboxStoreSuite,
  type OutboxStoreHarness,
  outboxStoreSuite,
  shardSuite,
} from '../../src/testing/index.js'

const api = { describe, test, expect }

/** A memory database whose clock tests can move forward. */
function clockedDatabase(): { db: MemoryDatabase; advance(ms: number): void } {
  let offset = 0
  return { db: new MemoryDatabase({ now: () => Date.now() + offset }), advance: (ms) => (offset += ms) }
}

async function memoryHarness(): Promise<OutboxStoreHarness<MemoryTransaction>> {
  {
    const { db, advance } = clockedDatabase()
    const store = new MemoryOutboxStore(db)
    const business: string[] = []
    return {
      store,
      peer: async () => new MemoryOutboxStore(db),
      async readRows() {
        return db.rows.map(
          (row): InspectedOutboxRow => ({
            ...row.record,
            headers: { ...row.record.headers },
            status: row.status,
            attempts: row.attempts,
            claimed: row.claimToken !== null,
            lastError: row.lastError,
          }),
        )
      },
      async writeBusinessRow(tx, id) {
        tx.onCommit.push(() => business.push(id))
      },
      countBusinessRows: async () => business.length,
      // Moving the clock forward ages every row.
      ageRows: async (ms) => advance(ms),
      close: async () => {},
    }
  }
}

outboxStoreSuite<MemoryTransaction>(api, 'memory', memoryHarness, { concurrentTransactions: true })
shardSuite<MemoryTransaction>(api, 'memory', memoryHarness, { concurrentTransactions: true })

inboxStoreSuite<MemoryTransaction>(
  api,
  'memory',
  async () => {
    const { db, advance } = clockedDatabase()
    return {
      store: new MemoryInboxStore(db),
      readRows: async () => [...db.inbox.values()].map((r) => `${r.consumer}/${r.messageId}`).sort(),
      ageRows: async (ms) => advance(ms),
      endTransaction: async (tx) => {
        tx.state = 'rolled back'
      },
      close: async () => {},
    }
  },
  { concurrentTransactions: true },
)
