// Runs a function inside one transaction on one pooled client, releasing or destroying it correctly.
import type pg from 'pg';

/** BEGIN … COMMIT around `fn`; ROLLBACK on error; a client that fails to roll back is destroyed, never reused. */
export async function withTransaction<T>(pool: pg.Pool, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  // A checked-out client has no pool listener: without this, a backend dying mid-transaction crashes the process.
  const onError = (): void => {};
  client.on('error', onError);
  try {
    await client.query('BEGIN');
    const result = await fn(client);
    await client.query('COMMIT');
    client.off('error', onError);
    client.release();
    return result;
  } catch (err) {
    try {
      await client.query('ROLLBACK');
      client.off('error', onError);
      client.release();
    } catch {
      client.off('error', onError);
      client.release(true); // broken connection: destroy it
    }
    throw err;
  }
}
