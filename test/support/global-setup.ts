// Runs once in the test runner's own process (--test-global-setup), before and after every file.
// It makes a folder for the run, in memory (tmpfs) when the machine has room there, and points the
// test files at it: their temporary folders (TMPDIR) and run-wide locks. It fixes which part runs
// which file (parts.ts) for the whole run. It also points the files at two caches kept between runs
// in node_modules/.cache: Node's compile cache, and the embedded-database template, built in a
// child process while the first test files already run whenever the server's code or dependencies
// changed since the last build; an older template goes once no live run marks it as used. Test
// files inherit the variables set here.
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  accessSync,
  chmodSync,
  constants,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  statfsSync,
  writeFileSync,
} from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PLAN_ENV, plan, testFiles } from './parts.ts';
import { failureFile, partialDir, TEMPLATE_ENV } from './pglite-template.ts';
import { RUN_DIR_ENV } from './run-lock.ts';

const BUILDER = fileURLToPath(new URL('./pglite-template-main.ts', import.meta.url));
const MEMORY_FS = '/dev/shm';
const REPO = fileURLToPath(new URL('../../', import.meta.url));
const COMPILE_CACHE = join(REPO, 'node_modules/.cache/test-compile-cache');
const TEMPLATE_CACHE = join(REPO, 'node_modules/.cache/test-pglite-template');
// Each embedded database is about 40 MB; a container's default /dev/shm (64 MB) is too small.
const MEMORY_FS_MIN_FREE_BYTES = 2 * 1024 ** 3;

let runDir: string | undefined;
let builder: ChildProcess | undefined;
let building: string | undefined;
let usageMark: string | undefined;

/** Makes the run's folder and finds the PGlite template, or starts building it. */
export async function globalSetup(): Promise<void> {
  runDir = await mkdtemp(join(scratchRoot(), 'chat-test-run-'));
  // --test-force-exit ends the runner without calling globalTeardown; 'exit' still fires.
  process.once('exit', cleanUp);
  // Traversable, and a shared temporary folder inside: a test PostgreSQL runs as another user.
  chmodSync(runDir, 0o755);
  const tmp = join(runDir, 'tmp');
  mkdirSync(tmp);
  chmodSync(tmp, 0o1777);
  process.env['TMPDIR'] = tmp;
  process.env[RUN_DIR_ENV] = runDir;
  process.env[PLAN_ENV] = JSON.stringify(plan(testFiles()));
  // Node strips and compiles each module once, not once per process. The cache outlives the run
  // (entries are keyed by source hash, so an edited file misses): each test file is loaded by one
  // process only, so only a later run can reuse its stripped TypeScript.
  process.env['NODE_COMPILE_CACHE'] ??= COMPILE_CACHE;
  const cached = writableCache();
  const templateDir = cached ? join(TEMPLATE_CACHE, templateKey()) : join(runDir, 'pglite-template');
  process.env[TEMPLATE_ENV] = templateDir;
  if (cached) {
    // A run of other code from this checkout (lib/ edited meanwhile) prunes every template no live run marks.
    usageMark = usageMarkOf(templateDir, process.pid);
    writeFileSync(usageMark, '');
  }
  if (existsSync(templateDir)) return;
  if (cached) pruneTemplates(templateDir);
  startBuilder(templateDir);
}

/**
 * A hash of what the template depends on: Node, the server's code and migrations, the locked
 * dependencies and the builder. A change to any of them builds a new template, so the first-start
 * path the builder takes (initdb and every migration) runs again whenever it could have changed.
 */
function templateKey(): string {
  const hash = createHash('sha256').update(process.version);
  const lib = readdirSync(join(REPO, 'lib'), { recursive: true, encoding: 'utf8' }).map((f) => join('lib', f));
  const inputs = [...lib.filter((f) => /\.(ts|sql)$/.test(f)).sort(), 'package-lock.json'];
  inputs.push('test/support/pglite-template-main.ts');
  for (const file of inputs) hash.update(`\0${file}\0`).update(readFileSync(join(REPO, file)));
  return hash.digest('hex').slice(0, 16);
}

/** Stops a builder still running and removes the run's folder (also on exit: see globalSetup). */
export function globalTeardown(): void {
  cleanUp();
}

/** tmpfs when it is there with room to spare: copying and opening a database there costs a fraction of disk. */
function scratchRoot(): string {
  try {
    accessSync(MEMORY_FS, constants.W_OK);
    const { bavail, bsize } = statfsSync(MEMORY_FS);
    if (bavail * bsize >= MEMORY_FS_MIN_FREE_BYTES) return MEMORY_FS;
  } catch {
    // no tmpfs here: the disk will do
  }
  return tmpdir();
}

/** False where node_modules cannot be written (mounted read-only): the run then builds a template of its own. */
function writableCache(): boolean {
  try {
    mkdirSync(TEMPLATE_CACHE, { recursive: true });
    accessSync(TEMPLATE_CACHE, constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/** Where the run with process id `pid` marks that its test files copy `templateDir`. */
function usageMarkOf(templateDir: string, pid: number): string {
  return `${templateDir}.used-by-${pid}`;
}

// A cache entry: a template (key only), a build under way, the reason a build failed, or a run's usage mark.
const ENTRY = /^([0-9a-f]+)(?:\.partial-(\d+)|\.used-by-(\d+)|\.failed)?$/;

/**
 * Clears the cache (each template about 40 MB) before this run builds `templateDir`: keeps the
 * templates and failure reasons that a live run marks as used, and the builds and marks of
 * processes still running; removes everything else, and this template's previous failure.
 */
export function pruneTemplates(templateDir: string): void {
  const cache = dirname(templateDir);
  const entries = readdirSync(cache).map((name) => {
    const [, key, build, mark] = ENTRY.exec(name) ?? [];
    // a build or a mark lasts as long as its process
    const live = build !== undefined || mark !== undefined ? isRunning(Number(build ?? mark)) : undefined;
    return { path: join(cache, name), key, live, mark: mark !== undefined };
  });
  const used = new Set(entries.filter((entry) => entry.mark && entry.live).map((entry) => entry.key));
  for (const { path, key, live } of entries) {
    if (key !== undefined && (live ?? used.has(key))) continue;
    rmSync(path, { recursive: true, force: true });
  }
  rmSync(failureFile(templateDir), { force: true });
}

function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function startBuilder(templateDir: string): void {
  // Baseline WebAssembly only, like the test processes: an optimising tier pays off in no one-shot process.
  const child = spawn(process.execPath, ['--liftoff-only', BUILDER, templateDir], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  builder = child;
  building = templateDir;
  // A builder that dies without a word (killed, out of memory) must not leave tests waiting.
  const reportFailure = (reason: string): void => {
    if (builder !== child) return; // stopped by the cleanup: nobody waits for it
    if (!existsSync(templateDir) && !existsSync(failureFile(templateDir)))
      writeFileSync(failureFile(templateDir), reason);
  };
  child.once('error', (err) => reportFailure(`could not start the builder: ${err.message}`));
  child.once('exit', (code, signal) => {
    if (code !== 0) reportFailure(`the builder exited with ${signal ?? `code ${code}`}`);
  });
}

function cleanUp(): void {
  // SIGKILL at once: only a build nobody waits for any more can still be running.
  if (builder !== undefined && builder.exitCode === null && builder.signalCode === null) {
    builder.kill('SIGKILL');
    if (building !== undefined && builder.pid !== undefined)
      rmSync(partialDir(building, builder.pid), { recursive: true, force: true, maxRetries: 5 });
  }
  builder = undefined;
  if (usageMark !== undefined) rmSync(usageMark, { force: true });
  usageMark = undefined;
  if (runDir !== undefined) rmSync(runDir, { recursive: true, force: true, maxRetries: 5 });
  runDir = undefined;
}
