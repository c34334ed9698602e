import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type pg from 'pg';
import type { Lease } from '../../lib/limits/concurrency.ts';
import { createStreamLeases, type StreamLeases } from '../../lib/limits/stream-leases.ts';
import { BACKENDS, type Backend } from '../support/db-backends.ts';

// The embedded database is one process by construction: the server counts streams in memory there.
const SHARED_BACKENDS = BACKENDS.filter((kind) => kind.label !== 'PGlite');

async function rowsOf(pool: pg.Pool, key: string): Promise<number> {
  const { rows } = await pool.query<{ n: number }>(
    'SELECT count(*)::int AS n FROM stream_leases WHERE key = $1 AND expires_at > clock_timestamp()',
    [key],
  );
  return rows[0]?.n ?? 0;
}

/** Polls the database every 10 ms until `check` holds; fails after two seconds. */
async function until(check: () => Promise<boolean>): Promise<void> {
  const deadline = performance.now() + 2_000;
  while (!(await check())) {
    if (performance.now() > deadline) throw new Error('Timed out waiting for the database');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

for (const kind of SHARED_BACKENDS) {
  describe(`createStreamLeases() on ${kind.label}`, { skip: kind.skip }, () => {
    let backend: Backend;
    const opened: StreamLeases[] = [];
    let n = 0;
    const freshKey = (): string => `key:streams-${++n}`;

    function open(index: 0 | 1, maxPerKey = 2, ttlMs = 30_000): StreamLeases {
      // The timer is left slow; tests call heartbeat() themselves.
      const leases = createStreamLeases(backend.pools[index], { maxPerKey, ttlMs, heartbeatMs: 600_000 });
      opened.push(leases);
      return leases;
    }

    before(async () => {
      backend = await kind.open();
    });
    after(async () => {
      for (const leases of opened) await leases.close();
      await backend?.close();
    });

    it('streamLeases.acquire() admits up to the cap per key and refuses the next', async () => {
      const leases = open(0);
      const key = freshKey();
      const held = [await leases.acquire(key), await leases.acquire(key)];
      assert.ok(held.every((lease) => lease !== undefined));
      assert.equal(await leases.acquire(key), undefined);
      assert.equal(leases.inUse(key), 2);
      assert.equal((await leases.acquire(freshKey())) !== undefined, true, 'another key has its own cap');
      assert.equal(await rowsOf(backend.direct, key), 2);
    });

    it('two instances asking at once never admit more than the cap for a key', async () => {
      const [a, b] = [open(0), open(1)];
      for (let round = 0; round < 5; round++) {
        const key = freshKey();
        const asks = Array.from({ length: 12 }, (_, i) => (i % 2 === 0 ? a : b).acquire(key));
        const admitted = (await Promise.all(asks)).filter((lease) => lease !== undefined);
        assert.equal(admitted.length, 2, `round ${round}`);
        assert.equal(await rowsOf(backend.direct, key), 2);
      }
    });

    it('lease.release() frees the slot for every instance, once however often it is called', async () => {
      const [a, b] = [open(0), open(1)];
      const key = freshKey();
      const first = (await a.acquire(key)) as Lease;
      await a.acquire(key);
      assert.equal(await b.acquire(key), undefined);
      first.release();
      first.release();
      assert.equal(a.inUse(key), 1);
      await until(async () => (await rowsOf(backend.direct, key)) === 1);
      assert.notEqual(await b.acquire(key), undefined);
      assert.equal(await a.acquire(key), undefined, 'the second release gave nothing more back');
    });

    it('the leases of an instance that stops renewing stop counting once their TTL has passed', async () => {
      const [dead, alive] = [open(0, 2, 5_000), open(1, 2, 5_000)];
      const key = freshKey();
      await dead.acquire(key);
      await dead.acquire(key);
      assert.equal(await alive.acquire(key), undefined);
      // The TTL passes on the database's clock, which every instance reads.
      await backend.direct.query(
        "UPDATE stream_leases SET expires_at = clock_timestamp() - interval '1 ms' WHERE instance = $1",
        [dead.instance],
      );
      assert.notEqual(await alive.acquire(key), undefined);
      assert.notEqual(await alive.acquire(key), undefined);
      assert.equal(await alive.acquire(key), undefined);
    });

    it('streamLeases.heartbeat() pushes every row of its instance a TTL ahead and deletes expired rows', async () => {
      const leases = open(0, 2, 20_000);
      const other = open(1, 2, 20_000);
      const key = freshKey();
      await leases.acquire(key);
      await leases.acquire(freshKey());
      await other.acquire(key);
      await backend.direct.query(
        "UPDATE stream_leases SET expires_at = clock_timestamp() + interval '1 second' WHERE instance = $1",
        [leases.instance],
      );
      await backend.direct.query(
        "UPDATE stream_leases SET expires_at = clock_timestamp() - interval '1 second' WHERE instance = $1",
        [other.instance],
      );
      await leases.heartbeat();
      const { rows } = await backend.direct.query<{ instance: string; left: number }>(
        `SELECT instance::text, EXTRACT(EPOCH FROM expires_at - clock_timestamp())::float8 AS left
         FROM stream_leases WHERE instance IN ($1, $2)`,
        [leases.instance, other.instance],
      );
      assert.equal(rows.length, 2, "the other instance's expired row is gone");
      for (const row of rows) {
        assert.equal(row.instance, leases.instance);
        assert.ok(row.left > 15 && row.left <= 20, `expires in ${row.left} s`);
      }
    });

    it('streamLeases.close() removes the rows of its instance', async () => {
      const leases = open(0);
      const key = freshKey();
      await leases.acquire(key);
      await leases.close();
      assert.equal(await rowsOf(backend.direct, key), 0);
    });
  });
}
