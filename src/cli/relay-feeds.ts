/**
 * The change feeds `outboxkit relay` tails in its log mode (`--slot`, `--server-id`): its own
 * bundle (dist/cli-relay-feeds.js), loaded only then, so that the polling relay needs neither
 * pg-logical-replication nor @vlasky/zongji.
 */

import type { OutboxLayout } from '../adapters/kysely/schema.js'
import { createMysqlChangeFeed } from '../adapters/mysql-binlog/mysql-change-feed.js'
import { createPostgresChangeFeed } from '../adapters/postgres-log/postgres-change-feed.js'
import type { ChangeFeed } from '../core/change-feed.js'

/** What the command knows of the feed to read. */
export interface FeedRequest {
  readonly url: string
  readonly schema: string
  readonly outboxTable: string
  readonly layout: OutboxLayout
  /** Postgres: the slot, the publication (default: the slot's name), the table-less prefix. */
  readonly slot?: string
  readonly publication?: string
  readonly messagePrefix?: string
  /** MySQL/MariaDB: the replica server id, the feed name, where a first open starts. */
  readonly serverId?: number
  readonly feedName?: string
  readonly firstOpen?: 'pending-rows' | 'log-end'
}

export function createFeed(request: FeedRequest): ChangeFeed {
  if (request.slot !== undefined) {
    return createPostgresChangeFeed({
      connectionString: request.url,
      slot: request.slot,
      publication: request.publication ?? request.slot,
      schema: request.schema,
      outboxTable: request.outboxTable,
      layout: request.layout,
      ...(request.messagePrefix === undefined ? {} : { messagePrefix: request.messagePrefix, table: false }),
    })
  }
  return createMysqlChangeFeed({
    connection: request.url,
    schema: request.schema,
    outboxTable: request.outboxTable,
    layout: request.layout,
    serverId: request.serverId!,
    ...(request.feedName === undefined ? {} : { feedName: request.feedName }),
    ...(request.firstOpen === undefined ? {} : { firstOpen: request.firstOpen }),
  })
}
