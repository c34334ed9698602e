// Starts the real chat server (repo root server.ts) for the benchmark, or says why it cannot.
//
// Keys are created with `server.ts keys create` BEFORE the server starts: the embedded
// database (PGlite) is locked by the process that holds it. The server's stdout (its access
// log, at LOG_LEVEL=info) goes to /dev/null so the log line is built and written as in production.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NODE, type Proc, REPO_ROOT, SERVER_CPU, startPinned, waitForHttp } from './harness.ts';

export const ORIGIN = 'http://localhost:5173';
/** The server's entry point, relative to the repo root (overridable to test the 'unavailable' path). */
const ENTRY = process.env.BENCH_SERVER_ENTRY ?? 'server.ts';

/** Settings that keep the full chain on but keep its limits out of the way of the load. */
export const OURS_SETTINGS: Readonly<Record<string, string>> = {
  HOST: '127.0.0.1',
  LOG_LEVEL: 'info',
  NODE_ENV: 'production',
  CORS_ORIGINS: ORIGIN,
  // The configured maxima (1,000,000 a minute and as burst): a 5-round run sends well under that per key.
  RATE_LIMIT_PER_MINUTE: '1000000',
  RATE_LIMIT_BURST: '1000000',
  // The memory test holds 1,000 streams over two keys; the relay needs an upstream socket for each.
  MAX_CONCURRENT_STREAMS_PER_KEY: '1000',
  UPSTREAM_MAX_CONNECTIONS: '2000',
  UPSTREAM_IDLE_TIMEOUT_MS: '600000',
  UPSTREAM_TIMEOUT_MS: '600000',
  REQUEST_TIMEOUT_MS: '60000',
  OPENAI_API_KEY: 'bench-upstream-key',
  SHUTDOWN_GRACE_MS: '1000',
};

/** The rate-limit stores the HTTP configs run ours with (`postgres-leased` is refused by servers that predate it). */
export type RateLimitStore = 'memory' | 'postgres' | 'postgres-leased';

/** The database name in a postgres:// URL, or undefined (no URL, or none in it). */
export function databaseName(url: string | undefined): string | undefined {
  if (url === undefined || url === '') return undefined;
  try {
    const name = decodeURIComponent(new URL(url).pathname.slice(1));
    return name === '' ? undefined : name;
  } catch {
    return undefined;
  }
}

export interface OursPrepared {
  ok: true;
  dataDir: string;
  env: Record<string, string>;
  keys: string[];
  keyNames: string[];
  external: boolean;
}
export type OursPrep = OursPrepared | { ok: false; reason: string };

function baseEnv(dataDir: string): Record<string, string> {
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: process.env.HOME ?? '/tmp',
    DATA_DIR: dataDir,
    ...OURS_SETTINGS,
  };
  const url = process.env.BENCH_DATABASE_URL;
  if (url !== undefined && url !== '') env.DATABASE_URL = url;
  return env;
}

function run(
  args: string[],
  env: Record<string, string>,
  timeoutMs: number,
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(NODE, args, { cwd: REPO_ROOT, env, timeout: timeoutMs, maxBuffer: 1 << 20 }, (err, stdout, stderr) => {
      const code = err
        ? typeof (err as { code?: unknown }).code === 'number'
          ? (err as { code: number }).code
          : 1
        : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** Makes a data dir and `count` API keys; with BENCH_DATABASE_URL the keys get unique names. */
export async function prepareOurs(count: number): Promise<OursPrep> {
  if (!existsSync(join(REPO_ROOT, ENTRY))) return { ok: false, reason: `${ENTRY} not found at the repo root` };
  const dataDir = await mkdtemp(join(tmpdir(), 'chat-bench-'));
  const env = baseEnv(dataDir);
  const external = env.DATABASE_URL !== undefined;
  const stamp = Date.now().toString(36);
  const keys: string[] = [];
  const keyNames: string[] = [];
  for (let i = 1; i <= count; i++) {
    const name = external ? `bench-${stamp}-${i}` : `bench-${i}`;
    const r = await run([ENTRY, 'keys', 'create', name], env, 120_000);
    const key = r.stdout.trim();
    if (r.code !== 0 || key === '' || /\s/.test(key)) {
      await rm(dataDir, { recursive: true, force: true });
      const why = r.stderr.trim().split('\n').slice(-3).join(' / ').slice(0, 300);
      return { ok: false, reason: `\`server.ts keys create\` failed (exit ${r.code}): ${why || 'no output'}` };
    }
    keys.push(key);
    keyNames.push(name);
  }
  return { ok: true, dataDir, env, keys, keyNames, external };
}

/**
 * The V8 flags and environment production runs with (deploy/chat-server.service sets them as
 * NODE_OPTIONS and Environment=, `npm start` on its command line; test/deploy/systemd.test.ts keeps
 * the three in agreement). Node 24 lets the young generation grow to 64 MiB per semi-space; 4 MiB
 * bounds it. glibc gives each thread that allocates its own malloc arena, and memory freed in one
 * is not reused by another: two arenas cut native memory per open stream from 13-20 KiB to 6-9.
 * Neither cost throughput here.
 */
export const PRODUCTION_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=4'];
export const PRODUCTION_ENV: Readonly<Record<string, string>> = { MALLOC_ARENA_MAX: '2' };

/**
 * Starts the server on `cpu` (CPU 0 unless a second instance goes elsewhere) and checks that GET
 * /v1/agents answers 200 with the first key. `nodeArgs` go before the entry point (the memory test adds
 * `--inspect=127.0.0.1:0`); `extraEnv` sets variables per config (RATE_LIMIT_STORE). A server that
 * refuses its configuration exits 1 at once.
 */
export async function startOurs(
  prep: OursPrepared,
  port: number,
  upstreamBaseUrl: string,
  nodeArgs: readonly string[] = [],
  extraEnv: Readonly<Record<string, string>> = {},
  cpu = SERVER_CPU,
): Promise<Proc> {
  const env = { ...prep.env, ...PRODUCTION_ENV, ...extraEnv, PORT: String(port), OPENAI_BASE_URL: upstreamBaseUrl };
  const proc = startPinned('ours', cpu, NODE, [...PRODUCTION_NODE_FLAGS, ...nodeArgs, ENTRY], {
    cwd: REPO_ROOT,
    env,
    stdout: 'null',
  });
  try {
    await waitForHttp(proc, `http://127.0.0.1:${port}/health/live`, 60_000);
    const res = await fetch(`http://127.0.0.1:${port}/v1/agents`, {
      headers: { authorization: `Bearer ${prep.keys[0]}`, origin: ORIGIN },
      signal: AbortSignal.timeout(10_000),
    });
    const body = await res.text();
    if (res.status !== 200) throw new Error(`GET /v1/agents answered ${res.status}: ${body.slice(0, 200)}`);
    if (res.headers.get('access-control-allow-origin') !== ORIGIN)
      throw new Error('GET /v1/agents: no CORS header for the allowlisted origin');
  } catch (err) {
    await proc.stop(3000);
    throw err;
  }
  return proc;
}

/** The command line, for RESULTS.md (no key values). */
export function oursCommand(prep: OursPrepared): string {
  const vars = Object.entries(OURS_SETTINGS).map(([k, v]) => `${k}=${v}`);
  const db = prep.external ? 'DATABASE_URL=$BENCH_DATABASE_URL' : 'DATA_DIR=<temp dir>';
  const prod = Object.entries(PRODUCTION_ENV).map(([k, v]) => `${k}=${v}`);
  return (
    `cd <repo> && env -i PATH=… ${db} ${vars.join(' ')} ${prod.join(' ')} PORT=<port> ` +
    `OPENAI_BASE_URL=<fake upstream>/v1 taskset -c 0 node ${PRODUCTION_NODE_FLAGS.join(' ')} ${ENTRY} >/dev/null`
  );
}

/** Revokes keys made in an external database (the embedded one is deleted with its temp dir). */
export async function cleanupOurs(prep: OursPrep): Promise<void> {
  if (!prep.ok) return;
  if (prep.external) {
    for (const name of prep.keyNames) await run([ENTRY, 'keys', 'revoke', name], prep.env, 60_000);
  }
  await rm(prep.dataDir, { recursive: true, force: true });
}
