import { describe, expect, test } from 'bun:test'
import { MemoryDatabase, MemoryOutboxStore, MemoryTransport } from '../../src/adapters/memory/index.js'
import { Lifecycle, Outbox, OutboxKitError, Relay } from '../../src/index.js'
import { serveHealth } from '../../src/process/index.js'

async function get(port: number, path: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const response = await fetch(`http://127.0.0.1:${port}${path}`)
  return { status: response.status, body: (await response.json()) as Record<string, unknown> }
}

async function until(check: () => Promise<boolean>, what: string): Promise<void> {
  const end = Date.now() + 5_000
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

describe('serveHealth', () => {
  test('livez answers; readyz is 503 before start, 200 running, 503 while a relay keeps failing, 503 stopped', async () => {
    const transport = new MemoryTransport()
    const store = new MemoryOutboxStore(new MemoryDatabase())
    const outbox = new Outbox({ store })
    const relay = new Relay({
      store,
      transport,
      pollIntervalMs: 5,
      backoff: { initialMs: 1, maxMs: 2 },
      logger: false,
    })
    const lifecycle = new Lifecycle({ relays: [relay] })
    const server = await serveHealth({ health: () => lifecycle.health(), maxConsecutiveErrors: 3 })
    try {
      expect((await get(server.port, '/livez')).status).toBe(200)
      const before = await get(server.port, '/readyz')
      expect(before.status).toBe(503)
      expect(Object.values(before.body['notReady'] as object)).toEqual(['not running'])
      await lifecycle.start()
      await until(async () => (await get(server.port, '/readyz')).status === 200, 'ready')
      transport.throwWith = () => new Error('broker unreachable')
      await store.transaction((trx) =>
        outbox.add(trx, { topic: 't', key: 'k', type: 'T', payload: { n: 1 } }),
      )
      await until(async () => (await get(server.port, '/readyz')).status === 503, 'not ready while failing')
      const failing = await get(server.port, '/readyz')
      expect(String(Object.values(failing.body['notReady'] as object)[0])).toContain('errors in a row')
      transport.throwWith = undefined
      await until(async () => (await get(server.port, '/readyz')).status === 200, 'ready again')
      await lifecycle.stop()
      expect((await get(server.port, '/readyz')).status).toBe(503)
      expect((await get(server.port, '/nope')).status).toBe(404)
    } finally {
      await server.close()
      await lifecycle.stop()
    }
  })

  test('bad options are refused', async () => {
    await expect(serveHealth({ health: undefined as never })).rejects.toBeInstanceOf(OutboxKitError)
    await expect(serveHealth({ health: () => ({}), port: -1 })).rejects.toThrow('port')
  })
})
