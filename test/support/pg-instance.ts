// A throw-away PostgreSQL server for tests: initdb into a temporary folder, optional TLS,
// 127.0.0.1 on a free port, scram-sha-256 for TCP, a superuser with a password.
//
// initdb refuses to run as root, so as root every PostgreSQL binary runs as the `postgres`
// user (runuser) in a folder that user owns; as anyone else they run directly.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { appendFile, chmod, chown, copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { type AddressInfo, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** Where initdb, pg_ctl and postgres live; PG_BIN_DIR overrides the Debian PostgreSQL 15 path. */
export const PG_BIN_DIR = process.env['PG_BIN_DIR'] || '/usr/lib/postgresql/15/bin';

const RUN_AS_POSTGRES = process.getuid?.() === 0;

/** A skip reason when no throw-away instance can be started here, else false (CI has the binaries). */
export const PG_INSTANCE_UNAVAILABLE: string | false = !existsSync(join(PG_BIN_DIR, 'initdb'))
  ? `needs PostgreSQL binaries in ${PG_BIN_DIR}`
  : RUN_AS_POSTGRES && !existsSync('/usr/sbin/runuser') && !existsSync('/sbin/runuser')
    ? 'needs runuser to start PostgreSQL as the postgres user'
    : false;

export interface PgInstanceOptions {
  /** PEM files for `ssl = on`; copied into the instance folder so the server user can read them. */
  tls?: { certFile: string; keyFile: string };
}

export interface PgInstance {
  readonly host: '127.0.0.1';
  readonly port: number;
  readonly user: string;
  readonly password: string;
  /** postgres://user:password@127.0.0.1:port/postgres (`withPassword: false` leaves the password out). */
  url(options?: { withPassword?: boolean }): string;
  /** The server's log so far, for failure messages. */
  log(): Promise<string>;
  /** Stops the server at once (pg_ctl -m immediate) and removes its folder; safe to call twice. */
  stop(): Promise<void>;
}

/** Starts a new PostgreSQL instance; `stop()` it in after(). */
export async function startPgInstance(options: PgInstanceOptions = {}): Promise<PgInstance> {
  const dir = await mkdtemp(join(tmpdir(), 'pg-instance-'));
  const owner = RUN_AS_POSTGRES ? await postgresIds() : undefined;
  if (owner !== undefined) await chown(dir, owner.uid, owner.gid);
  const dataDir = join(dir, 'data');
  const logFile = join(dir, 'server.log');
  const user = 'test_admin';
  const password = randomBytes(16).toString('hex');
  let started = false;
  try {
    const pwFile = join(dir, 'pwfile');
    await writeFile(pwFile, `${password}\n`, { mode: 0o600 });
    if (owner !== undefined) await chown(pwFile, owner.uid, owner.gid);
    // -N: no fsync, a test instance never needs to survive a crash.
    await pg('initdb', [
      '-D',
      dataDir,
      '-U',
      user,
      `--pwfile=${pwFile}`,
      '--auth-host=scram-sha-256',
      '--auth-local=trust',
      '-N',
      '-E',
      'UTF8',
      '--locale=C',
    ]);
    await rm(pwFile);
    const port = await freePort();
    const settings = [
      "listen_addresses = '127.0.0.1'",
      `port = ${port}`,
      // Our own socket folder: the system one may belong to the machine's cluster.
      `unix_socket_directories = '${dir}'`,
      'fsync = off',
      "password_encryption = 'scram-sha-256'",
    ];
    let hostType = 'host';
    if (options.tls !== undefined) {
      // PostgreSQL wants the key owned by the server user and not readable by others.
      const certFile = join(dataDir, 'test-server.crt');
      const keyFile = join(dataDir, 'test-server.key');
      await copyFile(options.tls.certFile, certFile);
      await copyFile(options.tls.keyFile, keyFile);
      await chmod(keyFile, 0o600);
      if (owner !== undefined) {
        await chown(certFile, owner.uid, owner.gid);
        await chown(keyFile, owner.uid, owner.gid);
      }
      settings.push('ssl = on', `ssl_cert_file = '${certFile}'`, `ssl_key_file = '${keyFile}'`);
      // TLS only: a client that fell back to plain text is refused, never silently served.
      hostType = 'hostssl';
    }
    await appendFile(join(dataDir, 'postgresql.conf'), `\n# test instance\n${settings.join('\n')}\n`);
    await writeFile(
      join(dataDir, 'pg_hba.conf'),
      `local all all trust\n${hostType} all all 127.0.0.1/32 scram-sha-256\n`,
    );
    await pg('pg_ctl', ['-D', dataDir, '-l', logFile, '-w', '-t', '30', 'start']);
    started = true;
    let stopped = false;
    return {
      host: '127.0.0.1',
      port,
      user,
      password,
      url({ withPassword = true } = {}) {
        return `postgres://${user}${withPassword ? `:${password}` : ''}@127.0.0.1:${port}/postgres`;
      },
      log: () => readFile(logFile, 'utf8').catch(() => ''),
      async stop() {
        if (stopped) return;
        stopped = true;
        try {
          await pg('pg_ctl', ['-D', dataDir, '-m', 'immediate', '-w', 'stop']);
        } finally {
          await rm(dir, { recursive: true, force: true });
        }
      },
    };
  } catch (err) {
    const log = await readFile(logFile, 'utf8').catch(() => '');
    if (started) await pg('pg_ctl', ['-D', dataDir, '-m', 'immediate', '-w', 'stop']).catch(() => {});
    await rm(dir, { recursive: true, force: true });
    throw new Error(
      `Could not start a PostgreSQL test instance: ${(err as Error).message}` +
        (log === '' ? '' : `\nserver log:\n${log}`),
      { cause: err },
    );
  }
}

/** Runs a PostgreSQL binary, as the postgres user when we are root. */
async function pg(binary: string, args: readonly string[]): Promise<void> {
  const path = join(PG_BIN_DIR, binary);
  const [file, argv] = RUN_AS_POSTGRES ? ['runuser', ['-u', 'postgres', '--', path, ...args]] : [path, [...args]];
  // pg_ctl start leaves the server running with our pipes unless its output goes to the log file (-l).
  await run(file, argv, {
    timeout: 60_000,
    env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', LANG: 'C', LC_ALL: 'C' },
  });
}

async function postgresIds(): Promise<{ uid: number; gid: number }> {
  const uid = Number((await run('id', ['-u', 'postgres'])).stdout.trim());
  const gid = Number((await run('id', ['-g', 'postgres'])).stdout.trim());
  if (!Number.isInteger(uid) || !Number.isInteger(gid)) throw new Error('No postgres user to run PostgreSQL as');
  return { uid, gid };
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
