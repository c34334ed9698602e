// The embedded-database template cache: what a run about to build a new template removes, and what
// it must leave to runs and builds still going.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { pruneTemplates } from './support/global-setup.ts';

const LIVE = process.pid;
let dead: number;
const caches: string[] = [];

before(async () => {
  const child = spawn(process.execPath, ['-e', ''], { stdio: 'ignore' });
  await once(child, 'exit');
  dead = child.pid as number;
});

after(() => Promise.all(caches.map((dir) => rm(dir, { recursive: true, force: true }))));

/** Makes `entries` in a new cache folder (names ending in `/` are folders), prunes it for `current`. */
async function pruned(entries: string[], current: string): Promise<string[]> {
  const cache = await mkdtemp(join(tmpdir(), 'template-cache-'));
  caches.push(cache);
  for (const entry of entries)
    await (entry.endsWith('/') ? mkdir(join(cache, entry)) : writeFile(join(cache, entry), ''));
  pruneTemplates(join(cache, current));
  return (await readdir(cache)).sort();
}

test('a template that a live run marks as used stays, with its failure reason and its mark', async () => {
  const left = await pruned(['aaaa/', `aaaa.used-by-${LIVE}`, 'aaaa.failed'], 'ffff');
  assert.deepEqual(left, ['aaaa', 'aaaa.failed', `aaaa.used-by-${LIVE}`]);
});

test('templates that no live run marks go, with the marks of runs that ended and their failures', async () => {
  const left = await pruned(['aaaa/', `aaaa.used-by-${dead}`, 'bbbb/', 'bbbb.failed', 'notes.txt'], 'ffff');
  assert.deepEqual(left, []);
});

test('a build under way stays while its builder runs, whatever its key; a dead builder’s goes', async () => {
  const left = await pruned([`aaaa.partial-${LIVE}/`, `bbbb.partial-${dead}/`, `ffff.partial-${dead}/`], 'ffff');
  assert.deepEqual(left, [`aaaa.partial-${LIVE}`]);
});

test('the template about to be built loses its previous failure reason, not its run’s mark', async () => {
  const left = await pruned([`ffff.used-by-${LIVE}`, 'ffff.failed'], 'ffff');
  assert.deepEqual(left, [`ffff.used-by-${LIVE}`]);
});
