/**
 * How a claim shares its room between keys, so that one key with a large backlog cannot hold
 * every other key back: no key gets more than a quarter of a claim (rounded up) while other
 * keys' claimable records are left out. Only when those do not fill it does the claim take more
 * of the keys it has.
 */

/** A key gets at most `ceil(limit / CLAIM_KEY_SHARE)` records of a claim while others wait. */
export const CLAIM_KEY_SHARE = 4

/** The most records of one key a claim of `limit` takes while other keys' records are left out. */
export function claimKeyShare(limit: number): number {
  return Math.max(1, Math.ceil(limit / CLAIM_KEY_SHARE))
}

/**
 * Chooses at most `limit` of `claimable`: records in write order, each key's records a run that
 * may be claimed in that order. First up to {@link claimKeyShare} records of each key, oldest
 * first; then, if room is left, the rest, oldest first. Each key's choice is a prefix of its
 * run, and the result keeps the input order.
 */
export function shareClaim<T extends { readonly key: string }>(claimable: readonly T[], limit: number): T[] {
  if (claimable.length <= limit) return [...claimable]
  const share = claimKeyShare(limit)
  const taken = new Set<number>()
  const perKey = new Map<string, number>()
  for (let i = 0; i < claimable.length && taken.size < limit; i++) {
    const key = claimable[i]!.key
    const n = perKey.get(key) ?? 0
    if (n >= share) continue
    perKey.set(key, n + 1)
    taken.add(i)
  }
  // Room left: the keys' further records, oldest first. A key's records past its share are a
  // suffix of its run, so taking them in order keeps each key's choice a prefix.
  for (let i = 0; i < claimable.length && taken.size < limit; i++) taken.add(i)
  return claimable.filter((_, i) => taken.has(i))
}

/**
 * How many of `claimable` a claim of `limit` takes within the keys' shares: fewer than `limit`
 * means the claim filled its room from keys past their share, so a store that saw only part of
 * the claimable records must look for other keys' records before it settles for that.
 */
export function withinShares(claimable: readonly { readonly key: string }[], limit: number): number {
  const share = claimKeyShare(limit)
  const perKey = new Map<string, number>()
  let n = 0
  for (const { key } of claimable) {
    if (n >= limit) break
    const k = perKey.get(key) ?? 0
    if (k >= share) continue
    perKey.set(key, k + 1)
    n++
  }
  return n
}
