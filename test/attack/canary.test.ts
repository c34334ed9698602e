// The whole-suite canary: one value is every secret the server holds (upstream key, metrics
// token, JWT secret, database password). A table of requests runs against the in-process server
// and against `server.ts` spawned as production runs it; every byte that comes back on each
// socket (status line, headers, chunk framing, bodies, streams with their comments) and every
// line either server writes is searched for the canary in every form a leak could take: whole,
// any 12-character piece (head, middle or tail), base64 and base64url. Message contents are
// searched for too: a private marker in a chat message must never be logged.

import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { CANARY_MESSAGE, PRIVATE_MARKER, type Probe, probes } from '../support/canary-probes.ts';
import { CHAT_ENV } from '../support/chat.ts';
import { CANARY, TEST_DATABASE_URL } from '../support/config.ts';
import {
  type Behaviour,
  type FakeUpstream,
  startFakeUpstream,
  UPSTREAM_SECRET_DETAIL,
} from '../support/fake-upstream.ts';
import { bearer, mintJwt, TEST_JWT_SECRET } from '../support/keys.ts';
import { findLeaks, leakForms } from '../support/leaks.ts';
import { seedEmbeddedDatabase } from '../support/pglite-template.ts';
import { bodiesOf, capture, formatRequest } from '../support/raw-capture.ts';
import { type SecretDatabase, secretDatabase } from '../support/secret-database.ts';
import { startTestServer, type TestServer } from '../support/server.ts';
import { type ProcessRun, runServerProcess } from '../support/server-process.ts';
import { mintIdentity } from './support.ts';

const FORMS = leakForms(CANARY);
const GRACE_MS = 1_000;
// Longer than the grace, so the drain has a live stream to carry through it and then cut.
const LONG_STREAM: Behaviour = { kind: 'slow', chunks: new Array<string>(60).fill('word '), chunkDelayMs: 50 };

/** What came back for one probe, exactly as it arrived on the socket. */
interface Captured {
  name: string;
  wire: string;
}

/** The raw bytes and the decoded bodies: a value split across chunks is whole in the latter. */
function searchable(wire: string): string {
  return [wire, ...bodiesOf(wire)].join('\n');
}

/** One line per captured response that holds a form of the canary: its probe and the first form found. */
function leakingResponses(captured: readonly Captured[]): string[] {
  return captured.flatMap(({ name, wire }) => {
    const found = findLeaks(searchable(wire), FORMS);
    return found.length === 0 ? [] : [`${name}: ${found.length} forms, e.g. ${found[0]}`];
  });
}

describe('the canary secret', () => {
  const inProcess: Captured[] = [];
  const spawned: Captured[] = [];
  let server: TestServer;
  let fake: FakeUpstream;
  let database: SecretDatabase | undefined;
  let dataDir: string;
  let served: ProcessRun;
  let drained: { afterSigterm: string };
  let invalidSchema: ProcessRun;
  let invalidCombination: ProcessRun;
  let unreachableDatabase: ProcessRun;
  let keysList: ProcessRun | undefined;

  async function send(url: string, probe: Probe): Promise<Captured> {
    if (probe.upstream !== undefined) fake.queue(...probe.upstream);
    const request = { ...probe, method: probe.method ?? 'GET', path: probe.path ?? '/' };
    return { name: probe.name, wire: await capture(url, probe.raw ?? formatRequest(url, request)).done };
  }

  /** Runs the whole table against the server at `url` with `key`; every response is kept. */
  async function session(url: string, key: string, into: Captured[], label: string): Promise<void> {
    const plain = await send(url, {
      name: 'POST /v1/chat buffered, without the canary',
      method: 'POST',
      path: '/v1/chat',
      headers: { ...bearer(key), 'content-type': 'application/json' },
      body: JSON.stringify({ message: 'hello', stream: false }),
    });
    into.push({ name: `${label} ${plain.name}`, wire: plain.wire });
    const { conversationId } = JSON.parse(bodiesOf(plain.wire)[0] ?? '{}') as { conversationId: string };
    const jwt = await mintJwt({ sub: 'canary-user' }, { secret: TEST_JWT_SECRET });
    const forged = await mintJwt({ sub: 'forger' }, { secret: `${CANARY}-wrong-secret-0123456789` });
    for (const probe of probes({ key, jwt, forged, conversationId })) {
      const { name, wire } = await send(url, probe);
      into.push({ name: `${label} ${name}`, wire });
    }
  }

  /** A live stream when SIGTERM arrives: what it received after the signal shows whether the drain waited. */
  async function streamThroughDrain(url: string, key: string, stop: () => void): Promise<{ afterSigterm: string }> {
    fake.queue(LONG_STREAM);
    const body = JSON.stringify({ message: CANARY_MESSAGE });
    const headers = { ...bearer(key), 'content-type': 'application/json' };
    const live = capture(url, formatRequest(url, { method: 'POST', path: '/v1/chat', headers, body }));
    await live.until(/event: delta/, 5_000);
    const cut = live.text().length;
    stop();
    const wire = await live.done;
    spawned.push({ name: 'server.ts POST /v1/chat streamed through the drain', wire });
    return { afterSigterm: wire.slice(cut) };
  }

  before(async () => {
    database = TEST_DATABASE_URL === undefined ? undefined : await secretDatabase(TEST_DATABASE_URL, CANARY, 'canary');
    dataDir = await mkdtemp(join(tmpdir(), 'canary-test-'));
    if (database === undefined) await seedEmbeddedDatabase(join(dataDir, 'data'));
    fake = await startFakeUpstream({ apiKey: CANARY });
    const secretEnv = {
      OPENAI_API_KEY: CANARY,
      METRICS_TOKEN: CANARY,
      JWT_SECRET: TEST_JWT_SECRET,
      JWT_AUDIENCE: 'chat-server-test',
    };
    server = await startTestServer({
      ...CHAT_ENV,
      ...secretEnv,
      OPENAI_BASE_URL: fake.url,
      DATABASE_URL: database?.url,
    });
    await session(server.url, (await mintIdentity(server.db.pool)).key, inProcess, 'in-process');

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
      SHUTDOWN_GRACE_MS: String(GRACE_MS),
      ...(database === undefined ? {} : { DATABASE_URL: database.url }),
    };
    served = await runServerProcess([], processEnv, async (url, stop) => {
      const key =
        database === undefined
          ? (await readFile(join(dataDir, 'data', 'dev-api-key'), 'utf8')).trim()
          : (await mintIdentity(server.db.pool)).key;
      await session(url, key, spawned, 'server.ts');
      drained = await streamThroughDrain(url, key, stop);
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
      JWT_SECRET: TEST_JWT_SECRET,
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

  it('the leak search finds the canary whole, in 12-character pieces, in base64 and split across chunks', () => {
    const sse = (text: string): string => `${text.length.toString(16)}\r\n${text}\r\n`;
    const wire = (head: string, ...chunks: string[]): string =>
      `HTTP/1.1 200 OK\r\n${head}transfer-encoding: chunked\r\n\r\n${chunks.map(sse).join('')}0\r\n\r\n`;
    const spellings = [
      wire('', `: debug ${CANARY}\n\n`),
      wire(`x-trace: ${CANARY.slice(0, 12)}\r\n`),
      wire(`x-trace: ${CANARY.slice(14, 26)}\r\n`),
      wire('', `data: {"k":"${CANARY.slice(-12)}"}\n\n`),
      ...[0, 1, 2].map((offset) =>
        wire('', `data: ${Buffer.from(`${'x'.repeat(offset)}${CANARY}`).toString('base64')}\n\n`),
      ),
      wire(`x-k: ${Buffer.from(`k=${CANARY.slice(5, 17)};`).toString('base64url')}\r\n`),
      wire('', ...(CANARY.match(/.{1,10}/g) ?? [])),
    ];
    for (const text of spellings) assert.notDeepEqual(findLeaks(searchable(text), FORMS), [], text);
    assert.deepEqual(findLeaks(searchable(wire('x-request-id: canary-test-0123\r\n', 'Hello world')), FORMS), []);
  });

  it('the session really used the canary: the upstream was called with it as its key', () => {
    assert.ok(fake.requests.length >= 18, `the upstream saw ${fake.requests.length} calls`);
    for (const request of fake.requests) assert.equal(request.headers.authorization, `Bearer ${CANARY}`);
    assert.ok(server.config.secrets.values.includes(CANARY));
  });

  it('the database password is the canary: the server signed in to PostgreSQL with it', {
    skip: !TEST_DATABASE_URL && 'needs TEST_DATABASE_URL',
  }, async () => {
    const { rows } = await server.db.pool.query<{ role: string }>('SELECT current_user AS role');
    assert.equal(rows[0]?.role, database?.role);
    const url = new URL(database?.url ?? '');
    assert.equal(url.password, CANARY);
    url.password = 'not-the-canary';
    const wrong = new pg.Client({ connectionString: url.href });
    await assert.rejects(wrong.connect(), /password authentication failed/);
  });

  it('every request of both sessions got an HTTP response, its streams read to their end', () => {
    for (const { name, wire } of [...inProcess, ...spawned]) assert.match(wire, /^HTTP\/1\.1 \d{3} /, name);
    assert.equal(inProcess.length, spawned.length - 1);
    assert.ok(inProcess.length >= 40, `${inProcess.length} requests`);
    for (const run of [inProcess, spawned]) {
      const wire = (probe: string): string => run.find((c) => c.name.endsWith(probe))?.wire ?? '';
      assert.match(wire('POST /v1/chat streamed, the canary in the message'), /event: done\n/);
      assert.match(wire('POST /v1/chat upstream stalls'), /event: error\ndata: \{"code":"UPSTREAM_TIMEOUT"/);
    }
  });

  it('no response status line, header, body or stream holds the canary, upstream error text or a message', () => {
    assert.deepEqual(leakingResponses([...inProcess, ...spawned]), []);
    const all = [...inProcess, ...spawned].map((c) => searchable(c.wire)).join('\n');
    assert.equal(all.includes(UPSTREAM_SECRET_DETAIL), false);
    assert.equal(all.includes(PRIVATE_MARKER), false);
  });

  it('no line the in-process server logged holds the canary, a piece of it, or message contents', () => {
    const logs = server.logs();
    assert.match(logs, /"msg":"upstream error"/, 'the upstream failures were logged');
    assert.match(logs, /"kind":"auth_failure"/, 'the bad credentials were logged');
    assert.deepEqual(findLeaks(logs, FORMS), []);
    assert.equal(logs.includes(PRIVATE_MARKER), false);
  });

  it('server.ts run as in production writes nothing with the canary or message contents to stdout or stderr', () => {
    assert.match(served.output, /"msg":"listening"/);
    assert.match(served.output, /"msg":"upstream error"/);
    assert.deepEqual(findLeaks(served.output, FORMS), []);
    assert.equal(served.output.includes(PRIVATE_MARKER), false);
  });

  it('server.ts on SIGTERM keeps a live stream going through the grace period, then ends it and exits 0', () => {
    const deltas = drained.afterSigterm.match(/event: delta\n/g)?.length ?? 0;
    // About GRACE_MS / chunkDelayMs deltas arrive during the grace; a drain that does not wait sends none.
    assert.ok(deltas >= 5, `${deltas} deltas after SIGTERM`);
    assert.match(drained.afterSigterm, /event: error\ndata: \{"code":"SHUTTING_DOWN"/);
    assert.match(served.output, /"msg":"draining"/);
    assert.match(served.output, /"msg":"stopped"/);
    assert.equal(served.code, 0);
  });

  it('server.ts keys list prints the keys without the canary', {
    skip: !TEST_DATABASE_URL && 'needs TEST_DATABASE_URL',
  }, () => {
    assert.equal(keysList?.code, 0);
    assert.match(keysList?.output ?? '', /^NAME\tPREFIX/m);
    assert.deepEqual(findLeaks(keysList?.output ?? '', FORMS), []);
  });

  it('invalid configuration exits 1 naming every bad variable and no value', () => {
    assert.equal(invalidSchema.code, 1);
    for (const name of ['PORT', 'DATABASE_URL', 'OPENAI_BASE_URL', 'METRICS_TOKEN', 'LOG_LEVEL']) {
      assert.match(invalidSchema.output, new RegExp(`^  - ${name}: `, 'm'));
    }
    assert.deepEqual(findLeaks(invalidSchema.output, FORMS), []);
  });

  it('conflicting configuration exits 1 naming the conflicts and no value', () => {
    assert.equal(invalidCombination.code, 1);
    assert.match(invalidCombination.output, /^ {2}- JWT_SECRET: set either/m);
    assert.match(invalidCombination.output, /^ {2}- CORS_ORIGINS: /m);
    assert.deepEqual(findLeaks(invalidCombination.output, FORMS), []);
  });

  it('a database that cannot be reached stops the start with exit 1 and no password in the output', () => {
    assert.equal(unreachableDatabase.code, 1);
    assert.match(unreachableDatabase.output, /"msg":"server failed to start"/);
    assert.deepEqual(findLeaks(unreachableDatabase.output, FORMS), []);
  });
});
