/**
 * A Cloudflare Worker that writes orders and their events with outboxkit: Kysely on postgres.js
 * (through kysely-postgres-js) and `outbox.add` inside the order's transaction. The workerd check
 * (test/runtimes/workerd.mjs) bundles it, runs it in workerd through Miniflare and relays what it
 * wrote from Node.
 *
 * Each request opens its own postgres.js client: Workers do not share sockets between requests.
 * `fetch_types` keeps its default: with `fetch_types: false`, postgres.js 3.4's first
 * `sql.reserve()` on a fresh pool never resolves, and kysely-postgres-js reserves a connection
 * for every query.
 */
import { Kysely } from 'kysely'
import { PostgresJSDialect } from 'kysely-postgres-js'
import { Outbox } from 'outboxkit'
import { createKyselyOutboxStore } from 'outboxkit/kysely'
import postgres from 'postgres'
import { writeOrder } from './write-order.mjs'

export default {
  async fetch(request, env) {
    const url = new URL(request.url)
    if (url.pathname === '/runtime') {
      return Response.json({ userAgent: navigator.userAgent })
    }
    if (url.pathname !== '/orders' || request.method !== 'POST') {
      return new Response('not found', { status: 404 })
    }
    const { schema, topic, orders, failAfterAdd = false } = await request.json()
    const db = new Kysely({
      dialect: new PostgresJSDialect({
        postgres: postgres(env.POSTGRES_URL, { max: 1, onnotice: () => {} }),
      }),
    })
    try {
      const outbox = new Outbox({ store: createKyselyOutboxStore({ db, schema }) })
      const written = []
      for (const { orderId, amount } of orders) {
        const eventId = await writeOrder(db, outbox, { schema, topic, orderId, amount, failAfterAdd })
        written.push({ orderId, eventId })
      }
      return Response.json({ written })
    } catch (error) {
      return Response.json({ error: error instanceof Error ? error.message : String(error) }, { status: 500 })
    } finally {
      await db.destroy()
    }
  },
}
