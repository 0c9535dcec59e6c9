import { createServer, type Server } from 'node:http'
import { ErrorCode, OutboxKitError } from '../core/errors.js'
import type { ComponentHealth } from '../core/health.js'
import type { LifecycleHealth } from '../core/lifecycle.js'

export interface HealthServerOptions {
  /** The components' health, e.g. `() => lifecycle.health()`. */
  health: () => LifecycleHealth
  /** Port to listen on; 0 picks a free one (see {@link HealthServer.port}). Default 0. */
  port?: number
  /** Address to listen on. Default `127.0.0.1` (reachable from the machine only). */
  host?: string
  /**
   * A component with at least this many errors in a row is not ready (its loop keeps failing:
   * the broker or the database is unreachable). Default 5.
   */
  maxConsecutiveErrors?: number
}

export interface HealthServer {
  /** The port it listens on. */
  readonly port: number
  /** Stops listening. */
  close(): Promise<void>
}

/** Why a component is not ready, or undefined when it is. */
function notReady(health: ComponentHealth | undefined, maxConsecutiveErrors: number): string | undefined {
  if (!health) return undefined
  if (!health.running) return 'not running'
  if (health.consecutiveErrors >= maxConsecutiveErrors)
    return `${health.consecutiveErrors} errors in a row (last: ${health.lastError?.code ?? 'unknown'})`
  return undefined
}

/**
 * A small HTTP endpoint for orchestrators' probes, off unless you start it:
 * - `GET /livez`: 200 while the process serves requests (a liveness probe);
 * - `GET /readyz`: 200 when every component runs and none has `maxConsecutiveErrors` errors in a
 *   row, else 503; the body is JSON with each component's `health()` and why it is not ready.
 *
 * @example
 * ```ts
 * const lifecycle = new Lifecycle({ relays: [relay], runners: [runner] })
 * const server = await serveHealth({ health: () => lifecycle.health(), port: 8081 })
 * ```
 */
export async function serveHealth(options: HealthServerOptions): Promise<HealthServer> {
  if (typeof options?.health !== 'function') {
    throw new OutboxKitError(
      ErrorCode.InvalidOptions,
      'serveHealth needs `health`, a function returning the components’ health (e.g. () => lifecycle.health()).',
    )
  }
  const port = options.port ?? 0
  const maxConsecutiveErrors = options.maxConsecutiveErrors ?? 5
  if (!Number.isInteger(port) || port < 0 || port > 65_535)
    throw new OutboxKitError(
      ErrorCode.InvalidOptions,
      `port must be an integer from 0 to 65535, got ${port}.`,
    )
  if (!Number.isInteger(maxConsecutiveErrors) || maxConsecutiveErrors < 1)
    throw new OutboxKitError(
      ErrorCode.InvalidOptions,
      `maxConsecutiveErrors must be a positive integer, got ${maxConsecutiveErrors}.`,
    )
  const server: Server = createServer((request, response) => {
    const path = (request.url ?? '/').split('?')[0]
    const reply = (status: number, body: unknown) => {
      response.writeHead(status, { 'content-type': 'application/json' })
      response.end(JSON.stringify(body))
    }
    if (request.method !== 'GET' && request.method !== 'HEAD') return reply(405, { error: 'GET only' })
    if (path === '/livez') return reply(200, { status: 'ok' })
    if (path !== '/readyz') return reply(404, { error: 'GET /livez or /readyz' })
    let components: LifecycleHealth
    try {
      components = options.health()
    } catch (error) {
      return reply(503, { status: 'unknown', error: error instanceof Error ? error.message : String(error) })
    }
    const reasons = Object.fromEntries(
      Object.entries(components)
        .map(([name, health]) => [name, notReady(health, maxConsecutiveErrors)] as const)
        .filter(([, reason]) => reason !== undefined),
    )
    const ready = Object.keys(reasons).length === 0
    reply(ready ? 200 : 503, { status: ready ? 'ready' : 'not ready', notReady: reasons, components })
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, options.host ?? '127.0.0.1', () => resolve())
  })
  const address = server.address()
  return {
    port: typeof address === 'object' && address ? address.port : port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  }
}
