/**
 * A missing optional peer dependency ends in a typed DRIVER_MISSING error that names the package
 * and the command that installs it; any other load failure stays what it is.
 */
import { describe, expect, test } from 'bun:test'
import { spawnSync } from 'node:child_process'
import { loadMysql2, loadZongJi } from '../../src/adapters/mysql-binlog/mysql-change-feed.js'
import { ErrorCode, isModuleNotFound, isOutboxKitError, loadDriver } from '../../src/index.js'

const MISSING = 'outboxkit-no-such-driver'

async function failure(work: () => Promise<unknown>): Promise<unknown> {
  try {
    await work()
  } catch (error) {
    return error
  }
  throw new Error('expected a failure')
}

/** What Node itself throws for a package that is not installed, by import and by require. */
function nodeErrors(name: string): { code: string; message: string }[] {
  const script = `
    const shape = (e) => ({ code: e.code, message: e.message })
    const out = []
    import(${JSON.stringify(name)}).catch((e) => out.push(shape(e))).then(() => {
      try { require(${JSON.stringify(name)}) } catch (e) { out.push(shape(e)) }
      console.log(JSON.stringify(out))
    })`
  const run = spawnSync('node', ['-e', script], { cwd: '/tmp', encoding: 'utf8' })
  return JSON.parse(run.stdout)
}

describe('missing optional peer dependencies', () => {
  test('a package that is not installed: DRIVER_MISSING with the package and the npm install command', async () => {
    const name: string = MISSING
    const error = await failure(() => loadDriver(name, 'The test adapter', () => import(name)))
    expect(isOutboxKitError(error, ErrorCode.DriverMissing)).toBe(true)
    const typed = error as { message: string; details: unknown; cause: unknown }
    expect(typed.message).toBe(
      `[outboxkit] The test adapter needs the ${MISSING} package, which is not installed: npm install ${MISSING}`,
    )
    expect(typed.details).toEqual({ package: MISSING, install: `npm install ${MISSING}` })
    expect(typed.cause).toBeInstanceOf(Error)
  })

  test("Node's own errors for a missing package (import and require) are recognised, for that package only", () => {
    const errors = nodeErrors(MISSING)
    expect(errors.map((e) => e.code)).toEqual(['ERR_MODULE_NOT_FOUND', 'MODULE_NOT_FOUND'])
    for (const shape of errors) {
      const error = Object.assign(new Error(shape.message), { code: shape.code })
      expect(isModuleNotFound(error, MISSING)).toBe(true)
      // A dependency of the driver that is missing is not the driver missing.
      expect(isModuleNotFound(error, 'kafkajs')).toBe(false)
    }
  })

  test('a driver that is installed but fails to load is thrown as it is', async () => {
    const broken = new Error('SyntaxError in the driver')
    expect(
      await failure(() => loadDriver('kafkajs', 'The Kafka transport', () => Promise.reject(broken))),
    ).toBe(broken)
  })

  test('the binlog feed without @vlasky/zongji or mysql2 says which to install', async () => {
    const notFound = (name: string) =>
      Object.assign(
        new Error(
          `Cannot find package '${name}' imported from /app/node_modules/outboxkit/dist/mysql-binlog.js`,
        ),
        {
          code: 'ERR_MODULE_NOT_FOUND',
        },
      )
    const zongji = await failure(() => loadZongJi(() => Promise.reject(notFound('@vlasky/zongji'))))
    expect(isOutboxKitError(zongji, ErrorCode.DriverMissing)).toBe(true)
    expect((zongji as Error).message).toContain('npm install @vlasky/zongji mysql2')
    expect((zongji as { source?: string }).source).toBe('mysql-binlog')
    const mysql2 = await failure(() => loadMysql2(() => Promise.reject(notFound('mysql2/promise'))))
    expect(isOutboxKitError(mysql2, ErrorCode.DriverMissing)).toBe(true)
    expect((mysql2 as { details: unknown }).details).toEqual({
      package: 'mysql2',
      install: 'npm install mysql2',
    })
  })
})
