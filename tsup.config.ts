import { defineConfig, type Options } from 'tsup'

/** One entry per subpath export; package.json "exports" lists the same names. */
export const entries = {
  index: 'src/index.ts',
  kafka: 'src/adapters/kafka/index.ts',
  'kafka-consumer': 'src/consumers/index.ts',
  kysely: 'src/adapters/kysely/index.ts',
  memory: 'src/adapters/memory/index.ts',
  'mysql-binlog': 'src/adapters/mysql-binlog/index.ts',
  nats: 'src/adapters/nats/index.ts',
  otel: 'src/otel/index.ts',
  'postgres-log': 'src/adapters/postgres-log/index.ts',
  process: 'src/process/index.ts',
  testing: 'src/testing/index.ts',
}

/**
 * The `outboxkit` command (package.json "bin"): Node only, ESM. `cli.js` imports nothing but
 * Node and loads `cli-program.js` once it has found Kysely; `relay` alone loads `cli-relay.js`
 * (and kafkajs), and its log mode `cli-relay-feeds.js` (and the replication client). No export
 * imports any of them.
 */
export const cliConfig: Options = {
  entry: {
    cli: 'src/cli/main.ts',
    'cli-program': 'src/cli/program.ts',
    'cli-relay': 'src/cli/relay.ts',
    'cli-relay-feeds': 'src/cli/relay-feeds.ts',
  },
  format: ['esm'],
  dts: false,
  sourcemap: true,
  clean: false,
  splitting: false,
  target: 'node20',
  platform: 'node',
  external: [
    /^kysely/,
    'kafkajs',
    'pg',
    'postgres',
    'mysql2',
    'commander',
    'cli-progress',
    'pg-logical-replication',
    '@vlasky/zongji',
    './cli-program.js',
    './cli-relay.js',
    './cli-relay-feeds.js',
  ],
}

export default defineConfig([
  {
    entry: entries,
    format: ['esm', 'cjs'],
    dts: true,
    sourcemap: true,
    // The command's bundle, built by the config below, stays.
    clean: [
      '!cli.js',
      '!cli.js.map',
      '!cli-program.js',
      '!cli-program.js.map',
      '!cli-relay.js',
      '!cli-relay.js.map',
      '!cli-relay-feeds.js',
      '!cli-relay-feeds.js.map',
    ],
    splitting: true,
    treeshake: true,
    target: 'es2022',
    platform: 'neutral',
    // Drivers and peers are never bundled: users install the ones they use.
    external: [
      /^kysely/,
      'kafkajs',
      'pg',
      'pg-logical-replication',
      'postgres',
      /^mysql2/,
      /^@vlasky\//,
      /^@electric-sql\//,
      /^@opentelemetry\//,
      /^@nats-io\//,
    ],
  },
  cliConfig,
])
