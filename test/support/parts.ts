// npm test runs the test files in a dozen processes ("parts") rather than one process per file:
// every process pays again for Node's start, the TypeScript loader, the SDKs, the server's modules
// and PGlite's WebAssembly. A part imports its files one after another, so their tests run in turn.
import { globSync } from 'node:fs';
import { basename, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const REPO = fileURLToPath(new URL('../../', import.meta.url));

/** The number of part files in test/parts; the plan deals the test files out over them. */
export const PARTS = 12;

// Rough seconds that the slowest files keep a process busy; any other file counts as one.
const SLOW = new Map([
  ['test/attack/faults.test.ts', 25],
  ['test/attack/sockets.test.ts', 23],
  ['test/auth/keys-command.test.ts', 16],
  ['test/chat/resume.test.ts', 15],
  ['test/limits/cluster.test.ts', 12],
  ['test/health.test.ts', 10],
  ['test/chat/faults.test.ts', 9],
  ['test/browser/chat-page.test.ts', 8],
  ['test/attack/canary.test.ts', 8],
  ['test/db/migrate.test.ts', 7],
  ['test/server-entry.test.ts', 7],
  ['test/auth/identity.test.ts', 6],
  ['test/http/server.test.ts', 5],
]);
// These take the run-wide load-test lock: in one part they run in turn instead of waiting on it.
const TOGETHER = ['test/attack/faults.test.ts', 'test/attack/sockets.test.ts'];

/** The variable the global setup sets to the run's plan: a file added during the run moves nothing. */
export const PLAN_ENV = 'TEST_PARTS_PLAN';

/** The test files of the repository, relative to it, in a stable order. */
export function testFiles(): string[] {
  return globSync('test/**/*.test.ts', { cwd: REPO }).sort();
}

/**
 * Deals `files` out over `parts` parts: slowest first, each to the part with the least work so far
 * (the lowest number on a tie), so part 1 holds the longest work and the runner starts it first.
 */
export function plan(files: readonly string[], parts = PARTS): string[][] {
  const units: string[][] = [];
  const together = files.filter((file) => TOGETHER.includes(file));
  if (together.length > 0) units.push(together);
  for (const file of files) if (!TOGETHER.includes(file)) units.push([file]);
  const weight = (unit: string[]) => unit.reduce((sum, file) => sum + (SLOW.get(file) ?? 1), 0);
  units.sort((a, b) => weight(b) - weight(a));
  const out = Array.from({ length: parts }, () => ({ files: [] as string[], load: 0 }));
  for (const unit of units) {
    const lightest = out.reduce((min, part) => (part.load < min.load ? part : min));
    lightest.files.push(...unit);
    lightest.load += weight(unit);
  }
  return out.map((part) => part.files.sort());
}

/** The run's plan, or without the global setup the plan of the files there are now. */
export function runPlan(): string[][] {
  const fixed = process.env[PLAN_ENV];
  return fixed === undefined ? plan(testFiles()) : JSON.parse(fixed);
}

/** Maps each test file, by absolute path, to the part file whose process runs it. */
export function partOfFile(): Map<string, string> {
  const parts = runPlan();
  return new Map(parts.flatMap((files, i) => files.map((file) => [join(REPO, file), partPath(i + 1)])));
}

/** The absolute path of part `n`'s file: test/parts/01.ts for part 1. */
export function partPath(n: number): string {
  return join(REPO, 'test/parts', `${String(n).padStart(2, '0')}.ts`);
}

/**
 * Starts importing the test files of the part whose file (test/parts/NN.ts) is `entryUrl`, one
 * after another. The part's first test awaits the result: while a file awaits at its top level,
 * the tests already registered could otherwise all finish, and --test-force-exit would end the
 * process there, silently.
 */
export function importPart(entryUrl: string): Promise<void> {
  const part = Number(basename(fileURLToPath(entryUrl), '.ts'));
  const files = runPlan()[part - 1];
  if (files === undefined) return Promise.reject(new Error(`No part ${part}: test/parts holds parts 1 to ${PARTS}`));
  return importInTurn(files.map((file) => pathToFileURL(join(REPO, file)).href));
}

/** Imports `urls` one after another; a failure is left to the test that awaits the promise. */
export function importInTurn(urls: readonly string[]): Promise<void> {
  const imported = (async () => {
    for (const url of urls) await import(url);
  })();
  imported.catch(() => {});
  return imported;
}
