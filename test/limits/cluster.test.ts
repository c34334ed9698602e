// Two real server processes on one PostgreSQL behind a round-robin proxy: rate limits and stream
// caps hold across them, and a killed instance gives back what it held within its bounds.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { revokeApiKey } from '../../lib/db/api-keys.ts';
import { maxLeaseTokens } from '../../lib/limits/lease.ts';
import { bucketPolicy } from '../../lib/limits/token-bucket.ts';
import { type Cluster, type ClusterInstance, startCluster } from '../support/cluster.ts';
import { TEST_DATABASE_URL } from '../support/config.ts';
import { type FakeUpstream, startFakeUpstream } from '../support/fake-upstream.ts';
import { bearer, createTestKey, type TestKey } from '../support/keys.ts';

const BURST = 20;
const PER_MINUTE = 60; // a token a second: a test's own duration refills only a few
const LEASE_FRACTION = 0.25;
const POLICY = bucketPolicy(PER_MINUTE, BURST);
const LEASE = maxLeaseTokens(POLICY, LEASE_FRACTION); // 5
const INSTANCES = 2;
const STREAM_TTL_MS = 2_000;
const ENV = {
  RATE_LIMIT_STORE: 'postgres-leased',
  RATE_LIMIT_BURST: String(BURST),
  RATE_LIMIT_PER_MINUTE: String(PER_MINUTE),
  RATE_LIMIT_LEASE_FRACTION: String(LEASE_FRACTION),
  MAX_CONCURRENT_STREAMS_PER_KEY: '2',
  STREAM_LEASE_TTL_MS: String(STREAM_TTL_MS),
  UPSTREAM_MAX_RETRIES: '0',
  // The upstream never ends: an answer must stop when its client leaves for its slot to come back.
  ANSWER_ON_DISCONNECT: 'abort',
};

/** Tokens the shared bucket refills over `ms`, rounded up: the slack every upper bound allows. */
function refilledOver(ms: number): number {
  return Math.ceil((ms / 1000) * POLICY.refillPerSecond);
}

/** Sends `count` GETs through the proxy, `concurrency` at a time; returns how many were admitted (200). */
async function burst(cluster: Cluster, key: TestKey, count: number, concurrency = 10): Promise<number> {
  let admitted = 0;
  for (let sent = 0; sent < count; sent += concurrency) {
    const batch = Array.from({ length: Math.min(concurrency, count - sent) }, () =>
      cluster.request('/v1/agents', { headers: bearer(key.key) }),
    );
    for (const res of await Promise.all(batch)) {
      assert.ok(res.status === 200 || res.status === 429, `status ${res.status}: ${res.body}`);
      if (res.status === 200) admitted++;
    }
  }
  return admitted;
}

async function status(instance: ClusterInstance, key: TestKey, path = '/v1/agents'): Promise<number> {
  const res = await fetch(`${instance.url}${path}`, { headers: bearer(key.key) });
  await res.arrayBuffer();
  return res.status;
}

/** POST /v1/chat on one instance; the answer streams until `abort` is called. */
async function openAnswer(instance: ClusterInstance, key: TestKey): Promise<{ status: number; abort(): void }> {
  const controller = new AbortController();
  const res = await fetch(`${instance.url}/v1/chat`, {
    method: 'POST',
    headers: { ...bearer(key.key), 'content-type': 'application/json' },
    body: JSON.stringify({ message: 'hello' }),
    signal: controller.signal,
  });
  // A refusal is read whole; an answer is left streaming (unread) until abort() ends it.
  if (res.status !== 200) await res.arrayBuffer();
  return { status: res.status, abort: () => controller.abort() };
}

async function liveStreamRows(cluster: Cluster, key: TestKey): Promise<number> {
  const { rows } = await cluster.pool.query<{ n: number }>(
    'SELECT count(*)::int AS n FROM stream_leases WHERE key = $1 AND expires_at > clock_timestamp()',
    [key.identity],
  );
  return rows[0]?.n ?? 0;
}

/** Polls `check` every 100 ms until it holds; resolves with the milliseconds that took, rejects after `timeoutMs`. */
async function msUntil(check: () => Promise<boolean>, timeoutMs: number): Promise<number> {
  const start = performance.now();
  while (!(await check())) {
    if (performance.now() - start > timeoutMs) throw new Error(`Condition not met within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return performance.now() - start;
}

describe('two instances with RATE_LIMIT_STORE=postgres-leased', {
  skip: !TEST_DATABASE_URL && 'needs TEST_DATABASE_URL',
}, () => {
  let fake: FakeUpstream;
  let cluster: Cluster;
  let a: ClusterInstance;
  let b: ClusterInstance;

  before(async () => {
    fake = await startFakeUpstream();
    fake.setBehaviour({ kind: 'endless', text: 'more ', intervalMs: 50 });
    cluster = await startCluster({
      instances: INSTANCES,
      processes: true,
      env: { ...ENV, OPENAI_BASE_URL: fake.url },
    });
    [a, b] = cluster.instances as [ClusterInstance, ClusterInstance];
  });
  after(async () => {
    await cluster?.close();
    await fake?.close();
  });

  it('a burst across both instances never admits more than the burst plus one lease per instance', async () => {
    const key = await createTestKey(cluster.pool, 'burst');
    const started = performance.now();
    const admitted = await burst(cluster, key, 3 * BURST);
    const bound = BURST + INSTANCES * LEASE + refilledOver(performance.now() - started);
    assert.ok(admitted >= BURST && admitted <= bound, `admitted ${admitted}, bound ${bound}`);
    assert.ok(
      cluster.connectionsPerInstance().every((n) => n > 0),
      'the proxy sent requests to both instances',
    );
  });

  it('both instances refill from one bucket by the database clock', async () => {
    const key = await createTestKey(cluster.pool, 'refill');
    await burst(cluster, key, 2 * BURST);
    // Ten seconds pass on the shared clock: ten tokens, for the two instances together.
    await cluster.pool.query(
      "UPDATE rate_limit_buckets SET updated_at = updated_at - interval '10 seconds' WHERE key = $1",
      [key.identity],
    );
    const started = performance.now();
    // Each instance remembers its last refusal until a token is due (at most a second here).
    await msUntil(
      async () => (await cluster.request('/v1/agents', { headers: bearer(key.key) })).status === 200,
      3_000,
    );
    const admitted = 1 + (await burst(cluster, key, 2 * BURST));
    const bound = 10 + INSTANCES * LEASE + refilledOver(performance.now() - started);
    assert.ok(admitted >= 10 && admitted <= bound, `admitted ${admitted} after the refill, bound ${bound}`);
  });

  it('a revoked key stops on both instances within the key cache lifetime', async () => {
    const key = await createTestKey(cluster.pool, 'revoked');
    assert.deepEqual([await status(a, key), await status(b, key)], [200, 200]);
    await revokeApiKey(cluster.pool, key.name);
    // The authenticator trusts a key it checked for 2 s; one poll interval on top.
    const ms = await msUntil(async () => (await status(a, key)) === 401 && (await status(b, key)) === 401, 5_000);
    assert.ok(ms <= 2_000 + 500, `revoked after ${Math.round(ms)} ms`);
  });

  it('with a cap of 2, the third concurrent answer is refused with 429 on either instance', async () => {
    const key = await createTestKey(cluster.pool, 'streams');
    const first = await openAnswer(a, key);
    const second = await openAnswer(b, key);
    assert.deepEqual([first.status, second.status], [200, 200]);
    // Both answers hold a row while they run (a refusal below is about the count, not an early end).
    assert.equal(await liveStreamRows(cluster, key), 2, 'both answers hold their slots');
    assert.equal((await openAnswer(a, key)).status, 429);
    assert.equal((await openAnswer(b, key)).status, 429);
    first.abort();
    second.abort();
    await msUntil(async () => (await liveStreamRows(cluster, key)) === 0, 3_000);
    const third = await openAnswer(b, key);
    assert.equal(third.status, 200, 'finished answers give their slots back on every instance');
    third.abort();
  });

  describe('after an instance holding leases is killed with SIGKILL', () => {
    let rateKey: TestKey;
    let streamKey: TestKey;
    let killedAt: number;
    let spentOnA = 0;

    before(async () => {
      rateKey = await createTestKey(cluster.pool, 'killed-rate');
      streamKey = await createTestKey(cluster.pool, 'killed-stream');
      // Four requests on A: leases of 1, 2 and then 4 tokens, so A dies holding 3 unspent ones.
      for (let i = 0; i < 4; i++) if ((await status(a, rateKey)) === 200) spentOnA++;
      const answer = await openAnswer(a, streamKey);
      assert.equal(answer.status, 200);
      await a.kill();
      killedAt = performance.now();
    });

    it('the survivor loses at most one lease of the killed instance from the shared burst', async () => {
      let admitted = 0;
      for (let i = 0; i < 2 * BURST; i++) if ((await status(b, rateKey)) === 200) admitted++;
      const left = BURST - spentOnA;
      const bound = left + refilledOver(performance.now() - killedAt);
      assert.ok(admitted >= left - LEASE && admitted <= bound, `survivor admitted ${admitted}, ${left} were left`);
    });

    it("the killed instance's stream lease stops counting within its TTL", async () => {
      const first = await openAnswer(b, streamKey);
      assert.equal(first.status, 200);
      const refused = await openAnswer(b, streamKey);
      assert.equal(refused.status, 429, "the dead instance's answer still counts");
      let second: { status: number; abort(): void } | undefined;
      await msUntil(async () => {
        second = await openAnswer(b, streamKey);
        return second.status === 200;
      }, 2 * STREAM_TTL_MS);
      const ms = performance.now() - killedAt;
      assert.ok(ms <= STREAM_TTL_MS + 1_000, `a slot came back ${Math.round(ms)} ms after the kill`);
      first.abort();
      second?.abort();
    });
  });
});
