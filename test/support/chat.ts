// Shared helpers for the chat integration tests: the real app in front of the fake upstream,
// API keys minted straight into the database, and an SSE frame reader for response bodies.
import { randomUUID } from 'node:crypto';
import { type IncomingMessage, request } from 'node:http';
import { join } from 'node:path';
import pg from 'pg';
import { generateApiKey } from '../../lib/auth/api-key.ts';
import { insertApiKey } from '../../lib/db/api-keys.ts';
import { TEST_DATABASE_URL } from './config.ts';
import { type FakeUpstream, startFakeUpstream } from './fake-upstream.ts';
import type { TestServer } from './server.ts';

/** Small upstream deadlines and no retries, so fault tests finish in about a second. */
export const CHAT_ENV = {
  UPSTREAM_TIMEOUT_MS: '1000',
  UPSTREAM_IDLE_TIMEOUT_MS: '800',
  UPSTREAM_MAX_RETRIES: '0',
  RATE_LIMIT_PER_MINUTE: '1000000',
  RATE_LIMIT_BURST: '1000000',
  AUTH_FAILURES_PER_MINUTE: '100000',
} as const;

/** One parsed server-sent event; `data` is JSON-parsed when it parses. */
export interface SseFrame {
  event: string | undefined;
  /** The `id:` field (deltas of the native route: `<messageId>:<offset>`). */
  id?: string | undefined;
  data: unknown;
  comment: string | undefined;
}

/** The real server in front of a fake upstream, with one identity's key ready. */
export interface ChatHarness {
  fake: FakeUpstream;
  server: TestServer;
  /** An API key (Bearer token) of a fresh identity. */
  key: string;
  /** A new API key of another fresh identity. */
  mintKey(): Promise<string>;
  /** POST /v1/chat with a JSON body (or `raw` text as is). */
  chat(body: unknown, options?: { key?: string; headers?: Record<string, string>; raw?: string }): Promise<Response>;
  /** GET or DELETE on a path, authenticated. */
  call(method: 'GET' | 'DELETE', path: string, key?: string): Promise<Response>;
  close(): Promise<void>;
}

/** Starts a fake upstream and the real app pointed at it; `env` overrides CHAT_ENV. */
export async function startChat(env: Record<string, string | undefined> = {}): Promise<ChatHarness> {
  // Loaded on use: files that only read SSE frames or mint keys skip the server's modules.
  const { startTestServer } = await import('./server.ts');
  const fake = await startFakeUpstream();
  let server: TestServer;
  try {
    server = await startTestServer({ ...CHAT_ENV, OPENAI_BASE_URL: fake.url, ...env });
  } catch (err) {
    await fake.close();
    throw err;
  }
  const key = await mintKey(server.db.pool);
  const authorised = (k: string | undefined): Record<string, string> => ({ authorization: `Bearer ${k ?? key}` });
  return {
    fake,
    server,
    key,
    mintKey: () => mintKey(server.db.pool),
    chat(body, options = {}) {
      return fetch(`${server.url}/v1/chat`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...authorised(options.key), ...options.headers },
        body: options.raw ?? JSON.stringify(body),
      });
    },
    call(method, path, k) {
      return fetch(`${server.url}${path}`, { method, headers: authorised(k) });
    },
    async close() {
      try {
        await server.close(); // after a test's own drain too: shutdown() is idempotent
      } finally {
        await fake.close();
      }
    },
  };
}

/** Inserts a new API key and returns the key string for `Authorization: Bearer`. */
export async function mintKey(pool: pg.Pool): Promise<string> {
  const generated = generateApiKey();
  await insertApiKey(pool, { name: `test-${randomUUID()}`, prefix: generated.prefix, hash: generated.hash });
  return generated.key;
}

/** Parses SSE frames from a byte stream (a fetch body or an IncomingMessage) as they arrive. */
export async function* sseFrames(source: AsyncIterable<Uint8Array | string>): AsyncGenerator<SseFrame> {
  const decoder = new TextDecoder();
  let buffer = '';
  for await (const chunk of source) {
    buffer += typeof chunk === 'string' ? chunk : decoder.decode(chunk, { stream: true });
    let end: number;
    while ((end = buffer.indexOf('\n\n')) !== -1) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      yield parseFrame(block);
    }
  }
  if (buffer.trim() !== '') throw new Error(`SSE stream ended inside a frame: ${JSON.stringify(buffer)}`);
}

function parseFrame(block: string): SseFrame {
  let event: string | undefined;
  let id: string | undefined;
  let comment: string | undefined;
  const data: string[] = [];
  for (const line of block.split('\n')) {
    if (line.startsWith(':')) comment = line.slice(1).trim();
    else if (line.startsWith('event: ')) event = line.slice(7);
    else if (line.startsWith('id: ')) id = line.slice(4);
    else if (line.startsWith('data: ')) data.push(line.slice(6));
    else throw new Error(`Unexpected SSE line: ${JSON.stringify(line)}`);
  }
  const text = data.join('\n');
  let parsed: unknown = data.length === 0 ? undefined : text;
  try {
    parsed = data.length === 0 ? undefined : JSON.parse(text);
  } catch {
    // not JSON: keep the text
  }
  return id === undefined ? { event, data: parsed, comment } : { event, id, data: parsed, comment };
}

/** Reads a whole SSE response into its event frames (heartbeat comments dropped). */
export async function readEvents(res: Response): Promise<SseFrame[]> {
  const type = res.headers.get('content-type') ?? '';
  if (!type.startsWith('text/event-stream'))
    throw new Error(`Expected an event stream, got ${res.status} ${type}: ${await res.text()}`);
  if (res.body === null) throw new Error('Response has no body');
  const frames: SseFrame[] = [];
  for await (const frame of sseFrames(res.body)) if (frame.event !== undefined) frames.push(frame);
  return frames;
}

/** A streaming chat request on its own socket, so a test can cut it like a browser tab closing. */
export interface OpenStream {
  res: IncomingMessage;
  /** The next event frame (heartbeats skipped), or undefined at the end of the stream. */
  next(): Promise<SseFrame | undefined>;
  /** Destroys the socket mid-stream. */
  abort(): void;
}

/** Sends POST /v1/chat over node:http without keep-alive and resolves once response headers arrive. */
export function openStream(baseUrl: string, key: string, body: unknown): Promise<OpenStream> {
  const payload = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = request(`${baseUrl}/v1/chat`, {
      method: 'POST',
      agent: false,
      headers: {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(payload),
        authorization: `Bearer ${key}`,
      },
    });
    req.on('error', reject);
    req.on('response', (res) => {
      req.off('error', reject);
      req.on('error', () => {}); // the test destroys it on purpose
      res.on('error', () => {});
      const frames = sseFrames(res);
      resolve({
        res,
        async next() {
          for (;;) {
            const step = await frames.next();
            if (step.done === true) return undefined;
            if (step.value.event !== undefined) return step.value;
          }
        },
        abort: () => req.destroy(),
      });
    });
    req.end(payload);
  });
}

/** Polls `check` until it returns a value other than undefined, or fails after `timeoutMs`. */
export async function waitFor<T>(
  what: string,
  timeoutMs: number,
  check: () => Promise<T | undefined> | T | undefined,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`Timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** One stored message as the database holds it. */
export interface MessageRow {
  role: string;
  content: string;
  status: string;
  finish_reason: string | null;
  error_code: string | null;
  prompt_tokens: number | null;
  completion_tokens: number | null;
}

const MESSAGE_COLUMNS = 'role, content, status, finish_reason, error_code, prompt_tokens, completion_tokens';

/** The messages of a conversation, oldest first, straight from the database. */
export async function storedMessages(pool: pg.Pool, conversationId: string): Promise<MessageRow[]> {
  const { rows } = await pool.query<MessageRow>(
    `SELECT ${MESSAGE_COLUMNS} FROM messages WHERE conversation_id = $1 ORDER BY seq`,
    [conversationId],
  );
  return rows;
}

/** Polls until the conversation's assistant message is stored, and returns it. */
export function storedAnswer(pool: pg.Pool, conversationId: string, timeoutMs = 2_000): Promise<MessageRow> {
  return waitFor(`the assistant message of ${conversationId}`, timeoutMs, async () =>
    (await storedMessages(pool, conversationId)).find((m) => m.role === 'assistant'),
  );
}

/**
 * Reads the messages of a conversation after the server (and its pool) has shut down: over a
 * new connection to TEST_DATABASE_URL, or by reopening the embedded database in its data dir.
 */
export async function messagesAfterShutdown(server: TestServer, conversationId: string): Promise<MessageRow[]> {
  if (TEST_DATABASE_URL !== undefined) {
    const pool = new pg.Pool({ connectionString: TEST_DATABASE_URL, max: 1 });
    try {
      return await storedMessages(pool, conversationId);
    } finally {
      await pool.end();
    }
  }
  const { PGlite } = await import('@electric-sql/pglite');
  const engine = await PGlite.create(join(server.config.dataDir, 'pglite'));
  try {
    const { rows } = await engine.query<MessageRow>(
      `SELECT ${MESSAGE_COLUMNS} FROM messages WHERE conversation_id = $1 ORDER BY seq`,
      [conversationId],
    );
    return rows;
  } finally {
    await engine.close();
  }
}
