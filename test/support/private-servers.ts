/**
 * Database servers of a test's own, on their own ports and data directories, so that a test can
 * SIGKILL the server and start it again without touching the machine's servers (which other
 * tests use). Built from the machine's PostgreSQL and MariaDB binaries; needs root (the servers
 * run as the `postgres` and `mysql` users).
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process'
import {
  appendFileSync,
  chownSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
} from 'node:fs'
import { createConnection, createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'

export interface PrivateServer {
  /** postgres:// or mysql:// URL of the server, as root/postgres without a password. */
  readonly url: string
  readonly port: number
  /** Ends the server and every process of it with SIGKILL: a crash, no shutdown. */
  crash(): Promise<void>
  /** Starts it again on the same data (after a crash: crash recovery) and waits until it answers. */
  start(): Promise<void>
  /** Stops it and removes its data. */
  close(): Promise<void>
}

function userIds(name: string): { uid: number; gid: number } {
  const id = (flag: string) => Number(execFileSync('id', [flag, name]).toString().trim())
  return { uid: id('-u'), gid: id('-g') }
}

/** A port nothing listens on now. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0))
    })
  })
}

/** Waits until the server answers on `port`, failing at once if its process ended (a port taken). */
async function answering(what: string, server: ChildProcess, port: number, ms: number): Promise<void> {
  await until(
    `${what} did not answer on port ${port}`,
    async () => {
      if (server.exitCode !== null || server.signalCode !== null)
        throw new Error(
          `[outboxkit tests] ${what} exited at start (code ${server.exitCode}); is port ${port} taken?`,
        )
      return portAnswers(port)
    },
    ms,
  )
}

function portAnswers(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: '127.0.0.1', port })
    socket.once('connect', () => {
      socket.destroy()
      resolve(true)
    })
    socket.once('error', () => resolve(false))
  })
}

async function until(what: string, check: () => Promise<boolean> | boolean, ms: number): Promise<void> {
  const end = Date.now() + ms
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`[outboxkit tests] ${what} within ${ms} ms`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/** Servers started by this process: killed when it exits, so none outlives a failed test run. */
const started = new Set<ChildProcess>()
process.once('exit', () => {
  for (const server of started) if (server.pid !== undefined) kill(server.pid)
})

/** SIGKILL, for a process that may have ended already. */
function kill(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL')
  } catch {
    // It had ended.
  }
}

/** The pids of `pid`'s children, read from /proc. */
function childrenOf(pid: number): number[] {
  const children: number[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8')
      const parent = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
      if (parent === pid) children.push(Number(entry))
    } catch {
      // The process ended meanwhile.
    }
  }
  return children
}

function postgresBinary(name: string): string {
  const versions = readdirSync('/usr/lib/postgresql').sort()
  const binary = join('/usr/lib/postgresql', versions.at(-1)!, 'bin', name)
  if (!existsSync(binary))
    throw new Error(`[outboxkit tests] ${binary} is missing: PostgreSQL is not installed here.`)
  return binary
}

/**
 * A PostgreSQL server of the test's own (fsync on, so a crash loses nothing committed), with
 * extra `settings` (`wal_level: 'logical'`, ...).
 */
export async function startPrivatePostgres(
  port?: number,
  settings: Readonly<Record<string, string>> = {},
): Promise<PrivateServer> {
  port ??= await freePort()
  const dir = mkdtempSync(join(tmpdir(), 'outboxkit-pg-'))
  const { uid, gid } = userIds('postgres')
  chownSync(dir, uid, gid)
  const asPostgres = { uid, gid, stdio: 'pipe' as const }
  execFileSync(
    postgresBinary('initdb'),
    ['-D', join(dir, 'data'), '-U', 'postgres', '-A', 'trust'],
    asPostgres,
  )
  let server: ChildProcess | undefined
  const start = async () => {
    server = spawn(
      postgresBinary('postgres'),
      [
        '-D',
        join(dir, 'data'),
        '-p',
        String(port),
        '-k',
        dir,
        '-c',
        'listen_addresses=127.0.0.1',
        '-c',
        'fsync=on',
        ...Object.entries(settings).flatMap(([name, value]) => ['-c', `${name}=${value}`]),
      ],
      { uid, gid, stdio: 'ignore' },
    )
    started.add(server)
    await answering('the private PostgreSQL', server, port, 30_000)
    // Accepting TCP is not accepting queries while it recovers: ask pg_isready.
    await until(
      `the private PostgreSQL on port ${port} did not accept connections`,
      () => {
        try {
          execFileSync(postgresBinary('pg_isready'), ['-q', '-h', '127.0.0.1', '-p', String(port)])
          return true
        } catch {
          return false
        }
      },
      30_000,
    )
  }
  const crash = async () => {
    const pid = server?.pid
    if (pid === undefined) return
    // The whole server at once, as a machine that loses power: the postmaster and every backend
    // (none may survive to hold the shared memory the next start needs).
    const processes = [pid, ...childrenOf(pid)]
    for (const each of processes) kill(each)
    await until('the crashed PostgreSQL did not exit', () => processes.every((p) => !alive(p)), 10_000)
    server = undefined
  }
  await start()
  return {
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    port,
    crash,
    start,
    async close() {
      await crash().catch(() => {})
      rmSync(dir, { recursive: true, force: true })
    },
  }
}

/** A MariaDB server of the test's own, without grant tables (any user, no password). */
export async function startPrivateMariadb(port?: number): Promise<PrivateServer> {
  port ??= await freePort()
  const dir = mkdtempSync(join(tmpdir(), 'outboxkit-maria-'))
  const { uid, gid } = userIds('mysql')
  chownSync(dir, uid, gid)
  const data = join(dir, 'data')
  execFileSync(
    'mariadb-install-db',
    [
      '--no-defaults',
      `--datadir=${data}`,
      '--user=mysql',
      '--skip-test-db',
      '--auth-root-authentication-method=normal',
    ],
    { stdio: 'pipe' },
  )
  let server: ChildProcess | undefined
  const start = async () => {
    server = spawn(
      '/usr/sbin/mariadbd',
      [
        '--no-defaults',
        `--datadir=${data}`,
        `--port=${port}`,
        '--bind-address=127.0.0.1',
        `--socket=${join(dir, 'mariadb.sock')}`,
        `--pid-file=${join(dir, 'mariadb.pid')}`,
        '--user=mysql',
        '--skip-grant-tables',
        '--innodb-flush-log-at-trx-commit=1',
        '--character-set-server=utf8mb4',
        '--collation-server=utf8mb4_general_ci',
      ],
      { stdio: 'ignore' },
    )
    started.add(server)
    await answering('the private MariaDB', server, port, 60_000)
  }
  const crash = async () => {
    const pid = server?.pid
    if (pid === undefined) return
    kill(pid)
    await until('the crashed MariaDB did not exit', () => !alive(pid), 10_000)
    server = undefined
  }
  await start()
  return {
    url: `mysql://root@127.0.0.1:${port}/mysql`,
    port,
    crash,
    start,
    async close() {
      await crash().catch(() => {})
      rmSync(dir, { recursive: true, force: true })
    },
  }
}

/** A single Kafka broker of the test's own (scripts/kafka), which a test can SIGKILL and restart. */
export interface PrivateBroker {
  /** Its bootstrap address, `127.0.0.1:<port>`. */
  readonly brokers: string[]
  readonly port: number
  /** SIGKILLs the broker: no shutdown, no flush beyond what the OS holds. */
  crash(): Promise<void>
  /** Starts it again on its data (log recovery after a crash) and waits until it serves clients. */
  start(): Promise<void>
  /** Stops it and removes its data. */
  close(): Promise<void>
}

/** Runs scripts/kafka without blocking the event loop (the test's clients keep running meanwhile). */
function kafkaScriptAsync(args: string[], env: Record<string, string>): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', [join(import.meta.dir, '../../scripts/kafka'), ...args], {
      env: { ...process.env, KAFKA_BROKERS: '', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let output = ''
    child.stdout.on('data', (chunk: Buffer) => {
      output += chunk.toString()
    })
    child.stderr.on('data', (chunk: Buffer) => {
      output += chunk.toString()
    })
    child.once('error', reject)
    child.once('close', (code) =>
      code === 0 ? resolve(output) : reject(new Error(`scripts/kafka ${args.join(' ')} failed:\n${output}`)),
    )
  })
}

/** A port whose next one (the broker's controller port) is free too. */
async function freePortPair(): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const port = await freePort()
    if (port >= 65_535) continue
    const next = await new Promise<boolean>((resolve) => {
      const server = createServer()
      server.once('error', () => resolve(false))
      server.listen(port + 1, '127.0.0.1', () => server.close(() => resolve(true)))
    })
    if (next) return port
  }
  throw new Error('[outboxkit tests] no two consecutive free ports for a private broker')
}

/** Brokers started by this process, SIGKILLed when it exits. */
const brokerPids = new Set<string>()
process.once('exit', () => {
  for (const pidFile of brokerPids) {
    try {
      kill(Number(readFileSync(pidFile, 'utf8').trim()))
    } catch {
      // Not running.
    }
  }
})

export async function startPrivateKafka(): Promise<PrivateBroker> {
  const port = await freePortPair()
  // Its own TMPDIR: the broker's data, logs and lock live there and nowhere else.
  const dir = mkdtempSync(join(tmpdir(), 'outboxkit-broker-'))
  const env = { KAFKA_PORT: String(port), TMPDIR: dir }
  const pidFile = join(dir, `outboxkit-kafka-${port}`, 'node-1', 'kafka.pid')
  brokerPids.add(pidFile)
  await kafkaScriptAsync(['start'], env)
  // After a crash the restarted controller holds the dead incarnation's registration until its
  // session times out (9 s by default), refusing the new one meanwhile: shorter, for the next starts.
  appendFileSync(
    join(dirname(pidFile), 'server.properties'),
    'broker.session.timeout.ms=1500\nbroker.heartbeat.interval.ms=500\n',
  )
  const pid = () => {
    try {
      return Number(readFileSync(pidFile, 'utf8').trim())
    } catch {
      return undefined
    }
  }
  const crash = async () => {
    const running = pid()
    if (running === undefined) return
    kill(running)
    await until('the crashed broker did not exit', () => !alive(running), 10_000)
    rmSync(pidFile, { force: true })
  }
  return {
    brokers: [`127.0.0.1:${port}`],
    port,
    crash,
    async start() {
      await kafkaScriptAsync(['restart-node', '1'], env)
    },
    async close() {
      await crash().catch(() => {})
      brokerPids.delete(pidFile)
      rmSync(dir, { recursive: true, force: true })
    },
  }
}
