// A throw-away PgBouncer in transaction mode in front of the tests' PostgreSQL, on a free port.
//
// Any database name is routed to the target server (the `*` entry), and clients log in with the
// target URL's user and password (SCRAM on both hops). The pool is kept small so that statements
// of one client really do land on different server connections. PgBouncer refuses to run as
// root, so as root it runs as the `postgres` user in a folder that user owns.
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { chown, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { type AddressInfo, connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** The pgbouncer binary; PGBOUNCER_BIN overrides Debian's path. */
export const PGBOUNCER_BIN = process.env['PGBOUNCER_BIN'] || '/usr/sbin/pgbouncer';

const AS_ROOT = process.getuid?.() === 0;

/** A skip reason when no PgBouncer can be started here, else false (CI installs it). */
export const PGBOUNCER_UNAVAILABLE: string | false = !existsSync(PGBOUNCER_BIN)
  ? `needs pgbouncer at ${PGBOUNCER_BIN} (apt-get install pgbouncer)`
  : false;

export interface PgBouncerOptions {
  /** Server connections per database and user; default 2. */
  poolSize?: number;
}

export interface PgBouncer {
  readonly port: number;
  /** `target` with its host and port replaced by the pooler's. */
  url(target: string): string;
  /** The pooler's log so far, for failure messages. */
  log(): Promise<string>;
  /** Stops it (SIGTERM, a fast exit) and removes its folder; safe to call twice. */
  stop(): Promise<void>;
}

/** Starts PgBouncer in front of the server of `targetUrl`, whose user and password clients must use. */
export async function startPgBouncer(targetUrl: string, options: PgBouncerOptions = {}): Promise<PgBouncer> {
  const target = new URL(targetUrl);
  const dir = await mkdtemp(join(tmpdir(), 'pgbouncer-'));
  const logFile = join(dir, 'pgbouncer.log');
  let child: ChildProcess | undefined;
  try {
    const port = await freePort();
    await writeFile(join(dir, 'userlist.txt'), userlistLine(target), { mode: 0o600 });
    await writeFile(join(dir, 'pgbouncer.ini'), ini(target, port, dir, options.poolSize ?? 2));
    if (AS_ROOT) await chownTree(dir, ['userlist.txt', 'pgbouncer.ini']);
    const args = AS_ROOT ? ['-u', 'postgres', join(dir, 'pgbouncer.ini')] : [join(dir, 'pgbouncer.ini')];
    child = spawn(PGBOUNCER_BIN, args, { stdio: 'ignore' });
    await waitForPort(port, child);
    const running = child;
    let stopped = false;
    return {
      port,
      url(text) {
        const url = new URL(text);
        url.hostname = '127.0.0.1';
        url.port = String(port);
        return url.toString();
      },
      log: () => readFile(logFile, 'utf8').catch(() => ''),
      async stop() {
        if (stopped) return;
        stopped = true;
        if (running.exitCode === null && running.signalCode === null) {
          const exited = once(running, 'exit');
          running.kill('SIGTERM');
          await exited;
        }
        await rm(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    child?.kill('SIGKILL');
    const log = await readFile(logFile, 'utf8').catch(() => '');
    await rm(dir, { recursive: true, force: true });
    throw new Error(`Could not start PgBouncer: ${(err as Error).message}${log === '' ? '' : `\nlog:\n${log}`}`, {
      cause: err,
    });
  }
}

function ini(target: URL, port: number, dir: string, poolSize: number): string {
  return `[databases]
* = host=${target.hostname} port=${target.port || '5432'}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = ${port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = ${join(dir, 'userlist.txt')}
pool_mode = transaction
default_pool_size = ${poolSize}
max_client_conn = 500
logfile = ${join(dir, 'pgbouncer.log')}
pidfile = ${join(dir, 'pgbouncer.pid')}
`;
}

/** The auth file line: PgBouncer logs in to the server with this password too. */
function userlistLine(target: URL): string {
  const quote = (s: string) => `"${s.replaceAll('"', '""')}"`;
  return `${quote(decodeURIComponent(target.username))} ${quote(decodeURIComponent(target.password))}\n`;
}

async function chownTree(dir: string, files: readonly string[]): Promise<void> {
  const uid = Number((await run('id', ['-u', 'postgres'])).stdout.trim());
  const gid = Number((await run('id', ['-g', 'postgres'])).stdout.trim());
  await chown(dir, uid, gid);
  for (const file of files) await chown(join(dir, file), uid, gid);
}

/** Resolves once the port accepts connections; rejects if the process exits first or 10 s pass. */
async function waitForPort(port: number, child: ChildProcess): Promise<void> {
  const deadline = performance.now() + 10_000;
  while (performance.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`pgbouncer exited with code ${child.exitCode}`);
    if (await accepts(port)) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error('pgbouncer did not listen within 10 s');
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** A TCP port nothing listens on right now (the kernel's pick for port 0). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });
}
