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

/** A running `outboxkit relay --json`: its process, the event lines it printed so far, its end. */
export interface RelayCommand {
  readonly child: ReturnType<typeof spawn>
  readonly events: { event: string; [field: string]: unknown }[]
  readonly closed: Promise<number | null>
  /** Waits (up to 30 s) until the command printed `event`. */
  until(event: string): Promise<void>
  stderr(): string
}

/** Starts `outboxkit relay --json ...args` and collects its event lines. */
export function startRelayCommand(
  args: readonly string[],
  env: Record<string, string | undefined> = {},
): RelayCommand {
  const child = startCli(['relay', '--json', ...args], env)
  const events: RelayCommand['events'] = []
  let buffer = ''
  let stderr = ''
  child.stdout!.on('data', (d) => {
    buffer += d
    const lines = buffer.split('\n')
    buffer = lines.pop() ?? ''
    for (const line of lines) if (line) events.push(JSON.parse(line))
  })
  child.stderr!.on('data', (d) => (stderr += d))
  const closed = new Promise<number | null>((resolve) => child.on('close', resolve))
  const until = async (event: string) => {
    for (let i = 0; i < 600 && !events.some((e) => e.event === event); i++) {
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
    if (!events.some((e) => e.event === event)) throw new Error(`no ${event} event; stderr: ${stderr}`)
  }
  return { child, events, closed, until, stderr: () => stderr }
}
