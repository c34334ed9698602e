import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { findLongLines } from '../../scripts/check-line-length.ts';

const run = promisify(execFile);
const SCRIPT = fileURLToPath(new URL('../../scripts/check-line-length.ts', import.meta.url));

/** A temporary tree holding `files` (path to content), removed when the test ends. */
async function tree(t: TestContext, files: Record<string, string>): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), 'line-length-'));
  t.after(() => rm(root, { recursive: true, force: true }));
  for (const [path, text] of Object.entries(files)) {
    await mkdir(dirname(join(root, path)), { recursive: true });
    await writeFile(join(root, path), text);
  }
  return root;
}

test('findLongLines() passes a line of exactly 120 characters', async (t) => {
  const root = await tree(t, { 'lib/a.ts': `${'x'.repeat(120)}\n` });
  assert.deepEqual(await findLongLines(root), []);
});

test('findLongLines() reports a 121-character line with its path and line number', async (t) => {
  const root = await tree(t, { 'test/deep/b.test.ts': `ok\r\n${'y'.repeat(120)}\r\n${'z'.repeat(121)}\r\n` });
  assert.deepEqual(await findLongLines(root), [{ path: 'test/deep/b.test.ts', line: 3, chars: 121 }]);
});

test('findLongLines() counts an emoji as one character, not two UTF-16 units or four bytes', async (t) => {
  const emoji = '\u{1F600}';
  const root = await tree(t, {
    'scripts/fits.mjs': `${'a'.repeat(119)}${emoji}\n`,
    'scripts/over.js': `${'a'.repeat(120)}${emoji}\n`,
  });
  assert.deepEqual(await findLongLines(root), [{ path: 'scripts/over.js', line: 1, chars: 121 }]);
});

test('findLongLines() reads only .ts, .js and .mjs files outside node_modules', async (t) => {
  const long = `${'w'.repeat(121)}\n`;
  const root = await tree(t, {
    'lib/node_modules/dep/index.js': long,
    'lib/notes.md': long,
    'server.ts': long,
  });
  assert.deepEqual(await findLongLines(root), [{ path: 'server.ts', line: 1, chars: 121 }]);
});

test('findLongLines() in a git work tree checks the tracked files outside node_modules only', async (t) => {
  const long = `${'v'.repeat(121)}\n`;
  const root = await tree(t, {
    'lib/tracked.ts': long,
    'lib/untracked.ts': long,
    'other/tracked.ts': long,
    'node_modules/dep/tracked.js': long,
  });
  await run('git', ['init', '-q'], { cwd: root });
  await run('git', ['add', '-f', 'lib/tracked.ts', 'other/tracked.ts', 'node_modules/dep/tracked.js'], { cwd: root });
  assert.deepEqual(
    (await findLongLines(root)).map((l) => l.path),
    ['lib/tracked.ts', 'other/tracked.ts'],
  );
});

test('check-line-length.ts exits 1 listing path:line per offender, and 0 with no output when clean', async (t) => {
  const dirty = await tree(t, { 'lib/c.ts': `short\n${'q'.repeat(125)}\n` });
  const failed = await run(process.execPath, [SCRIPT, dirty]).then(
    () => assert.fail('expected exit code 1'),
    (err: { code: number; stdout: string }) => err,
  );
  assert.equal(failed.code, 1);
  assert.equal(failed.stdout, 'lib/c.ts:2: 125 characters (max 120)\n');
  const clean = await tree(t, { 'lib/d.ts': 'short\n' });
  const ok = await run(process.execPath, [SCRIPT, clean]);
  assert.equal(ok.stdout, '');
  assert.equal(ok.stderr, '');
});

test('importing check-line-length.ts checks nothing and leaves the exit code alone', async (t) => {
  const dirty = await tree(t, { 'lib/e.ts': `${'p'.repeat(130)}\n` });
  const code = `await import(${JSON.stringify(new URL('../../scripts/check-line-length.ts', import.meta.url).href)});`;
  // argv[2] is where the CLI would look if the import ran it
  const { stdout } = await run(process.execPath, ['--input-type=module', '-e', code, 'arg1', dirty]);
  assert.equal(stdout, '');
});
