// Token accounting and budgets in PostgreSQL, shared by every instance: usage per identity, agent
// and UTC day, and reservations held against an identity's daily budget while a turn runs.
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { withTransaction } from './transaction.ts';

/** What one turn used; `estimated` when the upstream reported nothing and the tokens were counted from text. */
export interface TurnUsage {
  identity: string;
  agent: string;
  /** The UTC day (YYYY-MM-DD) the turn is counted on: the day its reservation was taken. */
  day: string;
  tokensIn: number;
  tokensOut: number;
  estimated: boolean;
}

/** One row of GET /v1/usage. */
export interface UsageRow {
  day: string;
  agent: string;
  tokensIn: number;
  tokensOut: number;
  requests: number;
  estimatedRequests: number;
}

export type Reserved = { ok: true; id: string } | { ok: false; used: number };

/**
 * Reserves `tokens` against `budget` for the identity's day, atomically across instances: a
 * transaction-scoped advisory lock on (identity, day) serialises reservers, so the sum of what is
 * admitted never exceeds the budget. Used = the day's recorded usage plus unexpired reservations.
 */
export async function reserveBudget(
  pool: pg.Pool,
  input: { identity: string; day: string; tokens: number; budget: number; ttlMs: number },
): Promise<Reserved> {
  return withTransaction(pool, async (client) => {
    await client.query('SELECT pg_advisory_xact_lock(hashtextextended($1, 7242))', [`${input.identity}|${input.day}`]);
    // Expired reservations of crashed turns count for nothing; drop them while the row set is locked.
    await client.query('DELETE FROM budget_reservations WHERE identity = $1 AND day = $2 AND expires_at <= now()', [
      input.identity,
      input.day,
    ]);
    const { rows } = await client.query<{ used: string }>(
      `SELECT (SELECT coalesce(sum(tokens_in + tokens_out), 0) FROM usage_daily WHERE identity = $1 AND day = $2)
            + (SELECT coalesce(sum(tokens), 0) FROM budget_reservations WHERE identity = $1 AND day = $2) AS used`,
      [input.identity, input.day],
    );
    const used = Number(rows[0]?.used ?? 0);
    if (used + input.tokens > input.budget) return { ok: false, used };
    const id = randomUUID();
    await client.query(
      `INSERT INTO budget_reservations (id, identity, day, tokens, expires_at)
       VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5::float8 / 1000))`,
      [id, input.identity, input.day, input.tokens, input.ttlMs],
    );
    return { ok: true, id };
  });
}

/** Records a turn's usage and releases its reservation, in one statement (one transaction). */
export async function settleUsage(pool: pg.Pool, usage: TurnUsage, reservationId: string | undefined): Promise<void> {
  await pool.query(
    `WITH released AS (DELETE FROM budget_reservations WHERE id = $7)
     INSERT INTO usage_daily (identity, day, agent, tokens_in, tokens_out, requests, estimated_requests)
     VALUES ($1, $2, $3, $4, $5, 1, $6)
     ON CONFLICT (identity, day, agent) DO UPDATE SET
       tokens_in = usage_daily.tokens_in + EXCLUDED.tokens_in,
       tokens_out = usage_daily.tokens_out + EXCLUDED.tokens_out,
       requests = usage_daily.requests + 1,
       estimated_requests = usage_daily.estimated_requests + EXCLUDED.estimated_requests`,
    [
      usage.identity,
      usage.day,
      usage.agent,
      usage.tokensIn,
      usage.tokensOut,
      usage.estimated ? 1 : 0,
      reservationId ?? null,
    ],
  );
}

/** Releases a reservation whose turn never reached the model. */
export async function releaseReservation(pool: pg.Pool, id: string): Promise<void> {
  await pool.query('DELETE FROM budget_reservations WHERE id = $1', [id]);
}

/** The identity's usage per day and agent, `from` to `to` inclusive (UTC days), oldest first. */
export async function usageOf(pool: pg.Pool, identity: string, from: string, to: string): Promise<UsageRow[]> {
  const { rows } = await pool.query<{
    day: string;
    agent: string;
    tokens_in: string;
    tokens_out: string;
    requests: number;
    estimated_requests: number;
  }>(
    `SELECT to_char(day, 'YYYY-MM-DD') AS day, agent, tokens_in, tokens_out, requests, estimated_requests
     FROM usage_daily WHERE identity = $1 AND day BETWEEN $2::date AND $3::date ORDER BY day, agent`,
    [identity, from, to],
  );
  return rows.map((r) => ({
    day: r.day,
    agent: r.agent,
    tokensIn: Number(r.tokens_in),
    tokensOut: Number(r.tokens_out),
    requests: r.requests,
    estimatedRequests: r.estimated_requests,
  }));
}

/** Tokens the identity has used on `day` plus those reserved now. */
export async function usedOn(pool: pg.Pool, identity: string, day: string): Promise<number> {
  const { rows } = await pool.query<{ used: string }>(
    `SELECT (SELECT coalesce(sum(tokens_in + tokens_out), 0) FROM usage_daily WHERE identity = $1 AND day = $2)
          + (SELECT coalesce(sum(tokens), 0) FROM budget_reservations
             WHERE identity = $1 AND day = $2 AND expires_at > now()) AS used`,
    [identity, day],
  );
  return Number(rows[0]?.used ?? 0);
}
