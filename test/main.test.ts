import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { mintKey } from './support/chat.ts';
import { startTestServer, type TestServer } from './support/server.ts';

const READINESS_MS = 800;

/** Resolves true when a TCP connection to `url` is accepted, false when it is refused. */
async function accepts(url: string): Promise<boolean> {
  const { hostname, port } = new URL(url);
  const socket = connect(Number(port), hostname);
  try {
    await once(socket, 'connect');
    return true;
  } catch {
    return false;
  } finally {
    socket.destroy();
  }
}

describe('startServer() drain', () => {
  let server: TestServer;
  let key: string;

  before(async () => {
    server = await startTestServer({ DRAIN_READINESS_MS: String(READINESS_MS), SHUTDOWN_GRACE_MS: '3000' });
    key = await mintKey(server.db.pool);
  });
  after(() => server?.close());

  it('shutdown() keeps listening for DRAIN_READINESS_MS answering 503, then refuses connections', async () => {
    const startedAt = performance.now();
    const stopping = server.shutdown();

    const health = await fetch(`${server.url}/health`);
    assert.equal(health.status, 503, 'readiness fails at once');
    assert.deepEqual(await health.json(), { status: 'unavailable' });

    const api = await fetch(`${server.url}/v1/agents`, { headers: { authorization: `Bearer ${key}` } });
    assert.equal(api.status, 503);
    assert.equal(api.headers.get('connection'), 'close');
    assert.equal(api.headers.get('x-content-type-options'), 'nosniff', 'the refusal carries the security headers');
    assert.equal(((await api.json()) as { code: string }).code, 'SHUTTING_DOWN');

    const live = await fetch(`${server.url}/health/live`);
    assert.equal(live.status, 200, 'liveness stays up: the process is healthy, only leaving');
    await live.arrayBuffer();

    await sleep(READINESS_MS / 2 - (performance.now() - startedAt));
    assert.equal(await accepts(server.url), true, 'still listening half-way through the window');
    await stopping;
    assert.ok(performance.now() - startedAt >= READINESS_MS, 'the listener stayed open for the whole window');
    assert.equal(await accepts(server.url), false, 'the listener is closed after the drain');
  });
});
