import assert from 'node:assert/strict';
import { once } from 'node:events';
import { rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { performance } from 'node:perf_hooks';
import { after, before, describe, it } from 'node:test';
import { TEST_DATABASE_URL } from './support/config.ts';
import { startTestServer, type TestServer } from './support/server.ts';
import { startTcpProxy, type TcpProxy } from './support/tcp-proxy.ts';

const OK_BODY = '{"status":"ok"}';
const UNAVAILABLE_BODY = '{"status":"unavailable"}';

/** Splits what a keep-alive connection received into responses (every response here has a Content-Length). */
function splitResponses(raw: string): Array<{ status: number; body: string }> {
  const out: Array<{ status: number; body: string }> = [];
  let rest = raw;
  while (rest !== '') {
    const end = rest.indexOf('\r\n\r\n');
    assert.ok(end !== -1, `a complete response head in ${JSON.stringify(rest)}`);
    const head = rest.slice(0, end);
    const length = Number(/\r\ncontent-length: (\d+)/i.exec(head)?.[1]);
    out.push({ status: Number(head.split(' ')[1]), body: rest.slice(end + 4, end + 4 + length) });
    rest = rest.slice(end + 4 + length);
  }
  return out;
}

async function waitForStatus(url: string, status: number, timeoutMs: number): Promise<Response> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const res = await fetch(url);
    if (res.status === status || performance.now() > deadline) return res;
    await res.arrayBuffer();
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

describe('/health', () => {
  let server: TestServer;
  let drained = false;

  before(async () => {
    server = await startTestServer();
  });
  after(async () => {
    // The last test shuts the server down itself; only its data directory is left to remove.
    if (drained) await rm(server.config.dataDir, { recursive: true, force: true });
    else await server?.close();
  });

  it('GET /health answers 200 with exactly {"status":"ok"}', async () => {
    const res = await fetch(`${server.url}/health`);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-type'), 'application/json; charset=utf-8');
    assert.equal(await res.text(), OK_BODY);
  });

  it('GET /health/live answers 200 with exactly {"status":"ok"}', async () => {
    const res = await fetch(`${server.url}/health/live`);
    assert.equal(res.status, 200);
    assert.equal(await res.text(), OK_BODY);
  });

  it('GET /health answers 503 {"status":"unavailable"} to a request that arrives while the server drains', async () => {
    const { hostname, port } = new URL(server.url);
    const socket = connect(Number(port), hostname);
    await once(socket, 'connect');
    let raw = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => (raw += chunk));
    const closed = once(socket, 'close');
    // One write: a whole request, then the start of a second. Once the first is answered, the
    // server has read the second's start, so the connection is busy and draining must wait for it.
    socket.write('GET /health/live HTTP/1.1\r\nHost: test\r\n\r\nGET /health HTTP/1.1\r\nHost: test\r\n');
    while (!raw.includes(OK_BODY)) await once(socket, 'data');
    const stopping = server.shutdown(5_000);
    drained = true;
    socket.write('\r\n');
    await closed;
    await stopping;
    assert.deepEqual(splitResponses(raw), [
      { status: 200, body: OK_BODY },
      { status: 503, body: UNAVAILABLE_BODY },
    ]);
  });
});

describe('/health with the database behind a proxy', { skip: !TEST_DATABASE_URL && 'needs TEST_DATABASE_URL' }, () => {
  let proxy: TcpProxy;
  let server: TestServer;

  before(async () => {
    const target = new URL(TEST_DATABASE_URL as string);
    proxy = await startTcpProxy({ host: target.hostname, port: Number(target.port || 5432) });
    const viaProxy = new URL(target);
    viaProxy.host = `${proxy.host}:${proxy.port}`;
    server = await startTestServer({ DATABASE_URL: viaProxy.toString() });
  });
  after(async () => {
    // The proxy first: it cuts any connection a blackholed query still holds, so the pool can end.
    await proxy?.close();
    await server?.close();
  });

  it('GET /health answers 503 with exactly {"status":"unavailable"} within 6.5 s when the database hangs', async () => {
    proxy.setMode('blackhole');
    const started = performance.now();
    const res = await fetch(`${server.url}/health`);
    const elapsedMs = performance.now() - started;
    assert.equal(res.status, 503);
    assert.equal(await res.text(), UNAVAILABLE_BODY);
    assert.ok(elapsedMs < 6_500, `answered after ${Math.round(elapsedMs)} ms`);
  });

  it('GET /health/live answers 200 at once while the database is blackholed', async () => {
    proxy.setMode('blackhole');
    const started = performance.now();
    const res = await fetch(`${server.url}/health/live`);
    assert.equal(res.status, 200);
    assert.ok(performance.now() - started < 500);
  });

  it('GET /health recovers to 200 by itself once the database answers again', async () => {
    proxy.setMode('blackhole');
    const down = await fetch(`${server.url}/health`);
    assert.equal(down.status, 503);
    await down.arrayBuffer();
    proxy.setMode('pass');
    const res = await waitForStatus(`${server.url}/health`, 200, 5_000);
    assert.equal(res.status, 200);
    assert.equal(await res.text(), OK_BODY);
  });
});
