/** What the figures were measured on. */
import { execFileSync } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import os from 'node:os'
import { serverVersion } from './db.js'

export interface Machine {
  readonly cpus: number
  readonly cpuModel: string
  readonly memoryGiB: number
  readonly os: string
  readonly node: string
  readonly bun: string
  readonly kafka: string
  readonly postgres: string
  readonly mariadb: string
  readonly kafkajs: string
}

function nodeVersion(): string {
  try {
    return execFileSync('node', ['--version'], { encoding: 'utf8' }).trim()
  } catch {
    return 'not found'
  }
}

/**
 * The version of the broker the suite talks to. Kafka's protocol does not report it, so this reads
 * the command line of a local broker process (its classpath names the release), then
 * KAFKA_VERSION, the version `scripts/kafka` starts by default.
 */
function kafkaVersion(): string {
  try {
    for (const pid of readdirSync('/proc')) {
      if (!/^\d+$/.test(pid)) continue
      let cmdline: string
      try {
        cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8')
      } catch {
        continue
      }
      if (!cmdline.includes('kafka.Kafka')) continue
      const match = /kafka[-_](?:2\.\d+-)?(\d+\.\d+\.\d+)/.exec(cmdline)
      if (match) return match[1]!
    }
  } catch {
    // Not Linux: fall through.
  }
  return process.env['KAFKA_VERSION'] ? `${process.env['KAFKA_VERSION']} (KAFKA_VERSION)` : 'unknown'
}

function packageVersion(name: string): string {
  try {
    const json = JSON.parse(
      readFileSync(new URL(`../../node_modules/${name}/package.json`, import.meta.url), 'utf8'),
    )
    return String((json as { version?: unknown }).version ?? 'unknown')
  } catch {
    return 'unknown'
  }
}

export async function describeMachine(): Promise<Machine> {
  const cpus = os.cpus()
  return {
    cpus: cpus.length,
    cpuModel: cpus[0]?.model.trim() ?? 'unknown',
    memoryGiB: Math.round((os.totalmem() / 1024 ** 3) * 10) / 10,
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    node: nodeVersion(),
    bun: typeof Bun === 'undefined' ? 'not running on Bun' : Bun.version,
    kafka: kafkaVersion(),
    postgres: await serverVersion('postgres.js').catch((e: unknown) => `unreachable (${String(e)})`),
    mariadb: await serverVersion('mariadb').catch((e: unknown) => `unreachable (${String(e)})`),
    kafkajs: packageVersion('kafkajs'),
  }
}

export function loadAverage(): [number, number, number] {
  const [one, five, fifteen] = os.loadavg()
  return [one ?? 0, five ?? 0, fifteen ?? 0]
}
