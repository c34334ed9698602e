// GET /v1/usage: the caller's own token usage per day and agent, and today's budget.
import type pg from 'pg';
import * as z from 'zod';
import { usageOf, usedOn } from '../db/usage.ts';
import { AppError } from '../errors.ts';
import { queryParams } from '../http/app.ts';
import type { Route } from '../http/router.ts';
import type { Context } from '../http/types.ts';
import { utcDay } from '../limits/budget.ts';
import { validationError } from './native.ts';
import { identityOf } from './route-context.ts';

export interface UsageRoutesOptions {
  pool: pg.Pool;
  /** Tokens per UTC day for identities without a policy of their own; undefined = unlimited. */
  defaultTokensPerDay: number | undefined;
  now?: () => number;
}

const DAY_MS = 86_400_000;
const MAX_DAYS = 366;
// Dates PostgreSQL and JavaScript read the same way, from 2000 on: nothing before can hold usage.
const Day = z.iso.date().refine((d) => d >= '2000-01-01', 'must be 2000-01-01 or later');
const Query = z.strictObject({ from: Day.optional(), to: Day.optional() });

/** The one route; `from` and `to` are UTC days (YYYY-MM-DD), by default the last 30 days. */
export function usageRoutes(options: UsageRoutesOptions): Route[] {
  const { pool } = options;
  const now = options.now ?? Date.now;
  return [
    {
      method: 'GET',
      pattern: '/v1/usage',
      async handler(ctx: Context) {
        const identity = identityOf(ctx);
        const parsed = Query.safeParse(Object.fromEntries(queryParams(ctx)));
        if (!parsed.success) throw validationError(parsed.error, 'query');
        const today = utcDay(now());
        const to = parsed.data.to ?? today;
        const from = parsed.data.from ?? utcDay(Date.parse(to) - 29 * DAY_MS);
        const days = (Date.parse(to) - Date.parse(from)) / DAY_MS + 1;
        if (days < 1 || days > MAX_DAYS) {
          throw new AppError('BAD_REQUEST', {
            detail: `from must not be after to, and the range at most ${MAX_DAYS} days`,
          });
        }
        // Scoped by the caller's identity in SQL: a key or JWT never sees another identity's usage.
        const usage = await usageOf(pool, identity.id, from, to);
        const tokensPerDay = identity.policy?.tokensPerDay ?? options.defaultTokensPerDay;
        const budget =
          tokensPerDay === undefined
            ? null
            : { tokensPerDay, usedToday: await usedOn(pool, identity.id, today), day: today };
        return { kind: 'json', status: 200, body: { from, to, usage, budget } };
      },
    },
  ];
}
