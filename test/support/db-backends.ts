// The database engines the shared-store tests run on: PostgreSQL, PostgreSQL through PgBouncer in
// transaction mode, and embedded PGlite. Each opens a fresh, migrated database.
import { createPgConfig } from '@electric-sql/pglite/node-postgres';
import pg from 'pg';
import { migrate } from '../../lib/db/migrate.ts';
import { TEST_DATABASE_URL } from './config.ts';
import { scratchDatabase } from './database.ts';
import { PGBOUNCER_UNAVAILABLE, startPgBouncer } from './pgbouncer.ts';
import { openEmbeddedEngine } from './pglite-template.ts';

export interface Backend {
  /** Two pools standing for two server instances (PGlite: the same pool twice; it is one backend). */
  pools: [pg.Pool, pg.Pool];
  /** A pool straight to the database, for reading and ageing rows behind the stores' backs. */
  direct: pg.Pool;
  /** False behind the pooler, as the server sets it with DB_POOLER=transaction. */
  namedStatements: boolean;
  close(): Promise<void>;
}

export interface BackendKind {
  label: string;
  skip: string | false;
  open(): Promise<Backend>;
}

const NEEDS_POSTGRES = !TEST_DATABASE_URL && 'needs TEST_DATABASE_URL';

/** PostgreSQL, PostgreSQL through PgBouncer, and PGlite; skipped only where the engine is missing. */
export const BACKENDS: readonly BackendKind[] = [
  { label: 'PostgreSQL', skip: NEEDS_POSTGRES, open: () => openPostgres(false) },
  {
    label: 'PostgreSQL through PgBouncer',
    skip: NEEDS_POSTGRES || PGBOUNCER_UNAVAILABLE,
    open: () => openPostgres(true),
  },
  { label: 'PGlite', skip: false, open: openPglite },
];

function pool(url: string): pg.Pool {
  const p = new pg.Pool({ connectionString: url, max: 10 });
  p.on('error', () => {});
  return p;
}

async function openPostgres(throughPooler: boolean): Promise<Backend> {
  const scratch = await scratchDatabase(TEST_DATABASE_URL as string);
  const bouncer = throughPooler ? await startPgBouncer(TEST_DATABASE_URL as string) : undefined;
  const url = bouncer?.url(scratch.url) ?? scratch.url;
  const pools: [pg.Pool, pg.Pool] = [pool(url), pool(url)];
  const direct = pool(scratch.url);
  await migrate(pools[0]);
  return {
    pools,
    direct,
    namedStatements: !throughPooler,
    async close() {
      try {
        await Promise.allSettled([...pools, direct].map((p) => p.end()));
        await bouncer?.stop();
      } finally {
        await scratch.drop();
      }
    },
  };
}

async function openPglite(): Promise<Backend> {
  const db = await openEmbeddedEngine();
  const p = new pg.Pool(createPgConfig(db.engine) as pg.PoolConfig);
  await migrate(p);
  return {
    pools: [p, p],
    direct: p,
    namedStatements: true,
    async close() {
      await p.end();
      await db.close();
    },
  };
}
