// Raw-socket attacks against the running app: slow clients, oversized and ambiguous requests,
// pipelining, request smuggling and a crowd of idle connections. Every check looks at the bytes
// on the wire, because these attacks live below what fetch() lets a test send.

import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { connectionBudget } from '../../lib/http/server.ts';
import { type ChatHarness, startChat, waitFor } from '../support/chat.ts';
import { runLock } from '../support/run-lock.ts';
import {
  assertSecurityHeaders,
  assertSettled,
  assistantStatuses,
  exchange,
  mintIdentity,
  openFileLimit,
  openSocket,
  problemCode,
  sleep,
} from './support.ts';

const HEADERS_TIMEOUT_MS = 2_000;
const REQUEST_TIMEOUT_MS = 3_000;
// lib/http/server.ts checks both timeouts on a 1 s sweep, so a cut can come up to a sweep late.
const SWEEP_MS = 1_000;
// Long enough to open 1,500 connections under coverage on a busy 2-core machine before any is cut.
const CROWD_HEADERS_TIMEOUT_MS = 6_000;
const MARGIN_MS = 1_000;
const HOST = 'Host: 127.0.0.1\r\n';
const LIVE = `GET /health/live HTTP/1.1\r\n${HOST}\r\n`;

describe('raw-socket attacks on the running server', () => {
  let h: ChatHarness;
  let url: string;
  const clients = new Set<Socket>();

  // The other load suite, run concurrently, would starve this one past its deadlines.
  let releaseLoadLock: (() => void) | undefined;

  before(async () => {
    releaseLoadLock = await runLock('load-test');
    h = await startChat({
      HEADERS_TIMEOUT_MS: String(HEADERS_TIMEOUT_MS),
      REQUEST_TIMEOUT_MS: String(REQUEST_TIMEOUT_MS),
      MAX_CONCURRENT_STREAMS_PER_KEY: '10',
      LOG_LEVEL: 'info',
      // The slow-read test needs a 20 MB answer: room for it past the answer and response caps.
      MAX_ANSWER_CHARS: '50000000',
      UPSTREAM_MAX_RESPONSE_BYTES: '104857600',
    });
    url = h.server.url;
  });

  after(async () => {
    for (const socket of clients) socket.destroy();
    await h?.close();
    releaseLoadLock?.();
  });

  /** GET /health/live over a fresh connection; resolves with its latency. */
  async function liveLatencyMs(base = url): Promise<number> {
    const started = performance.now();
    const res = await fetch(`${base}/health/live`, {
      headers: { connection: 'close' },
      signal: AbortSignal.timeout(5_000),
    });
    assert.equal(res.status, 200);
    await res.arrayBuffer();
    return performance.now() - started;
  }

  it('slowloris: dripped header lines get 408 within HEADERS_TIMEOUT_MS + sweep while others are served', async () => {
    // 40 header lines at 200 ms: the attack would go on for 8 s if the server let it.
    const drip = Array.from({ length: 40 }, (_, i) => `X-Drip-${i}: ${'a'.repeat(16)}\r\n`);
    const attacks = Array.from({ length: 50 }, () =>
      exchange(url, [`GET /health/live HTTP/1.1\r\n${HOST}`, ...drip], { intervalMs: 200, timeoutMs: 10_000 }),
    );
    await sleep(500);
    assert.ok((await liveLatencyMs()) < 1_000, 'a normal request is answered during the attack');
    for (const result of await Promise.all(attacks)) {
      assert.equal(result.closedByServer, true);
      assert.ok(
        result.closedAfterMs <= HEADERS_TIMEOUT_MS + SWEEP_MS + MARGIN_MS,
        `cut after ${result.closedAfterMs} ms`,
      );
      assert.deepEqual(
        result.responses.map((r) => r.status),
        [408],
      );
      assertSecurityHeaders(result.responses[0]!);
      assert.equal(problemCode(result.responses[0]!), 'REQUEST_TIMEOUT');
    }
  });

  it('R.U.D.Y.: a 1 B/s authenticated body is cut within REQUEST_TIMEOUT_MS + sweep with exactly one 408', async () => {
    const head =
      `POST /v1/chat HTTP/1.1\r\n${HOST}Authorization: Bearer ${h.key}\r\n` +
      'Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n';
    const body = `{"message":"${'a'.repeat(40)}`.split('');
    const result = await exchange(url, [head, ...body], { intervalMs: 1_000, timeoutMs: 12_000 });
    assert.equal(result.closedByServer, true);
    assert.ok(
      result.closedAfterMs <= REQUEST_TIMEOUT_MS + SWEEP_MS + MARGIN_MS,
      `cut after ${result.closedAfterMs} ms`,
    );
    // One request, one response: a second, unsolicited response on the connection would be
    // taken by a pipelining proxy as the answer to the next request (response desync).
    assert.deepEqual(
      result.responses.map((r) => r.status),
      [408],
    );
    assert.equal(problemCode(result.responses[0]!), 'REQUEST_TIMEOUT');
  });

  it('R.U.D.Y.: an anonymous slow body gets one 401 and is cut within REQUEST_TIMEOUT_MS + sweep', async () => {
    const head = `POST /v1/chat HTTP/1.1\r\n${HOST}Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n`;
    const result = await exchange(url, [head, ...'{"message":"aaaaaaaaaaaa'.split('')], {
      intervalMs: 1_000,
      timeoutMs: 12_000,
    });
    assert.equal(result.closedByServer, true);
    assert.ok(
      result.closedAfterMs <= REQUEST_TIMEOUT_MS + SWEEP_MS + MARGIN_MS,
      `cut after ${result.closedAfterMs} ms`,
    );
    assert.deepEqual(
      result.responses.map((r) => r.status),
      [401],
    );
  });

  /** Sends a streaming request on a raw socket that never reads; samples the server side of it. */
  async function slowReader(path: string, key: string, body: object) {
    const accepted: Socket[] = [];
    const onConnection = (socket: Socket): void => void accepted.push(socket);
    h.server.server.on('connection', onConnection);
    const client = await openSocket(url);
    clients.add(client);
    const payload = JSON.stringify(body);
    // No 'data' listener: the client reads nothing beyond what the kernel and libuv buffer.
    client.write(
      `POST ${path} HTTP/1.1\r\n${HOST}Authorization: Bearer ${key}\r\nContent-Type: application/json\r\n` +
        `Content-Length: ${Buffer.byteLength(payload)}\r\n\r\n${payload}`,
    );
    const serverSide = await waitFor('the server side of the connection', 2_000, () =>
      accepted.find((s) => s.remotePort === client.localPort),
    ).finally(() => h.server.server.off('connection', onConnection));
    const samples: Array<{ buffered: number; written: number }> = [];
    for (let i = 0; i < 16; i++) {
      await sleep(250);
      samples.push({ buffered: serverSide.writableLength, written: serverSide.bytesWritten });
    }
    const maxBuffered = Math.max(...samples.map((s) => s.buffered));
    assert.ok(maxBuffered <= 256 * 1024, `the server buffered ${maxBuffered} bytes for one non-reading client`);
    const [early, late] = [samples[9]!, samples[15]!];
    assert.equal(late.written, early.written, 'the server stopped writing once the client stopped reading');
    assert.ok((await liveLatencyMs()) < 1_000, 'the server still answers others');
    return { client, written: late.written };
  }

  it('slow read: an unread 20 MB OpenAI stream costs one socket buffer and holds the upstream back', async () => {
    const { key } = await mintIdentity(h.server.db.pool);
    h.fake.queue({ kind: 'burst', count: 20_000, text: 'x'.repeat(1024) });
    const upstreamIndex = h.fake.requests.length;
    const messages = [{ role: 'user', content: 'stream a lot, I will not read it' }];
    const { client, written } = await slowReader('/v1/chat/completions', key, {
      model: 'default',
      stream: true,
      messages,
    });
    assert.ok(written < 10 * 1024 * 1024, `only kernel buffers' worth was sent (${written} bytes of about 20 MB)`);
    const upstream = h.fake.requests[upstreamIndex]!;
    assert.equal(upstream.finished, false, 'the upstream burst is held back, not drained into memory');
    assert.equal(upstream.closedAt, undefined);
    client.destroy();
    await h.fake.waitForClose(upstreamIndex, 3_000);
    await assertSettled(h.server);
  });

  it('slow read: a stored answer whose client never reads runs to its end, stored, for one socket buffer', async () => {
    const { key, owner } = await mintIdentity(h.server.db.pool);
    h.fake.queue({ kind: 'burst', count: 2_000, text: 'x'.repeat(1024) });
    const upstreamIndex = h.fake.requests.length;
    const { client } = await slowReader('/v1/chat', key, { message: 'stream a lot, I will not read it' });
    await h.fake.waitForClose(upstreamIndex, 3_000);
    assert.equal(h.fake.requests[upstreamIndex]?.finished, true, 'the answer is read from the upstream to its end');
    await waitFor('the answer to be stored', 3_000, async () =>
      (await assistantStatuses(h.server.db.pool, owner))[0] === 'complete' ? true : undefined,
    );
    client.destroy();
    await assertSettled(h.server);
  });

  it('a 20 kB header block gets 431 problem+json with the security headers, and the connection is closed', async () => {
    const result = await exchange(url, [`GET /health/live HTTP/1.1\r\n${HOST}X-Big: ${'a'.repeat(20_000)}\r\n\r\n`]);
    assert.equal(result.closedByServer, true);
    assert.deepEqual(
      result.responses.map((r) => r.status),
      [431],
    );
    assertSecurityHeaders(result.responses[0]!);
    assert.equal(problemCode(result.responses[0]!), 'HEADERS_TOO_LARGE');
  });

  it('Content-Length with Transfer-Encoding gets 400 BAD_FRAMING, never answering the smuggled request', async () => {
    const smuggle =
      `POST /health/live HTTP/1.1\r\n${HOST}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n` +
      `0\r\n\r\n${LIVE}`;
    const result = await exchange(url, [smuggle]);
    assert.equal(result.closedByServer, true);
    assert.deepEqual(
      result.responses.map((r) => r.status),
      [400],
    );
    assertSecurityHeaders(result.responses[0]!);
    assert.equal(problemCode(result.responses[0]!), 'BAD_FRAMING');
  });

  it('three pipelined requests in one write get three responses in order', async () => {
    const ids = ['pipeline-first-1', 'pipeline-second-2', 'pipeline-third-3'];
    const requests =
      `GET /health/live HTTP/1.1\r\n${HOST}X-Request-Id: ${ids[0]}\r\n\r\n` +
      `GET /v1/agents HTTP/1.1\r\n${HOST}X-Request-Id: ${ids[1]}\r\nAuthorization: Bearer ${h.key}\r\n\r\n` +
      `GET /no/such/route HTTP/1.1\r\n${HOST}X-Request-Id: ${ids[2]}\r\nConnection: close\r\n\r\n`;
    const result = await exchange(url, [requests]);
    assert.equal(result.closedByServer, true);
    assert.deepEqual(
      result.responses.map((r) => r.status),
      [200, 200, 404],
    );
    // Each response carries our own id; the access log pairs it with the id the client sent.
    const logs = h.server.logs();
    const clientIds = result.responses.map((r) => {
      const ours = r.headers.get('x-request-id');
      return /"clientRequestId":"([^"]+)"/.exec(
        logs.split('\n').find((l) => l.includes(`"requestId":"${ours}"`)) ?? '',
      )?.[1];
    });
    assert.deepEqual(clientIds, ids);
    assert.ok(Array.isArray((JSON.parse(result.responses[1]!.body) as { agents?: unknown }).agents));
  });

  describe('request smuggling variants get 400 and no second response', () => {
    const variants: Array<[string, string]> = [
      ['obs-fold header continuation', `GET /health/live HTTP/1.1\r\n${HOST}X-Folded: a\r\n b\r\n\r\n${LIVE}`],
      [
        'obs-fold Transfer-Encoding',
        `POST /health/live HTTP/1.1\r\n${HOST}Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n${LIVE}`,
      ],
      [
        'duplicate Content-Length',
        `POST /health/live HTTP/1.1\r\n${HOST}Content-Length: 5\r\nContent-Length: 44\r\n\r\nhello${LIVE}`,
      ],
      ['Content-Length with a sign', `POST /health/live HTTP/1.1\r\n${HOST}Content-Length: +5\r\n\r\nhello${LIVE}`],
      [
        'invalid chunk size',
        `POST /health/live HTTP/1.1\r\n${HOST}Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n${LIVE}`,
      ],
      [
        'overflowing chunk size',
        `POST /health/live HTTP/1.1\r\n${HOST}Transfer-Encoding: chunked\r\n\r\n` +
          `ffffffffffffffffff1\r\nhello\r\n0\r\n\r\n${LIVE}`,
      ],
      [
        'Transfer-Encoding other than chunked last',
        `POST /health/live HTTP/1.1\r\n${HOST}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n${LIVE}`,
      ],
      [
        'whitespace before the colon',
        `POST /health/live HTTP/1.1\r\n${HOST}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n${LIVE}`,
      ],
      ['bare LF line endings', `GET /health/live HTTP/1.1\n${HOST.trim()}\n\n${LIVE}`],
    ];
    for (const [name, raw] of variants) {
      it(`${name} gets 400 with the security headers and the connection closed`, async () => {
        const result = await exchange(url, [raw]);
        assert.equal(result.closedByServer, true);
        assert.deepEqual(
          result.responses.map((r) => r.status),
          [400],
        );
        assertSecurityHeaders(result.responses[0]!);
      });
    }
  });

  // A server of its own: assembling the crowd on a slow machine must not outlast its headers timeout.
  describe('a crowd of idle connections', () => {
    let crowd: ChatHarness;
    before(async () => {
      crowd = await startChat({ HEADERS_TIMEOUT_MS: String(CROWD_HEADERS_TIMEOUT_MS) });
    });
    after(() => crowd?.close());

    it('1,500 idle connections let a request answer within 2 s, and close after the headers timeout', async () => {
      // Both ends live in this process: two descriptors per connection, and stay under the server's own cap.
      const count = Math.min(1_500, Math.floor((openFileLimit() - 256) / 2), connectionBudget() - 32);
      assert.ok(count >= 200, `the descriptor limit allows only ${count} connections`);
      let seen = 0;
      const onConnection = (): void => void seen++;
      crowd.server.server.on('connection', onConnection);
      const idle: Socket[] = [];
      try {
        for (let batch = 0; batch < count; batch += 250) {
          const size = Math.min(250, count - batch);
          const opened = await Promise.all(Array.from({ length: size }, () => openSocket(crowd.server.url)));
          for (const socket of opened) {
            socket.resume(); // idle means sending nothing; what the server sends is read and dropped
            clients.add(socket);
            idle.push(socket);
          }
          // Connected is not accepted: a batch that outruns accept() overflows the listen queue, and
          // the kernel's 1 s SYN retry then makes the crowd outlast the headers timeout it tests.
          await waitFor('the server to accept the batch', 2_000, () => (seen >= idle.length ? true : undefined));
        }
        const openedAt = Date.now();
        assert.ok(
          idle.every((s) => !s.destroyed),
          'all idle connections are still open when the request is made',
        );
        const latency = await liveLatencyMs(crowd.server.url);
        assert.ok(latency < 2_000, `GET /health/live took ${latency} ms beside ${count} idle connections`);
        const closed = idle.map((s) =>
          s.destroyed ? Promise.resolve() : new Promise<void>((resolve) => s.once('close', () => resolve())),
        );
        await Promise.race([Promise.all(closed), sleep(CROWD_HEADERS_TIMEOUT_MS + SWEEP_MS + MARGIN_MS + 2_000)]);
        const open = idle.filter((s) => !s.destroyed).length;
        assert.equal(open, 0, `${open} idle connections still open ${Date.now() - openedAt} ms after opening`);
      } finally {
        crowd.server.server.off('connection', onConnection);
        for (const socket of idle) {
          socket.destroy();
          clients.delete(socket);
        }
      }
      await assertSettled(crowd.server);
    });
  });
});
