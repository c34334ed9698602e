// Helpers for the adversarial tests: raw sockets, an HTTP/1.1 response parser, identities whose
// rows can be counted, and the "everything back to zero" check run after each attack or fault.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import type pg from 'pg';
import { generateApiKey } from '../../lib/auth/api-key.ts';
import { insertApiKey } from '../../lib/db/api-keys.ts';
import type { RunningServer } from '../../lib/main.ts';

/** One HTTP/1.1 response as it arrived on the wire. */
export interface RawResponse {
  status: number;
  /** Header names lower-cased; repeated headers joined with ', '. */
  headers: Map<string, string>;
  body: string;
}

/** What a raw connection saw: every byte the server sent, and whether and when the server closed it. */
export interface RawExchange {
  text: string;
  responses: RawResponse[];
  closedByServer: boolean;
  /** Milliseconds from the first write until the server closed the connection. */
  closedAfterMs: number;
}

/** The port of a base URL such as `http://127.0.0.1:8000`. */
export function portOf(url: string): number {
  return Number(new URL(url).port);
}

/** Opens a TCP connection to the server at `url` and resolves once connected. */
export function openSocket(url: string, timeoutMs = 5_000): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(portOf(url), '127.0.0.1');
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`Timed out after ${timeoutMs} ms connecting to ${url}`));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.off('error', reject);
      socket.on('error', () => {}); // a reset by the server shows as 'close', which callers watch
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

/**
 * Writes `parts[0]` at once and each further part every `intervalMs`, collecting everything the
 * server sends until it closes the connection or `timeoutMs` passes (then we close it).
 */
export function exchange(
  url: string,
  parts: readonly (string | Buffer)[],
  options: { intervalMs?: number; timeoutMs?: number } = {},
): Promise<RawExchange> {
  const intervalMs = options.intervalMs ?? 1_000;
  const timeoutMs = options.timeoutMs ?? 5_000;
  return new Promise((resolve, reject) => {
    const socket = connect(portOf(url), '127.0.0.1');
    const chunks: Buffer[] = [];
    let started = 0;
    let next = 0;
    let closedByServer = true;
    let drip: NodeJS.Timeout | undefined;
    const limit = setTimeout(() => {
      closedByServer = false;
      socket.destroy();
    }, timeoutMs);
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', () => {}); // a reset is an answer too: 'close' follows
    socket.once('connect', () => {
      started = Date.now();
      socket.write(parts[next++] as string | Buffer);
      drip = setInterval(() => {
        if (next >= parts.length) return clearInterval(drip);
        if (!socket.destroyed) socket.write(parts[next++] as string | Buffer);
      }, intervalMs);
    });
    socket.once('close', () => {
      clearTimeout(limit);
      clearInterval(drip);
      if (started === 0) return reject(new Error(`Could not connect to ${url}`));
      const text = Buffer.concat(chunks).toString('latin1');
      resolve({ text, responses: parseResponses(text), closedByServer, closedAfterMs: Date.now() - started });
    });
  });
}

/** Parses back-to-back HTTP/1.1 responses (Content-Length or chunked bodies); stops at a truncated one. */
export function parseResponses(text: string): RawResponse[] {
  const out: RawResponse[] = [];
  let rest = text;
  while (rest.length > 0) {
    const end = rest.indexOf('\r\n\r\n');
    if (end === -1) break;
    const [statusLine = '', ...lines] = rest.slice(0, end).split('\r\n');
    const match = /^HTTP\/1\.[01] (\d{3})/.exec(statusLine);
    if (match === null) throw new Error(`Not an HTTP response: ${JSON.stringify(statusLine.slice(0, 80))}`);
    const headers = new Map<string, string>();
    for (const line of lines) {
      const colon = line.indexOf(':');
      const name = line.slice(0, colon).trim().toLowerCase();
      const value = line.slice(colon + 1).trim();
      headers.set(name, headers.has(name) ? `${headers.get(name)}, ${value}` : value);
    }
    rest = rest.slice(end + 4);
    let body: string;
    if (headers.get('transfer-encoding') === 'chunked') {
      const decoded = decodeChunked(rest);
      if (decoded === undefined) break;
      body = decoded.body;
      rest = rest.slice(decoded.consumed);
    } else {
      const length = Number(headers.get('content-length') ?? 0);
      if (rest.length < length) break;
      body = rest.slice(0, length);
      rest = rest.slice(length);
    }
    out.push({ status: Number(match[1]), headers, body });
  }
  return out;
}

function decodeChunked(text: string): { body: string; consumed: number } | undefined {
  let at = 0;
  let body = '';
  for (;;) {
    const lineEnd = text.indexOf('\r\n', at);
    if (lineEnd === -1) return undefined;
    const size = parseInt(text.slice(at, lineEnd), 16);
    if (Number.isNaN(size)) throw new Error('Bad chunk size in a response');
    at = lineEnd + 2;
    if (size === 0) {
      const trailerEnd = text.indexOf('\r\n', at);
      return trailerEnd === -1 ? undefined : { body, consumed: trailerEnd + 2 };
    }
    if (text.length < at + size + 2) return undefined;
    body += text.slice(at, at + size);
    at += size + 2;
  }
}

/** The security headers every response must carry, errors written outside the middleware chain included. */
export const REQUIRED_SECURITY_HEADERS: Readonly<Record<string, string>> = {
  'content-security-policy': "default-src 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-store',
};

/** Asserts the API security header profile on a raw response. */
export function assertSecurityHeaders(res: RawResponse): void {
  for (const [name, value] of Object.entries(REQUIRED_SECURITY_HEADERS)) {
    assert.equal(res.headers.get(name), value, `response ${res.status} carries ${name}`);
  }
  assert.equal(res.headers.has('x-powered-by'), false);
}

/** The problem+json `code` of a raw response. */
export function problemCode(res: RawResponse): unknown {
  assert.match(res.headers.get('content-type') ?? '', /^application\/problem\+json/);
  return (JSON.parse(res.body) as { code?: unknown }).code;
}

/** A new API key together with the owner id its conversations are stored under. */
export interface Identity {
  key: string;
  owner: string;
}

/** Inserts a new API key straight into the database. */
export async function mintIdentity(pool: pg.Pool): Promise<Identity> {
  const generated = generateApiKey();
  const id = await insertApiKey(pool, {
    name: `attack-${randomUUID()}`,
    prefix: generated.prefix,
    hash: generated.hash,
  });
  return { key: generated.key, owner: `key:${id}` };
}

/** The counters that must all return to zero once the traffic of an attack or fault is over. */
export function leftovers(server: RunningServer): Record<string, number> {
  const { pool } = server.db;
  const upstream = server.upstream.stats();
  return {
    dbCheckedOut: pool.totalCount - pool.idleCount,
    dbWaiting: pool.waitingCount,
    streamSlots: server.slots.inUse(),
    chatTurns: server.chat.active(),
    upstreamRunning: upstream.running,
    upstreamPending: upstream.pending,
  };
}

const ZERO = { dbCheckedOut: 0, dbWaiting: 0, streamSlots: 0, chatTurns: 0, upstreamRunning: 0, upstreamPending: 0 };

/** Polls until every leftover counter is zero; fails with the last snapshot after `timeoutMs`. */
export async function assertSettled(server: RunningServer, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = leftovers(server);
  while (Date.now() < deadline) {
    last = leftovers(server);
    if (Object.values(last).every((n) => n === 0)) return;
    await sleep(25);
  }
  assert.deepEqual(last, ZERO, `resources still held ${timeoutMs} ms after the traffic ended`);
}

/** User and assistant message counts of one owner, read over `pool`. */
export async function messageCounts(pool: pg.Pool, owner: string): Promise<{ user: number; assistant: number }> {
  const { rows } = await pool.query<{ role: string; n: number }>(
    `SELECT m.role, count(*)::int AS n FROM messages m JOIN conversations c ON c.id = m.conversation_id
     WHERE c.owner = $1 GROUP BY m.role`,
    [owner],
  );
  const count = (role: string): number => rows.find((r) => r.role === role)?.n ?? 0;
  return { user: count('user'), assistant: count('assistant') };
}

/** The statuses of one owner's assistant messages. */
export async function assistantStatuses(pool: pg.Pool, owner: string): Promise<string[]> {
  const { rows } = await pool.query<{ status: string }>(
    `SELECT m.status FROM messages m JOIN conversations c ON c.id = m.conversation_id
     WHERE c.owner = $1 AND m.role = 'assistant' ORDER BY m.seq`,
    [owner],
  );
  return rows.map((r) => r.status);
}

/** Resolves after `ms`. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The soft RLIMIT_NOFILE of this process (Linux), or 1024 when it cannot be read. */
export function openFileLimit(): number {
  try {
    const match = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    if (match?.[1] === 'unlimited') return 1_048_576;
    if (match?.[1] !== undefined) return Number(match[1]);
  } catch {
    // not Linux
  }
  return 1024;
}
