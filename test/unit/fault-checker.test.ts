/** The fault suite's invariant checker finds each kind of failure it reports. */
import { describe, expect, test } from 'bun:test'
import { compareTopic } from '../faults/checker.js'
import type { ConsumedMessage } from '../support/kafka.js'

const rows = [
  { id: 'a1', key: 'a', status: 1 },
  { id: 'b1', key: 'b', status: 1 },
  { id: 'a2', key: 'a', status: 1 },
  { id: 'a3', key: 'a', status: 1 },
]

let offset = 0
function record(id: string, key: string, value = id, partition = 0): ConsumedMessage {
  return {
    topic: 't',
    partition,
    offset: String(offset++),
    key: Buffer.from(key),
    value: Buffer.from(value),
    headers: { 'outboxkit-id': Buffer.from(id) },
  }
}

describe('compareTopic', () => {
  test('a topic holding every row once, in key order, is clean', () => {
    const check = compareTopic(rows, [
      record('a1', 'a'),
      record('b1', 'b', 'b1', 1),
      record('a2', 'a'),
      record('a3', 'a'),
    ])
    expect(check).toEqual({
      events: 4,
      lost: 0,
      topicDuplicates: 0,
      alteredCopies: 0,
      unknown: 0,
      orderViolations: 0,
      unsettled: 0,
    })
  })

  test('a missing row is lost, an identical copy is a duplicate, a different one is altered', () => {
    const check = compareTopic(rows, [
      record('a1', 'a'),
      record('a1', 'a'),
      record('a2', 'a'),
      record('a2', 'a', 'changed'),
      record('a3', 'a'),
    ])
    expect(check.lost).toBe(1)
    expect(check.topicDuplicates).toBe(2)
    expect(check.alteredCopies).toBe(1)
    expect(check.orderViolations).toBe(0)
  })

  test('a key whose records appear out of write order is a violation; a late duplicate is not', () => {
    expect(
      compareTopic(rows, [record('a2', 'a'), record('a1', 'a'), record('b1', 'b'), record('a3', 'a')])
        .orderViolations,
    ).toBe(1)
    expect(
      compareTopic(rows, [
        record('a1', 'a'),
        record('a2', 'a'),
        record('a1', 'a'),
        record('b1', 'b'),
        record('a3', 'a'),
      ]).orderViolations,
    ).toBe(0)
  })

  test('a row not marked published and a record of no row are counted', () => {
    const check = compareTopic(
      [...rows.slice(0, 3), { id: 'a3', key: 'a', status: 0 }],
      [record('a1', 'a'), record('b1', 'b'), record('a2', 'a'), record('a3', 'a'), record('zz', 'a')],
    )
    expect(check.unsettled).toBe(1)
    expect(check.unknown).toBe(1)
  })
})
