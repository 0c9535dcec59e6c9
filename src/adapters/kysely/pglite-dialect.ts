import {
  type CompiledQuery,
  type DatabaseConnection,
  type DatabaseIntrospector,
  type Dialect,
  type DialectAdapter,
  type Driver,
  type Kysely,
  PostgresAdapter,
  PostgresIntrospector,
  PostgresQueryCompiler,
  type QueryCompiler,
  type QueryResult,
} from 'kysely'

/** The part of PGlite's API the dialect uses, so this module never imports PGlite itself. */
export interface PGliteLike {
  query<R>(query: string, params?: unknown[]): Promise<{ rows: R[]; affectedRows?: number }>
  close?(): Promise<void>
}

export interface PGliteDialectConfig {
  /** A PGlite instance (`new PGlite()` from `@electric-sql/pglite`). The dialect never closes it. */
  pglite: PGliteLike
}

/**
 * A Kysely dialect for PGlite, the embedded Postgres. PGlite has one connection, so transactions
 * take turns: a connection is handed to one transaction (or query) at a time.
 *
 * @example
 * ```ts
 * const db = new Kysely<DB>({ dialect: new PGliteDialect({ pglite: new PGlite() }) })
 * ```
 */
export class PGliteDialect implements Dialect {
  readonly #config: PGliteDialectConfig

  constructor(config: PGliteDialectConfig) {
    this.#config = config
  }

  createAdapter(): DialectAdapter {
    return new PGliteAdapter()
  }
  createDriver(): Driver {
    return new PGliteDriver(this.#config.pglite)
  }
  createQueryCompiler(): QueryCompiler {
    return new PostgresQueryCompiler()
  }
  createIntrospector(db: Kysely<unknown>): DatabaseIntrospector {
    return new PostgresIntrospector(db)
  }
}

/** Postgres SQL; `singleConnection` tells the stores that every query shares one session. */
class PGliteAdapter extends PostgresAdapter {
  readonly singleConnection = true
}

class PGliteDriver implements Driver {
  readonly #connection: PGliteConnection
  #queue: Promise<void> = Promise.resolve()

  constructor(pglite: PGliteLike) {
    this.#connection = new PGliteConnection(pglite)
  }

  async init(): Promise<void> {}

  async acquireConnection(): Promise<DatabaseConnection> {
    let release!: () => void
    const previous = this.#queue
    this.#queue = new Promise<void>((resolve) => {
      release = resolve
    })
    await previous
    this.#connection.release = release
    return this.#connection
  }

  async beginTransaction(connection: DatabaseConnection): Promise<void> {
    await connection.executeQuery({ sql: 'BEGIN', parameters: [] } as unknown as CompiledQuery)
  }
  async commitTransaction(connection: DatabaseConnection): Promise<void> {
    await connection.executeQuery({ sql: 'COMMIT', parameters: [] } as unknown as CompiledQuery)
  }
  async rollbackTransaction(connection: DatabaseConnection): Promise<void> {
    await connection.executeQuery({ sql: 'ROLLBACK', parameters: [] } as unknown as CompiledQuery)
  }

  async releaseConnection(connection: DatabaseConnection): Promise<void> {
    ;(connection as PGliteConnection).release()
  }

  async destroy(): Promise<void> {}
}

class PGliteConnection implements DatabaseConnection {
  release: () => void = () => {}
  readonly #pglite: PGliteLike

  constructor(pglite: PGliteLike) {
    this.#pglite = pglite
  }

  async executeQuery<R>(compiledQuery: CompiledQuery): Promise<QueryResult<R>> {
    const result = await this.#pglite.query<R>(compiledQuery.sql, [...compiledQuery.parameters])
    return result.affectedRows === undefined
      ? { rows: result.rows }
      : { rows: result.rows, numAffectedRows: BigInt(result.affectedRows) }
  }

  // biome-ignore lint/correctness/useYield: PGlite has no cursors; Kysely calls this only for .stream().
  async *streamQuery<R>(): AsyncIterableIterator<QueryResult<R>> {
    throw new Error('[outboxkit] [pglite] Streaming queries are not supported by the PGlite dialect.')
  }
}
