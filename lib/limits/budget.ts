// Daily token budgets per identity (OWASP LLM10, unbounded consumption): a turn reserves its worst
// case before the model is called and settles with what it really used after, both in PostgreSQL,
// so every instance shares one budget. Every turn is accounted for, with or without a budget.
import type pg from 'pg';
import { releaseReservation, reserveBudget, settleUsage } from '../db/usage.ts';
import { AppError } from '../errors.ts';
import type { Identity } from '../http/types.ts';
import type { Logger } from '../log.ts';

export interface BudgetOptions {
  pool: pg.Pool;
  log: Logger;
  /** Tokens per UTC day for an identity without a policy of its own; undefined = unlimited. */
  defaultTokensPerDay: number | undefined;
  /** How long an unsettled reservation counts: past every deadline a turn can have. */
  reservationTtlMs: number;
  now?: () => number;
  /** Called when a turn is refused for its budget (metrics). */
  onRejected?: () => void;
}

/** What a turn holds between reserve and settle. */
export interface Hold {
  readonly identity: string;
  /** The UTC day the turn is counted on. */
  readonly day: string;
  readonly reservationId: string | undefined;
}

/** What a turn used, for the settlement. */
export interface Spent {
  agent: string;
  tokensIn: number;
  tokensOut: number;
  estimated: boolean;
}

export interface Budgets {
  /** Reserves `tokens` for today; rejects with BUDGET_EXCEEDED (429, Retry-After until midnight UTC). */
  reserve(identity: Identity, tokens: number): Promise<Hold>;
  /** Records what the turn used and frees its reservation. Never throws: a failure is logged. */
  settle(hold: Hold, spent: Spent): Promise<void>;
  /** Frees a reservation whose turn never reached the model. Never throws. */
  release(hold: Hold): Promise<void>;
}

/** About four characters a token for English text: the estimate when the upstream reports none. */
export function estimateTokens(chars: number): number {
  return Math.ceil(chars / 4);
}

/** The UTC day of a clock reading, as YYYY-MM-DD. */
export function utcDay(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}

/** Whole seconds from `ms` to the next midnight UTC (at least 1). */
export function secondsToMidnight(ms: number): number {
  const next = new Date(ms);
  next.setUTCHours(24, 0, 0, 0);
  return Math.max(1, Math.ceil((next.getTime() - ms) / 1000));
}

/** Builds the budget keeper over the database. */
export function createBudgets(options: BudgetOptions): Budgets {
  const { pool, log } = options;
  const now = options.now ?? Date.now;

  async function reserve(identity: Identity, tokens: number): Promise<Hold> {
    const nowMs = now();
    const day = utcDay(nowMs);
    const budget = identity.policy?.tokensPerDay ?? options.defaultTokensPerDay;
    if (budget === undefined) return { identity: identity.id, day, reservationId: undefined };
    const ttlMs = options.reservationTtlMs;
    const reserved = await reserveBudget(pool, { identity: identity.id, day, tokens, budget, ttlMs });
    if (reserved.ok) return { identity: identity.id, day, reservationId: reserved.id };
    options.onRejected?.();
    const retryAfter = String(secondsToMidnight(nowMs));
    throw new AppError('BUDGET_EXCEEDED', {
      detail: `The daily token budget (${budget}) would be exceeded; it renews at midnight UTC`,
      headers: { 'Retry-After': retryAfter },
    });
  }

  async function settle(hold: Hold, spent: Spent): Promise<void> {
    try {
      await settleUsage(pool, { identity: hold.identity, day: hold.day, ...spent }, hold.reservationId);
    } catch (err) {
      // The reservation expires on its own; only this turn's accounting is lost.
      log.error('could not record token usage', { err, identity: hold.identity });
    }
  }

  async function release(hold: Hold): Promise<void> {
    if (hold.reservationId === undefined) return;
    try {
      await releaseReservation(pool, hold.reservationId);
    } catch (err) {
      log.warn('could not release a budget reservation; it expires on its own', { err });
    }
  }

  return { reserve, settle, release };
}
