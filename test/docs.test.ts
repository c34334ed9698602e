// The README's configuration table and .env.example must name exactly the variables the schema reads.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { ENV_SCHEMA } from '../lib/config.ts';

const schemaNames = Object.keys(ENV_SCHEMA).sort();

test('README configuration table lists every variable of the schema and no other', () => {
  const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
  const section = readme.slice(readme.indexOf('## Configuration'), readme.indexOf('## Architecture'));
  const names = [...section.matchAll(/^\| `([A-Z][A-Z0-9_]+)` \|/gm)].map((m) => m[1]).sort();
  assert.deepEqual(names, schemaNames);
});

test('.env.example documents every variable of the schema and no other', () => {
  const example = readFileSync(new URL('../.env.example', import.meta.url), 'utf8');
  const names = [...new Set([...example.matchAll(/^#? ?([A-Z][A-Z0-9_]+)=/gm)].map((m) => m[1]))].sort();
  assert.deepEqual(names, schemaNames);
});

test('.env.example defaults parse as a valid configuration', async () => {
  const { parseConfig } = await import('../lib/config.ts');
  const example = readFileSync(new URL('../.env.example', import.meta.url), 'utf8');
  const env = Object.fromEntries([...example.matchAll(/^([A-Z][A-Z0-9_]+)=(.*)$/gm)].map((m) => [m[1], m[2]]));
  const result = parseConfig(env);
  assert.equal(result.ok, true, result.ok ? '' : result.problems.join('; '));
});

interface PackageJson {
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
}
interface Lockfile {
  packages: Record<string, { version?: string; dev?: boolean }>;
}

test('every dependency is pinned to one exact version, and the lockfile installs that version', () => {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as PackageJson;
  const lock = JSON.parse(readFileSync(new URL('../package-lock.json', import.meta.url), 'utf8')) as Lockfile;
  for (const [name, version] of Object.entries({ ...pkg.dependencies, ...pkg.devDependencies })) {
    assert.match(version, /^\d+\.\d+\.\d+$/, `${name}@${version} is a range, not a pin`);
    assert.equal(lock.packages[`node_modules/${name}`]?.version, version, `the lockfile installs another ${name}`);
  }
});

test("README's dependency table names exactly the runtime dependencies, each with its reason", () => {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as PackageJson;
  const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
  const section = readme.slice(readme.indexOf('## Dependencies'), readme.indexOf('Development only'));
  const named = [...section.matchAll(/^\| `([^`]+)` \| \S/gm)].map((m) => m[1]).sort();
  assert.deepEqual(named, Object.keys(pkg.dependencies).sort());
});

test('every test SECURITY.md names by file and title exists under that title in that file', () => {
  const security = readFileSync(new URL('../SECURITY.md', import.meta.url), 'utf8');
  const missing: string[] = [];
  let cited = 0;
  for (const line of security.split('\n')) {
    // Each `test/….test.ts` reference, with the quoted titles up to the next reference; … stands for omitted words.
    for (const segment of line.split(/(?=`test\/[^`*]+\.test\.ts`)/)) {
      const file = /^`(test\/[^`*]+\.test\.ts)`/.exec(segment)?.[1];
      if (file === undefined) continue;
      const source = readFileSync(new URL(`../${file}`, import.meta.url), 'utf8');
      for (const [, title] of segment.matchAll(/"([^"]+)"/g)) {
        cited++;
        const pieces = (title as string).split('…').map((p) => p.trim());
        if (!pieces.every((p) => source.includes(p))) missing.push(`${file}: "${title}"`);
      }
    }
  }
  assert.ok(cited > 50, `only ${cited} titles found: the pattern no longer matches SECURITY.md`);
  assert.deepEqual(missing, []);
});

test('every npm script that starts node runs it with exec, so a signal to npm reaches it', () => {
  const { scripts } = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as {
    scripts: Record<string, string>;
  };
  // The last command of a script: `a && b` runs b in npm's shell, which only exec hands the signals.
  const bare = Object.entries(scripts).filter(([, line]) => {
    const last = line.split('&&').at(-1)?.trim() ?? '';
    return /(^|\s)node\s/.test(`${last} `) && !/^([A-Z_]+=\S+\s+)*exec node\s/.test(last);
  });
  assert.deepEqual(bare, []);
});
