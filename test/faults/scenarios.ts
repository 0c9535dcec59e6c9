/**
 * Fault scenarios: each sets up real services (Postgres or MariaDB, Kafka), runs the relay or the
 * consumer runner while it injects one kind of fault for `faultMs`, lets the system heal, and
 * returns what the invariant checker found. The same code runs briefly in `npm test`
 * (test/integration/faults.test.ts) and for as long as asked in `npm run soak`.
 *
 * Each scenario draws its fault timings from a seeded generator: a failing seed replays the same
 * sequence of intervals (the services' own timing still varies).
 */
import { Kysely, MysqlDialect, PostgresDialect, sql } from 'kysely'
import { createPool } from 'mysql2'
import pg from 'pg'
import { createKafkaTransport } from '../../src/adapters/kafka/index.js'
import { createKyselyOutboxStore } from '../../src/adapters/kysely/index.js'
import { createKafkaConsumerRunner, type KafkaConsumerRunner } from '../../src/consumers/index.js'
import { type OutboxStore, Relay, type RelayOwnership, type Transport } from '../../src/index.js'
import { type BrokerFaults, startBrokerFaults } from '../support/broker-faults.js'
import { openConsumerWorld } from '../support/consumer-world.js'
import {
  type AnyDB,
  type Backend,
  MYSQL_URL,
  mysqlBackend,
  mysqlBackendAt,
  POSTGRES_URL,
  pgBackend,
  pgBackendAt,
  postgresJsBackend,
} from '../support/databases.js'
import { testKafka, uniqueName, uniqueTopic } from '../support/kafka.js'
import {
  type PrivateBroker,
  startPrivateKafka,
  startPrivateMariadb,
  startPrivatePostgres,
} from '../support/private-servers.js'
import { consumeCommitted, events, openRelayWorld, waitFor } from '../support/relay-world.js'
import { checkTopic, compareTopic, type TopicCheck, tableRows } from './checker.js'

export interface ScenarioContext {
  readonly seed: number
  /** How long the fault goes on. */
  readonly faultMs: number
  log(line: string): void
}

export interface ScenarioResult {
  readonly scenario: string
  readonly seed: number
  /** Committed events (relay scenarios) or messages (consumer scenarios). */
  readonly events: number
  readonly lost: number
  /** Records in the topic beyond the first of their id (relay scenarios). */
  readonly topicDuplicates: number
  /** Copies that differ from the first of their id. */
  readonly alteredCopies: number
  /** Side effects applied more than once (consumer scenarios). */
  readonly effectDuplicates: number
  readonly orderViolations: number
  /** From the end of the fault until everything was published or processed. */
  readonly recoveryMs: number
  /** How many faults were injected (connections killed or cut, members replaced), and of what. */
  readonly injected: string
  /** Whether the fault demonstrably reached the code under test (it saw errors, its bytes were held). */
  readonly reached: boolean
  /** The relays ran with `exactlyOnce`: a topic duplicate breaks the promise too (read_committed). */
  readonly exactlyOnce?: boolean
}

/** The invariants a result breaks: lost, altered or reordered events, effects twice, and under exactlyOnce any duplicate. */
export function brokenInvariants(result: ScenarioResult): string[] {
  const broken: string[] = []
  if (result.lost > 0) broken.push(`${result.lost} lost`)
  if (result.alteredCopies > 0) broken.push(`${result.alteredCopies} altered copies`)
  if (result.effectDuplicates > 0) broken.push(`${result.effectDuplicates} effects applied twice`)
  if (result.orderViolations > 0) broken.push(`${result.orderViolations} keys out of order`)
  if (result.exactlyOnce && result.topicDuplicates > 0) broken.push(`${result.topicDuplicates} duplicates`)
  return broken
}

export interface Scenario {
  readonly name: string
  /** What it proves, for the report. */
  readonly proves: string
  run(ctx: ScenarioContext): Promise<ScenarioResult>
}

/** A small seeded generator (mulberry32). */
export function seeded(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const KEYS = 20

function relayResult(
  scenario: string,
  seed: number,
  check: TopicCheck,
  recoveryMs: number,
  injected: string,
  reached: boolean,
  exactlyOnce = false,
): ScenarioResult {
  return {
    exactlyOnce,
    reached,
    scenario,
    seed,
    events: check.events,
    lost: check.lost + check.unsettled,
    topicDuplicates: check.topicDuplicates,
    alteredCopies: check.alteredCopies + check.unknown,
    effectDuplicates: 0,
    orderViolations: check.orderViolations,
    recoveryMs,
    injected,
  }
}

/** A relay as the scenarios run it (small batches, quick polls and backoff), counting its errors. */
function scenarioRelay(options: {
  store: OutboxStore<Kysely<AnyDB>>
  transport: Transport
  ownership: RelayOwnership
  leaseMs: number
  exactlyOnce?: boolean
  relayId?: string
}): { relay: Relay<Kysely<AnyDB>>; errors(): number } {
  const relay = new Relay({
    ...options,
    batchSize: 100,
    pollIntervalMs: 50,
    backoff: { initialMs: 20, maxMs: 300 },
  })
  let errors = 0
  relay.on('error', () => {
    errors++
  })
  return { relay, errors: () => errors }
}

// ------------------------------------------------------------ the relay's database connections

/** The relay's own pool, and a way to end every connection of it from outside. */
interface RelayConnections {
  readonly db: Kysely<AnyDB>
  /** Ends the relay's connections; returns how many were ended. */
  kill(admin: Kysely<AnyDB>): Promise<number>
  close(): Promise<void>
}

function relayConnections(backend: Backend, schema: string): RelayConnections {
  if (backend.dialect === 'postgres') {
    // Tagged by application_name, so the killer ends the relay's connections and no other.
    const applicationName = `relay_${schema}`.slice(0, 63)
    const pool = new pg.Pool({ connectionString: POSTGRES_URL, max: 6, application_name: applicationName })
    // pg reports a lost connection as an 'error' event on the pool and on a checked-out client
    // too (docs/relay.md, Failures); the failed query carries it as well.
    pool.on('error', () => {})
    pool.on('connect', (client) => client.on('error', () => {}))
    const db = new Kysely<AnyDB>({ dialect: new PostgresDialect({ pool }) })
    return {
      db,
      async kill(admin) {
        // OFFSET 0 keeps the filter inside: the planner may otherwise call pg_terminate_backend
        // before it checks application_name, on every backend of the server.
        const ended = await sql<{ ended: unknown }>`
          SELECT pg_terminate_backend(pid) AS ended FROM (
            SELECT pid FROM pg_stat_activity
            WHERE application_name = ${applicationName} AND pid <> pg_backend_pid() OFFSET 0) AS relay`.execute(
          admin,
        )
        return ended.rows.filter((r) => r.ended === true).length
      },
      close: () => db.destroy(),
    }
  }
  // MariaDB: the relay's pool uses the scenario's database as its default, which nothing else does.
  const db = new Kysely<AnyDB>({
    dialect: new MysqlDialect({ pool: createPool({ uri: MYSQL_URL, connectionLimit: 6, database: schema }) }),
  })
  return {
    db,
    async kill(admin) {
      const ids = await sql<{ id: unknown }>`
        SELECT id FROM information_schema.processlist WHERE db = ${schema}`.execute(admin)
      let ended = 0
      for (const { id } of ids.rows) {
        // A connection may have ended by itself meanwhile.
        await sql
          .raw(`KILL CONNECTION ${Number(id)}`)
          .execute(admin)
          .then(
            () => ended++,
            () => {},
          )
      }
      return ended
    },
    close: () => db.destroy(),
  }
}

function relayDatabaseKills(backend: Backend, ownership: RelayOwnership): Scenario {
  const name = `relay, ${backend.name}, ownership '${ownership}': database connections killed`
  return {
    name,
    proves:
      'L, O: a claim, mark or shard sync whose connection dies rolls back and is retried; a lost mark only republishes (same id).',
    async run({ seed, faultMs, log }) {
      const random = seeded(seed)
      const world = await openRelayWorld(backend, { partitions: 3 })
      const connections = relayConnections(backend, world.database.schema)
      const { relay, errors } = scenarioRelay({
        store: createKyselyOutboxStore({ db: connections.db, schema: world.database.schema }),
        transport: world.transport(),
        ownership,
        leaseMs: 2_000,
      })
      try {
        await world.write(events(world.topic, 1_500, KEYS * 2, 'backlog'))
        await relay.start()
        let killing = true
        let ended = 0
        const killer = (async () => {
          while (killing) {
            await sleep(20 + random() * 180)
            if (killing) ended += await connections.kill(world.database.db)
          }
        })()
        const writer = writeWhile(world, () => killing)
        await sleep(faultMs)
        killing = false
        await Promise.all([killer, writer.done])
        const healed = Date.now()
        await drained(world, 1_500 + writer.written())
        const recoveryMs = Date.now() - healed
        await relay.stop()
        const injected = `${ended} connections killed, ${errors()} relay errors`
        log(`  ${name}: ${injected}`)
        return relayResult(
          name,
          seed,
          await checkTopic(world),
          recoveryMs,
          injected,
          ended > 0 && errors() > 0,
        )
      } finally {
        await relay.stop().catch(() => {})
        await connections.close().catch(() => {})
        await world.close()
      }
    },
  }
}

/** Writes `size` events (over the first `size` keys) every 40 ms until `go()` turns false. */
function writeWhile(
  world: Awaited<ReturnType<typeof openRelayWorld>>,
  go: () => boolean,
  size = 10,
): { done: Promise<void>; written(): number } {
  let written = 0
  const done = (async () => {
    while (go()) {
      await world.write(events(world.topic, size, KEYS, `live${written}`))
      written += size
      await sleep(40)
    }
  })()
  return { done, written: () => written }
}

async function drained(world: Awaited<ReturnType<typeof openRelayWorld>>, total: number): Promise<void> {
  await waitFor('every event published', async () => (await world.counts()).published === total, 90_000)
}

// ------------------------------------------------------------ the database server itself

/** Writes 10 events every 40 ms until `go()` turns false; a write the database refuses is tried again. */
function writeThroughOutages(
  world: Awaited<ReturnType<typeof openRelayWorld>>,
  go: () => boolean,
): { done: Promise<void>; refused(): number } {
  let refused = 0
  let n = 0
  const done = (async () => {
    while (go()) {
      try {
        await world.write(events(world.topic, 10, KEYS, `live${n++}`))
      } catch {
        // The server is down (or the commit's outcome is unknown): the checker reads the table,
        // so a transaction that did commit is counted whether or not it was acknowledged.
        refused++
      }
      await sleep(40)
    }
  })()
  return { done, refused: () => refused }
}

function relayDatabaseServerCrash(kind: 'postgres' | 'mysql', ownership: RelayOwnership): Scenario {
  const name = `relay, ${kind === 'postgres' ? 'pg' : 'mariadb'}, ownership '${ownership}': database server SIGKILLed and restarted`
  return {
    name,
    proves:
      'L, O: every committed event survives the server crash (fsync on) and is published once the server is back; what the relay had in flight is only republished (same id).',
    async run({ seed, faultMs, log }) {
      const random = seeded(seed)
      // A server of the scenario's own: the machine's servers serve other tests.
      const server = kind === 'postgres' ? await startPrivatePostgres() : await startPrivateMariadb()
      let world: Awaited<ReturnType<typeof openRelayWorld>> | undefined
      let relay: Relay<Kysely<AnyDB>> | undefined
      try {
        world = await openRelayWorld(
          kind === 'postgres' ? pgBackendAt(server.url) : mysqlBackendAt(server.url),
          {
            partitions: 3,
          },
        )
        const scenario = scenarioRelay({
          store: world.store,
          transport: world.transport(),
          ownership,
          leaseMs: 2_000,
        })
        relay = scenario.relay
        await world.write(events(world.topic, 1_500, KEYS * 2, 'backlog'))
        await relay.start()
        let writing = true
        const writer = writeThroughOutages(world, () => writing)
        // Crash it once or more within the fault, each time down for 0.3–1.3 s.
        const faultEnds = Date.now() + faultMs
        let crashes = 0
        let downMs = 0
        while (Date.now() < faultEnds) {
          await sleep(200 + random() * Math.max(0, Math.min(1_500, faultEnds - Date.now() - 200)))
          await server.crash()
          crashes++
          const down = 300 + random() * 1_000
          await sleep(down)
          const restarting = Date.now()
          await server.start()
          downMs += down + (Date.now() - restarting)
        }
        writing = false
        await writer.done
        const healed = Date.now()
        await waitFor(
          'every event published after the crashes',
          async () => {
            const counts = await world!.counts()
            return counts.pending === 0 && counts.published > 0
          },
          90_000,
        )
        const recoveryMs = Date.now() - healed
        await relay.stop()
        const injected = `${crashes} server crashes (down ${(downMs / 1000).toFixed(1)} s in all), ${writer.refused()} writes refused, ${scenario.errors()} relay errors`
        log(`  ${name}: ${injected}`)
        return relayResult(
          name,
          seed,
          await checkTopic(world),
          recoveryMs,
          injected,
          crashes > 0 && scenario.errors() > 0,
        )
      } finally {
        await relay?.stop().catch(() => {})
        await world?.close().catch(() => {})
        await server.close()
      }
    },
  }
}

// ------------------------------------------------------------ the broker itself

/**
 * One private broker for every broker-crash run of the process (a start costs a JVM and a KRaft
 * format, about 10 s): each run makes its own topic on it. `closeScenarioServers` removes it (and
 * it is SIGKILLed if the process exits first); a run that finds it down starts it again.
 */
let privateBroker: Promise<PrivateBroker> | undefined
async function crashableBroker(): Promise<PrivateBroker> {
  if (!privateBroker) {
    privateBroker = startPrivateKafka()
    // A broker that did not start is tried again by the next run.
    privateBroker.catch(() => {
      privateBroker = undefined
    })
  }
  return privateBroker
}

/** Closes the broker-crash scenarios' broker, if one was started. */
export async function closeScenarioServers(): Promise<void> {
  const broker = privateBroker
  privateBroker = undefined
  await (await broker)?.close()
}

function relayBrokerCrash(backend: Backend, ownership: RelayOwnership): Scenario {
  const name = `relay, ${backend.name}, ownership '${ownership}': broker SIGKILLed and restarted`
  return {
    name,
    proves:
      'L, O: sends the broker never acknowledged are released and retried after the restart; what it did write before the crash survives its log recovery, and is written again only with the same id.',
    async run({ seed, faultMs, log }) {
      const random = seeded(seed)
      const broker = await crashableBroker()
      // A run before may have left it down.
      await broker.start()
      const world = await openRelayWorld(backend, { partitions: 3, brokers: broker.brokers })
      const { relay, errors } = scenarioRelay({
        store: world.store,
        // The broker is gone for seconds at a time: a send must give up within the scenario.
        transport: world.transport({ requestTimeoutMs: 3_000 }),
        ownership,
        leaseMs: 3_000,
      })
      let writing = true
      const writer = writeWhile(world, () => writing)
      try {
        await world.write(events(world.topic, 1_000, KEYS, 'backlog'))
        await relay.start()
        await waitFor('the relay to start publishing', async () => (await world.counts()).published > 0)
        // SIGKILL it once per 4 s of fault (at least once), mid-publish (0.2–1.7 s after it came
        // back, while the relay catches up), each time down for 0.3–2.3 s before the restart
        // (which itself takes seconds: a JVM, then log recovery).
        const wanted = Math.max(1, Math.round(faultMs / 4_000))
        let crashes = 0
        let downMs = 0
        while (crashes < wanted) {
          await sleep(200 + random() * 1_500)
          await broker.crash()
          crashes++
          const down = Date.now()
          await sleep(300 + random() * 2_000)
          await broker.start()
          downMs += Date.now() - down
        }
        writing = false
        await writer.done
        const healed = Date.now()
        await drained(world, 1_000 + writer.written())
        const recoveryMs = Date.now() - healed
        await relay.stop()
        const injected = `${crashes} broker crashes (down ${(downMs / 1000).toFixed(1)} s in all, restart included), ${errors()} relay errors`
        log(`  ${name}: ${injected}`)
        return relayResult(
          name,
          seed,
          await checkTopic(world),
          recoveryMs,
          injected,
          crashes > 0 && errors() > 0,
        )
      } finally {
        writing = false
        await writer.done.catch(() => {})
        await relay.stop().catch(() => {})
        await world.close()
      }
    },
  }
}

// ------------------------------------------------------------ the link to the broker

export type LinkFault = 'cut' | 'blackhole' | 'slow'

/** Runs `fault` on the link for `ms`; returns what it did, and whether it touched any traffic. */
async function onLink(
  faults: BrokerFaults,
  fault: LinkFault,
  ms: number,
  random: () => number,
): Promise<{ injected: string; touched: boolean }> {
  let cuts = 0
  const held = faults.held
  const delayed = faults.delayed
  const until = Date.now() + ms
  try {
    if (fault === 'cut') {
      while (Date.now() < until) {
        await sleep(100 + random() * 400)
        cuts += faults.cut()
      }
    } else {
      faults.setMode(fault, 40)
      await sleep(ms)
    }
  } finally {
    faults.setMode('pass')
  }
  if (fault === 'cut') return { injected: `${cuts} connections cut`, touched: cuts > 0 }
  if (fault === 'blackhole') {
    const chunks = faults.held - held
    return { injected: `${chunks} chunks held for ${ms} ms`, touched: chunks > 0 }
  }
  const chunks = faults.delayed - delayed
  return { injected: `${chunks} chunks delayed 40 ms`, touched: chunks > 0 }
}

function relayBrokerLink(backend: Backend, ownership: RelayOwnership, fault: LinkFault): Scenario {
  const name = `relay, ${backend.name}, ownership '${ownership}': broker link ${fault}`
  return {
    name,
    proves:
      fault === 'blackhole'
        ? 'L, O: a send that times out is released and retried; what the broker got meanwhile is written again (same id).'
        : 'L, O: reconnects and retries inside a send neither lose nor reorder records.',
    async run({ seed, faultMs, log }) {
      const random = seeded(seed)
      const faults = await startBrokerFaults()
      const world = await openRelayWorld(backend, { partitions: 3 })
      const { relay, errors } = scenarioRelay({
        store: world.store,
        // A blackholed send must give up well within the scenario.
        transport: world.transport({ kafka: faults.kafka(uniqueName('relay')), requestTimeoutMs: 1_500 }),
        ownership,
        leaseMs: 3_000,
      })
      try {
        await world.write(events(world.topic, 1_000, KEYS, 'backlog'))
        await relay.start()
        await waitFor('the relay to start publishing', async () => (await world.counts()).published > 0)
        let writing = true
        const writer = writeWhile(world, () => writing)
        const opened = faults.opened
        const link = await onLink(faults, fault, faultMs, random)
        writing = false
        await writer.done
        const healed = Date.now()
        await drained(world, 1_000 + writer.written())
        const recoveryMs = Date.now() - healed
        await relay.stop()
        const injected = `${link.injected}, ${faults.opened - opened} connections opened, ${errors()} relay errors`
        log(`  ${name}: ${injected}`)
        // A blackhole past the request timeout must surface as relay errors.
        const reached = link.touched && (fault !== 'blackhole' || errors() > 0)
        return relayResult(name, seed, await checkTopic(world), recoveryMs, injected, reached)
      } finally {
        faults.setMode('pass')
        await relay.stop().catch(() => {})
        await world.close()
        await faults.close()
      }
    },
  }
}

// ------------------------------------------------------------ exactly-once relays

type RelayWorldOf = Awaited<ReturnType<typeof openRelayWorld>>

/**
 * Two relays with `exactlyOnce` (ownership 'shards', a 2 s shard lease) on one table, each with
 * its own Kafka session, sharing `store`: the fault may move shards between them.
 */
function exactlyOnceRelays(
  world: RelayWorldOf,
  store: OutboxStore<Kysely<AnyDB>>,
  kafka: () => import('kafkajs').Kafka,
  requestTimeoutMs?: number,
): {
  relays: Relay<Kysely<AnyDB>>[]
  errors(): number
  reconciled(): number
  /** Starts both and waits until each owns shards, so the fault finds both at work. */
  start(): Promise<void>
} {
  const progressTopic = uniqueTopic('progress')
  // Unique per run: transactional ids outlive a run on the broker.
  const tag = crypto.randomUUID().slice(0, 8)
  let reconciled = 0
  const made = [0, 1].map((n) => {
    const made = scenarioRelay({
      store,
      transport: world.transport({
        kafka: kafka(),
        exactlyOnce: { progressTopic },
        ...(requestTimeoutMs ? { requestTimeoutMs } : {}),
      }),
      ownership: 'shards',
      leaseMs: 2_000,
      exactlyOnce: true,
      relayId: `eos-${tag}-${n}`,
    })
    made.relay.on('reconciled', (e) => {
      reconciled += e.marked
    })
    return made
  })
  const relays = made.map((m) => m.relay)
  return {
    relays,
    errors: () => made.reduce((sum, m) => sum + m.errors(), 0),
    reconciled: () => reconciled,
    async start() {
      for (const relay of relays) await relay.start()
      const q = (name: string) => (world.database.dialect === 'mysql' ? `\`${name}\`` : `"${name}"`)
      await waitFor('both relays to own shards', async () => {
        const rows = await world.database.query<{ owner: unknown }>(
          `SELECT DISTINCT owner FROM ${q(world.database.schema)}.${q('outbox_shards')} WHERE owner IS NOT NULL`,
        )
        const owners = new Set(rows.map((r) => String(r.owner)))
        return relays.every((relay) => owners.has(relay.relayId))
      })
    },
  }
}

/** The topic as a read_committed reader sees it, against the table. */
async function checkCommitted(world: RelayWorldOf): Promise<TopicCheck> {
  return compareTopic(await tableRows(world), await consumeCommitted(world.brokers, world.topic))
}

function exactlyOnceDatabaseKills(backend: Backend): Scenario {
  const name = `relay, ${backend.name}, exactlyOnce (2 relays): database connections killed`
  return {
    name,
    proves:
      'L, O, and no duplicate for a read_committed reader: a mark lost with its connection leaves rows the broker holds, which the next claim of their shard finds in the progress topic and marks instead of publishing again.',
    async run({ seed, faultMs, log }) {
      const random = seeded(seed)
      const world = await openRelayWorld(backend, { partitions: 3 })
      const connections = relayConnections(backend, world.database.schema)
      const eos = exactlyOnceRelays(
        world,
        createKyselyOutboxStore({ db: connections.db, schema: world.database.schema }),
        () => testKafka(world.brokers),
      )
      try {
        await world.write(events(world.topic, 1_500, KEYS * 2, 'backlog'))
        await eos.start()
        let killing = true
        let ended = 0
        const killer = (async () => {
          while (killing) {
            await sleep(20 + random() * 180)
            if (killing) ended += await connections.kill(world.database.db)
          }
        })()
        const writer = writeWhile(world, () => killing, KEYS)
        await sleep(faultMs)
        killing = false
        await Promise.all([killer, writer.done])
        const healed = Date.now()
        await drained(world, 1_500 + writer.written())
        const recoveryMs = Date.now() - healed
        for (const relay of eos.relays) await relay.stop()
        const injected = `${ended} connections killed, ${eos.errors()} relay errors, ${eos.reconciled()} rows marked from the progress topic`
        log(`  ${name}: ${injected}, recovery ${recoveryMs} ms`)
        return relayResult(
          name,
          seed,
          await checkCommitted(world),
          recoveryMs,
          injected,
          ended > 0 && eos.errors() > 0,
          true,
        )
      } finally {
        for (const relay of eos.relays) await relay.stop().catch(() => {})
        await connections.close().catch(() => {})
        await world.close()
      }
    },
  }
}

function exactlyOnceBrokerLink(backend: Backend, fault: 'cut' | 'blackhole'): Scenario {
  const name = `relay, ${backend.name}, exactlyOnce (2 relays): broker link ${fault}`
  return {
    name,
    proves:
      fault === 'blackhole'
        ? 'L, O, and no duplicate for a read_committed reader: a transaction whose commit timed out ends its session; the next session decides it (aborted or kept) and reconciles before anything is sent again.'
        : 'L, O, and no duplicate for a read_committed reader: a transaction cut mid-request is aborted or kept as a whole, and its rows are published once.',
    async run({ seed, faultMs, log }) {
      const random = seeded(seed)
      const faults = await startBrokerFaults()
      const world = await openRelayWorld(backend, { partitions: 3 })
      // A blackholed send or commit must give up well within the scenario.
      const eos = exactlyOnceRelays(world, world.store, () => faults.kafka(uniqueName('relay')), 1_500)
      try {
        await world.write(events(world.topic, 1_000, KEYS, 'backlog'))
        await eos.start()
        await waitFor('the relays to start publishing', async () => (await world.counts()).published > 0)
        let writing = true
        const writer = writeWhile(world, () => writing, KEYS)
        const opened = faults.opened
        const link = await onLink(faults, fault, faultMs, random)
        writing = false
        await writer.done
        const healed = Date.now()
        await drained(world, 1_000 + writer.written())
        const recoveryMs = Date.now() - healed
        for (const relay of eos.relays) await relay.stop()
        const injected = `${link.injected}, ${faults.opened - opened} connections opened, ${eos.errors()} relay errors, ${eos.reconciled()} rows marked from the progress topic`
        log(`  ${name}: ${injected}, recovery ${recoveryMs} ms`)
        const reached = link.touched && (fault !== 'blackhole' || eos.errors() > 0)
        return relayResult(name, seed, await checkCommitted(world), recoveryMs, injected, reached, true)
      } finally {
        faults.setMode('pass')
        for (const relay of eos.relays) await relay.stop().catch(() => {})
        await world.close()
        await faults.close()
      }
    },
  }
}

// ------------------------------------------------------------ consumers

type ConsumerWorld = Awaited<ReturnType<typeof openConsumerWorld>>

/** Writes `count` events and publishes them on a clean link with a relay of its own. */
async function published(world: ConsumerWorld, count: number): Promise<{ stop(): Promise<void> }> {
  await world.database.db.transaction().execute((tx: Kysely<AnyDB>) =>
    world.outbox.add(
      tx,
      Array.from({ length: count }, (_, i) => ({
        topic: world.topic,
        key: `k${i % 12}`,
        type: 'E',
        payload: { i },
      })),
    ),
  )
  const transport = createKafkaTransport({ kafka: testKafka(world.brokers) })
  const relay = new Relay({
    store: createKyselyOutboxStore({ db: world.database.db, schema: world.database.schema }),
    transport,
    pollIntervalMs: 50,
  })
  await relay.start()
  return {
    async stop() {
      await relay.stop()
      await transport.close()
    },
  }
}

async function effectResult(
  world: ConsumerWorld,
  name: string,
  seed: number,
  count: number,
  recoveryMs: number,
  injected: string,
  reached: boolean,
): Promise<ScenarioResult> {
  const effects = await world.effects()
  return {
    reached,
    scenario: name,
    seed,
    events: count,
    lost: count - effects.size,
    topicDuplicates: 0,
    alteredCopies: 0,
    effectDuplicates: [...effects.values()].reduce((sum, n) => sum + (n - 1), 0),
    orderViolations: 0,
    recoveryMs,
    injected,
  }
}

/** A handler slow enough that faults land while messages are in hand. */
function slowEffect(world: ConsumerWorld) {
  return world.consumer({
    handler: async (message, tx) => {
      await world.applyEffect(tx, message)
      await sleep(2)
    },
  })
}

async function allApplied(world: ConsumerWorld, count: number): Promise<void> {
  await waitFor('every message applied', async () => (await world.effects()).size === count, 120_000)
  // Let a redelivery, if any, arrive before counting.
  await sleep(1_000)
}

function consumerBrokerLink(backend: Backend, fault: LinkFault): Scenario {
  const name = `consumer, ${backend.name}: broker link ${fault}`
  return {
    name,
    proves:
      'D: offsets are committed only after the database commit, so a redelivery after a lost link is a skipped duplicate.',
    async run({ seed, faultMs, log }) {
      const random = seeded(seed)
      const faults = await startBrokerFaults()
      const world = await openConsumerWorld(backend, { partitions: 2 })
      const count = 600
      const source = await published(world, count)
      const runner = createKafkaConsumerRunner({
        kafka: faults.kafka(uniqueName('consumer')),
        groupId: uniqueName('group'),
        topics: [world.topic],
        consumer: slowEffect(world),
        fromBeginning: true,
        consumerConfig: { maxWaitTimeInMs: 200, sessionTimeout: 10_000, heartbeatInterval: 1_000 },
      })
      try {
        await runner.start()
        await waitFor('the consumer to start', async () => (await world.effects()).size > 0, 60_000)
        const link = await onLink(faults, fault, faultMs, random)
        const healed = Date.now()
        await allApplied(world, count)
        const recoveryMs = Date.now() - healed - 1_000
        log(`  ${name}: ${link.injected}`)
        return await effectResult(world, name, seed, count, recoveryMs, link.injected, link.touched)
      } finally {
        faults.setMode('pass')
        await runner.stop().catch(() => {})
        await source.stop().catch(() => {})
        await world.close()
        await faults.close()
      }
    },
  }
}

function consumerRebalanceStorm(backend: Backend): Scenario {
  const name = `consumer, ${backend.name}: rebalance storm`
  return {
    name,
    proves:
      'D: members joining and leaving every second or two (partitions moving mid-batch) apply each side effect once.',
    async run({ seed, faultMs, log }) {
      const random = seeded(seed)
      const world = await openConsumerWorld(backend, { partitions: 4 })
      const count = 1_500
      const source = await published(world, count)
      const groupId = uniqueName('group')
      const consumer = slowEffect(world)
      const start = async () => {
        const runner = createKafkaConsumerRunner({
          kafka: testKafka(world.brokers),
          groupId,
          topics: [world.topic],
          consumer,
          fromBeginning: true,
          consumerConfig: { maxWaitTimeInMs: 200, sessionTimeout: 10_000, heartbeatInterval: 500 },
        })
        await runner.start()
        return runner
      }
      const members: KafkaConsumerRunner[] = []
      let changes = 0
      try {
        members.push(await start(), await start())
        await waitFor('the consumers to start', async () => (await world.effects()).size > 0, 60_000)
        const until = Date.now() + faultMs
        while (Date.now() < until) {
          await sleep(1_000 + random() * 1_000)
          // Stop a random member, or add one (at most three).
          if (members.length > 1 && (members.length === 3 || random() < 0.5)) {
            const [leaving] = members.splice(Math.floor(random() * members.length), 1)
            await leaving!.stop()
          } else {
            members.push(await start())
          }
          changes++
        }
        const healed = Date.now()
        await allApplied(world, count)
        const recoveryMs = Date.now() - healed - 1_000
        const injected = `${changes} membership changes`
        log(`  ${name}: ${injected}`)
        return await effectResult(world, name, seed, count, recoveryMs, injected, changes > 0)
      } finally {
        for (const member of members) await member.stop().catch(() => {})
        await source.stop().catch(() => {})
        await world.close()
      }
    },
  }
}

function consumerBlackholedPastSession(backend: Backend, mode: 'message' | 'batch'): Scenario {
  const name = `consumer, ${backend.name}, ${mode} mode: link blackholed past the session timeout`
  return {
    name,
    proves:
      'D, L: a member cut off from the broker (not from its database) past its session timeout keeps its batch in hand while the group gives its partitions to another member, which reads them again from the last committed offset; what both applied is applied once, and the cut-off member, back, rejoins.',
    async run({ seed, faultMs, log }) {
      const random = seeded(seed)
      const faults = await startBrokerFaults()
      const world = await openConsumerWorld(backend, { partitions: 2 })
      const count = 600
      const source = await published(world, count)
      const groupId = uniqueName('group')
      const sessionTimeout = 3_000
      const runner = (kafka: import('kafkajs').Kafka, handlerMs: number) =>
        createKafkaConsumerRunner({
          kafka,
          groupId,
          topics: [world.topic],
          consumer: world.consumer({
            handler: async (message, tx) => {
              await world.applyEffect(tx, message)
              await sleep(handlerMs)
            },
          }),
          fromBeginning: true,
          mode,
          ...(mode === 'batch' ? { batchSize: 50 } : {}),
          consumerConfig: { maxWaitTimeInMs: 200, sessionTimeout, heartbeatInterval: 500 },
        })
      // The member whose link goes dark is slow, so it has records in hand when it does.
      const cutOff = runner(faults.kafka(uniqueName('cut-off')), 20)
      const other = runner(testKafka(world.brokers), 2)
      const partitionsOf = new Map<KafkaConsumerRunner, number[]>()
      const tookOver: number[] = []
      let blackholed = false
      for (const member of [cutOff, other]) {
        member.on('rebalance', (e) => {
          const partitions = e.partitions.flatMap((t) => t.partitions)
          partitionsOf.set(member, partitions)
          if (member === other && blackholed) tookOver.push(...e.assigned.flatMap((t) => t.partitions))
        })
      }
      let cutOffProcessed = 0
      cutOff.on('processed', () => {
        cutOffProcessed++
      })
      let otherDuplicates = 0
      other.on('duplicate', () => {
        otherDuplicates++
      })
      try {
        await cutOff.start()
        await waitFor(
          'the first member to be assigned',
          () => (partitionsOf.get(cutOff)?.length ?? 0) > 0,
          60_000,
        )
        await other.start()
        await waitFor(
          'each member to hold one partition',
          () => partitionsOf.get(cutOff)?.length === 1 && partitionsOf.get(other)?.length === 1,
          60_000,
        )
        // Right after the slow member finished a record: it is inside its batch.
        const before = cutOffProcessed
        await waitFor('the slow member to process', () => cutOffProcessed > before + 5, 60_000)
        const held = faults.held
        const blackholeMs = Math.max(faultMs, sessionTimeout + 1_000 + random() * 2_000)
        blackholed = true
        faults.setMode('blackhole')
        const inHand = cutOffProcessed
        await sleep(blackholeMs)
        faults.setMode('pass')
        blackholed = false
        const healed = Date.now()
        await allApplied(world, count)
        const recoveryMs = Date.now() - healed - 1_000
        const injected = `blackholed ${(blackholeMs / 1000).toFixed(1)} s (session timeout ${sessionTimeout / 1000} s, ${faults.held - held} chunks held), partitions taken over ${JSON.stringify(tookOver)}, ${cutOffProcessed - inHand} records processed by the cut-off member meanwhile, ${otherDuplicates} redeliveries skipped by the other`
        log(`  ${name}: ${injected}`)
        // The group moved the cut-off member's partition to the other one while it was dark.
        const reached = tookOver.length > 0 && faults.held - held > 0
        return await effectResult(world, name, seed, count, recoveryMs, injected, reached)
      } finally {
        faults.setMode('pass')
        await cutOff.stop().catch(() => {})
        await other.stop().catch(() => {})
        await source.stop().catch(() => {})
        await world.close()
        await faults.close()
      }
    },
  }
}

/** Every scenario, in the order the report lists them. */
export const SCENARIOS: readonly Scenario[] = [
  relayDatabaseKills(pgBackend, 'rows'),
  relayDatabaseKills(pgBackend, 'shards'),
  relayDatabaseKills(mysqlBackend, 'rows'),
  relayDatabaseKills(mysqlBackend, 'shards'),
  relayDatabaseServerCrash('postgres', 'shards'),
  relayDatabaseServerCrash('mysql', 'rows'),
  relayBrokerCrash(pgBackend, 'shards'),
  relayBrokerCrash(mysqlBackend, 'rows'),
  relayBrokerLink(postgresJsBackend, 'shards', 'cut'),
  relayBrokerLink(mysqlBackend, 'rows', 'cut'),
  relayBrokerLink(postgresJsBackend, 'shards', 'blackhole'),
  relayBrokerLink(mysqlBackend, 'rows', 'blackhole'),
  relayBrokerLink(mysqlBackend, 'shards', 'slow'),
  exactlyOnceDatabaseKills(pgBackend),
  exactlyOnceDatabaseKills(mysqlBackend),
  exactlyOnceBrokerLink(postgresJsBackend, 'cut'),
  exactlyOnceBrokerLink(postgresJsBackend, 'blackhole'),
  exactlyOnceBrokerLink(mysqlBackend, 'blackhole'),
  consumerBrokerLink(postgresJsBackend, 'cut'),
  consumerBrokerLink(mysqlBackend, 'blackhole'),
  consumerBlackholedPastSession(postgresJsBackend, 'message'),
  consumerBlackholedPastSession(mysqlBackend, 'batch'),
  consumerRebalanceStorm(postgresJsBackend),
  consumerRebalanceStorm(mysqlBackend),
]
