import { ErrorCode, OutboxKitError } from './errors.js'

/**
 * Whether `error` is the runtime saying that package `name` cannot be found: Node's
 * `ERR_MODULE_NOT_FOUND` (import) and `MODULE_NOT_FOUND` (require), Bun's and Deno's messages.
 * Only for `name` itself: a package that is there but fails to load, or lacks one of its own
 * dependencies, is another error.
 */
export function isModuleNotFound(error: unknown, name: string): boolean {
  const code = (error as { code?: unknown } | null)?.code
  const message = error instanceof Error ? error.message : String(error)
  // The package itself or one of its subpaths (`mysql2/promise`), quoted as every runtime quotes it.
  const named = [`'${name}'`, `'${name}/`, `"${name}"`, `"${name}/`, `npm:${name}`].some((form) =>
    message.includes(form),
  )
  if (code === 'ERR_MODULE_NOT_FOUND' || code === 'MODULE_NOT_FOUND') return named
  return named && /cannot find (package|module)|module not found/i.test(message)
}

/** The error for a missing optional peer dependency: names it and the command that installs it. */
export function driverMissing(
  name: string,
  needs: string,
  options: { readonly install?: string; readonly source?: string; readonly cause?: unknown } = {},
): OutboxKitError {
  const install = `npm install ${options.install ?? name}`
  return new OutboxKitError(
    ErrorCode.DriverMissing,
    `${needs} needs the ${name} package, which is not installed: ${install}`,
    {
      details: { package: name, install },
      ...(options.source === undefined ? {} : { source: options.source }),
      ...(options.cause === undefined ? {} : { cause: options.cause }),
    },
  )
}

/**
 * Loads optional peer dependency `name` through `load` (a dynamic `import()` of it, the seam
 * tests replace). When the package is not installed, throws `DRIVER_MISSING` (see
 * {@link driverMissing}); any other failure is thrown as it is.
 */
export async function loadDriver<T>(
  name: string,
  needs: string,
  load: () => Promise<T>,
  options: { readonly install?: string; readonly source?: string } = {},
): Promise<T> {
  try {
    return await load()
  } catch (error) {
    if (!isModuleNotFound(error, name)) throw error
    throw driverMissing(name, needs, { ...options, cause: error })
  }
}
