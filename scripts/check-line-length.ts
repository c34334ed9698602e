// Fails when a tracked .ts, .js or .mjs line is longer than MAX_LINE_CHARS characters: the
// formatter wraps code at that width but cannot break strings, comments or test names.
//
//   node scripts/check-line-length.ts          # the repository this script lives in
//   node scripts/check-line-length.ts <dir>    # another tree
import { execFileSync } from 'node:child_process';
import type { Dirent } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The longest line allowed, in characters (code points), as the formatter's lineWidth. */
export const MAX_LINE_CHARS = 120;

/** One line over the limit: its path relative to the root (forward slashes), 1-based line and length. */
export interface LongLine {
  path: string;
  line: number;
  chars: number;
}

const EXTENSIONS = ['.ts', '.js', '.mjs'];
// Where the code lives when there is no git to list the tracked files.
const FALLBACK_ROOTS = ['lib', 'test', 'scripts', 'bench', 'server.ts'];

/** Whether a path is a source file this check reads. */
function checked(path: string): boolean {
  return EXTENSIONS.some((ext) => path.endsWith(ext)) && !path.split('/').includes('node_modules');
}

/** The tracked files under `root`, or undefined when git is missing or `root` is not a work tree. */
function trackedFiles(root: string): string[] | undefined {
  try {
    const out = execFileSync('git', ['ls-files', '-z'], { cwd: root, encoding: 'utf8', stdio: 'pipe' });
    return out.split('\0').filter((path) => path !== '');
  } catch {
    return undefined;
  }
}

/** Adds the files under `path` (relative to `root`) to `found`, skipping node_modules. */
async function walk(root: string, path: string, found: string[]): Promise<void> {
  let entries: Dirent[];
  try {
    entries = await readdir(join(root, path), { withFileTypes: true });
  } catch (err) {
    // server.ts is a file, not a directory; a missing folder is simply not there
    if ((err as NodeJS.ErrnoException).code === 'ENOTDIR') found.push(path);
    return;
  }
  for (const entry of entries) {
    if (entry.name === 'node_modules') continue;
    const child = `${path}/${entry.name}`;
    if (entry.isDirectory()) await walk(root, child, found);
    else if (entry.isFile()) found.push(child);
  }
}

/** The files to check under `root`: git's tracked list, else a walk of the source folders. */
async function sourceFiles(root: string): Promise<string[]> {
  let files = trackedFiles(root);
  if (files === undefined) {
    files = [];
    for (const path of FALLBACK_ROOTS) await walk(root, path, files);
  }
  return files.filter(checked).sort();
}

/** Every line longer than `max` characters in the source files under `root`, in path and line order. */
export async function findLongLines(root: string, max = MAX_LINE_CHARS): Promise<LongLine[]> {
  const found: LongLine[] = [];
  for (const path of await sourceFiles(root)) {
    let text: string;
    try {
      text = await readFile(join(root, path), 'utf8');
    } catch {
      continue; // tracked but deleted in the work tree
    }
    const lines = text.split('\n');
    for (const [index, raw] of lines.entries()) {
      const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
      if (line.length <= max) continue; // UTF-16 units never undercount code points
      const chars = [...line].length;
      if (chars > max) found.push({ path, line: index + 1, chars });
    }
  }
  return found;
}

/** The report line for one offender. */
export function formatLongLine(long: LongLine, max = MAX_LINE_CHARS): string {
  return `${long.path}:${long.line}: ${long.chars} characters (max ${max})`;
}

if (import.meta.main) {
  const root = process.argv[2] ?? fileURLToPath(new URL('..', import.meta.url));
  const found = await findLongLines(root);
  if (found.length > 0) {
    process.stdout.write(`${found.map((long) => formatLongLine(long)).join('\n')}\n`);
    process.exitCode = 1;
  }
}
