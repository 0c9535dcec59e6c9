/**
 * Postgres LISTEN/NOTIFY wake-ups for relays. A writer's transaction sends a notification that
 * Postgres delivers at commit; an idle relay listening on the channel claims at once instead of
 * waiting for its next poll. A listener whose connection is lost listens again (with backoff) and
 * then wakes the waiting relays, since a notification may have been sent while it was down.
 * Polling stays on as the safety net while it is down.
 *
 * The listeners are written against the few methods each driver needs, so this module imports
 * no driver.
 */

/**
 * Subscribes to a Postgres notification channel. Returns a function that unsubscribes. Calls
 * `onReconnect` each time it listens again after losing its connection.
 */
export interface PostgresListener {
  listen(channel: string, onNotification: () => void, onReconnect?: () => void): Promise<() => Promise<void>>
}

/** The part of postgres.js's `Sql` used for LISTEN. */
export interface PostgresJsLike {
  listen(
    channel: string,
    onNotify: (payload: string) => void,
    onListen?: () => void,
  ): Promise<{ unlisten(): Promise<void> }>
}

/**
 * LISTEN through postgres.js. It keeps one dedicated connection and listens again when that
 * connection closes; `onListen` tells us when, so waiters are woken after a reconnect.
 */
export function postgresJsListener(sql: PostgresJsLike): PostgresListener {
  return {
    async listen(channel, onNotification, onReconnect) {
      let listening = false
      const subscription = await sql.listen(
        channel,
        () => onNotification(),
        () => {
          if (listening) onReconnect?.()
          listening = true
        },
      )
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
  on(event: 'end', listener: () => void): unknown
  release(destroy?: boolean): void
}

/** Delays between attempts to listen again after the connection was lost. */
const RECONNECT_INITIAL_MS = 100
const RECONNECT_MAX_MS = 10_000

/**
 * LISTEN through `pg`: holds one pooled client for the subscription. When that client's
 * connection fails, it is discarded and another one listens, retrying with backoff.
 */
export function pgListener(pool: PgPoolLike): PostgresListener {
  return {
    async listen(channel, onNotification, onReconnect) {
      let current: { client: PgClientLike; discard(): void } | undefined
      let stopped = false
      let timer: ReturnType<typeof setTimeout> | undefined
      let delay = RECONNECT_INITIAL_MS

      const subscribe = async (): Promise<void> => {
        const client = await pool.connect()
        let released = false
        const discard = () => {
          if (released) return
          released = true
          if (current?.client === client) current = undefined
          client.release(true)
        }
        const lost = () => {
          if (released) return
          discard()
          retry()
        }
        client.on('notification', (message) => {
          if (message.channel === channel) onNotification()
        })
        // A broken listening connection must not crash the process: it is replaced.
        client.on('error', lost)
        client.on('end', lost)
        try {
          await client.query(`LISTEN "${channel}"`)
        } catch (error) {
          discard()
          throw error
        }
        if (stopped) return discard()
        current = { client, discard }
      }

      const retry = () => {
        if (stopped || timer !== undefined) return
        timer = setTimeout(() => {
          timer = undefined
          subscribe().then(
            () => {
              delay = RECONNECT_INITIAL_MS
              if (!stopped) onReconnect?.()
            },
            () => {
              delay = Math.min(delay * 2, RECONNECT_MAX_MS)
              retry()
            },
          )
        }, delay)
      }

      await subscribe()
      return async () => {
        stopped = true
        if (timer !== undefined) clearTimeout(timer)
        const held = current
        if (held) {
          await held.client.query(`UNLISTEN "${channel}"`).catch(() => {})
          held.discard()
        }
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
      // After a reconnect, wake waiters as for a notification: one may have been missed.
      .listen(
        this.#channel,
        () => this.#notify(),
        () => this.#notify(),
      )
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
