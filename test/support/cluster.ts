// Several instances of the real server on one PostgreSQL, behind a round-robin TCP proxy.
//
//   const cluster = await startCluster({ instances: 2, env: { RATE_LIMIT_STORE: 'postgres-leased' } });
//   await cluster.request('/v1/agents', { headers: bearer(key) });   // a new connection: the next instance
//   await cluster.instances[0].kill();                                // SIGKILL (processes: true)
//   await cluster.close();
//
// Each cluster gets a scratch database on TEST_DATABASE_URL; the instances start at once, so they
// also migrate it at once. In this process by default (fast); `processes: true` runs each as
// `node server.ts`, the only way to kill one without its cleanup running.
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { CANARY, TEST_DATABASE_URL } from './config.ts';
import { scratchDatabase } from './database.ts';
import { startRoundRobinProxy } from './round-robin-proxy.ts';
import { startTestServer, type TestServer } from './server.ts';

export interface ClusterOptions {
  instances: number;
  /** Server variables on top of the harness's test defaults. */
  env?: Record<string, string | undefined>;
  /** Run each instance as a child process (`node server.ts`), so that kill() can SIGKILL it. */
  processes?: boolean;
  /**
   * The URL the instances get for the scratch database, e.g. through PgBouncer; default: as is.
   * When given, DATABASE_SESSION_URL is the scratch database itself (sessions never go through a pooler).
   */
  databaseUrl?: (scratchUrl: string) => string;
}

export interface ClusterInstance {
  /** Base URL of this instance alone. */
  readonly url: string;
  /** Kills it with SIGKILL: no drain, no cleanup, its leases left behind. Processes only. */
  kill(): Promise<void>;
  /** Everything it logged so far. */
  logs(): string;
}

export interface ClusterResponse {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

export interface Cluster {
  /** The proxy's base URL: every new connection goes to the next instance that accepts it. */
  readonly url: string;
  readonly instances: readonly ClusterInstance[];
  /** A pool straight to the scratch database, for the test's own rows (keys, leases). */
  readonly pool: pg.Pool;
  /** Connections the proxy gave each instance so far, in instance order. */
  connectionsPerInstance(): number[];
  /** One request on a connection of its own, so consecutive requests go round the instances. */
  request(
    path: string,
    init?: { method?: string; headers?: Record<string, string>; body?: string },
  ): Promise<ClusterResponse>;
  /** Stops every instance (a drain of 0 ms), the proxy, and drops the database. */
  close(): Promise<void>;
}

const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
const START_TIMEOUT_MS = 30_000;

/** Starts `instances` servers on one fresh database behind a round-robin proxy; close() it in after(). */
export async function startCluster(options: ClusterOptions): Promise<Cluster> {
  if (TEST_DATABASE_URL === undefined) throw new Error('A cluster needs TEST_DATABASE_URL');
  const scratch = await scratchDatabase(TEST_DATABASE_URL);
  const pool = new pg.Pool({ connectionString: scratch.url, max: 4 });
  pool.on('error', () => {});
  const env: Record<string, string | undefined> = { ...options.env, DATABASE_URL: scratch.url };
  if (options.databaseUrl !== undefined) {
    env['DATABASE_URL'] = options.databaseUrl(scratch.url);
    env['DATABASE_SESSION_URL'] = scratch.url;
  }
  const started: RunningInstance[] = [];
  try {
    const starts = Array.from({ length: options.instances }, () =>
      options.processes === true ? startProcess(env) : startInProcess(env),
    );
    const results = await Promise.allSettled(starts);
    for (const result of results) if (result.status === 'fulfilled') started.push(result.value);
    const failed = results.find((r) => r.status === 'rejected');
    if (failed !== undefined) throw (failed as PromiseRejectedResult).reason;
    const proxy = await startRoundRobinProxy(
      started.map((i) => ({ host: '127.0.0.1', port: Number(new URL(i.url).port) })),
    );
    const url = `http://127.0.0.1:${proxy.port}`;
    return {
      url,
      instances: started,
      pool,
      connectionsPerInstance: () => proxy.connectionsPerTarget(),
      request: (path, init) => requestOnce(`${url}${path}`, init),
      async close() {
        await proxy.close();
        await Promise.all(started.map((i) => i.stop()));
        await pool.end();
        await scratch.drop();
      },
    };
  } catch (err) {
    await Promise.all(started.map((i) => i.stop()));
    await pool.end();
    await scratch.drop();
    throw err;
  }
}

interface RunningInstance extends ClusterInstance {
  stop(): Promise<void>;
}

async function startInProcess(env: Record<string, string | undefined>): Promise<RunningInstance> {
  const server: TestServer = await startTestServer(env);
  return {
    url: server.url,
    kill: () => Promise.reject(new Error('kill() needs a cluster started with processes: true')),
    logs: () => server.logs(),
    stop: () => server.close(),
  };
}

async function startProcess(env: Record<string, string | undefined>): Promise<RunningInstance> {
  const child = spawn(process.execPath, ['server.ts'], {
    cwd: REPO_ROOT,
    env: childEnv(env),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
  const url = await listeningUrl(child, () => output);
  return {
    url,
    logs: () => output,
    async kill() {
      await signal(child, 'SIGKILL');
    },
    async stop() {
      await signal(child, 'SIGTERM', 5_000);
    },
  };
}

/** A child instance's environment: startTestServer's defaults, then `env`; nothing else inherited but PATH. */
function childEnv(env: Record<string, string | undefined>): Record<string, string> {
  const merged: Record<string, string | undefined> = {
    PATH: process.env['PATH'],
    HOST: '127.0.0.1',
    PORT: '0',
    LOG_LEVEL: 'info',
    OPENAI_API_KEY: CANARY,
    METRICS_TOKEN: CANARY,
    SHUTDOWN_GRACE_MS: '2000',
    DRAIN_READINESS_MS: '0',
    ...env,
  };
  return Object.fromEntries(Object.entries(merged).filter((e): e is [string, string] => e[1] !== undefined));
}

/** Resolves with the URL from the instance's "listening" log line; rejects if it exits or takes too long. */
async function listeningUrl(child: ChildProcess, output: () => string): Promise<string> {
  const deadline = performance.now() + START_TIMEOUT_MS;
  while (performance.now() < deadline) {
    const match = /"msg":"listening"[^\n]*"url":"([^"]+)"/.exec(output());
    if (match !== null) return match[1] as string;
    if (child.exitCode !== null) throw new Error(`An instance exited with code ${child.exitCode}:\n${output()}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  child.kill('SIGKILL');
  throw new Error(`An instance did not listen within ${START_TIMEOUT_MS} ms:\n${output()}`);
}

/** Sends `name` and waits for the exit; after `graceMs` (if given) it is SIGKILLed. */
async function signal(child: ChildProcess, name: NodeJS.Signals, graceMs?: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill(name);
  const timer = graceMs === undefined ? undefined : setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

/** One HTTP request on a new connection (no keep-alive agent), with the whole body as text. */
function requestOnce(
  url: string,
  init: { method?: string; headers?: Record<string, string>; body?: string } = {},
): Promise<ClusterResponse> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method: init.method ?? 'GET', headers: init.headers, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (chunk: string) => (body += chunk));
      res.once('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      res.once('error', reject);
    });
    req.once('error', reject);
    req.end(init.body);
  });
}
