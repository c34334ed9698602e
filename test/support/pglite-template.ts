// Embedded databases for tests without an initdb each: the global setup keeps one initialised
// PGlite data directory, built again when the server's code changes (seconds of CPU, see
// pglite-template-main.ts), and every test that opens an embedded database gets its own copy of it
// (a fraction of a second).
import { cpSync, existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { PGlite } from '@electric-sql/pglite';

/** The variable the global setup sets to the template directory; unset when a file runs on its own. */
export const TEMPLATE_ENV = 'TEST_PGLITE_TEMPLATE';

// Below the runner's --test-timeout, which hooks share, so a build that never ends gets a clear
// message instead of a cancellation; a cold start has taken tens of seconds on a busy machine.
const READY_TIMEOUT_MS = 55_000;
const POLL_MS = 50;

/** Where a failed build leaves its reason, so waiting tests fail at once with it. */
export function failureFile(templateDir: string): string {
  return `${templateDir}.failed`;
}

/** Where the builder with process id `pid` works before it renames its result to `templateDir`. */
export function partialDir(templateDir: string, pid: number | string): string {
  return `${templateDir}.partial-${pid}`;
}

/** Resolves once the template exists; rejects with the build's failure, or after READY_TIMEOUT_MS. */
async function templateReady(templateDir: string): Promise<void> {
  const deadline = performance.now() + READY_TIMEOUT_MS;
  for (;;) {
    if (existsSync(templateDir)) return;
    if (existsSync(failureFile(templateDir)))
      throw new Error(`The PGlite template build failed: ${readFileSync(failureFile(templateDir), 'utf8')}`);
    if (performance.now() > deadline)
      throw new Error(`No PGlite template in ${templateDir} after ${READY_TIMEOUT_MS} ms`);
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

/**
 * Gives `dataDir` an initialised embedded database (`dataDir/pglite`, where the server opens it),
 * copied from the template. Does nothing when the database exists already or the file runs
 * without the global setup (PGlite then initialises the directory itself).
 */
export async function seedEmbeddedDatabase(dataDir: string): Promise<void> {
  const templateDir = process.env[TEMPLATE_ENV];
  const target = join(dataDir, 'pglite');
  if (!templateDir || existsSync(target)) return;
  await templateReady(templateDir);
  // cpSync: several times faster than the promise-based cp for this tree of about a thousand files
  cpSync(templateDir, target, { recursive: true });
}

/** A new folder under the temp directory holding a seeded embedded database; the caller removes it. */
export async function embeddedDataDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  await seedEmbeddedDatabase(dir);
  return dir;
}

/** A PGlite engine of its own on a seeded data directory; close() closes it and removes the directory. */
export async function openEmbeddedEngine(): Promise<{ engine: PGlite; close(): Promise<void> }> {
  const dir = await embeddedDataDir('pglite-engine-');
  try {
    const { PGlite } = await import('@electric-sql/pglite');
    const engine = await PGlite.create(join(dir, 'pglite'));
    return {
      engine,
      async close() {
        try {
          await engine.close();
        } finally {
          await rm(dir, { recursive: true, force: true });
        }
      },
    };
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}
