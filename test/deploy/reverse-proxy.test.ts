// deploy/chat-server.nginx.conf run by the real nginx, with a throw-away certificate, in front of
// the real server and the fake upstream: redirect, TLS, headers, streaming, client address, /metrics.

import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import { request as httpRequest } from 'node:http';
import { connect as http2Connect } from 'node:http2';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { connect as tlsConnect } from 'node:tls';
import { ENV_SCHEMA } from '../../lib/config.ts';
import { type ChatHarness, type SseFrame, sseFrames, startChat, waitFor } from '../support/chat.ts';
import { CANARY } from '../support/config.ts';
import { freePort, NGINX_UNAVAILABLE, startNginx } from '../support/nginx.ts';
import { assertSecurityProfile } from '../support/security-profile.ts';

const SITE = readFileSync(new URL('../../deploy/chat-server.nginx.conf', import.meta.url), 'utf8');
const HOST_NAME = 'chat.example.com';
// The client comes from another loopback address than nginx's own 127.0.0.1, so the two differ in the log.
const CLIENT_ADDRESS = '127.0.0.2';
const SPOOFED = '203.0.113.9';

// CI installs nginx and openssl (.ci/run); only a machine without them may skip.
const OPENSSL_MISSING = spawnSync('openssl', ['version']).error !== undefined;
const UNAVAILABLE = NGINX_UNAVAILABLE || (OPENSSL_MISSING ? 'needs openssl' : false);

interface Proxy {
  httpPort: number;
  httpsPort: number;
  stop(): Promise<void>;
}

interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

interface Call {
  port: number;
  path: string;
  method?: string;
  headers?: Record<string, string | number>;
  body?: string;
  localAddress?: string;
  plain?: boolean;
}

/** Replaces one thing in the shipped file, failing loudly when the file no longer has it. */
function replaceOnce(text: string, pattern: RegExp, replacement: string): string {
  assert.match(text, pattern, `deploy/chat-server.nginx.conf no longer has ${pattern}`);
  return text.replace(pattern, replacement);
}

/** The shipped site with loopback ports, the test certificate and the test server's port; IPv6 listeners dropped. */
function renderSite(site: string, ports: { http: number; https: number; server: number }, dir: string): string {
  let text = replaceOnce(site, /^\s*listen \[::\]:80 .*\n/m, '');
  text = replaceOnce(text, /^\s*listen \[::\]:443 .*\n/m, '');
  text = replaceOnce(text, /listen 80 /, `listen 127.0.0.1:${ports.http} `);
  text = replaceOnce(text, /listen 443 /, `listen 127.0.0.1:${ports.https} `);
  text = replaceOnce(text, /server 127\.0\.0\.1:8000;/, `server 127.0.0.1:${ports.server};`);
  text = replaceOnce(text, /ssl_certificate \S+;/, `ssl_certificate ${join(dir, 'cert.pem')};`);
  return replaceOnce(text, /ssl_certificate_key \S+;/, `ssl_certificate_key ${join(dir, 'key.pem')};`);
}

/** Runs the shipped site (after `edit`) with nginx in front of the server on `serverPort`. */
async function startProxy(root: string, serverPort: number, edit = (s: string) => s): Promise<Proxy> {
  const ports = { http: await freePort(), https: await freePort(), server: serverPort };
  const nginx = await startNginx(root, edit(renderSite(SITE, ports, root)), ports.https);
  return { httpPort: ports.http, httpsPort: ports.https, stop: () => nginx.stop() };
}

let ca = '';

/** Sends one request to nginx (HTTPS unless `plain`), trusting only the test certificate; resolves on its headers. */
function open(call: Call): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const options = {
      host: '127.0.0.1',
      port: call.port,
      path: call.path,
      method: call.method ?? 'GET',
      headers: { host: HOST_NAME, ...call.headers },
      localAddress: call.localAddress,
      agent: false as const,
    };
    const req = call.plain
      ? httpRequest(options)
      : httpsRequest({ ...options, ca, servername: HOST_NAME, rejectUnauthorized: true });
    req.once('error', reject);
    req.once('response', resolve);
    req.end(call.body);
  });
}

async function send(call: Call): Promise<Answer> {
  const res = await open(call);
  let body = '';
  for await (const chunk of res) body += String(chunk);
  return { status: res.statusCode ?? 0, headers: res.headers, body };
}

/** The server's access-log line for a request id, if it logged one. */
/** The access-log line of the request that sent this X-Request-Id (logged as clientRequestId). */
function accessLine(harness: ChatHarness, requestId: string): Record<string, unknown> | undefined {
  return harness.server
    .logs()
    .split('\n')
    .filter((line) => line.includes(`"clientRequestId":"${requestId}"`))
    .map((line) => JSON.parse(line) as Record<string, unknown>)
    .find((entry) => entry['msg'] === 'request');
}

function newRequestId(): string {
  return `proxy-test-${randomUUID()}`;
}

/** Streams one answer from a slow upstream; records whether the upstream had finished when the first delta arrived. */
async function streamThrough(harness: ChatHarness, port: number, chunks: string[]) {
  const index = harness.fake.requests.length;
  harness.fake.queue({ kind: 'slow', chunks, chunkDelayMs: 300 });
  const res = await open({
    port,
    path: '/v1/chat',
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      authorization: `Bearer ${harness.key}`,
      'accept-encoding': 'gzip',
    },
    body: JSON.stringify({ message: 'hello' }),
  });
  let upstreamDoneAtFirstDelta: boolean | undefined;
  const frames: SseFrame[] = [];
  for await (const frame of sseFrames(res)) {
    if (frame.event === 'delta' && upstreamDoneAtFirstDelta === undefined)
      upstreamDoneAtFirstDelta = harness.fake.requests[index]?.finished === true;
    if (frame.event !== undefined) frames.push(frame);
  }
  const text = frames
    .filter((f) => f.event === 'delta')
    .map((f) => (f.data as { text: string }).text)
    .join('');
  return { res, frames, text, upstreamDoneAtFirstDelta };
}

describe('deploy/chat-server.nginx.conf', () => {
  it('keeps its timeouts and body cap in line with the server defaults', () => {
    const setting = (name: string): number => Number(new RegExp(`^\\s*${name} (\\d+)`, 'm').exec(SITE)?.[1]);
    const readTimeoutMs = setting('proxy_read_timeout') * 1000;
    const retries = ENV_SCHEMA.UPSTREAM_MAX_RETRIES.parse(undefined);
    const firstByteMs = (retries + 1) * ENV_SCHEMA.UPSTREAM_TIMEOUT_MS.parse(undefined);
    assert.ok(readTimeoutMs > 15_000, 'longer than the 15 s ping interval of a stream');
    assert.ok(readTimeoutMs > firstByteMs, `longer than ${firstByteMs} ms before an answer's first byte`);
    // A buffered answer is silent until it is whole: bounded by the answer deadline where the server has one.
    const schemas: Record<string, { parse(value: unknown): unknown }> = ENV_SCHEMA;
    const wholeAnswerMs = Number(schemas['UPSTREAM_MAX_DURATION_MS']?.parse(undefined) ?? 0);
    assert.ok(readTimeoutMs > wholeAnswerMs, `longer than ${wholeAnswerMs} ms for a whole answer`);
    const upstreamIdleMs = Number(/keepalive_timeout (\d+)s;/.exec(SITE)?.[1]) * 1000;
    assert.ok(upstreamIdleMs < ENV_SCHEMA.KEEP_ALIVE_TIMEOUT_MS.parse(undefined), 'idle upstream sockets close first');
    const capBytes = Number(/client_max_body_size (\d+)m;/.exec(SITE)?.[1]) * 1024 * 1024;
    assert.ok(capBytes >= ENV_SCHEMA.MAX_BODY_BYTES.parse(undefined), 'the server answers 413 first');
    const completionsCap = Number(schemas['COMPLETIONS_MAX_BODY_BYTES']?.parse(undefined) ?? 0);
    assert.ok(capBytes >= completionsCap, 'the server answers 413 first on the OpenAI route too');
  });
});

// Skipped test by test, not as a suite: the runner counts skipped tests, and CI fails on that count.
const live = { skip: UNAVAILABLE };

describe('nginx with deploy/chat-server.nginx.conf in front of the server', () => {
  let root = '';
  let harness: ChatHarness;
  let proxy: Proxy;

  before(async () => {
    if (UNAVAILABLE !== false) return;
    root = mkdtempSync(join(tmpdir(), 'reverse-proxy-'));
    chmodSync(root, 0o755);
    // A self-signed certificate for the site's name, trusted by this test's requests alone.
    execFileSync('openssl', [
      ...['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1'],
      ...['-subj', `/CN=${HOST_NAME}`, '-addext', `subjectAltName=DNS:${HOST_NAME}`],
      ...['-keyout', join(root, 'key.pem'), '-out', join(root, 'cert.pem')],
    ]);
    ca = readFileSync(join(root, 'cert.pem'), 'utf8');
    harness = await startChat({
      TRUST_PROXY: '127.0.0.1',
      HSTS: 'true',
      UPSTREAM_TIMEOUT_MS: '10000',
      UPSTREAM_IDLE_TIMEOUT_MS: '10000',
    });
    proxy = await startProxy(root, Number(new URL(harness.server.url).port));
  });

  after(async () => {
    await proxy?.stop();
    await harness?.close();
    if (root !== '') rmSync(root, { recursive: true, force: true });
  });

  it('answers every plain-HTTP request with a 301 to the same path on https', live, async () => {
    const requestId = newRequestId();
    for (const method of ['GET', 'POST', 'DELETE']) {
      const res = await send({
        port: proxy.httpPort,
        path: '/v1/conversations?limit=5',
        method,
        headers: { 'x-request-id': requestId },
        plain: true,
      });
      assert.equal(res.status, 301, method);
      assert.equal(res.headers.location, `https://${HOST_NAME}/v1/conversations?limit=5`, method);
    }
    assert.equal(accessLine(harness, requestId), undefined, 'nothing reached the server');
    // Clients follow a 301 for a POST with a GET, which the chat route refuses: the mistake is not replayed.
    const retried = await send({
      port: proxy.httpsPort,
      path: '/v1/chat',
      headers: { authorization: `Bearer ${harness.key}` },
    });
    assert.equal(retried.status, 405);
  });

  it('serves HTTPS with the security headers and HSTS, and names itself without a version', live, async () => {
    const res = await send({ port: proxy.httpsPort, path: '/health/live' });
    assert.equal(res.status, 200);
    assert.equal(res.headers.server, 'nginx');
    const get = (name: string): string | null => {
      if (name === 'server') return null; // checked above: nginx's own, version hidden
      const value = res.headers[name];
      return value === undefined ? null : String(value);
    };
    assertSecurityProfile({ get }, true);
  });

  it('accepts TLS 1.2 and 1.3 and refuses older versions', live, async () => {
    const handshake = (version: 'TLSv1' | 'TLSv1.1' | 'TLSv1.2' | 'TLSv1.3'): Promise<string> =>
      new Promise((resolve, reject) => {
        const socket = tlsConnect({
          host: '127.0.0.1',
          port: proxy.httpsPort,
          servername: HOST_NAME,
          ca,
          minVersion: version,
          maxVersion: version,
          // The client would refuse old versions itself at its default level; the refusal must be nginx's.
          ciphers: 'DEFAULT@SECLEVEL=0',
        });
        socket.once('secureConnect', () => {
          const protocol = socket.getProtocol() ?? '';
          socket.destroy();
          resolve(protocol);
        });
        socket.once('error', reject);
      });
    assert.equal(await handshake('TLSv1.3'), 'TLSv1.3');
    assert.equal(await handshake('TLSv1.2'), 'TLSv1.2');
    await assert.rejects(handshake('TLSv1.1'), /alert|protocol/i);
    await assert.rejects(handshake('TLSv1'), /alert|protocol/i);
  });

  it('passes an SSE answer through delta by delta, uncompressed', live, async () => {
    const chunks = ['one ', 'two ', 'three ', 'four'];
    const { res, frames, text, upstreamDoneAtFirstDelta } = await streamThrough(harness, proxy.httpsPort, chunks);
    assert.equal(res.statusCode, 200);
    assert.match(String(res.headers['content-type']), /^text\/event-stream/);
    assert.equal(res.headers['content-encoding'], undefined);
    assert.equal(upstreamDoneAtFirstDelta, false, 'the first delta arrived while the upstream was still sending');
    assert.equal(text, chunks.join(''));
    assert.equal(frames.at(-1)?.event, 'done');
  });

  it('serves the stream over HTTP/2 as well', live, async (t) => {
    const session = http2Connect(`https://127.0.0.1:${proxy.httpsPort}`, { ca, servername: HOST_NAME });
    t.after(() => session.close());
    const stream = session.request({
      ':method': 'POST',
      ':path': '/v1/chat',
      ':authority': HOST_NAME,
      'content-type': 'application/json',
      authorization: `Bearer ${harness.key}`,
    });
    stream.end(JSON.stringify({ message: 'hello' }));
    const headers = await new Promise<Record<string, unknown>>((resolve) => stream.once('response', resolve));
    assert.equal(headers[':status'], 200);
    const events: Array<string | undefined> = [];
    for await (const frame of sseFrames(stream)) if (frame.event !== undefined) events.push(frame.event);
    assert.deepEqual([events[0], events.at(-1)], ['start', 'done']);
  });

  it("logs the client's address from X-Forwarded-For, never one the client sent", live, async () => {
    for (const spoof of [undefined, SPOOFED, `${SPOOFED}, 127.0.0.1`]) {
      const requestId = newRequestId();
      const headers: Record<string, string> = { 'x-request-id': requestId };
      if (spoof !== undefined) headers['x-forwarded-for'] = spoof;
      const res = await send({ port: proxy.httpsPort, path: '/health/live', headers, localAddress: CLIENT_ADDRESS });
      assert.equal(res.status, 200);
      const line = await waitFor('the access-log line', 2_000, () => accessLine(harness, requestId));
      assert.equal(line['ip'], CLIENT_ADDRESS, `X-Forwarded-For sent by the client: ${spoof}`);
    }
  });

  it(
    "replaces rather than appends X-Forwarded-For, so a client on the proxy's address cannot forge one",
    live,
    async () => {
      // Appending would send "203.0.113.9, 127.0.0.1"; the server skips the trusted 127.0.0.1 and believes the rest.
      const requestId = newRequestId();
      const headers = { 'x-request-id': requestId, 'x-forwarded-for': SPOOFED };
      await send({ port: proxy.httpsPort, path: '/health/live', headers, localAddress: '127.0.0.1' });
      const line = await waitFor('the access-log line', 2_000, () => accessLine(harness, requestId));
      assert.equal(line['ip'], '127.0.0.1');
    },
  );

  it('refuses /metrics itself, however the path is spelled, even with the metrics token', live, async () => {
    const direct = await fetch(`${harness.server.url}/metrics`, { headers: { authorization: `Bearer ${CANARY}` } });
    assert.equal(direct.status, 200, 'the token opens /metrics on the server itself');
    await direct.body?.cancel();
    const paths = ['/metrics', '/metrics?x=1', '/metrics/', '//metrics', '/%6Detrics', '/./metrics', '/v1/../metrics'];
    for (const path of paths) {
      for (const method of ['GET', 'HEAD']) {
        const requestId = newRequestId();
        const headers = { authorization: `Bearer ${CANARY}`, 'x-request-id': requestId };
        const res = await send({ port: proxy.httpsPort, path, method, headers });
        assert.equal(res.status, 404, `${method} ${path}`);
        assert.equal(res.headers['x-request-id'], undefined, `${method} ${path} never reached the server`);
        if (method === 'GET') assert.equal(JSON.parse(res.body).code, 'NOT_FOUND');
        assert.equal(accessLine(harness, requestId), undefined, `${method} ${path} is not in the server's log`);
      }
    }
  });

  it("leaves a body over MAX_BODY_BYTES to the server's 413 and stops far larger ones itself", live, async () => {
    const headers = { 'content-type': 'application/json', authorization: `Bearer ${harness.key}` };
    const over = JSON.stringify({ message: 'x'.repeat(harness.server.config.maxBodyBytes) });
    const server413 = await send({ port: proxy.httpsPort, path: '/v1/chat', method: 'POST', headers, body: over });
    assert.equal(server413.status, 413);
    assert.equal(JSON.parse(server413.body).code, 'BODY_TOO_LARGE');
    assert.ok(server413.headers['x-request-id'], "the server's answer");
    // Only the declared length: nginx answers from the headers and never reads a byte of the body.
    const huge = await open({
      port: proxy.httpsPort,
      path: '/v1/chat',
      method: 'POST',
      headers: { ...headers, 'content-length': 1024 * 1024 + 1 },
    }).catch((err: Error) => err);
    assert.ok(!(huge instanceof Error), String(huge));
    assert.equal(huge.statusCode, 413);
    assert.equal(huge.headers['x-request-id'], undefined, "nginx's answer");
    let body = '';
    for await (const chunk of huge) body += String(chunk);
    assert.equal(JSON.parse(body).code, 'BODY_TOO_LARGE');
  });

  it('reuses one HTTP/1.1 connection to the server for consecutive requests', live, async () => {
    let accepted = 0;
    const onConnection = (): void => {
      accepted++;
    };
    harness.server.server.on('connection', onConnection);
    try {
      for (let i = 0; i < 5; i++)
        assert.equal((await send({ port: proxy.httpsPort, path: '/health/live' })).status, 200);
    } finally {
      harness.server.server.off('connection', onConnection);
    }
    assert.ok(accepted <= 1, `${accepted} new upstream connections for 5 requests`);
  });

  it(
    'streams through X-Accel-Buffering alone when proxy_buffering is left on, and buffers without either',
    live,
    async (t) => {
      const serverPort = Number(new URL(harness.server.url).port);
      const withoutOff = (s: string): string => replaceOnce(s, /\n\s*proxy_buffering off;/, '');
      const headerOnly = await startProxy(root, serverPort, withoutOff);
      t.after(() => headerOnly.stop());
      const ignoring = await startProxy(root, serverPort, (s) =>
        replaceOnce(
          withoutOff(s),
          /proxy_pass http:\/\/chat_server;/,
          '$&\n        proxy_ignore_headers X-Accel-Buffering;',
        ),
      );
      t.after(() => ignoring.stop());
      const chunks = ['one ', 'two ', 'three'];
      const viaHeader = await streamThrough(harness, headerOnly.httpsPort, chunks);
      assert.equal(
        viaHeader.upstreamDoneAtFirstDelta,
        false,
        "the server's header turns buffering off for its streams",
      );
      const buffered = await streamThrough(harness, ignoring.httpsPort, chunks);
      assert.equal(buffered.text, chunks.join(''));
      assert.equal(
        buffered.upstreamDoneAtFirstDelta,
        true,
        'a buffering proxy holds the deltas back (this check can fail)',
      );
    },
  );
});
