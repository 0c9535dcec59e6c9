/**
 * The core bundles for platforms that have no Node: esbuild bundles src/index.ts for the browser
 * and for a neutral platform with nothing marked external, so any import of a `node:` module, a
 * Node built-in or a driver would fail the build or show up in the output.
 */
import { describe, expect, test } from 'bun:test'
import { join } from 'node:path'
import { build, type Platform } from 'esbuild'

const ENTRY = join(import.meta.dir, '../../src/index.ts')
const ROOT = join(import.meta.dir, '../..')

async function bundleCore(platform: Platform) {
  const result = await build({
    entryPoints: [ENTRY],
    absWorkingDir: ROOT,
    bundle: true,
    write: false,
    format: 'esm',
    platform,
    target: 'es2022',
    metafile: true,
    logLevel: 'silent',
  })
  const code = result.outputFiles.map((file) => file.text).join('\n')
  return { result, code, inputs: Object.keys(result.metafile.inputs) }
}

describe('src/core bundles without Node', () => {
  test.each(['browser', 'neutral'] as const)(
    'bundles for the %s platform with no externals',
    async (platform) => {
      const { result, code, inputs } = await bundleCore(platform)
      expect(result.errors).toEqual([])
      expect(code.length).toBeGreaterThan(1_000)
      // Nothing outside the core (and the entry that re-exports it) is pulled in.
      expect(inputs.filter((file) => !file.startsWith('src/core/') && file !== 'src/index.ts')).toEqual([])
      // No import or require of a node: module or Node built-in survives in the output.
      expect(code).not.toMatch(/\bfrom\s*["']node:|\bimport\s*\(\s*["']node:|\brequire\s*\(/)
      expect(code).not.toMatch(/["']node:[a-z_/]+["']/)
      // The public surface is all there.
      for (const name of ['Outbox', 'Relay', 'IdempotentConsumer', 'OutboxKitError', 'uuidv7']) {
        expect(code).toContain(name)
      }
    },
  )
})
