// GET /v1/usage on a small app over a real database: a stand-in for auth names the caller and its
// daily tokens, the clock is injected, and the rows come from the real usage repository.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { usageRoutes } from '../../lib/chat/usage-routes.ts';
import { createDatabase, type Database } from '../../lib/db/database.ts';
import { migrate } from '../../lib/db/migrate.ts';
import { reserveBudget, settleUsage } from '../../lib/db/usage.ts';
import { errorHandler } from '../../lib/http/middleware/errors.ts';
import { requestId } from '../../lib/http/middleware/request-id.ts';
import type { Middleware } from '../../lib/http/types.ts';
import { createLogger } from '../../lib/log.ts';
import { TEST_DATABASE_URL, testConfig } from '../support/config.ts';
import { scratchDatabase } from '../support/database.ts';
import { type Served, serve } from '../support/http.ts';
import { seedEmbeddedDatabase } from '../support/pglite-template.ts';

const OWNER_HEADER = 'x-test-owner';
const TOKENS_HEADER = 'x-test-tokens-per-day';
// The last millisecond of a UTC day: a clock that rounded or used local time would land on the 16th.
const NOW_MS = Date.parse('2026-03-15T23:59:59.999Z');
const TODAY = '2026-03-15';

/** Names the caller, and its own daily tokens when given: what auth establishes, without credentials. */
const identify: Middleware = function identifyMiddleware(ctx, next) {
  const owner = ctx.req.headers[OWNER_HEADER];
  const tokens = ctx.req.headers[TOKENS_HEADER];
  if (typeof owner === 'string') {
    ctx.identity = { id: owner, kind: 'key', policy: tokens === undefined ? {} : { tokensPerDay: Number(tokens) } };
  }
  return next();
};

interface UsageBody {
  from: string;
  to: string;
  usage: Array<{ day: string; agent: string; tokensIn: number; tokensOut: number }>;
  budget: { tokensPerDay: number; usedToday: number; day: string } | null;
}

describe('GET /v1/usage', () => {
  let dir: string;
  let scratch: { url: string; drop(): Promise<void> } | undefined;
  let db: Database;
  /** Without a server-wide budget. */
  let open: Served;
  /** With TOKEN_BUDGET_PER_DAY 1000. */
  let budgeted: Served;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'usage-routes-test-'));
    scratch = TEST_DATABASE_URL === undefined ? undefined : await scratchDatabase(TEST_DATABASE_URL);
    if (scratch === undefined) await seedEmbeddedDatabase(dir);
    db = await createDatabase(testConfig({ DATABASE_URL: scratch?.url }, dir), createLogger({ level: 'silent' }));
    await migrate(db.pool);
    const now = () => NOW_MS;
    const middleware = [requestId(), errorHandler(), identify];
    open = await serve(usageRoutes({ pool: db.pool, defaultTokensPerDay: undefined, now }), middleware);
    budgeted = await serve(usageRoutes({ pool: db.pool, defaultTokensPerDay: 1000, now }), middleware);
  });
  after(async () => {
    await open?.close();
    await budgeted?.close();
    await db?.close();
    await scratch?.drop();
    await rm(dir, { recursive: true, force: true });
  });

  function get(app: Served, query: string, owner?: string, tokensPerDay?: number): Promise<Response> {
    const headers = new Headers();
    if (owner !== undefined) headers.set(OWNER_HEADER, owner);
    if (tokensPerDay !== undefined) headers.set(TOKENS_HEADER, String(tokensPerDay));
    return fetch(`${app.url}/v1/usage${query}`, { headers });
  }

  async function usage(app: Served, query: string, owner: string, tokensPerDay?: number): Promise<UsageBody> {
    const res = await get(app, query, owner, tokensPerDay);
    assert.equal(res.status, 200, await res.clone().text());
    return (await res.json()) as UsageBody;
  }

  async function problem(res: Response): Promise<Record<string, unknown>> {
    assert.equal(res.headers.get('content-type'), 'application/problem+json; charset=utf-8');
    return { status: res.status, ...((await res.json()) as Record<string, unknown>) };
  }

  /** A new identity with `tokens` input tokens recorded on each of `days`. */
  async function caller(days: readonly string[], tokens = 10): Promise<string> {
    const identity = `key:${randomUUID()}`;
    for (const day of days) {
      const turn = { identity, agent: 'default', day, tokensIn: tokens, tokensOut: 0, estimated: false };
      await settleUsage(db.pool, turn, undefined);
    }
    return identity;
  }

  const days = (body: UsageBody) => body.usage.map((row) => row.day);

  it('answers 401 with WWW-Authenticate: Bearer when no identity was established', async () => {
    const res = await get(open, '');
    assert.equal(res.headers.get('www-authenticate'), 'Bearer');
    assert.equal((await problem(res))['code'], 'UNAUTHORIZED');
  });

  it("lists the caller's last 30 days up to today by the injected clock, and no budget without one", async () => {
    const owner = await caller(['2026-02-13', '2026-02-14', TODAY, '2026-03-16']);
    const body = await usage(open, '', owner);
    assert.deepEqual([body.from, body.to, body.budget], ['2026-02-14', TODAY, null]);
    assert.deepEqual(days(body), ['2026-02-14', TODAY]);
    assert.deepEqual(body.usage[0], {
      day: '2026-02-14',
      agent: 'default',
      tokensIn: 10,
      tokensOut: 0,
      requests: 1,
      estimatedRequests: 0,
    });
  });

  it('shows each caller its own rows only', async () => {
    const mine = await caller([TODAY], 7);
    await caller([TODAY], 1000);
    const body = await usage(open, '', mine);
    assert.deepEqual(
      body.usage.map((row) => row.tokensIn),
      [7],
    );
    assert.deepEqual((await usage(open, '', `key:${randomUUID()}`)).usage, []);
  });

  it('lists from..to inclusive, and the 30 days up to `to` when only `to` is given', async () => {
    const owner = await caller(['2025-12-31', '2026-01-01', '2026-01-15', '2026-01-31', '2026-02-01']);
    const both = await usage(open, '?from=2026-01-01&to=2026-01-31', owner);
    assert.deepEqual(days(both), ['2026-01-01', '2026-01-15', '2026-01-31']);
    const toOnly = await usage(open, '?to=2026-01-31', owner);
    assert.deepEqual([toOnly.from, toOnly.to], ['2026-01-02', '2026-01-31']);
    const fromOnly = await usage(open, '?from=2026-02-01', owner);
    assert.deepEqual([fromOnly.from, fromOnly.to, days(fromOnly)], ['2026-02-01', TODAY, ['2026-02-01']]);
    const oneDay = await usage(open, '?from=2026-01-15&to=2026-01-15', owner);
    assert.deepEqual(days(oneDay), ['2026-01-15']);
  });

  it('answers 400 BAD_REQUEST for `from` after `to` and for a range over 366 days', async () => {
    const owner = `key:${randomUUID()}`;
    const detail = 'from must not be after to, and the range at most 366 days';
    for (const query of ['?from=2026-03-02&to=2026-03-01', '?from=2026-03-16', '?from=2024-01-01&to=2025-01-01']) {
      const { requestId, ...body } = await problem(await get(open, query, owner));
      assert.equal(typeof requestId, 'string', query);
      assert.deepEqual(
        body,
        { type: 'about:blank', title: 'Bad request', status: 400, code: 'BAD_REQUEST', detail },
        query,
      );
    }
    // 2024 was a leap year: all of it is 366 days, the most one request may ask for.
    assert.equal((await usage(open, '?from=2024-01-01&to=2024-12-31', owner)).usage.length, 0);
  });

  it('answers 400 VALIDATION_FAILED naming the parameter for a day that is not a date from 2000 on', async () => {
    const owner = `key:${randomUUID()}`;
    const cases = [
      ['?from=2026-02-30', 'from'],
      ['?to=yesterday', 'to'],
      ['?from=1999-12-31', 'from'],
      ['?to=2026-03-15T00:00:00Z', 'to'],
      ['?from=', 'from'],
    ] as const;
    for (const [query, path] of cases) {
      const body = await problem(await get(open, query, owner));
      assert.equal(body['code'], 'VALIDATION_FAILED', query);
      // One day can break more than one rule; every issue names that day's parameter.
      const paths = new Set((body['issues'] as Array<{ path: string }>).map((issue) => issue.path));
      assert.deepEqual([...paths], [path], query);
    }
  });

  it('answers 400 VALIDATION_FAILED for a parameter it does not know, saying the query is at fault', async () => {
    const body = await problem(await get(open, '?day=2026-03-15', `key:${randomUUID()}`));
    assert.equal(body['code'], 'VALIDATION_FAILED');
    assert.deepEqual(
      [body['title'], body['detail']],
      ['Request failed validation', 'The query parameters are invalid'],
    );
    assert.deepEqual(
      (body['issues'] as Array<{ code: string }>).map((issue) => issue.code),
      ['unrecognized_keys'],
    );
  });

  it("reports the server budget with today's usage and live reservations, not yesterday's", async () => {
    const owner = await caller(['2026-03-14', TODAY], 40);
    const reserved = await reserveBudget(db.pool, {
      identity: owner,
      day: TODAY,
      tokens: 25,
      budget: 1000,
      ttlMs: 60_000,
    });
    assert.ok(reserved.ok);
    const body = await usage(budgeted, '?from=2026-01-01&to=2026-01-02', owner);
    assert.deepEqual(body.budget, { tokensPerDay: 1000, usedToday: 40 + 25, day: TODAY });
  });

  it("reports the caller's own daily tokens over the server's, and where the server sets none", async () => {
    const owner = await caller([TODAY], 5);
    assert.deepEqual((await usage(budgeted, '', owner, 50)).budget, { tokensPerDay: 50, usedToday: 5, day: TODAY });
    assert.deepEqual((await usage(open, '', owner, 50)).budget, { tokensPerDay: 50, usedToday: 5, day: TODAY });
  });
});
