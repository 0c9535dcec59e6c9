/**
 * Checks for the options of every component, so each option is refused where it is given with
 * `INVALID_OPTIONS` naming it, instead of being clamped or failing later in SQL or on the broker.
 */
import type { BackoffOptions } from './backoff.js'
import { ErrorCode, OutboxKitError } from './errors.js'

function refuse(name: string, expected: string, value: unknown, source?: string): OutboxKitError {
  const shown = typeof value === 'string' ? JSON.stringify(value) : String(value)
  return new OutboxKitError(ErrorCode.InvalidOptions, `${name} must be ${expected}, got ${shown}.`, {
    details: { option: name, value },
    ...(source === undefined ? {} : { source }),
  })
}

/** A safe integer > 0 (and ≤ `max` when given). */
export function positiveInteger(name: string, value: unknown, max?: number, source?: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value <= 0) {
    throw refuse(
      name,
      max === undefined ? 'a positive integer' : `an integer from 1 to ${max}`,
      value,
      source,
    )
  }
  if (max !== undefined && value > max) throw refuse(name, `an integer from 1 to ${max}`, value, source)
  return value
}

/** A safe integer ≥ 0. */
export function nonNegativeInteger(name: string, value: unknown, source?: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw refuse(name, 'an integer ≥ 0', value, source)
  }
  return value
}

/** A finite number ≥ 0 (durations given in ms that may carry fractions). */
export function nonNegativeNumber(name: string, value: unknown, source?: string): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
    throw refuse(name, 'a finite number ≥ 0', value, source)
  }
  return value
}

/** A string of at least one character. */
export function nonEmptyString(name: string, value: unknown, source?: string): string {
  if (typeof value !== 'string' || value.length === 0) throw refuse(name, 'a non-empty string', value, source)
  return value
}

/** Backoff settings: delays ≥ 0 ms, `maxMs` not below `initialMs`, a multiplier ≥ 1. */
export function backoffOptions(
  name: string,
  value: BackoffOptions | undefined,
  defaults: Required<BackoffOptions>,
): BackoffOptions {
  if (value === undefined) return defaults
  if (typeof value !== 'object' || value === null) throw refuse(name, 'an object', value)
  const initialMs = nonNegativeInteger(`${name}.initialMs`, value.initialMs ?? defaults.initialMs)
  const maxMs = nonNegativeInteger(`${name}.maxMs`, value.maxMs ?? defaults.maxMs)
  const multiplier = value.multiplier ?? defaults.multiplier
  if (typeof multiplier !== 'number' || !Number.isFinite(multiplier) || multiplier < 1) {
    throw refuse(`${name}.multiplier`, 'a finite number ≥ 1', multiplier)
  }
  if (maxMs < initialMs) {
    throw refuse(`${name}.maxMs`, `at least ${name}.initialMs (${initialMs})`, maxMs)
  }
  return { initialMs, maxMs, multiplier }
}

/**
 * The largest `limit` of one claim (and so the largest relay `batchSize`): keeps IN lists and
 * parameter counts well inside SQL drivers' limits.
 */
export const MAX_CLAIM_LIMIT = 10_000

/** The largest `limit` a store must accept in one `purge` call; stores delete in smaller batches. */
export const MAX_PURGE_LIMIT = 1_000_000

/**
 * Checks the options of one `OutboxStore.claim` call: `limit` an integer from 1 to
 * `maxLimit`, `leaseMs` a positive integer. Stores call it so a bad call fails loudly instead of
 * being clamped.
 */
export function checkClaimOptions(
  options: { readonly limit: number; readonly leaseMs: number },
  maxLimit: number = MAX_CLAIM_LIMIT,
  source?: string,
): void {
  if (typeof options !== 'object' || options === null)
    throw refuse('claim options', 'an object', options, source)
  positiveInteger('claim limit', options.limit, maxLimit, source)
  positiveInteger('claim leaseMs', options.leaseMs, undefined, source)
}

/** Checks the options of one `purge` call: `olderThanMs` ≥ 0, `limit` from 1 to {@link MAX_PURGE_LIMIT}. */
export function checkPurgeOptions(
  options: { readonly olderThanMs: number; readonly limit?: number; readonly consumer?: string },
  source?: string,
): void {
  if (typeof options !== 'object' || options === null)
    throw refuse('purge options', 'an object', options, source)
  nonNegativeNumber('purge olderThanMs', options.olderThanMs, source)
  if (options.limit !== undefined) positiveInteger('purge limit', options.limit, MAX_PURGE_LIMIT, source)
  if (options.consumer !== undefined) nonEmptyString('purge consumer', options.consumer, source)
}

/** The longest relay id a store must accept in `syncShards`, `claimOwned` and `leaveShards`. */
export const MAX_RELAY_ID_LENGTH = 64

/** A relay id: a non-empty string of at most {@link MAX_RELAY_ID_LENGTH} characters. */
export function checkRelayId(value: unknown, source?: string): string {
  if (
    typeof value !== 'string' ||
    value.length === 0 ||
    value.length > MAX_RELAY_ID_LENGTH ||
    // Stored in a varchar column: no NUL (Postgres refuses it) nor unpaired surrogate (not UTF-8).
    value.includes('\u0000') ||
    !value.isWellFormed()
  ) {
    throw refuse(
      'relayId',
      `a non-empty string of at most ${MAX_RELAY_ID_LENGTH} characters without NUL (give each relay a short unique id, e.g. host name and process id)`,
      value,
      source,
    )
  }
  return value
}

/** A list of shard numbers, each an integer from 0 to `shardCount - 1`. */
export function checkShardList(
  name: string,
  value: unknown,
  shardCount: number,
  source?: string,
): readonly number[] {
  if (value === undefined) return []
  if (!Array.isArray(value)) throw refuse(name, 'an array of shard numbers', value, source)
  for (const shard of value) {
    if (typeof shard !== 'number' || !Number.isInteger(shard) || shard < 0 || shard >= shardCount) {
      throw refuse(`${name}[]`, `an integer from 0 to ${shardCount - 1}`, shard, source)
    }
  }
  return value as number[]
}

/** A list of record ids: strings. */
export function checkIdList(name: string, value: unknown, source?: string): readonly string[] {
  if (value === undefined) return []
  if (!Array.isArray(value) || value.some((id) => typeof id !== 'string')) {
    throw refuse(name, 'an array of record id strings', value, source)
  }
  return value as string[]
}

/**
 * Checks the options of one `syncShards` call and returns them with defaults: `leaseMs` a positive
 * integer, `release` shard numbers below `shardCount`, `acquire` a boolean (default true).
 */
export function checkSyncShardsOptions(
  options: { readonly leaseMs: number; readonly release?: readonly number[]; readonly acquire?: boolean },
  shardCount: number,
  source?: string,
): { leaseMs: number; release: readonly number[]; acquire: boolean } {
  if (typeof options !== 'object' || options === null)
    throw refuse('syncShards options', 'an object', options, source)
  const leaseMs = positiveInteger('leaseMs', options.leaseMs, undefined, source)
  const release = checkShardList('release', options.release, shardCount, source)
  const acquire = options.acquire ?? true
  if (typeof acquire !== 'boolean') throw refuse('acquire', 'a boolean', acquire, source)
  return { leaseMs, release, acquire }
}

/**
 * Checks the options of one `claimOwned` call and returns them with defaults: `limit` an integer
 * from 1 to `maxLimit`, `inFlight` record ids (deduplicated), `excludeShards` shard numbers below
 * `shardCount`.
 */
export function checkClaimOwnedOptions(
  options: {
    readonly limit: number
    readonly inFlight?: readonly string[]
    readonly excludeShards?: readonly number[]
  },
  shardCount: number,
  maxLimit: number = MAX_CLAIM_LIMIT,
  source?: string,
): { limit: number; inFlight: ReadonlySet<string>; excludeShards: ReadonlySet<number> } {
  if (typeof options !== 'object' || options === null)
    throw refuse('claimOwned options', 'an object', options, source)
  return {
    limit: positiveInteger('limit', options.limit, maxLimit, source),
    inFlight: new Set(checkIdList('inFlight', options.inFlight, source)),
    excludeShards: new Set(checkShardList('excludeShards', options.excludeShards, shardCount, source)),
  }
}
