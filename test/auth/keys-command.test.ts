import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ensureDevKey } from '../../lib/auth/keys-command.ts';
import { TEST_DATABASE_URL } from '../support/config.ts';
import { bearer, keySpellings, keysCliEnv, msUntil, runKeysCli, uniqueKeyName } from '../support/keys.ts';
import type { CliResult } from '../support/run-node.ts';
import { startTestServer, type TestServer } from '../support/server.ts';

const KEY_LINE = /^csk_[A-Za-z0-9_-]{43}\n$/;

async function agentsStatus(server: TestServer, key: string): Promise<number> {
  const res = await fetch(`${server.url}/v1/agents`, { headers: bearer(key) });
  await res.arrayBuffer();
  return res.status;
}

describe('server.ts keys', () => {
  let dataDir: string;
  let env: Record<string, string>;
  let name: string;
  let created: CliResult;
  let listed: CliResult;

  before(async () => {
    // Each run opens the database afresh (the embedded one costs a second or more), so runs are shared.
    // What is stored is checked in identity.test.ts, with a server on the same database.
    dataDir = await mkdtemp(join(tmpdir(), 'keys-cli-test-'));
    env = keysCliEnv(dataDir);
    name = uniqueKeyName('cli');
    created = await runKeysCli(['create', name], env);
    listed = await runKeysCli(['list'], env);
  });
  after(() => rm(dataDir, { recursive: true, force: true }));

  it('keys create prints the new key alone on stdout as one line and exits 0', () => {
    assert.equal(created.code, 0, created.stderr);
    assert.match(created.stdout, KEY_LINE);
  });

  it('keys create reports the name and display prefix on stderr, never the key', () => {
    const key = created.stdout.trim();
    assert.match(created.stderr, new RegExp(`Created key ${name} \\(${key.slice(0, 12)}`));
    for (const spelling of keySpellings(key)) assert.ok(!created.stderr.includes(spelling), 'stderr holds the key');
  });

  it('keys list shows the name, prefix, created time and "-" for not revoked, and never a key', () => {
    assert.equal(listed.code, 0, listed.stderr);
    const lines = listed.stdout.trimEnd().split('\n');
    assert.equal(lines[0], 'NAME\tPREFIX\tCREATED\tREVOKED\tEXPIRES\tLIMITS');
    const row = lines.find((line) => line.startsWith(`${name}\t`))?.split('\t');
    assert.deepEqual(row?.slice(0, 2), [name, created.stdout.slice(0, 12)]);
    assert.ok(!Number.isNaN(Date.parse(row?.[2] ?? '')), `created is not a timestamp: ${row?.[2]}`);
    assert.equal(row?.[3], '-');
    assert.doesNotMatch(listed.stdout, /csk_[A-Za-z0-9_-]{43}/);
  });

  it('keys create refuses a name that is taken with a non-zero exit and nothing on stdout', async () => {
    const again = await runKeysCli(['create', name], env);
    assert.equal(again.code, 1);
    assert.equal(again.stdout, '');
    assert.match(again.stderr, new RegExp(`A key named ${name} already exists`));
  });

  it('keys revoke exits 0 and keys list then shows when the key was revoked', async () => {
    const revoked = await runKeysCli(['revoke', name], env);
    assert.equal(revoked.code, 0, revoked.stderr);
    assert.equal(revoked.stdout, '');
    const row = (await runKeysCli(['list'], env)).stdout.split('\n').find((line) => line.startsWith(`${name}\t`));
    assert.ok(!Number.isNaN(Date.parse(row?.split('\t')[3] ?? '')), `revoked is not a timestamp: ${row}`);
  });

  it('keys revoke of a name with no active key exits 1 with a message on stderr', async () => {
    const missing = await runKeysCli(['revoke', uniqueKeyName('cli-missing')], env);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /No active key named cli-missing-/);
  });

  it('keys create without a valid name prints the usage and exits 2', async () => {
    const bad = await runKeysCli(['create', 'white space'], env);
    assert.equal(bad.code, 2);
    assert.equal(bad.stdout, '');
    assert.match(bad.stderr, /^Usage: keys create NAME/);
  });
});

describe('server.ts keys with a policy: create flags, show, update', () => {
  let dataDir: string;
  let env: Record<string, string>;
  let name: string;
  let created: CliResult;
  let shown: CliResult;

  before(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'keys-policy-cli-test-'));
    env = keysCliEnv(dataDir);
    name = uniqueKeyName('cli-policy');
    created = await runKeysCli(
      ['create', name, '--rpm', '30', '--streams', '2', '--tokens-per-day', '5000', '--expires', '2030-01-31'],
      env,
    );
    shown = await runKeysCli(['show', name], env);
  });
  after(() => rm(dataDir, { recursive: true, force: true }));

  it('keys create with options still prints the key alone on stdout', () => {
    assert.equal(created.code, 0, created.stderr);
    assert.match(created.stdout, KEY_LINE);
  });

  it("keys show prints the key's limits as the flags that set them, and never the key", () => {
    assert.equal(shown.code, 0, shown.stderr);
    const lines = shown.stdout.trimEnd().split('\n');
    assert.equal(lines[0], `name: ${name}`);
    assert.equal(lines[1], `prefix: ${created.stdout.slice(0, 12)}`);
    assert.deepEqual(lines.slice(3), [
      'revoked: no',
      'rpm: 30',
      'burst: default',
      'streams: 2',
      'tokens-per-day: 5000',
      'expires: 2030-01-31T00:00:00.000Z',
      'agents: all',
    ]);
    for (const spelling of keySpellings(created.stdout.trim())) assert.ok(!shown.stdout.includes(spelling));
  });

  it('keys update changes only the limits it names, prints nothing on stdout, and list shows them', async () => {
    const updated = await runKeysCli(['update', name, '--rpm', 'default', '--burst', '4', '--expires', 'never'], env);
    assert.equal(updated.code, 0, updated.stderr);
    assert.equal(updated.stdout, '');
    assert.match(updated.stderr, new RegExp(`Updated key ${name} \\(rpm: default, burst: 4, streams: 2`));
    const row = (await runKeysCli(['list'], env)).stdout.split('\n').find((line) => line.startsWith(`${name}\t`));
    assert.deepEqual(row?.split('\t').slice(4), ['-', 'burst=4,streams=2,tokens-per-day=5000']);
  });

  it('keys update of a name with no active key exits 1', async () => {
    const missing = await runKeysCli(['update', uniqueKeyName('cli-missing'), '--rpm', '5'], env);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /No active key named cli-missing-/);
  });

  it('keys show of an unknown name exits 1 with nothing on stdout', async () => {
    const missing = await runKeysCli(['show', uniqueKeyName('cli-missing')], env);
    assert.equal(missing.code, 1);
    assert.equal(missing.stdout, '');
    assert.match(missing.stderr, /No key named cli-missing-/);
  });

  const refused: Array<[string, string[], RegExp]> = [
    [
      'a zero rate',
      ['create', 'x', '--rpm', '0'],
      /^keys: --rpm must be a whole number from 1 to 1000000, or default$/m,
    ],
    ['a past expiry', ['create', 'x', '--expires', '2001-01-01'], /^keys: --expires 2001-01-01 is not in the future$/m],
    ['an unknown option', ['create', 'x', '--limit', '5'], /^keys: Unknown option "--limit"$/m],
    ['update without options', ['update', 'x'], /^keys: update needs at least one option$/m],
    ['show with options', ['show', 'x', '--rpm', '5'], /^Usage: keys create NAME/],
    ['an agent nobody has', ['create', 'x', '--agents', 'default,nosuch'], /^keys: no agent named nosuch /m],
  ];
  for (const [what, args, message] of refused) {
    it(`keys refuses ${what} with exit 2, a clear message and the usage, and stores nothing`, async () => {
      const result = await runKeysCli(args, env);
      assert.equal(result.code, 2, result.stderr);
      assert.equal(result.stdout, '');
      assert.match(result.stderr, message);
      assert.match(result.stderr, /Usage: keys create NAME|no agent named/);
    });
  }

  it('nothing was stored by the refused commands', async () => {
    const show = await runKeysCli(['show', 'x'], env);
    assert.equal(show.code, 1);
  });
});

describe('server.ts keys revoke against a running server', {
  skip: !TEST_DATABASE_URL && 'needs TEST_DATABASE_URL',
}, () => {
  let server: TestServer;
  const env = { DATABASE_URL: TEST_DATABASE_URL ?? '' };

  before(async () => {
    server = await startTestServer();
  });
  after(() => server.close());

  it('makes the running server refuse the key within 5 s', async () => {
    const name = uniqueKeyName('cli-live');
    const key = (await runKeysCli(['create', name], env)).stdout.trim();
    assert.equal(await agentsStatus(server, key), 200);
    const revoked = await runKeysCli(['revoke', name], env);
    assert.equal(revoked.code, 0, revoked.stderr);
    const ms = await msUntil(async () => (await agentsStatus(server, key)) === 401, 5_000);
    assert.ok(ms < 5_000, `refused after ${ms} ms`);
  });
});

describe('server.ts keys and the embedded database held by a running server', () => {
  let server: TestServer;

  before(async () => {
    server = await startTestServer({ DATABASE_URL: undefined });
  });
  after(() => server.close());

  it('keys create runs in the live server via DATA_DIR/admin.sock: the key alone on stdout, and it works', async () => {
    const created = await runKeysCli(['create', uniqueKeyName('cli-socket')], { DATA_DIR: server.config.dataDir });
    assert.equal(created.code, 0, created.stderr);
    assert.match(created.stdout, KEY_LINE);
    assert.match(created.stderr, /^Created key cli-socket/);
    assert.equal(await agentsStatus(server, created.stdout.trim()), 200);
    const listed = await runKeysCli(['list'], { DATA_DIR: server.config.dataDir });
    assert.equal(listed.code, 0);
    assert.ok(listed.stdout.includes('cli-socket'));
    assert.ok(!listed.stdout.includes(created.stdout.trim()), 'the list shows no key');
  });

  it('the admin socket is a file only its owner can use, and refuses a request that is not a command', async () => {
    const path = join(server.config.dataDir, 'admin.sock');
    assert.equal((await stat(path)).mode & 0o777, 0o600);
    const usage = await runKeysCli(['delete', 'x'], { DATA_DIR: server.config.dataDir });
    assert.equal(usage.code, 2);
    assert.match(usage.stderr, /^Usage: keys create NAME/);
  });

  it('keys create still says the database is in use when the process holding it answers no admin socket', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'keys-locked-'));
    try {
      // A lock held by a live process (this test's) that runs no server: nothing answers on the socket.
      await writeFile(join(dir, 'server.lock'), String(process.pid));
      const locked = await runKeysCli(['create', uniqueKeyName('cli-locked')], { DATA_DIR: dir });
      assert.notEqual(locked.code, 0);
      assert.equal(locked.stdout, '');
      assert.match(
        locked.stderr,
        /embedded database in .* is in use by another process .*Stop it, or set DATABASE_URL/,
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('the first start writes a dev-api-key file readable only by its owner', async () => {
    const file = join(server.config.dataDir, 'dev-api-key');
    assert.equal((await stat(file)).mode & 0o777, 0o600);
    assert.match(await readFile(file, 'utf8'), KEY_LINE);
  });

  it('the dev key written on first start authenticates', async () => {
    const key = (await readFile(join(server.config.dataDir, 'dev-api-key'), 'utf8')).trim();
    assert.equal(await agentsStatus(server, key), 200);
  });

  it("the first start logs the dev key file's path but not the key", async () => {
    const key = (await readFile(join(server.config.dataDir, 'dev-api-key'), 'utf8')).trim();
    const logs = server.logs();
    assert.ok(
      logs.includes(`"path":${JSON.stringify(join(server.config.dataDir, 'dev-api-key'))}`),
      'the path is logged',
    );
    for (const spelling of keySpellings(key)) assert.ok(!logs.includes(spelling), 'a log line holds the dev key');
  });

  it('ensureDevKey() writes no file when the database already has a key', async () => {
    const otherDir = await mkdtemp(join(tmpdir(), 'keys-cli-test-'));
    try {
      await ensureDevKey(server.db.pool, otherDir, server.log);
      await assert.rejects(stat(join(otherDir, 'dev-api-key')), { code: 'ENOENT' });
    } finally {
      await rm(otherDir, { recursive: true, force: true });
    }
  });
});

describe('server.ts keys against a database that does not exist', {
  skip: !TEST_DATABASE_URL && 'needs TEST_DATABASE_URL',
}, () => {
  it('keys list exits 1 with one line on stderr, no stack trace and no password', async () => {
    const url = new URL(TEST_DATABASE_URL as string);
    url.pathname = `/no_such_database_${process.pid}`;
    const result = await runKeysCli(['list'], { DATABASE_URL: url.toString(), LOG_LEVEL: 'debug' });
    assert.equal(result.code, 1);
    assert.equal(result.stdout, '');
    assert.match(result.stderr, /^The database named in DATABASE_URL does not exist \(3D000\)[^\n]*\n$/);
    if (url.password !== '') assert.ok(!result.stderr.includes(url.password));
  });
});
