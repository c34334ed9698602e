import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { revokeApiKey } from '../../lib/db/api-keys.ts';
import { TEST_DATABASE_URL } from '../support/config.ts';
import { scratchDatabase } from '../support/database.ts';
import {
  bearer,
  createTestKey,
  dumpTables,
  keySpellings,
  keysCliEnv,
  msUntil,
  runKeysCli,
  uniqueKeyName,
} from '../support/keys.ts';
import { startTestServer, type TestServer } from '../support/server.ts';

async function status(server: TestServer, key: string): Promise<number> {
  const res = await fetch(`${server.url}/v1/agents`, { headers: bearer(key) });
  await res.arrayBuffer();
  return res.status;
}

describe('API keys through the real app', () => {
  let dataDir: string;
  // A database of its own: the table dump below reads every row, and the shared one keeps growing.
  let scratch: { url: string; drop(): Promise<void> } | undefined;
  let server: TestServer;
  let name: string;
  let key: string;

  before(async () => {
    // The key comes from the real `keys create`, then a server opens the same database.
    dataDir = await mkdtemp(join(tmpdir(), 'identity-test-'));
    scratch = TEST_DATABASE_URL === undefined ? undefined : await scratchDatabase(TEST_DATABASE_URL);
    name = uniqueKeyName('identity');
    const created = await runKeysCli(['create', name], keysCliEnv(dataDir, scratch?.url));
    assert.equal(created.code, 0, created.stderr);
    key = created.stdout.trim();
    server = await startTestServer({ DATA_DIR: dataDir, DATABASE_URL: scratch?.url });
  });
  after(async () => {
    await server?.close();
    await scratch?.drop();
    await rm(dataDir, { recursive: true, force: true });
  });

  it('accepts a key made by keys create on GET /v1/agents', async () => {
    assert.equal(await status(server, key), 200);
  });

  it("stores only the key's SHA-256 and display prefix, and no table holds the key", async () => {
    await status(server, key);
    const { rows } = await server.db.pool.query<{ prefix: string; key_hash: Buffer }>(
      'SELECT prefix, key_hash FROM api_keys WHERE name = $1',
      [name],
    );
    assert.deepEqual(rows, [{ prefix: key.slice(0, 12), key_hash: createHash('sha256').update(key).digest() }]);
    const dump = await dumpTables(server.db.pool);
    assert.match(dump, new RegExp(name)); // the dump did reach the key's row
    for (const spelling of keySpellings(key)) assert.ok(!dump.includes(spelling), 'a table holds the raw key');
  });

  it('writes the key to no log line, whether it is accepted or a near miss is refused', async () => {
    const nearMiss = `${key.slice(0, 20)}${key[20] === 'A' ? 'B' : 'A'}${key.slice(21)}`;
    assert.equal(await status(server, key), 200);
    assert.equal(await status(server, nearMiss), 401);
    const logs = server.logs();
    assert.match(logs, /"kind":"auth_failure"/); // the refusal was logged
    assert.match(logs, /"status":200/); // and so was the success
    for (const spelling of [...keySpellings(key), ...keySpellings(nearMiss)])
      assert.ok(!logs.includes(spelling), 'a log line holds a key');
  });

  it('refuses a revoked key within 5 s and keeps refusing it', async () => {
    const revoked = await createTestKey(server.db.pool, 'identity-revoked');
    assert.equal(await status(server, revoked.key), 200); // now cached
    assert.equal(await revokeApiKey(server.db.pool, revoked.name), true);
    const ms = await msUntil(async () => (await status(server, revoked.key)) === 401, 5_000);
    assert.ok(ms < 5_000, `refused after ${ms} ms`);
    assert.deepEqual([await status(server, revoked.key), await status(server, revoked.key)], [401, 401]);
  });
});

describe('API key revocation across instances', { skip: !TEST_DATABASE_URL && 'needs TEST_DATABASE_URL' }, () => {
  const servers: TestServer[] = [];

  before(async () => {
    servers.push(await startTestServer(), await startTestServer());
  });
  after(() => Promise.all(servers.map((server) => server.close())));

  it('refuses a revoked key on every instance within 5 s', async () => {
    const revoked = await createTestKey(servers[0]!.db.pool, 'identity-everywhere');
    // Both instances have validated (and cached) the key before it is revoked.
    assert.deepEqual(await Promise.all(servers.map((server) => status(server, revoked.key))), [200, 200]);
    assert.equal(await revokeApiKey(servers[0]!.db.pool, revoked.name), true);
    const waits = await Promise.all(
      servers.map((server) => msUntil(async () => (await status(server, revoked.key)) === 401, 5_000)),
    );
    for (const ms of waits) assert.ok(ms < 5_000, `refused after ${ms} ms`);
  });
});
