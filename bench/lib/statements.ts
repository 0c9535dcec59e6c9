/** Names for the statements the stores and the measurements run, for per-statement timing. */
import type { LogEvent } from 'kysely'

/** A short name for a statement, from its text. */
export function statementKind(text: string): string {
  const sql = text.replace(/\s+/g, ' ').trim()
  if (/^(begin|start transaction)/i.test(sql)) return 'begin'
  if (/^set transaction/i.test(sql)) return 'set isolation'
  if (/^commit/i.test(sql)) return 'commit'
  if (/^rollback/i.test(sql)) return 'rollback'
  if (/SKIP LOCKED/i.test(sql)) return 'lock heads'
  if (/^SELECT .*CASE WHEN/i.test(sql)) return 'read window'
  if (/^UPDATE .*attempts.*\+ 1/i.test(sql)) return 'lease'
  if (/^SELECT .* FOR UPDATE$/i.test(sql)) return 'lock rows'
  if (/^SELECT .*claim_token/i.test(sql)) return 'read leased'
  if (/^UPDATE .*status/i.test(sql)) return 'settle'
  if (/^WITH inserted/i.test(sql)) return 'insert outbox + notify'
  if (/^SELECT 1 AS found FROM/i.test(sql)) return 'confirm'
  if (/pg_logical_emit_message/i.test(sql)) return 'emit messages'
  if (/^DELETE FROM \S*"outbox"/i.test(sql)) return 'delete outbox'
  if (/^(savepoint|release savepoint|rollback to savepoint)/i.test(sql)) return 'savepoint'
  const insert = /^insert (?:ignore )?into (?:\S+\.)?[`"]?(\w+)[`"]?/i.exec(sql)
  if (insert) return `insert ${insert[1]}`
  return sql.slice(0, 24)
}

/** Mean driver time per statement kind, fed by a Kysely `log` callback. */
export class StatementTimes {
  readonly #totals = new Map<string, { count: number; ms: number }>()

  readonly log = (event: LogEvent): void => {
    const kind = statementKind(event.query.sql)
    const entry = this.#totals.get(kind) ?? { count: 0, ms: 0 }
    entry.count++
    entry.ms += event.queryDurationMillis
    this.#totals.set(kind, entry)
  }

  reset(): void {
    this.#totals.clear()
  }

  /** Total ms per statement kind divided by `messages`: what each message costs, by kind. */
  totalsPer(messages: number): Record<string, number> {
    return Object.fromEntries([...this.#totals].map(([kind, { ms }]) => [kind, ms / messages]))
  }

  means(): Record<string, number> {
    return Object.fromEntries([...this.#totals].map(([kind, { count, ms }]) => [kind, ms / count]))
  }
}

/** `begin 0.31, insert orders 1.20, commit 2.05` */
export function formatTimes(times: Readonly<Record<string, number>>, digits = 2): string {
  return Object.entries(times)
    .map(([kind, ms]) => `${kind} ${ms.toFixed(digits)}`)
    .join(', ')
}
