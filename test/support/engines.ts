// The two engines the repository tests run the same tests on, and the fresh database each suite
// gets on its engine: embedded PGlite in a temporary DATA_DIR, or a scratch PostgreSQL database.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before } from 'node:test';
import { createDatabase, type Database } from '../../lib/db/database.ts';
import { createLogger } from '../../lib/log.ts';
import { TEST_DATABASE_URL, testConfig } from './config.ts';
import { scratchDatabase } from './database.ts';
import { seedEmbeddedDatabase } from './pglite-template.ts';

export interface Engine {
  label: string;
  /** The reason the engine is missing here, for describe()'s skip; false where it runs. */
  skip: string | false;
  /** True for PostgreSQL at TEST_DATABASE_URL, false for embedded PGlite. */
  external: boolean;
}

/** Embedded PGlite, always; PostgreSQL where TEST_DATABASE_URL names one. */
export const ENGINES: readonly Engine[] = [
  { label: 'embedded PGlite', skip: false, external: false },
  { label: 'PostgreSQL', skip: !TEST_DATABASE_URL && 'needs TEST_DATABASE_URL', external: true },
];

const log = createLogger({ level: 'silent' });

/**
 * Registers, in the calling describe(), a before() that opens an empty database of its own on
 * `engine` (a temporary DATA_DIR named after `dirPrefix`, plus a scratch database on PostgreSQL)
 * and an after() that closes, drops and removes it. Returns the suite's database: its fields
 * read the one before() opened, so they are usable from the suite's later hooks and its tests.
 */
export function engineDatabase(engine: Engine, dirPrefix: string): Database {
  let dir: string | undefined;
  let scratch: { url: string; drop(): Promise<void> } | undefined;
  let opened: Database | undefined;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), dirPrefix));
    scratch = engine.external ? await scratchDatabase(TEST_DATABASE_URL as string) : undefined;
    // A copy of the template: an initdb of its own costs seconds of CPU
    if (!engine.external) await seedEmbeddedDatabase(dir);
    // DATABASE_URL undefined: the embedded engine, even when the run's environment names a server
    opened = await createDatabase(testConfig({ DATABASE_URL: scratch?.url }, dir), log);
  });
  after(async () => {
    await opened?.close();
    await scratch?.drop();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  function current(): Database {
    if (opened === undefined) throw new Error(`No database on ${engine.label} yet: read it in a hook or a test`);
    return opened;
  }
  return {
    get pool() {
      return current().pool;
    },
    get kind() {
      return current().kind;
    },
    get namedStatements() {
      return current().namedStatements;
    },
    close: () => current().close(),
  };
}
