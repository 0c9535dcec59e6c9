#!/usr/bin/env node
/**
 * The `outboxkit` command (package.json "bin", built to dist/cli.js). Nothing in the library
 * imports it, so its dependencies (commander, cli-progress) stay out of the library's import
 * graph. This entry imports nothing but Node: it checks that Kysely, which every command needs,
 * is installed, then loads the program (dist/cli-program.js).
 */
import { ExitCode } from './exit-codes.js'

/** The program's bundle, next to this one; a variable so the bundler leaves it a separate file. */
const PROGRAM = './cli-program.js'

async function run(): Promise<number> {
  try {
    await import('kysely')
  } catch {
    process.stderr.write(
      'outboxkit: the command needs Kysely and a database driver: npm install kysely (see docs/cli.md).\n',
    )
    return ExitCode.usage
  }
  const program = (await import(PROGRAM)) as { main(argv: readonly string[]): Promise<number> }
  return program.main(process.argv)
}

run().then(
  (code) => {
    process.exitCode = code
  },
  (error: unknown) => {
    process.stderr.write(`outboxkit: ${String(error)}\n`)
    process.exitCode = ExitCode.failed
  },
)
