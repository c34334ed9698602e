// A fake OpenAI-compatible upstream on a real loopback socket, for tests and benchmarks.
//
// It speaks the Chat Completions wire format (SSE chunks ending in `data: [DONE]`, or one JSON
// completion) and can misbehave on demand: hang before headers, stall or reset mid-stream,
// answer an error status or send garbage, so the client's timeouts and error mapping are
// tested against real sockets rather than mocks.

import { randomBytes } from 'node:crypto';
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import { createServer } from 'node:http';
import type { Socket } from 'node:net';

/** What the fake does with the next request. */
export type Behaviour =
  | { kind: 'normal' | 'slow'; chunks?: string[]; chunkDelayMs?: number; finishReason?: 'stop' | 'length' }
  | { kind: 'hang' }
  | { kind: 'stall'; afterChunks: number }
  | { kind: 'status'; status: number; retryAfter?: string; body?: object }
  | { kind: 'invalid-sse' }
  | { kind: 'reset'; afterChunks: number }
  | { kind: 'burst'; count: number; text?: string }
  /** Streams one `data:` line of `bytes` bytes that never ends, as fast as the client reads. */
  | { kind: 'huge-line'; bytes: number }
  /** Answers `status` with an OpenAI error body whose message is `bytes` long. */
  | { kind: 'huge-error'; status: number; bytes: number }
  /** After `afterChunks` content chunks, sends chunks with an empty delta every `intervalMs`, forever. */
  | { kind: 'keepalive'; afterChunks: number; intervalMs: number }
  /** Sends `text` as a content chunk every `intervalMs`, forever. */
  | { kind: 'endless'; text: string; intervalMs: number };

/** One request as the fake saw it. */
export interface RecordedRequest {
  headers: IncomingHttpHeaders;
  body: unknown;
  /** The response's 'close' fired before it finished: the client (or a reset) cut it. */
  closedEarly: boolean;
  closedAt?: number;
  finished: boolean;
}

/** A running fake upstream. */
export interface FakeUpstream {
  /** Base URL including `/v1`, as OPENAI_BASE_URL expects. */
  readonly url: string;
  readonly requests: RecordedRequest[];
  setBehaviour(b: Behaviour): void;
  /** Behaviours used by the next requests in order, before falling back to the default. */
  queue(...bs: Behaviour[]): void;
  openSockets(): number;
  /** Resolves with the ms waited until request `index` closed (0 if it already had). */
  waitForClose(index: number, timeoutMs: number): Promise<number>;
  close(): Promise<void>;
}

/** A message the tests look for to prove upstream error text never reaches a client. */
export const UPSTREAM_SECRET_DETAIL = 'UPSTREAM-SECRET-DETAIL';

const DEFAULT_CHUNKS = ['Hel', 'lo', ' world'];
const SLOW_DELAY_MS = 50;

interface Exchange {
  req: IncomingMessage;
  res: ServerResponse;
  body: { model?: unknown; stream?: unknown; stream_options?: { include_usage?: unknown } };
  timers: Set<NodeJS.Timeout>;
}

/** Starts the fake on 127.0.0.1 (or `host`), port 0 unless given; `apiKey` makes it refuse any other bearer token. */
export async function startFakeUpstream(
  options: { host?: string; port?: number; apiKey?: string } = {},
): Promise<FakeUpstream> {
  const host = options.host ?? '127.0.0.1';
  const requests: RecordedRequest[] = [];
  const sockets = new Set<Socket>();
  const timers = new Set<NodeJS.Timeout>();
  const closeWaiters = new Set<() => void>();
  const pending: Behaviour[] = [];
  let fallback: Behaviour = { kind: 'normal' };

  const server = createServer((req, res) => {
    void handle(req, res).catch(() => res.destroy());
  });
  // Tests run with UPSTREAM_MAX_RETRIES=0, so the classic keep-alive race (the server closes an
  // idle socket just as the client reuses it; production's SDK retries cover it) would surface as a
  // rare 502 under load. Idle sockets here outlive the client's own keep-alive timer instead.
  server.keepAliveTimeout = 65_000;
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const raw = await readBody(req);
    const record: RecordedRequest = { headers: req.headers, body: undefined, closedEarly: false, finished: false };
    try {
      record.body = JSON.parse(raw);
    } catch {
      record.body = raw;
    }
    requests.push(record);
    res.on('close', () => {
      record.finished = res.writableFinished;
      record.closedEarly = !res.writableFinished;
      record.closedAt = Date.now();
      for (const wake of closeWaiters) wake();
    });
    res.setHeader('x-request-id', `req_${randomBytes(12).toString('hex')}`);
    const path = (req.url ?? '').split('?')[0];
    if (req.method !== 'POST' || (path !== '/v1/chat/completions' && path !== '/chat/completions')) {
      sendJson(res, 404, errorBody('Unknown route', 'invalid_request_error', 'not_found'));
      return;
    }
    if (!authorised(req.headers.authorization, options.apiKey)) {
      sendJson(res, 401, errorBody('Incorrect API key provided', 'invalid_request_error', 'invalid_api_key'));
      return;
    }
    if (typeof record.body !== 'object' || record.body === null) {
      sendJson(res, 400, errorBody('We could not parse the JSON body of your request', 'invalid_request_error', null));
      return;
    }
    const behaviour = pending.shift() ?? fallback;
    const ex: Exchange = { req, res, body: record.body as Exchange['body'], timers };
    await respond(ex, behaviour);
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, host, () => resolve());
  });
  const { port } = server.address() as { port: number };
  const urlHost = host.includes(':') ? `[${host}]` : host;

  return {
    url: `http://${urlHost}:${port}/v1`,
    requests,
    setBehaviour(b) {
      fallback = b;
    },
    queue(...bs) {
      pending.push(...bs);
    },
    openSockets: () => sockets.size,
    waitForClose(index, timeoutMs) {
      return waitFor(
        () => requests[index]?.closedAt !== undefined,
        closeWaiters,
        timeoutMs,
        `request ${index} to close`,
      );
    },
    async close() {
      for (const t of timers) clearTimeout(t);
      timers.clear();
      for (const s of sockets) s.destroy();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

function authorised(header: string | undefined, apiKey: string | undefined): boolean {
  if (header === undefined || !header.startsWith('Bearer ')) return false;
  return apiKey === undefined || header === `Bearer ${apiKey}`;
}

async function readBody(req: IncomingMessage): Promise<string> {
  const parts: Buffer[] = [];
  for await (const part of req) parts.push(part as Buffer);
  return Buffer.concat(parts).toString('utf8');
}

function waitFor(done: () => boolean, waiters: Set<() => void>, timeoutMs: number, what: string): Promise<number> {
  const started = Date.now();
  if (done()) return Promise.resolve(0);
  return new Promise((resolve, reject) => {
    const wake = (): void => {
      if (!done()) return;
      cleanup();
      resolve(Date.now() - started);
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`Timed out after ${timeoutMs} ms waiting for ${what}`));
    }, timeoutMs);
    function cleanup(): void {
      clearTimeout(timer);
      waiters.delete(wake);
    }
    waiters.add(wake);
  });
}

/** OpenAI's error body shape, with a message that must never reach a client. */
function errorBody(message: string, type: string, code: string | null): object {
  return { error: { message: `${message} (${UPSTREAM_SECRET_DETAIL})`, type, param: null, code } };
}

function sendJson(res: ServerResponse, status: number, body: object, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

async function respond(ex: Exchange, b: Behaviour): Promise<void> {
  const { res } = ex;
  switch (b.kind) {
    case 'hang':
      return; // never answers; the socket stays open until the client gives up or close()
    case 'status': {
      const headers: Record<string, string> = b.retryAfter === undefined ? {} : { 'retry-after': b.retryAfter };
      sendJson(res, b.status, b.body ?? errorBody('The server had an error', 'server_error', 'server_error'), headers);
      return;
    }
    case 'huge-line':
      await streamHugeLine(ex, b.bytes);
      return;
    case 'huge-error': {
      const message = `${UPSTREAM_SECRET_DETAIL} ${'e'.repeat(b.bytes)}`;
      sendJson(res, b.status, { error: { message, type: 'server_error', param: null, code: 'server_error' } });
      return;
    }
    case 'keepalive':
    case 'endless':
      await streamForever(ex, b);
      return;
    case 'invalid-sse':
      if (ex.body.stream !== true) {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end('{not json');
        return;
      }
      startSse(res);
      res.end('data: {not json\n\n');
      return;
    default:
      if (ex.body.stream === true) await streamChunks(ex, b);
      else await sendCompletion(ex, b);
  }
}

function startSse(res: ServerResponse): void {
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
}

type ChunkBehaviour = Extract<Behaviour, { kind: 'normal' | 'slow' | 'stall' | 'reset' | 'burst' }>;

function contentOf(b: ChunkBehaviour): string[] {
  if (b.kind === 'burst') return new Array<string>(b.count).fill(b.text ?? 'x');
  if (b.kind === 'normal' || b.kind === 'slow') return b.chunks ?? DEFAULT_CHUNKS;
  return DEFAULT_CHUNKS;
}

/** Writes an SSE stream: role chunk, content chunks, finish, optional usage, [DONE]. */
async function streamChunks(ex: Exchange, b: ChunkBehaviour): Promise<void> {
  const { res } = ex;
  const id = `chatcmpl-${randomBytes(8).toString('hex')}`;
  const created = Math.floor(Date.now() / 1000);
  const model = typeof ex.body.model === 'string' ? ex.body.model : 'fake-model';
  const chunk = (choices: unknown[], extra: object = {}): string =>
    `data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created, model, choices, ...extra })}\n\n`;
  const delta = (d: object, finish: string | null = null): string =>
    chunk([{ index: 0, delta: d, finish_reason: finish }]);
  const delayMs =
    b.kind === 'normal' ? (b.chunkDelayMs ?? 0) : b.kind === 'slow' ? (b.chunkDelayMs ?? SLOW_DELAY_MS) : 0;
  const content = contentOf(b);

  startSse(res);
  if (!(await write(ex, delta({ role: 'assistant', content: '' })))) return;
  for (let i = 0; i < content.length; i++) {
    if ((b.kind === 'stall' || b.kind === 'reset') && i >= b.afterChunks) break;
    if (delayMs > 0 && !(await sleep(ex, delayMs))) return;
    if (!(await write(ex, delta({ content: content[i] })))) return;
  }
  if (b.kind === 'stall') return; // headers and some chunks sent; now silence with the socket open
  if (b.kind === 'reset') {
    await resetAfterFlush(res);
    return;
  }
  const finish = (b.kind === 'normal' || b.kind === 'slow') && b.finishReason !== undefined ? b.finishReason : 'stop';
  if (!(await write(ex, delta({}, finish)))) return;
  if (ex.body.stream_options?.include_usage === true) {
    const usage = { prompt_tokens: 12, completion_tokens: content.length, total_tokens: 12 + content.length };
    if (!(await write(ex, chunk([], { usage })))) return;
  }
  res.end('data: [DONE]\n\n');
}

/** One SSE line that never ends: 64 KiB writes with backpressure until `bytes` are out or the client leaves. */
async function streamHugeLine(ex: Exchange, bytes: number): Promise<void> {
  startSse(ex.res);
  const block = 'x'.repeat(64 * 1024);
  if (!(await write(ex, `data: {"id":"chatcmpl-huge","choices":[{"index":0,"delta":{"content":"`))) return;
  for (let sent = 0; sent < bytes; sent += block.length) if (!(await write(ex, block))) return;
  ex.res.end('"}}]}\n\n');
}

/** Keep-alive chunks (an empty delta) or content, every `intervalMs`, until the client leaves. */
async function streamForever(ex: Exchange, b: Extract<Behaviour, { kind: 'keepalive' | 'endless' }>): Promise<void> {
  const line = (d: object): string => {
    const choices = [{ index: 0, delta: d, finish_reason: null }];
    const chunk = { id: 'chatcmpl-forever', object: 'chat.completion.chunk', created: 1, model: 'm', choices };
    return `data: ${JSON.stringify(chunk)}\n\n`;
  };
  startSse(ex.res);
  if (!(await write(ex, line({ role: 'assistant', content: '' })))) return;
  for (let i = 0; ; i++) {
    const content = b.kind === 'endless' || i < b.afterChunks;
    if (!(await write(ex, line(content ? { content: b.kind === 'endless' ? b.text : 'x' } : {})))) return;
    if (!(await sleep(ex, b.intervalMs))) return;
  }
}

/** Destroys the socket once what was written has left, so the client sees chunks and then a reset. */
async function resetAfterFlush(res: ServerResponse): Promise<void> {
  const socket = res.socket;
  if (socket === null) return;
  // An empty write's callback runs once everything queued before it has been handed to the kernel.
  await new Promise<void>((resolve) => socket.write('', () => resolve()));
  socket.destroy();
}

/** Writes one chunk, waiting for 'drain' when the socket buffer is full; false once the client is gone. */
async function write(ex: Exchange, text: string): Promise<boolean> {
  const { res } = ex;
  if (res.destroyed) return false;
  if (res.write(text)) return true;
  await new Promise<void>((resolve) => {
    // Both listeners go away whichever fires, so a long burst does not pile them up.
    const done = (): void => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
  return !res.destroyed;
}

function sleep(ex: Exchange, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      ex.timers.delete(timer);
      resolve(!ex.res.destroyed);
    }, ms);
    ex.timers.add(timer);
  });
}

/** Answers a non-streaming request with one chat.completion object (or a broken one). */
async function sendCompletion(ex: Exchange, b: ChunkBehaviour): Promise<void> {
  const { res } = ex;
  const text = contentOf(b).join('');
  const model = typeof ex.body.model === 'string' ? ex.body.model : 'fake-model';
  const body = JSON.stringify({
    id: `chatcmpl-${randomBytes(8).toString('hex')}`,
    object: 'chat.completion',
    created: Math.floor(Date.now() / 1000),
    model,
    choices: [{ index: 0, message: { role: 'assistant', content: text }, finish_reason: 'stop' }],
    usage: { prompt_tokens: 12, completion_tokens: 3, total_tokens: 15 },
  });
  if (b.kind === 'slow' || (b.kind === 'normal' && b.chunkDelayMs !== undefined)) {
    if (!(await sleep(ex, b.chunkDelayMs ?? SLOW_DELAY_MS))) return;
  }
  if (b.kind === 'stall' || b.kind === 'reset') {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.write(body.slice(0, 20));
    if (b.kind === 'reset') await resetAfterFlush(res);
    return;
  }
  sendJson(res, 200, JSON.parse(body) as object);
}
