// The whole-suite canary: one value is every secret the server holds (upstream key, metrics
// token, JWT secret, database password). A representative session runs against the in-process
// server and against `server.ts` spawned as production runs it, every byte that comes back is
// kept, and no response, header, log line or process output may contain the canary.
//
// The logger redacts known secrets by value, so the raw response bytes are checked as well, and
// the logs are also searched for a prefix of the canary (a truncated leak survives redaction)
// and for a private marker from a chat message (message content is never logged).

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { CHAT_ENV, readEvents } from '../support/chat.ts';
import { type FakeUpstream, startFakeUpstream, UPSTREAM_SECRET_DETAIL } from '../support/fake-upstream.ts';
import { mintJwt, unsignedJwt } from '../support/keys.ts';
import { seedEmbeddedDatabase } from '../support/pglite-template.ts';
import { CANARY, childProcessEnv, startTestServer, TEST_DATABASE_URL, type TestServer } from '../support/server.ts';
import { exchange, mintIdentity } from './support.ts';

const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
const JWT_SECRET = `${CANARY}-jwt`;
// What a leak could look like besides the whole value: cut short, base64-encoded.
const LEAK_FORMS = [
  CANARY.slice(0, 14),
  Buffer.from(CANARY).toString('base64').slice(0, 20),
  Buffer.from(CANARY).toString('base64url').slice(0, 20),
];
// A user's private words: the server stores and forwards them, but never logs them.
const PRIVATE_MARKER = `private-words-${randomBytes(6).toString('hex')}`;
// The conversation title is the first 80 characters: keep the canary and the marker past it.
const CANARY_MESSAGE = `${'Tell me about canaries in coal mines, briefly and politely, in one short paragraph. '.repeat(2)}${CANARY} ${PRIVATE_MARKER}`;

/** Every leak form found in `text`. */
function leaks(text: string): string[] {
  return [CANARY, ...LEAK_FORMS].filter((form) => text.includes(form));
}

/** A role and database whose password is the canary, on the CI PostgreSQL; dropped in after(). */
async function canaryDatabase(adminUrl: string): Promise<{ url: string; drop(): Promise<void> }> {
  const name = `canary_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    const { rows } = await admin.query<{ sql: string }>(
      "SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', $1::text, $2::text) AS sql",
      [name, CANARY],
    );
    await admin.query(rows[0]!.sql);
    await admin.query(`CREATE DATABASE ${name} OWNER ${name}`);
  } finally {
    await admin.end();
  }
  const url = new URL(adminUrl);
  url.username = name;
  url.password = CANARY;
  url.pathname = `/${name}`;
  return {
    url: url.href,
    async drop() {
      const cleaner = new pg.Client({ connectionString: adminUrl });
      await cleaner.connect();
      try {
        await cleaner.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
        await cleaner.query(`DROP ROLE IF EXISTS ${name}`);
      } finally {
        await cleaner.end();
      }
    },
  };
}

interface ProcessRun {
  code: number | null;
  output: string;
}

/** Runs `node server.ts …args` with exactly `env` (plus childProcessEnv()); `during` gets the base URL once it listens, then SIGTERM. */
function runServerProcess(
  args: string[],
  env: Record<string, string>,
  during?: (url: string) => Promise<void>,
): Promise<ProcessRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['server.ts', ...args], {
      cwd: REPO_ROOT,
      env: { ...childProcessEnv(), ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    let started = false;
    const killer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    const onOutput = (chunk: string): void => {
      output += chunk;
      const url = /"msg":"listening","url":"(http:\/\/127\.0\.0\.1:\d+)"/.exec(output)?.[1];
      if (url === undefined || started || during === undefined) return;
      started = true;
      during(url).then(
        () => child.kill('SIGTERM'),
        (err: unknown) => {
          child.kill('SIGTERM');
          reject(err);
        },
      );
    };
    child.stdout.setEncoding('utf8').on('data', onOutput);
    child.stderr.setEncoding('utf8').on('data', onOutput);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(killer);
      resolve({ code, output });
    });
  });
}

describe('the canary secret', () => {
  const responses: string[] = [];
  let server: TestServer;
  let fake: FakeUpstream;
  let database: { url: string; drop(): Promise<void> } | undefined;
  let dataDir: string;
  let served: ProcessRun;
  let invalidSchema: ProcessRun;
  let invalidCombination: ProcessRun;
  let unreachableDatabase: ProcessRun;
  let keysList: ProcessRun | undefined;

  /** Keeps the status line, every header and the body of a response. */
  async function keep(res: Response): Promise<string> {
    const body = await res.text();
    responses.push(
      `${res.status} ${res.statusText}\n${[...res.headers].map(([k, v]) => `${k}: ${v}`).join('\n')}\n\n${body}`,
    );
    return body;
  }

  async function call(path: string, init: RequestInit = {}): Promise<string> {
    return keep(await fetch(`${server.url}${path}`, { ...init, signal: AbortSignal.timeout(10_000) }));
  }

  function authed(token: string, extra: Record<string, string> = {}): Record<string, string> {
    return { authorization: `Bearer ${token}`, ...extra };
  }

  const json = { 'content-type': 'application/json' };

  /** A representative session: every route, client errors, bad credentials, upstream failures. */
  async function session(key: string): Promise<void> {
    for (const path of ['/health', '/health/live', '/', '/metrics', '/v1/agents', '/v1/conversations'])
      await call(path);
    await call('/health/live', { method: 'HEAD' });
    await call('/health/live', { method: 'DELETE' });
    await call('/metrics', { headers: authed(CANARY) });
    for (const bad of [
      CANARY,
      `csk_${CANARY}`,
      JWT_SECRET,
      unsignedJwt(),
      await mintJwt({ sub: 'forger' }, { secret: `${CANARY}-wrong-secret-0123456789` }),
    ]) {
      await call('/v1/agents', { headers: authed(bad) });
    }
    await call('/v1/agents', {
      headers: { authorization: `Basic ${Buffer.from(`admin:${CANARY}`).toString('base64')}` },
    });
    await call('/v1/agents', { headers: authed(await mintJwt({ sub: 'canary-user' }, { secret: JWT_SECRET })) });
    await call('/v1/agents', { headers: authed(key) });
    await call('/v1/conversations', {
      method: 'OPTIONS',
      headers: { origin: 'https://evil.example', 'access-control-request-method': 'GET' },
    });

    // The canary and a private marker inside a message: streamed, and buffered.
    const streamed = await fetch(`${server.url}/v1/chat`, {
      method: 'POST',
      headers: authed(key, json),
      body: JSON.stringify({ message: CANARY_MESSAGE }),
    });
    const frames = await readEvents(streamed);
    responses.push(
      `${streamed.status}\n${[...streamed.headers].map(([k, v]) => `${k}: ${v}`).join('\n')}\n\n${JSON.stringify(frames)}`,
    );
    await call('/v1/chat', {
      method: 'POST',
      headers: authed(key, json),
      body: JSON.stringify({ message: CANARY_MESSAGE, stream: false }),
    });

    // A conversation without the canary, to read and delete (a conversation echoes its own messages).
    const plain = JSON.parse(
      await call('/v1/chat', {
        method: 'POST',
        headers: authed(key, json),
        body: JSON.stringify({ message: 'hello', stream: false }),
      }),
    ) as { conversationId: string };
    await call(`/v1/conversations/${plain.conversationId}`, { headers: authed(key) });
    await call(`/v1/conversations?limit=1`, { headers: authed(key) });
    await call(`/v1/conversations?limit=1&cursor=${CANARY}`, { headers: authed(key) });
    await call(`/v1/conversations/${CANARY}`, { headers: authed(key) });
    await call(`/v1/conversations/${randomUUID()}`, { method: 'DELETE', headers: authed(key) });
    await call(`/v1/conversations/${plain.conversationId}`, { method: 'DELETE', headers: authed(key) });

    // Client errors carrying the canary in every field a handler might echo.
    for (const body of [
      `{"message": "${CANARY}`,
      JSON.stringify({ message: 'x', apiKey: CANARY }),
      JSON.stringify({ message: 'x', conversationId: CANARY }),
      JSON.stringify({ message: 'x', agent: CANARY }),
      JSON.stringify({ message: CANARY.repeat(400) }),
      `{"${CANARY}": {"__proto__": "${CANARY}"}}`,
    ]) {
      await call('/v1/chat', { method: 'POST', headers: authed(key, json), body });
    }
    await call('/v1/chat', {
      method: 'POST',
      headers: authed(key, { 'content-type': `text/${CANARY}` }),
      body: CANARY,
    });

    // Upstream failures, one of them an upstream that echoes our key back in its error text.
    fake.queue(
      {
        kind: 'status',
        status: 401,
        body: {
          error: {
            message: `Incorrect API key provided: ${CANARY} (${UPSTREAM_SECRET_DETAIL})`,
            type: 'invalid_request_error',
            code: 'invalid_api_key',
          },
        },
      },
      { kind: 'status', status: 500 },
      { kind: 'status', status: 429, retryAfter: '3' },
      { kind: 'reset', afterChunks: 1 },
      { kind: 'invalid-sse' },
    );
    for (let i = 0; i < 5; i++) {
      const res = await fetch(`${server.url}/v1/chat`, {
        method: 'POST',
        headers: authed(key, json),
        body: JSON.stringify({ message: `fails ${i}` }),
      });
      if (res.headers.get('content-type')?.startsWith('text/event-stream')) {
        const events = await readEvents(res);
        responses.push(
          `${res.status}\n${[...res.headers].map(([k, v]) => `${k}: ${v}`).join('\n')}\n\n${JSON.stringify(events)}`,
        );
      } else {
        await keep(res);
      }
    }

    // Answers written outside the middleware chain.
    for (const raw of [
      `GET / HTTP/1.1\r\nHost: x\r\nX-Big: ${CANARY.repeat(600)}\r\n\r\n`,
      `POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n${CANARY}`,
    ]) {
      responses.push((await exchange(server.url, [raw])).text);
    }
  }

  before(async () => {
    database = TEST_DATABASE_URL === undefined ? undefined : await canaryDatabase(TEST_DATABASE_URL);
    dataDir = await mkdtemp(join(tmpdir(), 'canary-'));
    if (database === undefined) await seedEmbeddedDatabase(join(dataDir, 'data'));
    fake = await startFakeUpstream({ apiKey: CANARY });
    const secretEnv = { OPENAI_API_KEY: CANARY, METRICS_TOKEN: CANARY, JWT_SECRET };
    server = await startTestServer({
      ...CHAT_ENV,
      ...secretEnv,
      OPENAI_BASE_URL: fake.url,
      DATABASE_URL: database?.url,
    });
    await session((await mintIdentity(server.db.pool)).key);

    // server.ts as production runs it: real stdout and stderr, every log level.
    const processEnv: Record<string, string> = {
      ...CHAT_ENV,
      ...secretEnv,
      HOME: dataDir,
      HOST: '127.0.0.1',
      PORT: '0',
      LOG_LEVEL: 'debug',
      DATA_DIR: join(dataDir, 'data'),
      OPENAI_BASE_URL: fake.url,
      ...(database === undefined ? {} : { DATABASE_URL: database.url }),
    };
    served = await runServerProcess([], processEnv, async (url) => {
      const key =
        database === undefined
          ? (await readFile(join(dataDir, 'data', 'dev-api-key'), 'utf8')).trim()
          : (await mintIdentity(server.db.pool)).key;
      for (const token of [CANARY, key]) await keep(await fetch(`${url}/v1/agents`, { headers: authed(token) }));
      fake.queue(
        { kind: 'status', status: 401, body: { error: { message: `Incorrect API key provided: ${CANARY}` } } },
        { kind: 'stall', afterChunks: 1 },
      );
      await keep(
        await fetch(`${url}/v1/chat`, {
          method: 'POST',
          headers: authed(key, json),
          body: JSON.stringify({ message: CANARY_MESSAGE }),
        }),
      );
      const stalled = await fetch(`${url}/v1/chat`, {
        method: 'POST',
        headers: authed(key, json),
        body: JSON.stringify({ message: CANARY_MESSAGE }),
      });
      responses.push(JSON.stringify(await readEvents(stalled)));
    });
    if (database !== undefined) keysList = await runServerProcess(['keys', 'list'], processEnv);
    invalidSchema = await runServerProcess([], {
      PORT: CANARY,
      DATABASE_URL: `mysql://user:${CANARY}@127.0.0.1/db`,
      OPENAI_BASE_URL: `ftp://${CANARY}.example`,
      TRUST_PROXY: CANARY,
      METRICS_TOKEN: CANARY.slice(0, 10),
      LOG_LEVEL: CANARY,
    });
    invalidCombination = await runServerProcess([], {
      JWT_SECRET,
      JWT_PUBLIC_KEY_FILE: `/nonexistent/${CANARY}.pem`,
      CORS_ORIGINS: `https://${CANARY}.example/path,*`,
      OPENAI_API_KEY: CANARY,
    });
    unreachableDatabase = await runServerProcess([], {
      ...secretEnv,
      DATABASE_URL: `postgres://canary:${CANARY}@127.0.0.1:1/canary`,
      HOME: dataDir,
    });
  });

  after(async () => {
    await server?.close();
    await fake?.close();
    await database?.drop();
    if (dataDir !== undefined) await rm(dataDir, { recursive: true, force: true });
  });

  it('the session really used the canary: the upstream was called with it as its key', () => {
    assert.ok(fake.requests.length >= 8, `the upstream saw ${fake.requests.length} calls`);
    for (const request of fake.requests) assert.equal(request.headers.authorization, `Bearer ${CANARY}`);
    assert.ok(server.config.secrets.values.includes(CANARY));
    if (database !== undefined) assert.ok(database.url.includes(`:${CANARY}@`), 'the database password is the canary');
  });

  it('no response status line, header or body contains the canary or upstream error text', () => {
    assert.ok(responses.length >= 40, `${responses.length} responses were kept`);
    const all = responses.join('\n');
    assert.deepEqual(leaks(all), []);
    assert.equal(all.includes(UPSTREAM_SECRET_DETAIL), false);
    assert.equal(all.includes(PRIVATE_MARKER), false);
  });

  it('no line the in-process server logged contains the canary, a piece of it, or message contents', () => {
    const logs = server.logs();
    assert.match(logs, /"msg":"upstream error"/, 'the upstream failures were logged');
    assert.match(logs, /"kind":"auth_failure"/, 'the bad credentials were logged');
    assert.deepEqual(leaks(logs), []);
    assert.equal(logs.includes(PRIVATE_MARKER), false);
  });

  it('server.ts run as in production writes nothing with the canary to stdout or stderr, and drains on SIGTERM', () => {
    assert.match(served.output, /"msg":"listening"/);
    assert.match(served.output, /"msg":"upstream error"/);
    assert.match(served.output, /"msg":"stopped"/);
    assert.equal(served.code, 0);
    assert.deepEqual(leaks(served.output), []);
    assert.equal(served.output.includes(PRIVATE_MARKER), false);
  });

  it('server.ts keys list prints the keys without the canary', {
    skip: !TEST_DATABASE_URL && 'needs TEST_DATABASE_URL',
  }, () => {
    assert.equal(keysList?.code, 0);
    assert.match(keysList?.output ?? '', /^NAME\tPREFIX/m);
    assert.deepEqual(leaks(keysList?.output ?? ''), []);
  });

  it('invalid configuration exits 1 naming every bad variable and no value', () => {
    assert.equal(invalidSchema.code, 1);
    for (const name of ['PORT', 'DATABASE_URL', 'OPENAI_BASE_URL', 'METRICS_TOKEN', 'LOG_LEVEL']) {
      assert.match(invalidSchema.output, new RegExp(`^  - ${name}: `, 'm'));
    }
    assert.deepEqual(leaks(invalidSchema.output), []);
  });

  it('conflicting configuration exits 1 naming the conflicts and no value', () => {
    assert.equal(invalidCombination.code, 1);
    assert.match(invalidCombination.output, /^ {2}- JWT_SECRET: set either/m);
    assert.match(invalidCombination.output, /^ {2}- CORS_ORIGINS: /m);
    assert.deepEqual(leaks(invalidCombination.output), []);
  });

  it('a database that cannot be reached stops the start with exit 1 and no password in the output', () => {
    assert.equal(unreachableDatabase.code, 1);
    assert.match(unreachableDatabase.output, /"msg":"server failed to start"/);
    assert.deepEqual(leaks(unreachableDatabase.output), []);
  });
});
