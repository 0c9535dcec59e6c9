/**
 * Runs the built `outboxkit` command (dist/cli.js, built here with the package's own tsup
 * config for it) as a user runs it: `node dist/cli.js ...`, in its own process.
 */
import { spawn } from 'node:child_process'
import { join } from 'node:path'
import { build } from 'tsup'
import { cliConfig } from '../../tsup.config.js'

const ROOT = join(import.meta.dir, '../..')
export const CLI = join(ROOT, 'dist/cli.js')

let built: Promise<void> | undefined

/** Builds dist/cli.js once per test process. */
export function buildCli(): Promise<void> {
  built ??= build({ ...cliConfig, config: false, silent: true })
  return built
}

export interface CliRun {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

/** Runs the command to its end. `env` adds to (or, with undefined values, removes from) the environment. */
export function runCli(
  args: readonly string[],
  env: Record<string, string | undefined> = {},
): Promise<CliRun> {
  const merged: Record<string, string> = {}
  for (const [k, v] of Object.entries({ ...process.env, ...env })) if (v !== undefined) merged[k] = v
  return new Promise((resolve, reject) => {
    const child = spawn(process.env['OUTBOXKIT_NODE'] ?? 'node', [CLI, ...args], { cwd: ROOT, env: merged })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    child.on('error', reject)
    child.on('close', (code) => resolve({ code, stdout, stderr }))
  })
}

/** Starts the command and returns the process, for commands that run until a signal. */
export function startCli(args: readonly string[], env: Record<string, string | undefined> = {}) {
  const merged: Record<string, string> = {}
  for (const [k, v] of Object.entries({ ...process.env, ...env })) if (v !== undefined) merged[k] = v
  return spawn(process.env['OUTBOXKIT_NODE'] ?? 'node', [CLI, ...args], { cwd: ROOT, env: merged })
}
