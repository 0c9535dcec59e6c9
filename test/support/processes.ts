/** Child processes for tests that kill things: relay workers and the test broker. */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process'
import { join } from 'node:path'

const ROOT = join(import.meta.dir, '../..')

export interface Worker {
  readonly process: ChildProcess
  /** Everything the worker printed so far. */
  output(): string
  kill(signal: NodeJS.Signals): Promise<void>
}

/** Starts `test/fixtures/<name>.ts` under the same runtime, with extra environment. */
export async function startWorker(name: string, env: Record<string, string>): Promise<Worker> {
  const child = spawn(process.execPath, [join(ROOT, 'test/fixtures', `${name}.ts`)], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  child.stdout!.on('data', (chunk) => (out += chunk))
  child.stderr!.on('data', (chunk) => (out += chunk))
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  const deadline = Date.now() + 30_000
  while (!out.includes('ready')) {
    if (child.exitCode !== null || Date.now() > deadline)
      throw new Error(`worker ${name} did not start:\n${out}`)
    await new Promise((r) => setTimeout(r, 20))
  }
  return {
    process: child,
    output: () => out,
    async kill(signal) {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal)
      await exited
    },
  }
}

/** Runs `scripts/kafka` with arguments; throws with its output if it fails. */
export function kafkaScript(args: string[], env: Record<string, string> = {}): string {
  const result = spawnSync('bash', [join(ROOT, 'scripts/kafka'), ...args], {
    env: { ...process.env, KAFKA_BROKERS: '', ...env },
    encoding: 'utf8',
    timeout: 180_000,
  })
  const output = `${result.stdout}${result.stderr}`
  if (result.status !== 0) throw new Error(`scripts/kafka ${args.join(' ')} failed:\n${output}`)
  return output
}
