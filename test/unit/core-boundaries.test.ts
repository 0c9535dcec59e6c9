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
