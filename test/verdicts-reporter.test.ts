// The guard npm test runs beside the spec reporter: a file whose results stop before its own
// summary fails the run, instead of passing with fewer tests than ran. And the preload that keeps
// --test-force-exit from dropping a file's last results.
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { type CliResult, runNode } from './support/run-node.ts';

const REPORTER = fileURLToPath(new URL('./support/verdicts-reporter.ts', import.meta.url));
const PRELOAD = fileURLToPath(new URL('./support/blocking-report.ts', import.meta.url));
// A file that ends its own process, with success, before its last test: what a lost tail looks like.
const CUT = `import { test } from 'node:test';
test('one', () => {});
test('two', () => { setTimeout(() => process.exit(0), 5); });
test('three', async () => { await new Promise((resolve) => setTimeout(resolve, 100)); });
`;
// Its last output comes after its summary, as a server's log lines can.
const WHOLE = `import { test } from 'node:test';
process.on('exit', () => console.error('a line after the summary'));
test('one', () => {});
test('two', async () => { await new Promise((resolve) => setTimeout(resolve, 10)); });
`;

// Many results with long names: more than a pipe holds, so a runner busy with the other files falls behind.
const BULKY = `import { test } from 'node:test';
for (let i = 0; i < 50; i++) test(\`t\${i} \${'x'.repeat(2000)}\`, () => {});
`;
const BULKY_FILES = ['bulky-1.test.mjs', 'bulky-2.test.mjs', 'bulky-3.test.mjs', 'bulky-4.test.mjs'];

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'verdicts-'));
  await writeFile(join(dir, 'cut.test.mjs'), CUT);
  await writeFile(join(dir, 'whole.test.mjs'), WHOLE);
  for (const file of BULKY_FILES) await writeFile(join(dir, file), BULKY);
});
after(() => rm(dir, { recursive: true, force: true }));

/** Runs `node ...preload --test` on `files` with the spec reporter on stdout and the guard on stderr. */
function runTests(files: string[], preload: string[] = []): Promise<CliResult> {
  const args = [...preload, '--test', '--test-force-exit', '--test-reporter=spec'];
  args.push('--test-reporter-destination=stdout', `--test-reporter=${REPORTER}`, '--test-reporter-destination=stderr');
  args.push(...files);
  // Without the variable that makes a `node --test` under a test runner report to that runner instead
  const { NODE_TEST_CONTEXT: _, ...env } = process.env;
  return runNode(args, dir, env);
}

test('a file whose results stop before its summary fails the run and is named, though no test failed', async () => {
  const { code, stdout, stderr } = await runTests(['cut.test.mjs', 'whole.test.mjs']);
  assert.match(stdout, /ℹ fail 0/, 'the runner alone sees no failure');
  assert.equal(code, 1);
  assert.match(stderr, /cut\.test\.mjs: its results stopped before its summary/);
  assert.doesNotMatch(stderr, /whole\.test\.mjs/);
});

test('a run whose files all send their summary passes, output after a summary included', async () => {
  const { code, stdout, stderr } = await runTests(['whole.test.mjs']);
  assert.match(stdout, /a line after the summary/);
  assert.equal(code, 0);
  assert.doesNotMatch(stderr, /✖/);
});

test('npm test loads the preload and runs the parts; test:file runs files the way npm test runs parts', async () => {
  const { scripts } = JSON.parse(await readFile(new URL('../package.json', import.meta.url), 'utf8'));
  assert.match(scripts.test, /^exec node (\S+ )*--import \.\/test\/support\/blocking-report\.ts (\S+ )*--test /);
  assert.ok(scripts.test.endsWith(' "test/parts/*.ts"'), 'npm test no longer runs the parts');
  assert.ok(scripts.test.startsWith(`${scripts['test:file']} `), 'test:file is no longer where test begins');
});

test('with the preload, every result of a file reaches the runner before its forced exit', async () => {
  const { code, stdout, stderr } = await runTests(BULKY_FILES, ['--import', PRELOAD]);
  assert.match(stdout, new RegExp(`ℹ tests ${50 * BULKY_FILES.length}\n`));
  assert.equal(code, 0);
  assert.doesNotMatch(stderr, /✖/);
});
