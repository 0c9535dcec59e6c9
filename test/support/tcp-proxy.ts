/**
 * A small TCP proxy in front of a database, for tests that cut connections for real: `cut()`
 * destroys every open connection (the driver sees a reset mid-statement), `refuse()` closes the
 * listening port so new connections are refused (ECONNREFUSED), `restore()` listens again.
 */
import net from 'node:net'

export interface TcpProxy {
  readonly port: number
  /** Connections currently open through the proxy. */
  readonly open: number
  /** Destroys every open connection, both sides. */
  cut(): void
  /** Stops listening and cuts every connection: the port refuses new ones. */
  refuse(): Promise<void>
  /** Listens again on the same port. */
  restore(): Promise<void>
  close(): Promise<void>
}

export async function startTcpProxy(options: {
  port: number
  targetHost: string
  targetPort: number
}): Promise<TcpProxy> {
  const sockets = new Set<net.Socket>()
  const server = net.createServer((client) => {
    const upstream = net.connect(options.targetPort, options.targetHost)
    sockets.add(client)
    sockets.add(upstream)
    const drop = () => {
      sockets.delete(client)
      sockets.delete(upstream)
      client.destroy()
      upstream.destroy()
    }
    client.on('error', drop).on('close', drop)
    upstream.on('error', drop).on('close', drop)
    client.pipe(upstream)
    upstream.pipe(client)
  })
  const listen = () =>
    new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(options.port, '127.0.0.1', () => {
        server.off('error', reject)
        resolve()
      })
    })
  const cut = () => {
    for (const socket of sockets) socket.resetAndDestroy()
    sockets.clear()
  }
  const stop = () =>
    new Promise<void>((resolve) => {
      cut()
      if (!server.listening) return resolve()
      server.close(() => resolve())
    })
  await listen()
  return {
    port: options.port,
    get open() {
      return sockets.size / 2
    },
    cut,
    refuse: stop,
    restore: listen,
    close: stop,
  }
}
