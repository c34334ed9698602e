import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { after, before, describe, it } from 'node:test';
import { type ChatHarness, startChat } from '../support/chat.ts';
import { assertSecurityProfile } from '../support/security-profile.ts';
import { startTestServer, type TestServer } from '../support/server.ts';

const ALLOWED_ORIGIN = 'https://app.example';
const PROBLEM_TYPE = 'application/problem+json; charset=utf-8';

/** A response read off a raw socket. */
interface RawResponse {
  status: number;
  headers: Headers;
  body: string;
}

function parseRaw(raw: string): RawResponse {
  const end = raw.indexOf('\r\n\r\n');
  assert.ok(end !== -1, `a complete response head in ${JSON.stringify(raw.slice(0, 200))}`);
  const [statusLine = '', ...lines] = raw.slice(0, end).split('\r\n');
  const headers = new Headers();
  for (const line of lines) {
    const colon = line.indexOf(':');
    headers.append(line.slice(0, colon), line.slice(colon + 1).trim());
  }
  return { status: Number(statusLine.split(' ')[1]), headers, body: raw.slice(end + 4) };
}

/** Everything the server sends on `socket` until it closes, and when it closed. */
function readUntilClose(socket: Socket): Promise<{ raw: string; closedAtMs: number }> {
  let raw = '';
  socket.setEncoding('latin1');
  socket.on('data', (chunk: string) => (raw += chunk));
  socket.on('error', () => {}); // a reset after the answer is part of what some tests provoke
  return once(socket, 'close').then(() => ({ raw, closedAtMs: performance.now() }));
}

async function openSocket(url: string): Promise<Socket> {
  const { hostname, port } = new URL(url);
  const socket = connect(Number(port), hostname);
  await once(socket, 'connect');
  return socket;
}

/** Writes raw request bytes on a new connection and returns the server's whole answer. */
async function rawExchange(url: string, request: string): Promise<RawResponse> {
  const socket = await openSocket(url);
  const closed = readUntilClose(socket);
  socket.write(request);
  const timer = setTimeout(() => socket.destroy(), 5_000);
  try {
    return parseRaw((await closed).raw);
  } finally {
    clearTimeout(timer);
  }
}

async function problem(res: Response): Promise<Record<string, unknown>> {
  assert.equal(res.headers.get('content-type'), PROBLEM_TYPE);
  return (await res.json()) as Record<string, unknown>;
}

describe('the HTTP server', () => {
  let h: ChatHarness;
  let url: string;

  before(async () => {
    h = await startChat({ HEADERS_TIMEOUT_MS: '2000', REQUEST_TIMEOUT_MS: '2000', CORS_ORIGINS: ALLOWED_ORIGIN });
    url = h.server.url;
  });
  after(async () => {
    await h?.close();
  });

  describe('security headers', () => {
    it('GET /health/live answers 200 with the security headers and no x-powered-by or server', async () => {
      const res = await fetch(`${url}/health/live`);
      assert.equal(res.status, 200);
      assertSecurityProfile(res.headers, true /* HSTS is on by default */);
      assert.deepEqual(await res.json(), { status: 'ok' });
    });

    it('GET on an unknown path answers 404 problem+json with the security headers', async () => {
      const res = await fetch(`${url}/no-such-thing`);
      assert.equal(res.status, 404);
      assertSecurityProfile(res.headers, true /* HSTS is on by default */);
      assert.equal((await problem(res))['code'], 'NOT_FOUND');
    });

    it('POST /health answers 405 with Allow and the security headers', async () => {
      const res = await fetch(`${url}/health`, { method: 'POST' });
      assert.equal(res.status, 405);
      assert.equal(res.headers.get('allow'), 'GET, HEAD, OPTIONS');
      assertSecurityProfile(res.headers, true /* HSTS is on by default */);
      assert.equal((await problem(res))['code'], 'METHOD_NOT_ALLOWED');
    });

    it('POST /v1/chat with a text/plain body answers 415 with the security headers', async () => {
      const res = await h.chat(undefined, { raw: 'hello', headers: { 'content-type': 'text/plain' } });
      assert.equal(res.status, 415);
      assertSecurityProfile(res.headers, true /* HSTS is on by default */);
      assert.equal((await problem(res))['code'], 'UNSUPPORTED_MEDIA_TYPE');
    });

    it('an unknown handler error answers a generic 500 with the security headers and logs the cause', async (t) => {
      const auth = { authorization: `Bearer ${h.key}` };
      const warm = await fetch(`${url}/v1/agents`, { headers: auth }); // the key is now cached: auth asks no database
      assert.equal(warm.status, 200);
      await warm.arrayBuffer();
      // The database breaks under the handler's query: an error no code path expects.
      t.mock.method(h.server.db.pool, 'query', async () => {
        throw new Error('relation "conversations" does not exist SQL-DETAIL-MARKER');
      });
      const res = await fetch(`${url}/v1/conversations`, { headers: auth });
      assert.equal(res.status, 500);
      assertSecurityProfile(res.headers, true /* HSTS is on by default */);
      const requestId = res.headers.get('x-request-id');
      assert.deepEqual(await problem(res), {
        type: 'about:blank',
        title: 'Internal server error',
        status: 500,
        code: 'INTERNAL',
        requestId,
      });
      const logged = h.server.lines().find((line) => JSON.stringify(line).includes('SQL-DETAIL-MARKER'));
      assert.equal(
        logged?.['requestId'],
        requestId,
        `the cause is logged with the request id: ${JSON.stringify(logged)}`,
      );
    });
  });

  describe('body limit', () => {
    it('a 20 kB JSON POST to an unknown /v1 path answers 413 before authentication or routing', async () => {
      const body = JSON.stringify({ message: 'x'.repeat(20_000) });
      const res = await fetch(`${url}/v1/no-such-route`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body,
      });
      assert.equal(res.status, 413);
      assertSecurityProfile(res.headers, true /* HSTS is on by default */);
      assert.deepEqual(await problem(res), {
        type: 'about:blank',
        title: 'Request body too large',
        status: 413,
        code: 'BODY_TOO_LARGE',
        detail: 'Body exceeds 10240 bytes',
        requestId: res.headers.get('x-request-id'),
      });
    });

    it('a chunked POST /v1/chat that never ends is cut with 413 once it passes the cap', async () => {
      const socket = await openSocket(url);
      const closed = readUntilClose(socket);
      socket.write(
        `POST /v1/chat HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer ${h.key}\r\n` +
          'Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n',
      );
      let sent = 0;
      const chunk = 'x'.repeat(1024);
      // No terminating chunk is ever sent: only a reader that counts can answer.
      const drip = setInterval(() => {
        if (!socket.writable || sent > 100 * 1024) return;
        socket.write(`${chunk.length.toString(16)}\r\n${chunk}\r\n`);
        sent += chunk.length;
      }, 5);
      const timer = setTimeout(() => socket.destroy(), 5_000);
      try {
        const res = parseRaw((await closed).raw);
        assert.equal(res.status, 413);
        assert.equal(JSON.parse(res.body).code, 'BODY_TOO_LARGE');
        assert.ok(sent < 40 * 1024, `answered after ${sent} bytes, not at the end of the body`);
      } finally {
        clearInterval(drip);
        clearTimeout(timer);
      }
    });
  });

  describe('requests node:http cannot parse', () => {
    it('a 20 kB header answers 431 problem+json with the security headers', async () => {
      const res = await rawExchange(
        url,
        `GET /health/live HTTP/1.1\r\nHost: test\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`,
      );
      assert.equal(res.status, 431);
      assertSecurityProfile(res.headers, true /* HSTS is on by default */);
      assert.equal(res.headers.get('content-type'), PROBLEM_TYPE);
      assert.deepEqual(JSON.parse(res.body), {
        type: 'about:blank',
        title: 'Request header fields too large',
        status: 431,
        code: 'HEADERS_TOO_LARGE',
        requestId: res.headers.get('x-request-id'),
      });
    });

    it('Content-Length together with Transfer-Encoding answers 400 and closes', async () => {
      const res = await rawExchange(
        url,
        'POST /v1/chat HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 4\r\n' +
          'Transfer-Encoding: chunked\r\n\r\n4\r\n{}{}\r\n0\r\n\r\n',
      );
      assert.equal(res.status, 400);
      assertSecurityProfile(res.headers, true /* HSTS is on by default */);
      assert.equal(res.headers.get('connection'), 'close');
      assert.equal(JSON.parse(res.body).code, 'BAD_FRAMING');
    });

    it('garbage pipelined behind a streaming response cuts the stream instead of splicing a 400 into it', async () => {
      h.fake.queue({ kind: 'slow', chunks: ['a', 'b', 'c', 'd', 'e', 'f'], chunkDelayMs: 200 });
      const socket = await openSocket(url);
      const closed = readUntilClose(socket);
      const body = JSON.stringify({ message: 'hi' });
      socket.on('data', (chunk: string) => {
        if (chunk.includes('event: start')) socket.write('GARBAGE\r\n\r\n');
      });
      socket.write(
        `POST /v1/chat HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer ${h.key}\r\nContent-Type: application/json\r\n` +
          `Content-Length: ${body.length}\r\n\r\n${body}`,
      );
      const timer = setTimeout(() => socket.destroy(), 5_000);
      try {
        const { raw } = await closed;
        assert.match(raw, /^HTTP\/1\.1 200 /);
        assert.match(raw, /event: start/);
        assert.equal(raw.match(/HTTP\/1\.1 /g)?.length, 1, `one response on the socket: ${raw}`);
      } finally {
        clearTimeout(timer);
      }
    });
  });

  describe('requests node:http would answer itself', () => {
    /** Asserts a refusal written outside the app: problem+json, the security headers, our request id, close. */
    function assertRefused(res: RawResponse, status: number, code: string): void {
      assert.equal(res.status, status);
      assertSecurityProfile(res.headers, true /* HSTS is on by default */);
      assert.equal(res.headers.get('content-type'), PROBLEM_TYPE);
      assert.equal(res.headers.get('connection'), 'close');
      const body = JSON.parse(res.body) as Record<string, unknown>;
      assert.equal(body['status'], status);
      assert.equal(body['code'], code);
      assert.equal(body['requestId'], res.headers.get('x-request-id'));
    }

    it('an HTTP/1.1 request without Host answers 400 problem+json with the security headers', async () => {
      const res = await rawExchange(url, 'GET /health/live HTTP/1.1\r\n\r\n');
      assertRefused(res, 400, 'BAD_REQUEST');
      assert.match(JSON.parse(res.body).detail, /Host/);
    });

    it('a request with two Host headers answers 400 problem+json with the security headers', async () => {
      const res = await rawExchange(url, 'GET /health/live HTTP/1.1\r\nHost: a.example\r\nhost: b.example\r\n\r\n');
      assertRefused(res, 400, 'BAD_REQUEST');
      assert.match(JSON.parse(res.body).detail, /More than one Host/);
    });

    for (const host of ['a b', 'user@a.example', 'a.example:80x', 'a.example/path', '[::1', 'a.example:80:81', '%zz']) {
      it(`a Host of ${JSON.stringify(host)} answers 400 problem+json with the security headers`, async () => {
        const res = await rawExchange(url, `GET /health/live HTTP/1.1\r\nHost: ${host}\r\n\r\n`);
        assertRefused(res, 400, 'BAD_REQUEST');
        assert.match(JSON.parse(res.body).detail, /Host header is not a host/);
      });
    }

    it('every form of host and port RFC 9110 allows is served, the empty Host included', async () => {
      const hosts = [
        'a.example',
        'A-1.example:8000',
        '127.0.0.1:1',
        '[::1]:80',
        '[v1.x:y]',
        'xn--bcher-kva.example',
        '',
      ];
      for (const host of [...hosts, 'a%2Eexample', "a!$&'()*+,;=~_.example:"]) {
        const res = await rawExchange(url, `GET /health/live HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
        assert.equal(res.status, 200, `Host: ${host}`);
      }
    });

    it('an HTTP/1.0 request without Host is served (Host is required from HTTP/1.1 on)', async () => {
      const res = await rawExchange(url, 'GET /health/live HTTP/1.0\r\n\r\n');
      assert.equal(res.status, 200);
    });

    it('an Expect other than 100-continue answers 417 problem+json with the security headers', async () => {
      const res = await rawExchange(url, 'GET /health/live HTTP/1.1\r\nHost: test\r\nExpect: 200-ok\r\n\r\n');
      assertRefused(res, 417, 'EXPECTATION_FAILED');
    });

    it('Expect: 100-continue with a declared body over the cap answers 413 and never 100 Continue', async () => {
      const socket = await openSocket(url);
      const closed = readUntilClose(socket);
      socket.write(
        `POST /v1/chat HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer ${h.key}\r\n` +
          'Content-Type: application/json\r\nContent-Length: 20000\r\nExpect: 100-continue\r\n\r\n',
      );
      const timer = setTimeout(() => socket.destroy(), 5_000);
      try {
        const { raw } = await closed;
        assert.ok(!raw.includes('100 Continue'), raw);
        assert.equal(parseRaw(raw).status, 413);
      } finally {
        clearTimeout(timer);
      }
    });

    it('Expect: 100-continue without credentials answers 401 and never 100 Continue', async () => {
      const socket = await openSocket(url);
      const closed = readUntilClose(socket);
      socket.write(
        'POST /v1/chat HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 20\r\n' +
          'Expect: 100-continue\r\n\r\n',
      );
      const timer = setTimeout(() => socket.destroy(), 5_000);
      try {
        const { raw } = await closed;
        assert.ok(!raw.includes('100 Continue'), raw);
        assert.equal(parseRaw(raw).status, 401);
      } finally {
        clearTimeout(timer);
      }
    });

    it('Expect: 100-continue with a valid key gets 100 Continue once the handler reads, then the answer', async () => {
      const socket = await openSocket(url);
      const closed = readUntilClose(socket);
      const body = JSON.stringify({ message: 'hi', stream: false });
      let sent = false;
      socket.on('data', (chunk: string) => {
        // The body goes only after the server asked for it, as a waiting client does.
        if (!sent && chunk.startsWith('HTTP/1.1 100 Continue\r\n\r\n')) {
          sent = true;
          socket.write(body);
        }
      });
      socket.write(
        `POST /v1/chat HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer ${h.key}\r\nContent-Type: application/json\r\n` +
          `Content-Length: ${body.length}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n`,
      );
      const timer = setTimeout(() => socket.destroy(), 5_000);
      try {
        const { raw } = await closed;
        assert.ok(sent, `no 100 Continue in ${raw.slice(0, 200)}`);
        const res = parseRaw(raw.slice(raw.indexOf('\r\n\r\n') + 4));
        assert.equal(res.status, 200);
        assert.match(res.body, /"conversationId"/);
      } finally {
        clearTimeout(timer);
      }
    });
  });

  describe('request id', () => {
    it('a client x-request-id is logged as clientRequestId; the header, body and log carry our own id', async () => {
      const res = await fetch(`${url}/no-such-thing`, { headers: { 'x-request-id': 'client-req.0001_A' } });
      const ours = res.headers.get('x-request-id') ?? '';
      assert.match(ours, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
      assert.equal((await problem(res))['requestId'], ours);
      const line = h.server
        .logs()
        .split('\n')
        .find((l) => l.includes(`"requestId":"${ours}"`) && l.includes('"msg":"request"'));
      assert.match(line ?? '', /"clientRequestId":"client-req\.0001_A"/);
    });

    it('an ill-formed incoming x-request-id is replaced by a generated one', async () => {
      const res = await fetch(`${url}/health/live`, { headers: { 'x-request-id': 'short' } });
      assert.match(
        res.headers.get('x-request-id') ?? '',
        /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/,
      );
    });
  });

  describe('slow clients', () => {
    it('a 1 line/s header drip gets 408 by headersTimeout + check interval as another socket is served', async () => {
      const socket = await openSocket(url);
      const started = performance.now();
      const closed = readUntilClose(socket);
      socket.write('GET /health/live HTTP/1.1\r\nHost: test\r\n');
      let line = 0;
      const drip = setInterval(() => {
        if (socket.writable) socket.write(`x-drip-${++line}: a\r\n`);
      }, 1_000);
      const timer = setTimeout(() => socket.destroy(), 6_000);
      try {
        await new Promise((resolve) => setTimeout(resolve, 1_200));
        const other = await fetch(`${url}/health/live`);
        assert.equal(other.status, 200);
        const { raw, closedAtMs } = await closed;
        // HEADERS_TIMEOUT_MS=2000 and a 1 s sweep: cut after 2–3 s, with margin for a busy machine.
        const elapsedMs = closedAtMs - started;
        assert.ok(elapsedMs >= 1_900 && elapsedMs < 3_500, `cut after ${Math.round(elapsedMs)} ms`);
        const res = parseRaw(raw);
        assert.equal(res.status, 408);
        assertSecurityProfile(res.headers, true /* HSTS is on by default */);
      } finally {
        clearInterval(drip);
        clearTimeout(timer);
      }
    });

    it('a body dripped a byte at a time is cut with 408 once REQUEST_TIMEOUT_MS has passed', async () => {
      const socket = await openSocket(url);
      const started = performance.now();
      const closed = readUntilClose(socket);
      socket.write(
        `POST /v1/chat HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer ${h.key}\r\nContent-Type: application/json\r\n` +
          'Content-Length: 1000\r\n\r\n{',
      );
      const drip = setInterval(() => {
        if (socket.writable) socket.write(' ');
      }, 300);
      const timer = setTimeout(() => socket.destroy(), 6_000);
      try {
        const { raw, closedAtMs } = await closed;
        const elapsedMs = closedAtMs - started;
        assert.ok(elapsedMs >= 1_900 && elapsedMs < 3_500, `cut after ${Math.round(elapsedMs)} ms`);
        const res = parseRaw(raw);
        assert.equal(res.status, 408);
        assert.equal(JSON.parse(res.body).code, 'REQUEST_TIMEOUT');
      } finally {
        clearInterval(drip);
        clearTimeout(timer);
      }
    });
  });

  describe('HEAD and OPTIONS', () => {
    it('HEAD /health answers 200 with the GET headers and no body bytes', async () => {
      const res = await rawExchange(url, 'HEAD /health HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n');
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('content-type'), 'application/json; charset=utf-8');
      assert.equal(res.headers.get('content-length'), String('{"status":"ok"}'.length));
      assertSecurityProfile(res.headers, true /* HSTS is on by default */);
      assert.equal(res.body, '');
    });

    it('OPTIONS on a route without Origin answers 204 with Allow and the security headers', async () => {
      const res = await fetch(`${url}/health`, { method: 'OPTIONS' });
      assert.equal(res.status, 204);
      assert.equal(res.headers.get('allow'), 'GET, HEAD, OPTIONS');
      assertSecurityProfile(res.headers, true /* HSTS is on by default */);
      assert.equal(await res.text(), '');
    });

    it('OPTIONS on an unknown path answers 404', async () => {
      const res = await fetch(`${url}/no-such-thing`, { method: 'OPTIONS' });
      assert.equal(res.status, 404);
      assertSecurityProfile(res.headers, true /* HSTS is on by default */);
    });

    it('a preflight from an allowed origin answers 204 with the CORS grant', async () => {
      const res = await fetch(`${url}/v1/chat`, {
        method: 'OPTIONS',
        headers: {
          origin: ALLOWED_ORIGIN,
          'access-control-request-method': 'POST',
          'access-control-request-headers': 'content-type',
        },
      });
      assert.equal(res.status, 204);
      assert.equal(res.headers.get('access-control-allow-origin'), ALLOWED_ORIGIN);
      assert.match(res.headers.get('access-control-allow-methods') ?? '', /\bPOST\b/);
      assert.match(res.headers.get('access-control-allow-headers') ?? '', /\bcontent-type\b/);
      assert.match(res.headers.get('vary') ?? '', /\borigin\b/i);
    });

    it('a preflight from a foreign origin answers 403 with no CORS headers', async () => {
      const res = await fetch(`${url}/v1/chat`, {
        method: 'OPTIONS',
        headers: { origin: 'https://evil.example', 'access-control-request-method': 'POST' },
      });
      assert.equal(res.status, 403);
      assertSecurityProfile(res.headers, true /* HSTS is on by default */);
      assert.deepEqual(
        [...res.headers.keys()].filter((name) => name.startsWith('access-control-')),
        [],
      );
    });

    it('a simple request from a foreign origin gets no CORS headers', async () => {
      const res = await fetch(`${url}/health/live`, { headers: { origin: 'https://evil.example' } });
      assert.equal(res.status, 200);
      assert.deepEqual(
        [...res.headers.keys()].filter((name) => name.startsWith('access-control-')),
        [],
      );
    });
  });
});

describe('the HTTP server with MAX_REQUESTS_PER_SOCKET=2', () => {
  let server: TestServer;
  before(async () => {
    server = await startTestServer({ MAX_REQUESTS_PER_SOCKET: '2' });
  });
  after(() => server?.close());

  it('four pipelined requests get two answers, the second closing, and nothing bare or after the close', async () => {
    const socket = await openSocket(server.url);
    const closed = readUntilClose(socket);
    socket.write('GET /health/live HTTP/1.1\r\nHost: test\r\n\r\n'.repeat(4));
    const timer = setTimeout(() => socket.destroy(), 5_000);
    try {
      const { raw } = await closed;
      const heads = raw.split(/(?=HTTP\/1\.1 )/);
      assert.equal(heads.length, 2, raw);
      for (const head of heads) assertSecurityProfile(parseRaw(head).headers, true /* HSTS is on by default */);
      assert.deepEqual(
        heads.map((head) => parseRaw(head).status),
        [200, 200],
      );
      assert.equal(parseRaw(heads[1] as string).headers.get('connection'), 'close');
      // The two requests past the limit never reached the app (RFC 9112 §9.6).
      const served = server
        .logs()
        .split('\n')
        .filter((line) => line.includes('"route":"/health/live"'));
      assert.equal(served.length, 2);
    } finally {
      clearTimeout(timer);
    }
  });
});
