import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { createDatabase } from '../../lib/db/database.ts';
import { createLogger } from '../../lib/log.ts';
import { testConfig } from '../support/config.ts';
import { PG_INSTANCE_UNAVAILABLE, type PgInstance, startPgInstance } from '../support/pg-instance.ts';

const run = promisify(execFile);

function hasOpenssl(): boolean {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

const UNAVAILABLE = PG_INSTANCE_UNAVAILABLE || (!hasOpenssl() && 'needs the openssl command');

interface Pki {
  /** The CA that signed the servers' certificates. */
  rightCa: string;
  /** A CA that signed nothing the servers present. */
  wrongCa: string;
  /** A certificate for 127.0.0.1 and localhost, signed by the right CA. */
  server: { certFile: string; keyFile: string };
  /** A certificate for db.example only, signed by the right CA. */
  otherName: { certFile: string; keyFile: string };
}

async function openssl(dir: string, ...args: string[]): Promise<void> {
  await run('openssl', args, { cwd: dir, timeout: 30_000 });
}

async function makeCa(dir: string, name: string): Promise<string> {
  await openssl(
    dir,
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:P-256',
    '-nodes',
    '-keyout',
    `${name}.key`,
    '-out',
    `${name}.crt`,
    '-days',
    '2',
    '-subj',
    `/CN=${name}`,
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  );
  return join(dir, `${name}.crt`);
}

async function makeServerCert(
  dir: string,
  name: string,
  ca: string,
  commonName: string,
  altNames: string,
): Promise<{ certFile: string; keyFile: string }> {
  await writeFile(
    join(dir, `${name}.ext`),
    `subjectAltName = ${altNames}\nextendedKeyUsage = serverAuth\nbasicConstraints = CA:FALSE\n`,
  );
  await openssl(
    dir,
    'req',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:P-256',
    '-nodes',
    '-keyout',
    `${name}.key`,
    '-out',
    `${name}.csr`,
    '-subj',
    `/CN=${commonName}`,
  );
  await openssl(
    dir,
    'x509',
    '-req',
    '-in',
    `${name}.csr`,
    '-CA',
    `${ca}.crt`,
    '-CAkey',
    `${ca}.key`,
    '-CAcreateserial',
    '-days',
    '2',
    '-out',
    `${name}.crt`,
    '-extfile',
    `${name}.ext`,
  );
  return { certFile: join(dir, `${name}.crt`), keyFile: join(dir, `${name}.key`) };
}

async function makePki(dir: string): Promise<Pki> {
  const rightCa = await makeCa(dir, 'right-ca');
  const wrongCa = await makeCa(dir, 'wrong-ca');
  const server = await makeServerCert(dir, 'server', 'right-ca', '127.0.0.1', 'IP:127.0.0.1, DNS:localhost');
  const otherName = await makeServerCert(dir, 'other-name', 'right-ca', 'db.example', 'DNS:db.example');
  return { rightCa, wrongCa, server, otherName };
}

/** Opens the app's database on `url` with DATABASE_CA_FILE=`caFile` and asks whether the session is encrypted. */
async function sessionIsEncrypted(url: string, caFile: string): Promise<boolean> {
  const db = await createDatabase(
    testConfig({ DATABASE_URL: url, DATABASE_CA_FILE: caFile }),
    createLogger({ level: 'silent' }),
  );
  try {
    const { rows } = await db.pool.query<{ ssl: boolean }>('SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()');
    return (rows[0] as { ssl: boolean }).ssl;
  } finally {
    await db.close();
  }
}

/** An assert.rejects() matcher for a refused server certificate with this Node error code. */
function certificateRefused(code: string): (err: Error & { code?: string }) => boolean {
  return (err) => {
    assert.equal(err.code, code, `refused for the certificate, not for another reason: ${err.message}`);
    return true;
  };
}

// Node: the server sends its leaf only, and nothing in the trusted (wrong) CA list signed it.
const WRONG_CA = 'UNABLE_TO_VERIFY_LEAF_SIGNATURE';

describe('DATABASE_CA_FILE against a PostgreSQL server with TLS', { skip: UNAVAILABLE }, () => {
  let dir: string;
  let pki: Pki;
  let instance: PgInstance | undefined;
  let otherNameInstance: PgInstance | undefined;

  /** The instance's URL with extra query parameters. */
  function urlOf(server: PgInstance | undefined, query = ''): string {
    assert.ok(server !== undefined, 'the PostgreSQL instance started');
    return `${server.url()}${query}`;
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'db-tls-test-'));
    pki = await makePki(dir);
    [instance, otherNameInstance] = await Promise.all([
      startPgInstance({ tls: pki.server }),
      startPgInstance({ tls: pki.otherName }),
    ]);
  });
  after(async () => {
    await Promise.all([instance?.stop(), otherNameInstance?.stop()]);
    await rm(dir, { recursive: true, force: true });
  });

  it('createDatabase() with the right CA connects over TLS', async () => {
    assert.equal(await sessionIsEncrypted(urlOf(instance), pki.rightCa), true);
  });

  it('createDatabase() with a wrong CA refuses the server certificate', async () => {
    await assert.rejects(sessionIsEncrypted(urlOf(instance), pki.wrongCa), certificateRefused(WRONG_CA));
  });

  // Each of these in a connection string would override pg's ssl object (dependency notes §6.2):
  // sslmode=no-verify and ssl=no-verify skip verification, sslmode=disable and ssl=0 turn TLS off.
  for (const query of [
    'sslmode=no-verify',
    'sslmode=disable',
    'sslmode=prefer',
    'sslmode=require',
    'ssl=0',
    'ssl=no-verify',
  ]) {
    it(`createDatabase() with the right CA still connects over TLS when the URL says ${query}`, async () => {
      assert.equal(await sessionIsEncrypted(urlOf(instance, `?${query}`), pki.rightCa), true);
    });

    it(`createDatabase() with a wrong CA still refuses the certificate when the URL says ${query}`, async () => {
      await assert.rejects(sessionIsEncrypted(urlOf(instance, `?${query}`), pki.wrongCa), certificateRefused(WRONG_CA));
    });
  }

  it('createDatabase() refuses a certificate from the right CA issued for another host name', async () => {
    // Signed by the trusted CA but only for db.example, while the URL says 127.0.0.1: only the name check refuses it.
    await assert.rejects(
      sessionIsEncrypted(urlOf(otherNameInstance), pki.rightCa),
      certificateRefused('ERR_TLS_CERT_ALTNAME_INVALID'),
    );
  });
});
