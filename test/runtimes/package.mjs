/**
 * The package as users get it: `npm pack`, then publint and Are the Types Wrong on the tarball,
 * then scratch projects that install the tarball and import every subpath under Node ESM, Node
 * CJS, Bun and Deno, and show that `outboxkit` alone loads no driver or peer.
 *
 *   node test/runtimes/package.mjs
 *
 * Needs `npm run build` first; no service. Ends with `result: N passed, N failed`.
 */
import { spawnSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import process from 'node:process'
import { fileURLToPath } from 'node:url'
import { Checks } from './scenario.mjs'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const BIN = join(ROOT, 'node_modules/.bin')
const manifest = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'))
// The peers the subpaths import when loaded, at the versions the repository tests with.
const PEERS = [
  'kysely',
  'kafkajs',
  '@opentelemetry/api',
  '@nats-io/transport-node',
  '@nats-io/jetstream',
].map((name) => `${name}@${manifest.devDependencies[name]}`)

/** What each subpath must export (a sample of its public functions and classes). */
const SUBPATHS = {
  outboxkit: ['Outbox', 'Relay', 'IdempotentConsumer', 'OutboxKitError', 'uuidv7'],
  'outboxkit/kysely': [
    'createKyselyOutboxStore',
    'createKyselyInboxStore',
    'ensureOutboxSchema',
    'PGliteDialect',
  ],
  'outboxkit/kafka': ['createKafkaTransport', 'KafkaTransport'],
  'outboxkit/kafka-consumer': ['createKafkaConsumerRunner', 'KafkaConsumerRunner'],
  'outboxkit/memory': ['MemoryDatabase', 'MemoryOutboxStore', 'MemoryTransport'],
  // Loads neither @vlasky/zongji nor mysql2 until a feed opens.
  'outboxkit/mysql-binlog': ['createMysqlChangeFeed', 'MysqlChangeFeed', 'feedPositionTableSql'],
  'outboxkit/nats': [
    'createNatsTransport',
    'NatsTransport',
    'createNatsConsumerRunner',
    'NatsConsumerRunner',
  ],
  'outboxkit/otel': ['otelTraceCapture', 'otelRelayInstrumentation', 'otelConsumerInstrumentation'],
  'outboxkit/process': ['runUntilSignal', 'Lifecycle', 'serveHealth'],
  'outboxkit/testing': ['outboxStoreSuite', 'inboxStoreSuite', 'transportSuite', 'drain'],
}
const DRIVERS =
  /\/node_modules\/(kysely|kysely-postgres-js|kafkajs|pg|postgres|mysql2|@electric-sql|@opentelemetry|@nats-io)\//

const checks = new Checks()
const work = mkdtempSync(join(tmpdir(), 'outboxkit-package-'))

function run(command, args, cwd, extra = {}) {
  const result = spawnSync(command, args, { cwd, encoding: 'utf8', timeout: 120_000, ...extra })
  const output = `${result.stdout ?? ''}${result.stderr ?? ''}`.trim()
  return { ok: result.status === 0, output: result.error ? String(result.error) : output }
}

/** Runs a command as one check; prints its output when it fails. */
function checkRun(name, command, args, cwd) {
  const result = run(command, args, cwd)
  checks.check(name, result.ok, result.output.split('\n').slice(-30).join('\n'))
  return result
}

// Files for the scratch projects: each prints `ok` after asserting every export it expects.
const assertExports = `
function assertExports(specifier, module, names) {
  for (const name of names) {
    if (typeof module[name] !== 'function') throw new Error(specifier + ' has no export ' + name)
  }
}`
const FIXTURES = {
  'all.mjs': `${assertExports}
const subpaths = ${JSON.stringify(SUBPATHS)}
for (const [specifier, names] of Object.entries(subpaths)) assertExports(specifier, await import(specifier), names)
console.log('ok')
`,
  'all.cjs': `${assertExports}
const subpaths = ${JSON.stringify(SUBPATHS)}
for (const [specifier, names] of Object.entries(subpaths)) assertExports(specifier, require(specifier), names)
console.log('ok')
`,
  // Every module Node resolves, reported by a loader hook (hooks run on their own thread in Node 20).
  'loads-hooks.mjs': `
let port
export async function initialize(data) { port = data.port }
export async function resolve(specifier, context, next) {
  const result = await next(specifier, context)
  port.postMessage(result.url)
  return result
}`,
  'loads-register.mjs': `
import { register } from 'node:module'
import { MessageChannel } from 'node:worker_threads'
const { port1, port2 } = new MessageChannel()
globalThis.resolvedUrls = []
port1.on('message', (url) => globalThis.resolvedUrls.push(url))
port1.unref()
register('./loads-hooks.mjs', { parentURL: import.meta.url, data: { port: port2 }, transferList: [port2] })
`,
  'core-only.mjs': `
const drivers = ${DRIVERS}
const settle = () => new Promise((resolve) => setTimeout(resolve, 200))
const core = await import('outboxkit')
if (typeof core.Outbox !== 'function') throw new Error('no Outbox')
await settle()
const seen = globalThis.resolvedUrls.filter((url) => !url.endsWith('/core-only.mjs'))
if (!seen.some((url) => url.endsWith('/node_modules/outboxkit/dist/index.js'))) {
  throw new Error('the loader hook saw no outboxkit module: ' + JSON.stringify(seen))
}
const foreign = seen.filter((url) => !url.includes('/node_modules/outboxkit/dist/'))
if (foreign.length > 0) throw new Error('importing outboxkit loaded ' + JSON.stringify(foreign))
// The hook does see a driver when one is loaded.
await import('outboxkit/kysely')
await settle()
if (!globalThis.resolvedUrls.some((url) => drivers.test(url))) throw new Error('the loader hook missed kysely')
console.log('ok')
`,
  'core-only.cjs': `
const before = new Set(Object.keys(require.cache))
const core = require('outboxkit')
if (typeof core.Outbox !== 'function') throw new Error('no Outbox')
const loaded = Object.keys(require.cache).filter((file) => !before.has(file))
if (!loaded.some((file) => file.endsWith('/node_modules/outboxkit/dist/index.cjs'))) {
  throw new Error('require.cache shows no outboxkit module: ' + JSON.stringify(loaded))
}
const foreign = loaded.filter((file) => !file.includes('/node_modules/outboxkit/dist/'))
if (foreign.length > 0) throw new Error('requiring outboxkit loaded ' + JSON.stringify(foreign))
console.log('ok')
`,
  // Run where no peer is installed: the core must load, a subpath that needs a peer must not.
  'no-peers.mjs': `
const core = await import('outboxkit')
if (typeof core.Outbox !== 'function') throw new Error('no Outbox')
const failed = await import('outboxkit/kafka').then(() => false, () => true)
if (!failed) throw new Error('outboxkit/kafka loaded without kafkajs installed')
console.log('ok')
`,
  'no-peers.cjs': `
const core = require('outboxkit')
if (typeof core.Outbox !== 'function') throw new Error('no Outbox')
let failed = false
try { require('outboxkit/kafka') } catch { failed = true }
if (!failed) throw new Error('outboxkit/kafka loaded without kafkajs installed')
console.log('ok')
`,
}

function scratchProject(name, tarball, peers) {
  const packages = [tarball, ...peers]
  const dir = join(work, name)
  mkdirSync(dir)
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: `scratch-${name}`, private: true }))
  for (const [file, text] of Object.entries(FIXTURES)) writeFileSync(join(dir, file), text)
  const installed = run(
    'npm',
    ['install', '--no-audit', '--no-fund', '--prefer-offline', '--no-package-lock', ...packages],
    dir,
  )
  checks.check(
    `npm installs the tarball${peers.length ? ` with ${peers.join(', ')}` : ' alone'} into a scratch project`,
    installed.ok,
    installed.output,
  )
  return dir
}

const node = process.execPath
const bun = join(BIN, 'bun')
const deno = join(BIN, 'deno')
const DENO_RUN = ['run', '--no-lock', '--allow-read', '--allow-env', '--allow-sys']

try {
  const packed = run('npm', ['pack', '--json', '--pack-destination', work], ROOT)
  const tarball = packed.ok
    ? join(work, JSON.parse(packed.output.slice(packed.output.indexOf('[')))[0].filename)
    : ''
  checks.check('npm pack makes a tarball', packed.ok, packed.output)
  if (!packed.ok) throw new Error('no tarball')

  checkRun(
    'publint (strict) finds nothing in the tarball',
    join(BIN, 'publint'),
    ['run', '--strict', tarball],
    ROOT,
  )
  checkRun(
    'Are the Types Wrong finds nothing in the tarball (node10, node16 CJS and ESM, bundler)',
    join(BIN, 'attw'),
    [tarball, '--format', 'ascii'],
    ROOT,
  )

  const app = scratchProject('app', tarball, PEERS)
  checkRun('Node ESM imports every subpath', node, ['all.mjs'], app)
  checkRun('Node CJS requires every subpath', node, ['all.cjs'], app)
  checkRun('Bun imports every subpath', bun, ['all.mjs'], app)
  checkRun('Bun requires every subpath', bun, ['all.cjs'], app)
  checkRun('Deno imports every subpath', deno, [...DENO_RUN, 'all.mjs'], app)
  checkRun(
    'Node ESM: importing outboxkit resolves only outboxkit modules (loader hook)',
    node,
    ['--import', './loads-register.mjs', 'core-only.mjs'],
    app,
  )
  checkRun(
    'Node CJS: requiring outboxkit loads only outboxkit modules (require.cache)',
    node,
    ['core-only.cjs'],
    app,
  )

  checkRun(
    'the installed outboxkit command prints its help',
    join(app, 'node_modules/.bin/outboxkit'),
    ['--help'],
    app,
  )

  const bare = scratchProject('no-peers', tarball, [])
  checkRun('without any peer installed, Node ESM imports outboxkit', node, ['no-peers.mjs'], bare)
  checkRun('without any peer installed, Node CJS requires outboxkit', node, ['no-peers.cjs'], bare)
  checkRun('without any peer installed, Bun imports outboxkit', bun, ['no-peers.mjs'], bare)
  checkRun('without any peer installed, Deno imports outboxkit', deno, [...DENO_RUN, 'no-peers.mjs'], bare)
  const noKysely = spawnSync(join(bare, 'node_modules/.bin/outboxkit'), ['status'], {
    cwd: bare,
    encoding: 'utf8',
  })
  checks.check(
    'without Kysely installed, the outboxkit command exits 2 and says what to install',
    noKysely.status === 2 && noKysely.stderr.includes('npm install kysely'),
    `exit ${noKysely.status}: ${noKysely.stderr}`,
  )
} catch (error) {
  checks.crash(error)
} finally {
  rmSync(work, { recursive: true, force: true })
}
process.exit(checks.finish())
