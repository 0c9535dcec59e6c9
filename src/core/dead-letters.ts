import type { ClaimedRecord } from './message.js'
import type { DeadRecord } from './store.js'
import type { Transport } from './transport.js'

export const DEAD_REASON_HEADER = 'outboxkit-dead-reason'
export const ORIGINAL_TOPIC_HEADER = 'outboxkit-original-topic'
/** The dead reason header is cut to this many characters. */
export const DEAD_REASON_MAX_LENGTH = 1000

/** Dead records whose letters the dead-letter topic did not take, grouped by error. */
export interface UndeliveredLetters {
  readonly ids: readonly string[]
  readonly error: string
}

/**
 * Publishes dead records to the dead-letter topic, once each, with the reason in
 * `outboxkit-dead-reason` and the original topic in `outboxkit-original-topic`. Returns the
 * letters it did not take; never throws, so the caller settles the dead records whatever happened.
 */
export async function publishDeadLetters(
  transport: Transport,
  topic: string,
  records: readonly ClaimedRecord[],
  dead: readonly DeadRecord[],
): Promise<UndeliveredLetters[]> {
  const reasons = new Map(dead.map((d) => [d.id, d.error]))
  const letters = records
    .filter((r) => reasons.has(r.id))
    .map((r) => ({
      ...r,
      topic,
      headers: {
        ...r.headers,
        [DEAD_REASON_HEADER]: reasons.get(r.id)!.slice(0, DEAD_REASON_MAX_LENGTH),
        [ORIGINAL_TOPIC_HEADER]: r.topic,
      },
    }))
  let outcomes: Awaited<ReturnType<Transport['publish']>>
  try {
    outcomes = await transport.publish(letters)
  } catch (error) {
    return [{ ids: letters.map((l) => l.id), error: error instanceof Error ? error.message : String(error) }]
  }
  const byError = new Map<string, string[]>()
  letters.forEach((letter, i) => {
    const outcome = outcomes[i]
    if (outcome?.status === 'published') return
    const error = outcome ? outcome.error : `Transport ${transport.name} returned no outcome for it`
    byError.set(error, [...(byError.get(error) ?? []), letter.id])
  })
  return [...byError].map(([error, ids]) => ({ ids, error }))
}
