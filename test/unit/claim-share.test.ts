/** The core's rule for sharing a claim between keys. */
import { describe, expect, test } from 'bun:test'
import { claimKeyShare, shareClaim, withinShares } from '../../src/index.js'

const rows = (spec: string) => spec.split(' ').map((t, seq) => ({ key: t[0]!, t, seq }))

describe('shareClaim', () => {
  test('a key gets at most a quarter of the claim (rounded up) while other keys wait', () => {
    expect(claimKeyShare(1)).toBe(1)
    expect(claimKeyShare(8)).toBe(2)
    expect(claimKeyShare(500)).toBe(125)
    const claimable = rows('h1 h2 h3 h4 h5 h6 x1 y1 z1 x2 x3')
    expect(shareClaim(claimable, 8).map((r) => r.t)).toEqual(['h1', 'h2', 'h3', 'h4', 'x1', 'y1', 'z1', 'x2'])
    expect(withinShares(claimable, 8)).toBe(6)
  })

  test('room the other keys leave is filled with the further records of a key, oldest first, in order', () => {
    const claimable = rows('h1 h2 h3 h4 h5 h6 x1')
    expect(shareClaim(claimable, 4).map((r) => r.t)).toEqual(['h1', 'h2', 'h3', 'x1'])
    expect(withinShares(claimable, 4)).toBe(2)
  })

  test('each key keeps a prefix of its run, and the input order is kept', () => {
    const claimable = rows('a1 b1 a2 b2 a3 b3 a4 b4 c1')
    const chosen = shareClaim(claimable, 5)
    expect(chosen.map((r) => r.t)).toEqual(['a1', 'b1', 'a2', 'b2', 'c1'])
    for (const key of ['a', 'b', 'c']) {
      const mine = chosen.filter((r) => r.key === key).map((r) => r.t)
      const run = claimable.filter((r) => r.key === key).map((r) => r.t)
      expect(run.slice(0, mine.length)).toEqual(mine)
    }
  })

  test('a claim with room for everything takes everything', () => {
    expect(shareClaim(rows('a1 a2 a3'), 10).map((r) => r.t)).toEqual(['a1', 'a2', 'a3'])
  })
})
