/**
 * The invariant checker of the fault scenarios. It reads the outbox table and the topic directly
 * (a clean kafkajs consumer, a query on the table), never through the code under test, and
 * counts what a user would call a failure: a committed event missing from the topic (lost), a
 * copy that differs from the first one of its id, a key whose records appear out of write order,
 * a side effect applied more than once.
 */
import type { ConsumedMessage } from '../support/kafka.js'
import { consumeAll, messageId, type RelayWorld } from '../support/relay-world.js'

export interface TopicCheck {
  /** Rows in the outbox table (every one committed). */
  readonly events: number
  /** Rows whose message id is not in the topic. */
  readonly lost: number
  /** Records in the topic beyond the first of their id. */
  readonly topicDuplicates: number
  /** Copies whose key or value differ from the first record of their id. */
  readonly alteredCopies: number
  /** Records whose id is in no row of the table. */
  readonly unknown: number
  /** Keys whose records (first copies) appear in another order than the table's write order. */
  readonly orderViolations: number
  /** Rows still not marked published. */
  readonly unsettled: number
}

/** The outbox rows in write order: id, key and status. */
export async function tableRows(world: RelayWorld): Promise<{ id: string; key: string; status: number }[]> {
  const quote = (name: string) => (world.database.dialect === 'mysql' ? `\`${name}\`` : `"${name}"`)
  const rows = await world.database.query<{ id: unknown; k: unknown; status: unknown }>(
    `SELECT id, ${quote('key')} AS k, status FROM ${quote(world.database.schema)}.${quote('outbox')} ORDER BY seq`,
  )
  return rows.map((r) => ({ id: String(r.id), key: String(r.k), status: Number(r.status) }))
}

export function compareTopic(
  rows: readonly { id: string; key: string; status: number }[],
  consumed: readonly ConsumedMessage[],
): TopicCheck {
  const sorted = [...consumed].sort(
    (a, b) => a.partition - b.partition || Number(a.offset) - Number(b.offset),
  )
  const first = new Map<string, string>()
  const byKey = new Map<string, string[]>()
  let topicDuplicates = 0
  let alteredCopies = 0
  for (const m of sorted) {
    const id = messageId(m)
    const fingerprint = `${m.key?.toString()}|${m.value?.toString('base64')}`
    const seen = first.get(id)
    if (seen !== undefined) {
      topicDuplicates++
      if (seen !== fingerprint) alteredCopies++
      continue
    }
    first.set(id, fingerprint)
    const key = m.key?.toString() ?? ''
    byKey.set(key, [...(byKey.get(key) ?? []), id])
  }
  const known = new Set(rows.map((r) => r.id))
  const written = new Map<string, string[]>()
  for (const row of rows) written.set(row.key, [...(written.get(row.key) ?? []), row.id])
  let orderViolations = 0
  for (const [key, ids] of written) {
    const seen = (byKey.get(key) ?? []).filter((id) => known.has(id))
    const expected = ids.filter((id) => first.has(id))
    if (seen.length !== expected.length || seen.some((id, i) => id !== expected[i])) orderViolations++
  }
  return {
    events: rows.length,
    lost: rows.filter((r) => !first.has(r.id)).length,
    topicDuplicates,
    alteredCopies,
    unknown: [...first.keys()].filter((id) => !known.has(id)).length,
    orderViolations,
    unsettled: rows.filter((r) => r.status !== 1).length,
  }
}

/** Reads the world's table and topic and compares them. */
export async function checkTopic(world: RelayWorld): Promise<TopicCheck> {
  const rows = await tableRows(world)
  const consumed = await consumeAll(world.brokers, world.topic)
  return compareTopic(rows, consumed)
}
