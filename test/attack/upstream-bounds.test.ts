// A hostile or broken provider, against the real entry point run with the production memory flags:
// a 200 MB line, a 5 MB error body. Memory stays flat, the log stays small, nothing is relayed whole.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { mintKey, readEvents } from '../support/chat.ts';
import { CANARY, TEST_DATABASE_URL } from '../support/config.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const HUGE_LINE_BYTES = 200 * 1024 * 1024;

/** Resident memory of a process, from /proc (what the audit measured). */
async function rssMb(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1]) / 1024;
}

/** Starts a child and resolves with it and the first stdout line matching `pattern`. */
async function startChild(args: string[], env: Record<string, string | undefined>, pattern: RegExp) {
  const child = spawn(process.execPath, args, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
  child.stderr.resume();
  for (;;) {
    const found = pattern.exec(stdout);
    if (found !== null) return { child, match: found, output: () => stdout };
    await Promise.race([once(child.stdout, 'data'), once(child, 'exit').then(() => Promise.reject(new Error(stdout)))]);
  }
}

describe('a hostile upstream against the production process', () => {
  const children: ChildProcess[] = [];
  let dataDir: string;
  let url: string;
  let key: string;
  let serverPid: number;
  let serverOutput: () => string;

  before(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'bounds-test-'));
    const fake = await startChild(
      ['test/support/fake-upstream-main.ts', '0', '--huge-line', String(HUGE_LINE_BYTES)],
      { PATH: process.env['PATH'] },
      /^(http:\S+)$/m,
    );
    children.push(fake.child);
    const env = {
      PATH: process.env['PATH'],
      MALLOC_ARENA_MAX: '2',
      PORT: '0',
      DATA_DIR: dataDir,
      DATABASE_URL: TEST_DATABASE_URL,
      OPENAI_BASE_URL: fake.match[1],
      OPENAI_API_KEY: CANARY,
      UPSTREAM_MAX_RETRIES: '0',
      // Every answer breaks: the breaker would fail the sixth fast, and this measures a whole answer each time.
      UPSTREAM_BREAKER_FAILURES: '1000',
      UPSTREAM_BREAKER_FAILURE_PERCENT: '0',
      RATE_LIMIT_BURST: '1000',
    };
    const server = await startChild(['--max-semi-space-size=4', 'server.ts'], env, /"msg":"listening","url":"([^"]+)"/);
    children.push(server.child);
    url = server.match[1] as string;
    serverPid = server.child.pid as number;
    serverOutput = server.output;
    if (TEST_DATABASE_URL === undefined) key = (await readFile(join(dataDir, 'dev-api-key'), 'utf8')).trim();
    else {
      const pool = new pg.Pool({ connectionString: TEST_DATABASE_URL, max: 1 });
      key = await mintKey(pool).finally(() => pool.end());
    }
  });
  after(async () => {
    for (const child of children) child.kill('SIGKILL');
    await rm(dataDir, { recursive: true, force: true });
  });

  async function chat(): Promise<string | undefined> {
    const res = await fetch(`${url}/v1/chat`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({ message: 'Say something long' }),
    });
    const frames = await readEvents(res);
    assert.deepEqual(
      frames.filter((f) => f.event === 'delta'),
      [],
      'no part of the line is relayed',
    );
    return (frames.at(-1)?.data as { code?: string } | undefined)?.code;
  }

  it('20 answers of one 200 MB line each end with UPSTREAM_ERROR and the server RSS grows under 50 MB', async () => {
    for (let i = 0; i < 3; i++) await chat(); // warm-up: pools, JIT and heap spaces reach their size
    const before = await rssMb(serverPid);
    for (let i = 0; i < 20; i++) assert.equal(await chat(), 'UPSTREAM_ERROR');
    const grown = (await rssMb(serverPid)) - before;
    assert.ok(grown < 50, `the server's RSS grew ${grown.toFixed(1)} MB over 20 lines of 200 MB`);
    const logged = serverOutput().length;
    assert.ok(logged < 23 * 4096, `the log holds ${logged} bytes for 23 failed answers`);
  });
});
