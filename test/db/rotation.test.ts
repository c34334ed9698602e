import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { mintKey, waitFor } from '../support/chat.ts';
import { TEST_DATABASE_URL } from '../support/config.ts';
import { startTestServer, type TestServer } from '../support/server.ts';

// More clients than pool connections: the pool stays full, so it opens no new connection during
// the rotation itself, between ALTER ROLE and the file write, when neither password would work.
const WORKERS = 6;
const POOL_MAX = 3;

/** Request outcomes of a traffic loop; `okAfterKill` counts successes of requests sent after the kill. */
interface Traffic {
  ok: number;
  okAfterKill: number;
  failures: string[];
  killedAt: number;
  stop(): Promise<void>;
}

/** `WORKERS` clients sending GET /v1/conversations (one query each) back to back until stop(). */
function startTraffic(baseUrl: string, key: string): Traffic {
  let stopped = false;
  const traffic: Omit<Traffic, 'stop'> = { ok: 0, okAfterKill: 0, failures: [], killedAt: Infinity };
  async function worker(): Promise<void> {
    while (!stopped) {
      const sentAt = performance.now();
      try {
        const res = await fetch(`${baseUrl}/v1/conversations`, { headers: { authorization: `Bearer ${key}` } });
        await res.arrayBuffer();
        if (res.status !== 200) traffic.failures.push(`HTTP ${res.status}`);
        else {
          traffic.ok++;
          if (sentAt > traffic.killedAt) traffic.okAfterKill++;
        }
      } catch (err) {
        traffic.failures.push(`fetch: ${(err as Error).message}`);
      }
    }
  }
  const workers = Array.from({ length: WORKERS }, () => worker());
  return Object.assign(traffic, {
    async stop() {
      stopped = true;
      await Promise.all(workers);
    },
  });
}

describe('DATABASE_PASSWORD_FILE on PostgreSQL', { skip: !TEST_DATABASE_URL && 'needs TEST_DATABASE_URL' }, () => {
  const role = `rot_${randomBytes(5).toString('hex')}`;
  const database = role;
  const oldPassword = randomBytes(12).toString('hex');
  const newPassword = randomBytes(12).toString('hex');
  let admin: pg.Pool;
  let dir: string;
  let passwordFile: string;
  let server: TestServer | undefined;
  let created = false;

  /** A URL for the throw-away role and database, with `password` or none. */
  function roleUrl(password = ''): string {
    const url = new URL(TEST_DATABASE_URL as string);
    url.username = role;
    url.password = password;
    url.pathname = `/${database}`;
    url.search = '';
    return url.toString();
  }

  async function appBackends(): Promise<number[]> {
    const { rows } = await admin.query<{ pid: number }>(
      "SELECT pid FROM pg_stat_activity WHERE application_name = 'chat-server' AND usename = $1 ORDER BY pid",
      [role],
    );
    return rows.map((r) => r.pid);
  }

  before(async () => {
    admin = new pg.Pool({ connectionString: TEST_DATABASE_URL, max: 2 });
    dir = await mkdtemp(join(tmpdir(), 'rotation-test-'));
    passwordFile = join(dir, 'db-password');
    await writeFile(passwordFile, `${oldPassword}\n`, { mode: 0o600 });
    // The dev user is a superuser; identifiers are our own hex; CREATE ROLE takes no parameter for the password.
    await admin.query(`CREATE ROLE ${role} LOGIN PASSWORD '${oldPassword}'`);
    created = true;
    await admin.query(`CREATE DATABASE ${database} OWNER ${role}`);
    server = await startTestServer({
      DATABASE_URL: roleUrl(),
      DATABASE_PASSWORD_FILE: passwordFile,
      DB_POOL_MAX: String(POOL_MAX),
      RATE_LIMIT_PER_MINUTE: '1000000',
      RATE_LIMIT_BURST: '1000000',
      LOG_LEVEL: 'warn',
    });
  });
  after(async () => {
    await server?.close();
    if (created) {
      await admin.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
      await admin.query(`DROP ROLE IF EXISTS ${role}`);
    }
    await admin?.end();
    await rm(dir, { recursive: true, force: true });
  });

  it('the running server keeps serving after the password is rotated and its connections are killed', async () => {
    const app = server as TestServer;
    const key = await mintKey(app.db.pool);
    const traffic = startTraffic(app.url, key);
    let killed: number[] = [];
    try {
      await waitFor('traffic on a full pool before the rotation', 10_000, async () =>
        traffic.ok >= 30 && (await appBackends()).length === POOL_MAX ? true : undefined,
      );
      // The operator's rotation: new password in PostgreSQL, then in the file; no restart.
      await admin.query(`ALTER ROLE ${role} PASSWORD '${newPassword}'`);
      await writeFile(passwordFile, `${newPassword}\n`);
      // In the select list, not the WHERE clause: the planner may run a WHERE function before the other filters.
      const { rows } = await admin.query<{ pid: number; terminated: boolean }>(
        `SELECT pid, pg_terminate_backend(pid) AS terminated FROM pg_stat_activity
         WHERE application_name = 'chat-server' AND usename = $1`,
        [role],
      );
      traffic.killedAt = performance.now();
      killed = rows.filter((r) => r.terminated).map((r) => r.pid);
      await waitFor('successful requests on new connections', 10_000, () =>
        traffic.okAfterKill >= 30 ? true : undefined,
      );
    } finally {
      await traffic.stop();
    }

    assert.ok(killed.length >= 1, 'the rotation killed at least one of the server’s connections');
    // At most the one request in flight on each killed connection may fail.
    assert.ok(
      traffic.failures.length <= killed.length,
      `${traffic.failures.length} failed requests for ${killed.length} killed connections: ` +
        traffic.failures.join(', '),
    );
    const health = await fetch(`${app.url}/health`);
    assert.equal(health.status, 200);
    await health.arrayBuffer();
    const now = await appBackends();
    assert.ok(now.length >= 1, 'the server holds connections again');
    assert.deepEqual(
      now.filter((pid) => killed.includes(pid)),
      [],
      'every connection is a new one',
    );
    // The new connections could only log in with the new password: the old one is refused now.
    const stale = new pg.Client({ connectionString: roleUrl(oldPassword) });
    await assert.rejects(stale.connect(), (err: Error & { code?: string }) => err.code === '28P01');
    await stale.end().catch(() => {});
  });
});
