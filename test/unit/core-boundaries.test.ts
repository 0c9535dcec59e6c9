/**
 * src/core must run unchanged on Node, Bun, Deno and edge runtimes: no `node:` modules, no
 * drivers, no Node globals. This test keeps it that way.
 */
import { describe, expect, test } from 'bun:test'
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'

const CORE = join(import.meta.dir, '../../src/core')
const FORBIDDEN_IMPORTS =
  /from\s+['"](node:[^'"]+|fs|path|crypto|buffer|events|kysely|kafkajs|pg|postgres|mysql2|@electric-sql\/pglite|@opentelemetry\/[^'"]+)['"]/
// Uses of Node globals (`process.env`, `Buffer.from`, `require(...)`), not methods that share a name.
const FORBIDDEN_GLOBALS = /(?<![.\w])(Buffer\s*[.(]|process\s*\.|require\s*\(|__dirname|setImmediate\s*\()/

function coreFiles(): string[] {
  return readdirSync(CORE, { recursive: true })
    .map(String)
    .filter((f) => f.endsWith('.ts'))
}

describe('src/core boundaries', () => {
  test('src/core has files to check', () => {
    expect(coreFiles().length).toBeGreaterThan(3)
  })

  test.each(coreFiles())('%s imports no node: module or driver and uses no Node global', (file) => {
    const source = readFileSync(join(CORE, file), 'utf8')
    const code = source.replace(/\/\*[\s\S]*?\*\//g, '').replace(/\/\/.*$/gm, '')
    expect(code).not.toMatch(FORBIDDEN_IMPORTS)
    expect(code).not.toMatch(FORBIDDEN_GLOBALS)
    // Relative imports carry the .js extension so the emitted ESM resolves on every runtime.
    for (const match of code.matchAll(/from\s+['"](\.[^'"]+)['"]/g)) expect(match[1]).toEndWith('.js')
  })
})

// The NATS adapter is written as a third party would write it: only outboxkit's public entry
// points ('outboxkit' is src/index.ts, 'outboxkit/testing' is src/testing/index.ts), its own files
// and the NATS client.
const NATS = join(import.meta.dir, '../../src/adapters/nats')
const NATS_ALLOWED =
  /^(\.\.\/\.\.\/index\.js|\.\.\/\.\.\/testing\/index\.js|\.\/[\w-]+\.js|@nats-io\/(transport-node|jetstream))$/

describe('src/adapters/nats boundaries', () => {
  const files = readdirSync(NATS).filter((f) => f.endsWith('.ts'))
  test('src/adapters/nats has files to check', () => {
    expect(files.length).toBeGreaterThan(1)
  })
  test.each(files)('%s imports only outboxkit public entry points and the NATS client', (file) => {
    const code = readFileSync(join(NATS, file), 'utf8')
    const imports = [...code.matchAll(/(?:from|import)\s+['"]([^'"]+)['"]/g)].map((m) => m[1]!)
    expect(imports.length).toBeGreaterThan(0)
    for (const specifier of imports)
      expect([file, specifier, NATS_ALLOWED.test(specifier)]).toEqual([file, specifier, true])
  })
})
