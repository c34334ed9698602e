// Provider failover and circuit breakers through the real app: an agent with a fallback on a second
// fake provider (its own key, named by apiKeyEnv), the answer stored with the model that wrote it,
// GET /health/upstream, the breaker metrics and security events, and no fallback key in any log line.
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { labelOf } from '../../lib/chat/upstream-router.ts';
import { type ChatHarness, readEvents, startChat } from '../support/chat.ts';
import { CANARY } from '../support/config.ts';
import type { Behaviour, FakeUpstream } from '../support/fake-upstream.ts';
import { startFakeUpstream } from '../support/fake-upstream.ts';
import { startTestServer } from '../support/server.ts';

const BACKUP_KEY = 'backup-provider-canary-3e7a1f9c5d2b8a40';
const metricsAuth = { authorization: `Bearer ${CANARY}` };

interface Stored {
  model: string | null;
  content: string;
  status: string;
}

/** Writes an agents file with one agent, `resilient`, on model-a with model-b on `backup` as its fallback. */
async function agentsFile(dir: string, backup: FakeUpstream, apiKeyEnv = 'BACKUP_PROVIDER_KEY'): Promise<string> {
  const file = join(dir, `agents-${apiKeyEnv}.json`);
  const fallbacks = [{ model: 'model-b', baseURL: backup.url, apiKeyEnv }];
  await writeFile(
    file,
    JSON.stringify([
      { id: 'resilient', description: 'Fails over', systemPrompt: 'Be brief.', model: 'model-a', fallbacks },
    ]),
  );
  return file;
}

function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

describe('POST /v1/chat with an agent that has a fallback', () => {
  let h: ChatHarness;
  let backup: FakeUpstream;
  let dir: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'failover-'));
    backup = await startFakeUpstream({ apiKey: BACKUP_KEY });
    h = await startChat({ AGENTS_FILE: await agentsFile(dir, backup), BACKUP_PROVIDER_KEY: BACKUP_KEY });
  });
  after(async () => {
    await h?.close();
    await backup?.close();
    await rm(dir, { recursive: true, force: true });
  });

  async function storedAssistant(conversationId: string): Promise<Stored | undefined> {
    const { rows } = await h.server.db.pool.query<Stored>(
      "SELECT model, content, status FROM messages WHERE conversation_id = $1 AND role = 'assistant'",
      [conversationId],
    );
    return rows[0];
  }

  const failures: Array<[string, Behaviour]> = [
    ['a 500', { kind: 'status', status: 500 }],
    ['a 429', { kind: 'status', status: 429, retryAfter: '30' }],
    ['no first token in time', { kind: 'stall', afterChunks: 0 }],
  ];
  for (const [name, behaviour] of failures) {
    it(`POST /v1/chat streams the fallback's answer after ${name} from model-a, stored with model-b`, async () => {
      h.fake.queue(behaviour);
      backup.queue({ kind: 'normal', chunks: ['Saved', ' by b'] });
      const res = await h.chat({ message: 'Hello', agent: 'resilient' });
      assert.equal(res.status, 200);
      const events = await readEvents(res);
      const text = events.flatMap((e) => (e.event === 'delta' ? [(e.data as { text: string }).text] : [])).join('');
      assert.equal(text, 'Saved by b');
      assert.equal(events.at(-1)?.event, 'done');
      const { conversationId } = events[0]?.data as { conversationId: string };
      assert.deepEqual(await storedAssistant(conversationId), {
        model: 'model-b',
        content: 'Saved by b',
        status: 'complete',
      });
      assert.equal(backup.requests.at(-1)?.headers.authorization, `Bearer ${BACKUP_KEY}`);
    });
  }

  it('POST /v1/chat stores an answer of the agent model itself with that model', async () => {
    const res = await h.chat({ message: 'Hello', agent: 'resilient', stream: false });
    const body = (await res.json()) as { conversationId: string };
    assert.equal((await storedAssistant(body.conversationId))?.model, 'model-a');
  });

  it('GET /metrics counts the fallbacks by the upstream that was left', async () => {
    const res = await fetch(`${h.server.url}/metrics`, { headers: metricsAuth });
    const text = await res.text();
    assert.ok((sample(text, `upstream_fallbacks_total{upstream="${labelOf(h.fake.url, 'model-a')}"}`) ?? 0) >= 3);
    assert.equal(sample(text, `upstream_fallbacks_total{upstream="${labelOf(backup.url, 'model-b')}"}`), 0);
    assert.equal(sample(text, `upstream_breaker_state{upstream="${labelOf(backup.url, 'model-b')}"}`), 0);
  });

  it('GET /health/upstream lists each breaker by origin and model with its state, and nothing else', async () => {
    const res = await fetch(`${h.server.url}/health/upstream`, { headers: metricsAuth });
    assert.equal(res.status, 200);
    const text = await res.text();
    const body = JSON.parse(text) as { upstreams: Array<{ upstream: string; state: string }> };
    assert.deepEqual(Object.keys(body), ['upstreams']);
    const byLabel = new Map(body.upstreams.map((u) => [u.upstream, u]));
    for (const label of [
      labelOf(h.fake.url, h.server.config.upstream.model),
      labelOf(h.fake.url, 'model-a'),
      labelOf(backup.url, 'model-b'),
    ]) {
      assert.deepEqual(byLabel.get(label), { upstream: label, state: 'closed' });
    }
    assert.ok(!text.includes('/v1'), 'no URL path');
    for (const secret of [BACKUP_KEY, CANARY]) assert.ok(!text.includes(secret));
  });

  it('GET /health/upstream without the metrics token answers 401 and logs metrics_denied', async () => {
    const res = await fetch(`${h.server.url}/health/upstream`);
    assert.equal(res.status, 401);
    assert.equal(res.headers.get('www-authenticate'), 'Bearer');
    assert.ok(!(await res.text()).includes('upstreams'));
    assert.match(h.server.logs(), /"kind":"metrics_denied"/);
  });

  it('no log line holds the fallback key, which is on the redaction list from the start', () => {
    const logs = h.server.logs();
    assert.match(logs, /upstream fallback/);
    assert.ok(!logs.includes(BACKUP_KEY));
    assert.ok(!logs.includes(BACKUP_KEY.slice(0, 20)));
    assert.equal(h.server.log.scrub(`x ${BACKUP_KEY} y`), 'x [REDACTED] y');
  });
});

describe('POST /v1/chat when the upstream circuit breaker opens', () => {
  let h: ChatHarness;

  before(async () => {
    h = await startChat({ UPSTREAM_BREAKER_FAILURES: '2' });
  });
  after(() => h?.close());

  it('POST /v1/chat answers an open breaker 503 with Retry-After, calling and storing nothing', async () => {
    // A key of its own: other test files write conversations to the same database meanwhile.
    const key = await h.mintKey();
    h.fake.queue({ kind: 'status', status: 500 }, { kind: 'status', status: 500 });
    for (let i = 0; i < 2; i++) {
      const res = await h.chat({ message: 'Hello' }, { key });
      assert.equal(res.status, 502);
      await res.arrayBuffer();
    }
    const sent = h.fake.requests.length;
    const conversations = async (): Promise<number> => {
      const list = await h.call('GET', '/v1/conversations', key);
      return ((await list.json()) as { conversations: unknown[] }).conversations.length;
    };
    const stored = await conversations();
    const res = await h.chat({ message: 'Hello' }, { key });
    assert.equal(res.status, 503);
    assert.equal(await conversations(), stored, 'nothing was stored for a refused turn');
    const retryAfter = Number(res.headers.get('retry-after'));
    assert.ok(retryAfter >= 29 && retryAfter <= 30, `Retry-After ${retryAfter}`);
    const body = (await res.json()) as { code: string };
    assert.equal(body.code, 'UPSTREAM_UNAVAILABLE');
    assert.equal(h.fake.requests.length, sent, 'the provider was not called');
  });

  it('the open breaker shows in /health/upstream, in upstream_breaker_state and as a security event', async () => {
    const label = labelOf(h.fake.url, h.server.config.upstream.model);
    const health = (await (await fetch(`${h.server.url}/health/upstream`, { headers: metricsAuth })).json()) as {
      upstreams: Array<{ upstream: string; state: string }>;
    };
    assert.deepEqual(health.upstreams, [{ upstream: label, state: 'open' }]);
    const metrics = await (await fetch(`${h.server.url}/metrics`, { headers: metricsAuth })).text();
    assert.equal(sample(metrics, `upstream_breaker_state{upstream="${label}"}`), 2);
    assert.equal(sample(metrics, 'security_events_total{kind="upstream_breaker"}'), 1);
    const event = h.server
      .logs()
      .split('\n')
      .find((l) => l.includes('"kind":"upstream_breaker"'));
    assert.ok(event, 'a security event line');
    const fields = JSON.parse(event) as Record<string, unknown>;
    assert.deepEqual(
      [fields['event'], fields['upstream'], fields['from'], fields['state']],
      ['security', label, 'closed', 'open'],
    );
  });
});

describe('startServer() with a fallback key variable that is not set', () => {
  it('startServer() refuses to start, naming the agents file entry and the variable', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'failover-'));
    const backup = await startFakeUpstream();
    try {
      const file = await agentsFile(dir, backup, 'UNSET_PROVIDER_KEY');
      await assert.rejects(startTestServer({ AGENTS_FILE: file }), {
        message: `Invalid agents file ${file}:\n  - [0].fallbacks[0].apiKeyEnv: UNSET_PROVIDER_KEY is not set`,
      });
    } finally {
      await backup.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
