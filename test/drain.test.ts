import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { type MessageRow, mintKey, type OpenStream, openStream, type SseFrame } from './support/chat.ts';
import { CANARY, childProcessEnv, TEST_DATABASE_URL } from './support/config.ts';
import { type FakeUpstream, startFakeUpstream } from './support/fake-upstream.ts';
import { seedEmbeddedDatabase } from './support/pglite-template.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const GRACE_MS = 1_000;
const START_TIMEOUT_MS = 20_000;

/** The real entry point (`node server.ts`) as a child process. */
interface Entry {
  child: ChildProcess;
  url: string;
  dataDir: string;
  /** Resolves with the first stdout JSON line whose msg is `msg`. */
  line(msg: string, timeoutMs: number): Promise<Record<string, unknown>>;
  /** Resolves when the process has exited: its code, its signal and when (performance.now()). */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; atMs: number }>;
  stderr(): string;
}

const children = new Set<ChildProcess>();
const sockets = new Set<Socket>();
const streams: OpenStream[] = [];

/** Collects every frame of a stream until it ends. */
async function rest(stream: OpenStream): Promise<SseFrame[]> {
  const frames: SseFrame[] = [];
  for (let frame = await stream.next(); frame !== undefined; frame = await stream.next()) frames.push(frame);
  return frames;
}

/**
 * Starts GET /health on a raw socket and stops before the blank line that ends the headers: a
 * request in progress, so the drain does not close the connection as idle. `finish()` sends
 * the rest and resolves with the status code.
 */
async function halfSentHealthCheck(url: string): Promise<{ finish(): Promise<number> }> {
  const { hostname, port } = new URL(url);
  const socket = connect(Number(port), hostname);
  sockets.add(socket);
  await once(socket, 'connect');
  socket.write(`GET /health HTTP/1.1\r\nHost: ${hostname}\r\n`);
  let received = '';
  socket.setEncoding('utf8').on('data', (chunk: string) => (received += chunk));
  return {
    async finish() {
      socket.write('\r\n');
      for (;;) {
        const status = /^HTTP\/1\.1 (\d{3}) /.exec(received)?.[1];
        if (status !== undefined) return Number(status);
        await Promise.race([
          once(socket, 'data'),
          once(socket, 'close').then(() => Promise.reject(new Error(`closed after ${JSON.stringify(received)}`))),
        ]);
      }
    },
  };
}

describe('server.ts on SIGTERM', () => {
  let parentDir: string;
  let fake: FakeUpstream;
  let pool: pg.Pool | undefined;

  /** Starts `node server.ts` on a free port with a fresh data dir (or TEST_DATABASE_URL) and the fake upstream. */
  async function startEntry(extra: Record<string, string> = {}): Promise<Entry & { key: string }> {
    const dataDir = await mkdtemp(join(parentDir, 'data-'));
    if (TEST_DATABASE_URL === undefined) await seedEmbeddedDatabase(dataDir);
    const env: Record<string, string | undefined> = {
      ...childProcessEnv(),
      HOST: '127.0.0.1',
      PORT: '0',
      LOG_LEVEL: 'info',
      DATA_DIR: dataDir,
      DATABASE_URL: TEST_DATABASE_URL,
      OPENAI_API_KEY: CANARY,
      OPENAI_BASE_URL: fake.url,
      UPSTREAM_MAX_RETRIES: '0',
      SHUTDOWN_GRACE_MS: String(GRACE_MS),
      ...extra,
    };
    const child = spawn(process.execPath, ['server.ts'], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    let stdout = '';
    let stderr = '';
    const wakers = new Set<() => void>();
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      stdout += chunk;
      for (const wake of wakers) wake();
    });
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; atMs: number }>((resolve) => {
      child.once('exit', (code, signal) => {
        const atMs = performance.now();
        children.delete(child);
        for (const wake of wakers) wake();
        resolve({ code, signal, atMs });
      });
    });
    let done = false;
    void exited.then(() => (done = true));

    function line(msg: string, timeoutMs: number): Promise<Record<string, unknown>> {
      const find = (): Record<string, unknown> | undefined =>
        stdout
          .split('\n')
          .filter((text) => text.startsWith('{'))
          .map((text) => JSON.parse(text) as Record<string, unknown>)
          .find((parsed) => parsed['msg'] === msg);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(
          () => settle(new Error(`No "${msg}" line within ${timeoutMs} ms; stderr: ${stderr}`)),
          timeoutMs,
        );
        const wake = (): void => {
          const found = find();
          if (found !== undefined) settle(undefined, found);
          else if (done) settle(new Error(`Exited before a "${msg}" line; stderr: ${stderr}`));
        };
        function settle(err: Error | undefined, value?: Record<string, unknown>): void {
          clearTimeout(timer);
          wakers.delete(wake);
          if (err === undefined) resolve(value as Record<string, unknown>);
          else reject(err);
        }
        wakers.add(wake);
        wake();
      });
    }

    const url = (await line('listening', START_TIMEOUT_MS))['url'] as string;
    // The embedded database writes a key on first start; PostgreSQL gets one minted here.
    const key =
      pool === undefined ? (await readFile(join(dataDir, 'dev-api-key'), 'utf8')).trim() : await mintKey(pool);
    return { child, url, dataDir, line, exited, stderr: () => stderr, key };
  }

  /** The assistant message of a conversation, read once the server process is gone. */
  async function storedAnswer(entry: Entry, conversationId: string): Promise<MessageRow | undefined> {
    const sql =
      'SELECT role, content, status, finish_reason, error_code FROM messages WHERE conversation_id = $1 AND role = $2';
    if (pool !== undefined) return (await pool.query<MessageRow>(sql, [conversationId, 'assistant'])).rows[0];
    const { PGlite } = await import('@electric-sql/pglite');
    const engine = await PGlite.create(join(entry.dataDir, 'pglite'));
    try {
      return (await engine.query<MessageRow>(sql, [conversationId, 'assistant'])).rows[0];
    } finally {
      await engine.close();
    }
  }

  before(async () => {
    parentDir = await mkdtemp(join(tmpdir(), 'drain-test-'));
    fake = await startFakeUpstream();
    if (TEST_DATABASE_URL !== undefined) pool = new pg.Pool({ connectionString: TEST_DATABASE_URL, max: 2 });
  });
  after(async () => {
    for (const stream of streams) stream.abort();
    for (const socket of sockets) socket.destroy();
    for (const child of children) {
      const exited = once(child, 'exit');
      child.kill('SIGKILL');
      await exited;
    }
    await fake?.close();
    await pool?.end();
    await rm(parentDir, { recursive: true, force: true });
  });

  it('server.ts streams on through the grace, ends with SHUTTING_DOWN, stores it incomplete and exits 0', async () => {
    const entry = await startEntry();
    fake.queue({ kind: 'slow', chunks: new Array<string>(50).fill('word '), chunkDelayMs: 200 });
    const stream = await openStream(entry.url, entry.key, { message: 'Talk for ten seconds' });
    streams.push(stream);
    const start = await stream.next();
    assert.equal(start?.event, 'start');
    assert.equal((await stream.next())?.event, 'delta');
    const health = await halfSentHealthCheck(entry.url);

    const signalledAt = performance.now();
    entry.child.kill('SIGTERM');
    await entry.line('draining', 2_000);
    assert.equal(await health.finish(), 503, '/health answers 503 while draining');
    const frames = await rest(stream);
    const endedMs = performance.now() - signalledAt;
    const { code, atMs } = await entry.exited;

    // A delta every 200 ms for 10 s: a drain that honours the grace relays several before the cut.
    const deltas = frames.filter((f) => f.event === 'delta').length;
    assert.ok(deltas >= 2, `${deltas} deltas during the grace period`);
    assert.ok(endedMs >= GRACE_MS - 50, `the stream ended ${Math.round(endedMs)} ms after SIGTERM`);
    assert.equal(frames.at(-1)?.event, 'error');
    assert.equal((frames.at(-1)?.data as { code?: unknown }).code, 'SHUTTING_DOWN');
    assert.equal(code, 0);
    assert.ok(atMs - signalledAt < GRACE_MS + 1_000, `exited ${Math.round(atMs - signalledAt)} ms after SIGTERM`);
    await entry.line('stopped', 0);
    const answer = await storedAnswer(entry, (start?.data as { conversationId: string }).conversationId);
    assert.equal(answer?.status, 'incomplete');
    assert.equal(answer?.error_code, 'SHUTTING_DOWN');
    assert.ok((answer?.content ?? '').startsWith('word '), 'the text streamed before the cut is kept');
  });

  it('server.ts lets a stream that ends within the grace finish with event: done and exits 0', async () => {
    const entry = await startEntry();
    fake.queue({ kind: 'slow', chunks: ['one', ' two', ' three', ' four'], chunkDelayMs: 100 });
    const stream = await openStream(entry.url, entry.key, { message: 'Short answer please' });
    streams.push(stream);
    const start = await stream.next();
    assert.equal(start?.event, 'start');

    const signalledAt = performance.now();
    entry.child.kill('SIGTERM');
    const frames = await rest(stream);
    const { code, atMs } = await entry.exited;

    assert.deepEqual(
      frames.map((f) => f.event),
      ['delta', 'delta', 'delta', 'delta', 'done'],
    );
    assert.equal(code, 0);
    assert.ok(atMs - signalledAt < GRACE_MS + 1_000, `exited ${Math.round(atMs - signalledAt)} ms after SIGTERM`);
    const answer = await storedAnswer(entry, (start?.data as { conversationId: string }).conversationId);
    assert.equal(answer?.status, 'complete');
    assert.equal(answer?.content, 'one two three four');
  });

  it('server.ts exits at once with a non-zero code on a second SIGTERM while draining', async () => {
    // A long grace, so only the second signal can explain a quick exit.
    const entry = await startEntry({ SHUTDOWN_GRACE_MS: '20000' });
    fake.queue({ kind: 'slow', chunks: new Array<string>(100).fill('x'), chunkDelayMs: 200 });
    const stream = await openStream(entry.url, entry.key, { message: 'Talk for twenty seconds' });
    streams.push(stream);
    assert.equal((await stream.next())?.event, 'start');

    entry.child.kill('SIGTERM');
    await entry.line('draining', 2_000);
    const secondAt = performance.now();
    entry.child.kill('SIGTERM');
    const { code, signal, atMs } = await entry.exited;

    assert.ok(atMs - secondAt < 1_000, `exited ${Math.round(atMs - secondAt)} ms after the second SIGTERM`);
    assert.equal(signal, null, 'it exits by itself, not killed by the signal');
    assert.notEqual(code, 0);
    await entry.line('second signal: exiting at once', 0);
  });
});
