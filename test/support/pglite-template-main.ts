// Builds the PGlite template in a process of its own, started by the global setup:
//
//   node test/support/pglite-template-main.ts TEMPLATE_DIR
//
// Exits 0 once TEMPLATE_DIR holds an initialised data directory; else 1, with the reason beside it.
import { rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseConfig } from '../../lib/config.ts';
import { createDatabase } from '../../lib/db/database.ts';
import { createLogger } from '../../lib/log.ts';
import { failureFile, partialDir } from './pglite-template.ts';

/**
 * Builds the template at `templateDir` with the server's own createDatabase() on an empty
 * DATA_DIR, so each new template takes the first-start path that the copies skip. Built beside
 * `templateDir` and renamed, so the template is whole or absent; when another run's build got
 * there first, that one is kept.
 */
async function buildTemplate(templateDir: string): Promise<void> {
  const dataDir = partialDir(templateDir, process.pid);
  try {
    const parsed = parseConfig({ DATA_DIR: dataDir, LOG_LEVEL: 'silent' });
    if (!parsed.ok) throw new Error(`Template config invalid: ${parsed.problems.join('; ')}`);
    const db = await createDatabase(parsed.config, createLogger({ level: 'silent' }));
    await db.close();
    await rename(join(dataDir, 'pglite'), templateDir).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOTEMPTY' && err.code !== 'EEXIST') throw err;
    });
    await rm(dataDir, { recursive: true, force: true });
  } catch (err) {
    await writeFile(failureFile(templateDir), err instanceof Error ? (err.stack ?? err.message) : String(err));
    throw err;
  }
}

const templateDir = process.argv[2];
if (templateDir === undefined) {
  process.stderr.write('Usage: node test/support/pglite-template-main.ts TEMPLATE_DIR\n');
  process.exit(2);
}
buildTemplate(templateDir).catch((err: unknown) => {
  process.stderr.write(`PGlite template build failed: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
