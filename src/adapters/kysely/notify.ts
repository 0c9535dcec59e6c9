/**
 * Postgres LISTEN/NOTIFY wake-ups for relays. A writer's transaction sends a notification that
 * Postgres delivers at commit; an idle relay listening on the channel claims at once instead of
 * waiting for its next poll. Polling stays on as the safety net: a lost connection or a missed
 * notification only delays a batch until the next poll.
 *
 * The listeners are written against the few methods each driver needs, so this module imports
 * no driver.
 */

/** Subscribes to a Postgres notification channel. Returns a function that unsubscribes. */
export interface PostgresListener {
  listen(channel: string, onNotification: () => void): Promise<() => Promise<void>>
}

/** The part of postgres.js's `Sql` used for LISTEN. */
export interface PostgresJsLike {
  listen(channel: string, onNotify: (payload: string) => void): Promise<{ unlisten(): Promise<void> }>
}

/** LISTEN through postgres.js (it keeps one dedicated connection and re-listens after reconnects). */
export function postgresJsListener(sql: PostgresJsLike): PostgresListener {
  return {
    async listen(channel, onNotification) {
      const subscription = await sql.listen(channel, () => onNotification())
      return () => subscription.unlisten()
    },
  }
}

/** The part of a `pg` Pool used for LISTEN. */
export interface PgPoolLike {
  connect(): Promise<PgClientLike>
}
export interface PgClientLike {
  query(text: string): Promise<unknown>
  on(event: 'notification', listener: (message: { channel: string }) => void): unknown
  on(event: 'error', listener: (error: Error) => void): unknown
  release(destroy?: boolean): void
}

/** LISTEN through `pg`: holds one pooled client for the subscription. */
export function pgListener(pool: PgPoolLike): PostgresListener {
  return {
    async listen(channel, onNotification) {
      const client = await pool.connect()
      client.on('notification', (message) => {
        if (message.channel === channel) onNotification()
      })
      // A broken listening connection must not crash the process; polling covers the gap.
      client.on('error', () => {})
      await client.query(`LISTEN "${channel}"`)
      return async () => {
        await client.query(`UNLISTEN "${channel}"`).catch(() => {})
        client.release(true)
      }
    },
  }
}

/** The part of PGlite used for LISTEN. */
export interface PGliteListenLike {
  listen(channel: string, callback: (payload: string) => void): Promise<() => Promise<void>>
}

/** LISTEN inside an embedded PGlite database. */
export function pgliteListener(pglite: PGliteListenLike): PostgresListener {
  return {
    async listen(channel, onNotification) {
      return pglite.listen(channel, () => onNotification())
    },
  }
}

/**
 * Turns notifications into the store's `waitForChange`. A notification that arrives while no
 * relay is waiting is remembered, so the next wait returns at once and nothing is missed between
 * a claim and the wait that follows it.
 */
export class ChangeSignal {
  readonly #listener: PostgresListener
  readonly #channel: string
  #subscription: Promise<() => Promise<void>> | undefined
  #waiters: (() => void)[] = []
  #missed = false

  constructor(listener: PostgresListener, channel: string) {
    this.#listener = listener
    this.#channel = channel
  }

  async wait(signal: AbortSignal): Promise<void> {
    this.#subscription ??= this.#listener
      .listen(this.#channel, () => this.#notify())
      .catch((error) => {
        this.#subscription = undefined
        throw error
      })
    await this.#subscription
    if (this.#missed) {
      this.#missed = false
      return
    }
    if (signal.aborted) return
    await new Promise<void>((resolve) => {
      const done = () => {
        signal.removeEventListener('abort', done)
        this.#waiters = this.#waiters.filter((w) => w !== done)
        resolve()
      }
      this.#waiters.push(done)
      signal.addEventListener('abort', done, { once: true })
    })
  }

  #notify(): void {
    if (this.#waiters.length === 0) {
      this.#missed = true
      return
    }
    for (const waiter of [...this.#waiters]) waiter()
  }

  async close(): Promise<void> {
    const subscription = this.#subscription
    this.#subscription = undefined
    if (subscription) await (await subscription.catch(() => async () => {}))()
  }
}
