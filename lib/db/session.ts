// A connection of its own for what needs a database session (LISTEN): never through a pooler.
import pg from 'pg';
import type { Config } from '../config.ts';
import type { Logger } from '../log.ts';
import { connectionConfig } from './database.ts';

/**
 * Connects a pg.Client to DATABASE_SESSION_URL, or to DATABASE_URL when that is unset and reaches
 * PostgreSQL directly. Behind a transaction-mode pooler LISTEN silently receives nothing (the
 * pooler drops notifications), so DB_POOLER=transaction without a session URL is refused here.
 * The caller ends the client; its errors are logged, so a dying backend cannot crash the process.
 */
export async function createSessionClient(config: Config, log: Logger): Promise<pg.Client> {
  const { databaseSessionUrl, databaseUrl } = config.secrets;
  if (databaseUrl === undefined) throw new Error('A database session needs DATABASE_URL (not the embedded database)');
  if (databaseSessionUrl === undefined && config.database.pooler === 'transaction') {
    throw new Error('DB_POOLER=transaction: set DATABASE_SESSION_URL to a direct URL for database sessions');
  }
  const options = connectionConfig(config, databaseSessionUrl ?? databaseUrl, true);
  const Client = (options.Client ?? pg.Client) as typeof pg.Client;
  const client = new Client(options);
  client.on('error', (err) => log.warn('database session failed', { err }));
  try {
    await client.connect();
  } catch (err) {
    await client.end().catch(() => {});
    throw err;
  }
  return client;
}
