// A login role and database on the tests' PostgreSQL whose password is a given secret, so a test
// can watch where the server's database password goes.
import { randomBytes } from 'node:crypto';
import pg from 'pg';

/** A role `<prefix>_<random>` with `password`, owning a database of the same name. */
export interface SecretDatabase {
  /** The database URL, signed in as the role with the password. */
  url: string;
  role: string;
  /** Drops the database (connections and all) and the role. */
  drop(): Promise<void>;
}

/** Creates the role and its database through `adminUrl` (a superuser). */
export async function secretDatabase(adminUrl: string, password: string, prefix = 'secret'): Promise<SecretDatabase> {
  const role = `${prefix}_${randomBytes(6).toString('hex')}`;
  await asAdmin(adminUrl, async (admin) => {
    const { rows } = await admin.query<{ sql: string }>(
      "SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', $1::text, $2::text) AS sql",
      [role, password],
    );
    await admin.query(rows[0]!.sql);
    await admin.query(`CREATE DATABASE ${role} OWNER ${role}`);
  });
  const url = new URL(adminUrl);
  url.username = role;
  url.password = password;
  url.pathname = `/${role}`;
  return {
    url: url.href,
    role,
    drop: () =>
      asAdmin(adminUrl, async (admin) => {
        await admin.query(`DROP DATABASE IF EXISTS ${role} WITH (FORCE)`);
        await admin.query(`DROP ROLE IF EXISTS ${role}`);
      }),
  };
}

async function asAdmin(adminUrl: string, work: (admin: pg.Client) => Promise<void>): Promise<void> {
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    await work(admin);
  } finally {
    await admin.end();
  }
}
