// The API key repository against a real database: hashes in, metadata out, revocation by name.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { before, describe, it } from 'node:test';
import {
  countApiKeys,
  findApiKeyByHash,
  getApiKey,
  insertApiKey,
  listApiKeys,
  revokeApiKey,
  updateApiKeyPolicy,
} from '../../lib/db/api-keys.ts';
import { migrate } from '../../lib/db/migrate.ts';
import { ENGINES, engineDatabase } from '../support/engines.ts';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

function hashOf(label: string): Buffer {
  return createHash('sha256').update(label).digest();
}

for (const engine of ENGINES) {
  // One fresh database per engine: the listing and count tests see only these tests' keys.
  describe(`API key repository on ${engine.label}`, { skip: engine.skip }, () => {
    const db = engineDatabase(engine, 'api-keys-test-');

    before(() => migrate(db.pool));

    it('insertApiKey() stores the hash under a new id, and findApiKeyByHash() finds it as active', async () => {
      const hash = hashOf('alpha');
      const id = await insertApiKey(db.pool, { name: 'alpha', prefix: 'sk-alpha', hash });
      assert.match(id, UUID);
      const found = await findApiKeyByHash(db.pool, hash);
      assert.deepEqual(found, { id, hash, revoked: false, expired: false, expiresInMs: undefined, policy: {} });
    });

    it('findApiKeyByHash() answers undefined for a hash no key has', async () => {
      assert.equal(await findApiKeyByHash(db.pool, hashOf('nobody')), undefined);
    });

    it('revokeApiKey() revokes an active key once, and findApiKeyByHash() then reports it revoked', async () => {
      const hash = hashOf('beta');
      const id = await insertApiKey(db.pool, { name: 'beta', prefix: 'sk-beta', hash });
      assert.equal(await revokeApiKey(db.pool, 'beta'), true);
      assert.equal(await revokeApiKey(db.pool, 'beta'), false, 'already revoked');
      assert.equal(await revokeApiKey(db.pool, 'no-such-key'), false);
      assert.deepEqual(await findApiKeyByHash(db.pool, hash), {
        id,
        hash,
        revoked: true,
        expired: false,
        expiresInMs: undefined,
        policy: {},
      });
    });

    it('listApiKeys() lists metadata oldest first, names breaking ties, with ISO times and never a hash', async () => {
      await insertApiKey(db.pool, { name: 'zulu', prefix: 'sk-zulu', hash: hashOf('zulu') });
      await db.pool.query('UPDATE api_keys SET created_at = $1', ['2026-01-02T03:04:05.678Z']);
      await db.pool.query("UPDATE api_keys SET created_at = created_at - interval '1 day' WHERE name = 'zulu'");
      const keys = await listApiKeys(db.pool);
      assert.deepEqual(
        keys.map((k) => k.name),
        ['zulu', 'alpha', 'beta'],
      );
      for (const key of keys) {
        assert.deepEqual(Object.keys(key).sort(), ['createdAt', 'id', 'name', 'policy', 'prefix', 'revokedAt']);
        assert.match(key.createdAt, ISO);
      }
      assert.equal(keys[1]?.createdAt, '2026-01-02T03:04:05.678Z');
      assert.deepEqual(
        keys.map((k) => [k.prefix, k.revokedAt === null ? null : ISO.test(k.revokedAt)]),
        [
          ['sk-zulu', null],
          ['sk-alpha', null],
          ['sk-beta', true],
        ],
      );
    });

    it('countApiKeys() counts every key, revoked ones included', async () => {
      assert.equal(await countApiKeys(db.pool), 3);
      await insertApiKey(db.pool, { name: 'gamma', prefix: 'sk-gamma', hash: hashOf('gamma') });
      assert.equal(await countApiKeys(db.pool), 4);
    });

    it('insertApiKey() stores a policy, and findApiKeyByHash() and getApiKey() read it back', async () => {
      const hash = hashOf('limited');
      const expiresAt = new Date(Date.now() + 3_600_000);
      const policy = {
        rateLimitPerMinute: 30,
        rateLimitBurst: 5,
        maxStreams: 2,
        tokensPerDay: 5_000_000_000,
        expiresAt,
        agents: ['support', 'docs'],
      };
      // null (the default) is the same as leaving a field out.
      await insertApiKey(db.pool, {
        name: 'limited',
        prefix: 'sk-limited',
        hash,
        policy: { ...policy, maxStreams: null },
      });
      const found = await findApiKeyByHash(db.pool, hash);
      const { maxStreams: _unset, ...stored } = policy;
      assert.deepEqual(found?.policy, stored);
      assert.equal(found?.expired, false);
      assert.ok(
        found?.expiresInMs !== undefined && Math.abs(found.expiresInMs - 3_600_000) < 60_000,
        `expires in ${found?.expiresInMs} ms`,
      );
      assert.deepEqual((await getApiKey(db.pool, 'limited'))?.policy, stored);
      assert.equal(await getApiKey(db.pool, 'nobody'), undefined);
    });

    it('updateApiKeyPolicy() sets and clears only the fields it names, on active keys only', async () => {
      assert.equal(await updateApiKeyPolicy(db.pool, 'limited', { rateLimitPerMinute: null, maxStreams: 7 }), true);
      const policy = (await getApiKey(db.pool, 'limited'))?.policy;
      assert.equal(policy?.rateLimitPerMinute, undefined);
      assert.equal(policy?.maxStreams, 7);
      assert.equal(policy?.rateLimitBurst, 5);
      assert.deepEqual(policy?.agents, ['support', 'docs']);
      assert.equal(await updateApiKeyPolicy(db.pool, 'beta', { maxStreams: 1 }), false, 'beta is revoked');
      assert.equal(await updateApiKeyPolicy(db.pool, 'no-such-key', { maxStreams: 1 }), false);
      await assert.rejects(updateApiKeyPolicy(db.pool, 'limited', {}), RangeError);
    });

    it('findApiKeyByHash() reports a key past its expiry by the database clock as expired', async () => {
      const hash = hashOf('expired');
      await insertApiKey(db.pool, { name: 'expired', prefix: 'sk-expired', hash });
      await db.pool.query("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE name = 'expired'");
      const found = await findApiKeyByHash(db.pool, hash);
      assert.equal(found?.expired, true);
      assert.ok((found?.expiresInMs ?? 0) < 0);
    });

    it('the database refuses a limit that is not positive', async () => {
      const update = db.pool.query("UPDATE api_keys SET max_streams = 0 WHERE name = 'limited'");
      await assert.rejects(update, { code: '23514' });
    });

    it('insertApiKey() refuses a name already taken with a 23505 error', async () => {
      await insertApiKey(db.pool, { name: 'twice', prefix: 'sk-one', hash: hashOf('twice-1') });
      await assert.rejects(insertApiKey(db.pool, { name: 'twice', prefix: 'sk-two', hash: hashOf('twice-2') }), {
        code: '23505',
      });
    });
  });
}
