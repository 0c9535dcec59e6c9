/** A small typed event emitter (no `node:events`, so the core runs on every runtime). */
export class Emitter<Events extends object> {
  readonly #listeners = new Map<keyof Events, Set<(event: never) => void>>()

  /** Subscribes to an event. Returns a function that unsubscribes. */
  on<E extends keyof Events>(event: E, listener: (event: Events[E]) => void): () => void {
    const set = this.#listeners.get(event) ?? new Set()
    this.#listeners.set(event, set)
    set.add(listener as (event: never) => void)
    return () => set.delete(listener as (event: never) => void)
  }

  /** Whether anyone listens to `event`. */
  has(event: keyof Events): boolean {
    return (this.#listeners.get(event)?.size ?? 0) > 0
  }

  /** Calls every listener of `event`. A listener that throws does not stop the others, nor the caller. */
  emit<E extends keyof Events>(event: E, payload: Events[E]): void {
    for (const listener of this.#listeners.get(event) ?? []) {
      try {
        ;(listener as (event: Events[E]) => void)(payload)
      } catch {
        // Observers must not change what happens to the work they observe.
      }
    }
  }
}
