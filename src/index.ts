/**
 * outboxkit: the storage-agnostic core. Adapters live in subpath exports:
 * `outboxkit/kysely`, `outboxkit/memory`, `outboxkit/testing`.
 */
export * from './core/index.js'
