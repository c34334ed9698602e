import assert from 'node:assert/strict';
import { type ChildProcess, type SpawnOptions, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { loadMigrations } from '../lib/db/migrate.ts';
import { mintKey, type OpenStream, openStream } from './support/chat.ts';
import { CANARY, childProcessEnv, TEST_DATABASE_URL } from './support/config.ts';
import { scratchDatabase } from './support/database.ts';
import { type FakeUpstream, startFakeUpstream } from './support/fake-upstream.ts';
import { seedEmbeddedDatabase } from './support/pglite-template.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const START_TIMEOUT_MS = 20_000;

/** The real entry point running as a child process, with its output captured. */
interface Entry {
  child: ChildProcess;
  output(): { stdout: string; stderr: string };
  /** Resolves with the exit code, or rejects when `timeoutMs` passes first. */
  exit(timeoutMs: number): Promise<number | null>;
  /** Resolves with the first JSON log line with this `msg`. */
  line(msg: string, timeoutMs: number): Promise<Record<string, unknown>>;
}

const running = new Set<ChildProcess>();

/** `node server.ts …args`, or `npm start` the way a supervisor runs it (its own process group). */
function spawnEntry(args: string[], env: Record<string, string | undefined>, launcher: 'node' | 'npm' = 'node'): Entry {
  // Only what the test sets: nothing from the developer's shell may leak into the config.
  const options: SpawnOptions = {
    cwd: ROOT,
    env: { ...childProcessEnv(), ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  };
  const child: ChildProcess =
    launcher === 'npm'
      ? spawn('npm', ['start', '--silent'], { ...options, detached: true })
      : spawn(process.execPath, ['server.ts', ...args], options);
  running.add(child);
  let stdout = '';
  let stderr = '';
  let exitCode: number | null | undefined;
  const changed = new Set<() => void>();
  const notify = (): void => {
    for (const wake of changed) wake();
  };
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => ((stdout += chunk), notify()));
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => ((stderr += chunk), notify()));
  // 'close', not 'exit': by then both pipes are drained, so every line the process wrote is here.
  child.on('close', (code) => {
    running.delete(child);
    exitCode = code;
    notify();
  });

  function findLine(msg: string): Record<string, unknown> | undefined {
    for (const text of `${stdout}\n${stderr}`.split('\n')) {
      if (!text.startsWith('{')) continue;
      const parsed = JSON.parse(text) as Record<string, unknown>;
      if (parsed['msg'] === msg) return parsed;
    }
    return undefined;
  }

  function within<T>(what: string, timeoutMs: number, check: () => T | undefined): Promise<T> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => finish(new Error(`Timed out after ${timeoutMs} ms waiting for ${what}; stderr: ${stderr}`)),
        timeoutMs,
      );
      const wake = (): void => {
        const value = check();
        if (value !== undefined) finish(undefined, value);
        else if (exitCode !== undefined) finish(new Error(`Exited (${exitCode}) before ${what}; stderr: ${stderr}`));
      };
      function finish(err: Error | undefined, value?: T): void {
        clearTimeout(timer);
        changed.delete(wake);
        if (err === undefined) resolve(value as T);
        else reject(err);
      }
      changed.add(wake);
      wake();
    });
  }

  return {
    child,
    output: () => ({ stdout, stderr }),
    exit: (timeoutMs) =>
      within('exit', timeoutMs, () => (exitCode === undefined ? undefined : { code: exitCode })).then((e) => e.code),
    line: (msg, timeoutMs) => within(`log line "${msg}"`, timeoutMs, () => findLine(msg)),
  };
}

function killGroup(pgid: number): void {
  try {
    process.kill(-pgid, 'SIGKILL');
  } catch {
    // already gone
  }
}

describe('server.ts', () => {
  let dataDir: string;
  let fake: FakeUpstream;
  let scratch: { url: string; drop(): Promise<void> } | undefined;
  const streams: OpenStream[] = [];

  /** The environment of a healthy server: temp DATA_DIR or a scratch database, canary secrets. */
  function env(extra: Record<string, string> = {}): Record<string, string | undefined> {
    return {
      HOST: '127.0.0.1',
      PORT: '0',
      LOG_LEVEL: 'info',
      DATA_DIR: dataDir,
      DATABASE_URL: scratch?.url,
      OPENAI_API_KEY: CANARY,
      OPENAI_BASE_URL: fake.url,
      JWT_SECRET: `${CANARY}-jwt`,
      JWT_AUDIENCE: 'chat-server-test',
      UPSTREAM_MAX_RETRIES: '0',
      DRAIN_READINESS_MS: '0',
      ...extra,
    };
  }

  /** Starts `serve` and resolves once it listens, with its URL and an API key. */
  async function serve(extra: Record<string, string> = {}): Promise<{ entry: Entry; url: string; key: string }> {
    const entry = spawnEntry([], env(extra));
    const url = (await entry.line('listening', START_TIMEOUT_MS))['url'] as string;
    let key: string;
    if (scratch === undefined) {
      // written on the embedded database's first start
      key = (await readFile(join(dataDir, 'dev-api-key'), 'utf8')).trim();
    } else {
      const pool = new pg.Pool({ connectionString: scratch.url, max: 1 });
      try {
        key = await mintKey(pool);
      } finally {
        await pool.end();
      }
    }
    return { entry, url, key };
  }

  before(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'entry-test-'));
    fake = await startFakeUpstream();
    if (TEST_DATABASE_URL !== undefined) scratch = await scratchDatabase(TEST_DATABASE_URL);
    else await seedEmbeddedDatabase(dataDir);
  });
  after(async () => {
    for (const stream of streams) stream.abort();
    for (const child of running) {
      const closed = once(child, 'close');
      // An npm start runs in its own group: kill all of it, or an orphaned server keeps the pipes open.
      if (child.spawnargs[0] === 'npm') killGroup(child.pid as number);
      else child.kill('SIGKILL');
      await closed;
    }
    await fake?.close();
    await scratch?.drop();
    await rm(dataDir, { recursive: true, force: true });
  });

  it('`server.ts migrate` applies the migrations and exits 0', async () => {
    const entry = spawnEntry(['migrate'], env());
    assert.equal(await entry.exit(START_TIMEOUT_MS), 0);
    const line = await entry.line('migrations applied', 0);
    assert.deepEqual(
      line['applied'],
      (await loadMigrations()).map((m) => m.version),
    );
  });

  it('SIGTERM lets an in-flight stream finish, logs "stopped" and exits 0', async () => {
    const { entry, url, key } = await serve({ SHUTDOWN_GRACE_MS: '10000' });
    const health = await fetch(`${url}/health`);
    assert.equal(health.status, 200);
    await health.arrayBuffer();
    fake.queue({ kind: 'slow', chunks: ['one', ' two', ' three', ' four'], chunkDelayMs: 250 });
    const stream = await openStream(url, key, { message: 'hello' });
    streams.push(stream);
    assert.equal((await stream.next())?.event, 'start');
    entry.child.kill('SIGTERM');
    const events: Array<string | undefined> = [];
    for (let frame = await stream.next(); frame !== undefined; frame = await stream.next()) events.push(frame.event);
    assert.equal(events.at(-1), 'done');
    assert.deepEqual(events.filter((e) => e === 'delta').length, 4);
    assert.equal(await entry.exit(10_000), 0);
    await entry.line('stopped', 0);
  });

  it('a second signal while draining exits at once with a non-zero code', async () => {
    const { entry, url, key } = await serve({ SHUTDOWN_GRACE_MS: '30000' });
    fake.queue({ kind: 'slow', chunks: new Array<string>(40).fill('x'), chunkDelayMs: 500 });
    const stream = await openStream(url, key, { message: 'hello' });
    streams.push(stream);
    assert.equal((await stream.next())?.event, 'start');
    entry.child.kill('SIGTERM');
    await entry.line('draining', 5_000);
    const signalledAt = performance.now();
    entry.child.kill('SIGINT');
    const code = await entry.exit(5_000);
    assert.ok(performance.now() - signalledAt < 2_000, 'no drain after the second signal');
    assert.notEqual(code, 0);
    assert.equal(entry.child.signalCode, null, 'it exits by itself, not killed by the signal');
    await entry.line('second signal: exiting at once', 0);
  });

  it('npm start: SIGTERM to npm itself drains the server, npm exits 0 and nothing of its group is left', async () => {
    // What docker stop, systemd and timeout do to `npm start`: signal npm's own pid, not the server's.
    const entry = spawnEntry([], env({ SHUTDOWN_GRACE_MS: '3000', DRAIN_READINESS_MS: '300' }), 'npm');
    const url = (await entry.line('listening', START_TIMEOUT_MS))['url'] as string;
    const health = await fetch(`${url}/health`);
    assert.equal(health.status, 200);
    await health.arrayBuffer();
    const group = entry.child.pid as number;
    process.kill(group, 'SIGTERM');
    assert.equal(await entry.exit(5_000), 0, 'npm exits 0');
    assert.equal((await entry.line('draining', 0))['signal'], 'SIGTERM', 'the server itself got the signal');
    await entry.line('stopped', 0);
    assert.throws(() => process.kill(-group, 0), { code: 'ESRCH' }, 'no process of the group is left');
  });

  const invalid = [
    { variable: 'CORS_ORIGINS', value: '*' },
    { variable: 'PORT', value: 'abc' },
    { variable: 'DATABASE_URL', value: `mysql://app:${CANARY}@db.example/app` },
  ];
  for (const { variable, value } of invalid) {
    it(`an invalid ${variable} stops the start with a message naming it and no secret value`, async () => {
      const entry = spawnEntry([], env({ [variable]: value }));
      const code = await entry.exit(10_000);
      assert.notEqual(code, 0);
      const { stdout, stderr } = entry.output();
      assert.match(stderr, new RegExp(`^\\s*- ${variable}: `, 'm'));
      assert.ok(!`${stdout}${stderr}`.includes(CANARY), 'no canary in the output');
      assert.ok(!stdout.includes('"msg":"listening"'));
    });
  }
});
