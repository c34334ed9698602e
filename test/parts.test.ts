// npm test runs the test files in parts, a process each (test/support/parts.ts): every file in
// exactly one part, the two load suites together, the slowest work first, and a file for each part.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { test } from 'node:test';
import type { TestEvent } from 'node:test/reporters';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { importPart, PARTS, partOfFile, partPath, plan, testFiles } from './support/parts.ts';
import { runNode } from './support/run-node.ts';
import verdicts from './support/verdicts-reporter.ts';

const REPO = fileURLToPath(new URL('../', import.meta.url));
const ENTRY = `import { test } from 'node:test';
import { importPart } from '../support/parts.ts';

const imported = importPart(import.meta.url);
test('the part imports its test files', () => imported);
`;

test('every test file is in exactly one part, and no part is empty', () => {
  const files = testFiles();
  assert.ok(files.includes('test/parts.test.ts') && files.length > 100);
  const parts = plan(files);
  assert.equal(parts.length, PARTS);
  assert.deepEqual(parts.flat().sort(), files);
  for (const part of parts) assert.ok(part.length > 0);
});

test('the two load suites share part 1, which the runner starts first, and nothing else does', () => {
  const [first] = plan(testFiles());
  assert.deepEqual(first, ['test/attack/faults.test.ts', 'test/attack/sockets.test.ts']);
});

test('the slowest work is dealt out first, each to the part with the least so far', () => {
  assert.deepEqual(plan(['a', 'b', 'c', 'd', 'e'], 2), [
    ['a', 'c', 'e'],
    ['b', 'd'],
  ]);
  assert.deepEqual(plan(['a', 'b', 'test/health.test.ts'], 2), [['test/health.test.ts'], ['a', 'b']]);
});

test('test/parts holds one entry file per part, each running the part its name gives', async () => {
  const names = readdirSync(resolve(REPO, 'test/parts')).sort();
  assert.deepEqual(
    names.map((name) => resolve(REPO, 'test/parts', name)),
    plan(testFiles()).map((_, i) => partPath(i + 1)),
  );
  for (const name of names) assert.equal(readFileSync(resolve(REPO, 'test/parts', name), 'utf8'), ENTRY);
  await assert.rejects(
    importPart(pathToFileURL(resolve(REPO, 'test/parts', `${PARTS + 1}.ts`)).href),
    new RegExp(`No part ${PARTS + 1}:`),
  );
});

test('a part runs a file that awaits at its top level after the tests before it finished', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'parts-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const fixture = (body: string) => `import { test } from 'node:test';\n${body}\n`;
  await writeFile(join(dir, 'a.test.mjs'), fixture("test('a', () => {});"));
  await writeFile(
    join(dir, 'b.test.mjs'),
    fixture("await new Promise((r) => setTimeout(r, 200));\ntest('b', () => {});"),
  );
  await writeFile(join(dir, 'broken.test.mjs'), fixture("throw new Error('broken at import');"));
  // A part's entry as in test/parts, on files of its own.
  const parts = pathToFileURL(resolve(REPO, 'test/support/parts.ts')).href;
  const entry = (files: string[]) =>
    fixture(
      `import { importInTurn } from '${parts}';\n` +
        `const imported = importInTurn(${JSON.stringify(files)}.map((f) => new URL(f, import.meta.url).href));\n` +
        "test('the part imports its test files', () => imported);",
    );
  await writeFile(join(dir, 'part.mjs'), entry(['./a.test.mjs', './b.test.mjs']));
  await writeFile(join(dir, 'broken-part.mjs'), entry(['./a.test.mjs', './broken.test.mjs']));
  await writeFile(join(dir, 'loop.mjs'), "for (const f of ['./a.test.mjs', './b.test.mjs']) await import(f);\n");
  const { NODE_TEST_CONTEXT: _, ...env } = process.env;
  const run = (file: string) => runNode(['--test', '--test-force-exit', '--test-reporter=spec', file], dir, env);

  const part = await run('part.mjs');
  assert.equal(part.code, 0, part.stdout);
  assert.match(part.stdout, /ℹ tests 3\n/);
  const broken = await run('broken-part.mjs');
  assert.equal(broken.code, 1);
  assert.match(broken.stdout, /✖ the part imports its test files[\s\S]*broken at import/);
  // What a plain loop of imports does: the process ends after the first file's test, and passes.
  const loop = await run('loop.mjs');
  assert.equal(loop.code, 0);
  assert.match(loop.stdout, /ℹ tests 1\n/);
});

/** What the verdicts reporter says and the exit code it sets for `events`, which it reads as the runner's. */
async function verdictsOn(events: object[]): Promise<{ lines: string[]; exitCode: typeof process.exitCode }> {
  const before = process.exitCode;
  const lines: string[] = [];
  async function* source() {
    yield* events as TestEvent[];
  }
  for await (const line of verdicts(source())) lines.push(line);
  const exitCode = process.exitCode;
  process.exitCode = before;
  return { lines, exitCode };
}

test("the verdicts reporter takes a part's summary for its files, and names those cut short or not run", async () => {
  const partOf = partOfFile();
  const file = resolve(REPO, 'test/db/migrate.test.ts');
  const part = partOf.get(file);
  assert.ok(part?.startsWith(resolve(REPO, 'test/parts')));
  const others = [...partOf].filter(([other, itsPart]) => itsPart === part && other !== file).map(([other]) => other);
  assert.ok(others.length > 0);
  const results = (of: string) => [
    { type: 'test:start', data: { file: of, name: 'x', nesting: 0 } },
    { type: 'test:pass', data: { file: of, name: 'x', nesting: 0 } },
  ];
  const summary = { type: 'test:summary', data: { file: part } };
  const whole = await verdictsOn([...[file, ...others].flatMap(results), summary]);
  assert.deepEqual(whole.lines, []);
  assert.notEqual(whole.exitCode, 1);
  const unrun = await verdictsOn([...others.flatMap(results), summary]);
  assert.equal(unrun.exitCode, 1);
  assert.deepEqual(unrun.lines, [`✖ ${file}: its part ended without running it\n`]);
  const cut = await verdictsOn(results(file));
  assert.equal(cut.exitCode, 1);
  assert.deepEqual(cut.lines, [
    `✖ ${file}: its results stopped before its summary; tests may be missing from the counts\n`,
  ]);
});
