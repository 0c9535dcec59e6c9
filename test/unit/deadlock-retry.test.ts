import { expect, test } from 'bun:test'
import { retryOnDeadlock } from '../../src/adapters/kysely/database-errors.js'

const failing = (code: string, times: number) => {
  let calls = 0
  return {
    run: async () => {
      calls++
      if (calls <= times) throw Object.assign(new Error(code), { code })
      return 'done'
    },
    calls: () => calls,
  }
}

test('a transaction rolled back by a deadlock runs again, up to three more times', async () => {
  for (const code of ['40P01', 'ER_LOCK_DEADLOCK']) {
    const twice = failing(code, 2)
    expect(await retryOnDeadlock(twice.run)).toBe('done')
    expect(twice.calls()).toBe(3)
    const always = failing(code, 10)
    expect(await retryOnDeadlock(always.run).catch((e: Error) => e.message)).toBe(code)
    expect(always.calls()).toBe(4)
  }
})

test('any other error is thrown at once', async () => {
  const timeout = failing('ER_LOCK_WAIT_TIMEOUT', 1)
  expect(await retryOnDeadlock(timeout.run).catch((e: Error) => e.message)).toBe('ER_LOCK_WAIT_TIMEOUT')
  expect(timeout.calls()).toBe(1)
})
