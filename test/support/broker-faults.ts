/**
 * Faults between a kafkajs client and the broker, for real: every connection the client opens
 * (bootstrap and each broker the metadata names) goes through a small TCP proxy of this process
 * on a port of its own, which can cut the connections (a reset mid-request), blackhole them
 * (keep them open and pass nothing either way, as a network partition does; what was held goes
 * on, in order, once the link heals, as TCP would retransmit it) or slow them (hold each chunk,
 * both ways).
 * The client reaches the proxy through kafkajs's `socketFactory`, so the broker needs no other
 * advertised listener.
 */
import net from 'node:net'
import { Kafka, logLevel } from 'kafkajs'
import { kafkaBrokers } from './kafka.js'

export type BrokerLinkMode = 'pass' | 'blackhole' | 'slow'

export interface BrokerFaults {
  /** A kafkajs client whose connections all pass through the proxy. */
  kafka(clientId?: string): Kafka
  /** How the open and new connections behave from now on. */
  setMode(mode: BrokerLinkMode, slowMs?: number): void
  /** Resets every open connection, both sides; returns how many there were. */
  cut(): number
  /** Connections the clients opened so far. */
  readonly opened: number
  /** Chunks held by a blackhole, and chunks delayed by a slow link, so far. */
  readonly held: number
  readonly delayed: number
  close(): Promise<void>
}

interface Link {
  readonly client: net.Socket
  readonly upstream: net.Socket
}

/** One direction of a link: chunks held while the link is blackholed. */
interface Direction {
  readonly from: net.Socket
  readonly to: net.Socket
  readonly held: Buffer[]
}

export async function startBrokerFaults(): Promise<BrokerFaults> {
  let mode: BrokerLinkMode = 'pass'
  let slowMs = 0
  let opened = 0
  let held = 0
  let delayed = 0
  const links = new Set<Link>()
  const directions = new Set<Direction>()
  /** One proxy port per broker address the clients asked for. */
  const proxies = new Map<string, Promise<{ server: net.Server; port: number }>>()

  const forward = (from: net.Socket, to: net.Socket) => {
    const direction: Direction = { from, to, held: [] }
    directions.add(direction)
    from.on('close', () => directions.delete(direction))
    from.on('data', (chunk: Buffer) => {
      // Blackholed: hold it and stop reading; the peer waits for an answer that does not come.
      if (mode === 'blackhole' || direction.held.length > 0) {
        direction.held.push(chunk)
        held++
        from.pause()
        return
      }
      if (mode === 'slow' && slowMs > 0) {
        delayed++
        from.pause()
        setTimeout(() => {
          if (!to.destroyed) to.write(chunk)
          from.resume()
        }, slowMs)
      } else if (!to.destroyed) {
        to.write(chunk)
      }
    })
  }

  const proxyFor = (host: string, port: number) => {
    const address = `${host}:${port}`
    let proxy = proxies.get(address)
    if (!proxy) {
      proxy = new Promise((resolve, reject) => {
        const server = net.createServer((client) => {
          opened++
          const upstream = net.connect(port, host)
          const link = { client, upstream }
          links.add(link)
          const drop = () => {
            links.delete(link)
            client.destroy()
            upstream.destroy()
          }
          client.on('error', drop).on('close', drop)
          upstream.on('error', drop).on('close', drop)
          forward(client, upstream)
          forward(upstream, client)
        })
        server.once('error', reject)
        server.listen(0, '127.0.0.1', () => {
          const bound = server.address()
          resolve({ server, port: typeof bound === 'object' && bound ? bound.port : 0 })
        })
      })
      proxies.set(address, proxy)
    }
    return proxy
  }

  // Proxies are started before the client needs them: kafkajs's socketFactory is synchronous.
  for (const broker of kafkaBrokers()) {
    const [host, port] = broker.split(':')
    await proxyFor(host!, Number(port))
  }
  const ports = new Map<string, number>()
  for (const [address, proxy] of proxies) ports.set(address, (await proxy).port)

  return {
    kafka(clientId = 'broker-faults') {
      return new Kafka({
        clientId,
        brokers: kafkaBrokers(),
        logLevel: logLevel.NOTHING,
        socketFactory: ({ host, port, onConnect }) => {
          const proxied = ports.get(`${host}:${port}`)
          if (proxied === undefined) throw new Error(`no fault proxy for broker ${host}:${port}`)
          const socket = net.connect({ host: '127.0.0.1', port: proxied }, onConnect)
          socket.setKeepAlive(true, 60_000)
          return socket
        },
      })
    },
    setMode(next, ms = 0) {
      mode = next
      slowMs = ms
      if (next === 'blackhole') return
      for (const direction of directions) {
        for (const chunk of direction.held.splice(0)) if (!direction.to.destroyed) direction.to.write(chunk)
        direction.from.resume()
      }
    },
    cut() {
      const count = links.size
      for (const link of links) {
        link.client.resetAndDestroy()
        link.upstream.destroy()
      }
      links.clear()
      return count
    },
    get opened() {
      return opened
    },
    get held() {
      return held
    },
    get delayed() {
      return delayed
    },
    async close() {
      mode = 'pass'
      for (const link of links) {
        link.client.destroy()
        link.upstream.destroy()
      }
      links.clear()
      for (const proxy of proxies.values()) {
        const { server } = await proxy
        await new Promise<void>((resolve) => server.close(() => resolve()))
      }
    },
  }
}
