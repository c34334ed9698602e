import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { hashApiKey } from '../../lib/auth/api-key.ts';
import { CHAT_ENV, mintKey } from '../support/chat.ts';
import { startTestServer, type TestServer } from '../support/server.ts';

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] as number;
}

describe('POST /v1/chat with no model configured', () => {
  let server: TestServer;
  let key: string;

  before(async () => {
    server = await startTestServer({ ...CHAT_ENV, OPENAI_API_KEY: '', OPENAI_BASE_URL: '' });
    key = await mintKey(server.db.pool);
  });
  after(() => server?.close());

  it('answers 503 MODEL_NOT_CONFIGURED naming both variables at once (median < 50 ms), storing nothing', async () => {
    const timings: number[] = [];
    for (let i = 0; i < 21; i++) {
      const started = performance.now();
      const res = await fetch(`${server.url}/v1/chat`, {
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
        body: JSON.stringify({ message: 'Hello?' }),
      });
      const body = (await res.json()) as { code: string; detail: string };
      timings.push(performance.now() - started);
      assert.equal(res.status, 503);
      assert.equal(body.code, 'MODEL_NOT_CONFIGURED');
      assert.match(body.detail, /OPENAI_API_KEY/);
      assert.match(body.detail, /OPENAI_BASE_URL/);
    }
    assert.ok(median(timings) < 50, `median ${median(timings).toFixed(1)} ms`);
    const { rows } = await server.db.pool.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM conversations
       WHERE owner = 'key:' || (SELECT id FROM api_keys WHERE key_hash = $1)`,
      [hashApiKey(key)],
    );
    assert.equal(rows[0]?.n, 0, 'no question is stored without a model to answer it');
    assert.ok(!server.logs().includes('"level":"error"'), 'nothing is logged as an error');
  });
});
