// Measures the cost of one rate-limit decision in each store, and of one turn's budget check
// (reserve before the model call, settle after), and prints µs per decision or per turn.
//
//   npx node scripts/bench-limits.ts                      # memory store and PGlite
//   BENCH_DATABASE_URL=postgres://… npx node scripts/bench-limits.ts   # also real PostgreSQL
//
// The PostgreSQL run works in a throwaway schema (lim_bench_<random>) that it drops at the end.
import { randomBytes } from 'node:crypto';
import { PGlite } from '@electric-sql/pglite';
import { createPgConfig } from '@electric-sql/pglite/node-postgres';
import pg from 'pg';
import { migrate } from '../lib/db/migrate.ts';
import type { Identity } from '../lib/http/types.ts';
import { type Budgets, createBudgets } from '../lib/limits/budget.ts';
import { createMemoryStore } from '../lib/limits/memory-store.ts';
import { createPostgresStore } from '../lib/limits/postgres-store.ts';
import { type BucketStore, bucketPolicy } from '../lib/limits/token-bucket.ts';
import { createLogger } from '../lib/log.ts';

const policy = bucketPolicy(600, 20);
const KEYS = 10_000;
const keys = Array.from({ length: KEYS }, (_, i) => `key:${i}`);
const TABLE_SQL = `CREATE UNLOGGED TABLE rate_limit_buckets (key text PRIMARY KEY, tokens double precision NOT NULL, updated_at timestamptz NOT NULL);
CREATE INDEX rate_limit_buckets_updated ON rate_limit_buckets (updated_at)`;

function report(label: string, decisions: number, elapsedMs: number): void {
  const us = (elapsedMs * 1000) / decisions;
  console.log(
    `${label.padEnd(44)} ${us.toFixed(2).padStart(9)} µs/decision  (${Math.round(decisions / (elapsedMs / 1000))}/s, n=${decisions})`,
  );
}

function benchMemory(): void {
  const store = createMemoryStore();
  const n = 2_000_000;
  for (let i = 0; i < 100_000; i++) store.takeSync(keys[i % KEYS] ?? '', policy); // warm up the JIT
  const start = performance.now();
  for (let i = 0; i < n; i++) store.takeSync(keys[i % KEYS] ?? '', policy);
  report('memory takeSync (10k keys)', n, performance.now() - start);
}

async function benchMemoryAsync(): Promise<void> {
  const store = createMemoryStore();
  const n = 1_000_000;
  const start = performance.now();
  for (let i = 0; i < n; i++) await store.take(keys[i % KEYS] ?? '', policy);
  report('memory take() awaited (10k keys)', n, performance.now() - start);
}

function benchMemoryFootprint(): void {
  globalThis.gc?.();
  const before = process.memoryUsage().heapUsed;
  const store = createMemoryStore({ maxKeys: 100_000 });
  for (let i = 0; i < 100_000; i++) store.takeSync(`203.0.113.${i}:${i}`, policy);
  globalThis.gc?.();
  const mb = (process.memoryUsage().heapUsed - before) / 1024 / 1024;
  // Read the store after measuring so it cannot be collected before the measurement.
  console.log(
    `${`memory store heap at ${store.size()} keys`.padEnd(44)} ${mb.toFixed(1).padStart(9)} MB${globalThis.gc ? '' : ' (approximate: run with --expose-gc)'}`,
  );
}

/** Runs n decisions with `inFlight` concurrent callers; `hotKey` sends them all to one bucket (mostly refusals). */
async function benchStore(
  label: string,
  store: BucketStore,
  n: number,
  inFlight: number,
  hotKey?: string,
): Promise<void> {
  for (let i = 0; i < 200; i++) await store.take(keys[i % KEYS] ?? '', policy); // prepare the statement, warm the pool
  let next = 0;
  async function worker(): Promise<void> {
    while (next < n) {
      const i = next++;
      await store.take(hotKey ?? keys[i % KEYS] ?? '', policy);
    }
  }
  const start = performance.now();
  await Promise.all(Array.from({ length: inFlight }, worker));
  report(`${label} (${inFlight} in flight)`, n, performance.now() - start);
}

async function benchPostgres(url: string): Promise<void> {
  const schema = `lim_bench_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Pool({ connectionString: url, max: 1 });
  await admin.query(`CREATE SCHEMA ${schema}`);
  const pool = new pg.Pool({ connectionString: url, max: 10, options: `-c search_path=${schema}` });
  pool.on('error', () => {});
  try {
    await pool.query(TABLE_SQL);
    const store = createPostgresStore(pool, { sweepIntervalMs: 0 });
    await benchStore('postgres take()', store, 5_000, 1);
    await benchStore('postgres take()', store, 20_000, 10);
    await benchStore('postgres take() one hot key', store, 20_000, 10, 'hot');
    await store.close();
  } finally {
    await pool.end();
    await admin.query(`DROP SCHEMA ${schema} CASCADE`);
    await admin.end();
  }
}

async function benchPglite(): Promise<void> {
  const db = await PGlite.create();
  const pool = new pg.Pool(createPgConfig(db));
  try {
    await pool.query(TABLE_SQL);
    const store = createPostgresStore(pool, { sweepIntervalMs: 0 });
    await benchStore('pglite take()', store, 5_000, 1);
    await store.close();
  } finally {
    await pool.end();
    await db.close();
  }
}

/** A turn's budget work: reserve its worst case (1,000 tokens), then settle with what it used. */
async function benchBudget(label: string, budgets: Budgets, n: number, inFlight: number, hot = false): Promise<void> {
  const identities: Identity[] = Array.from({ length: 1000 }, (_, i) => ({ id: `key:bench-${i}`, kind: 'key' }));
  async function turn(i: number): Promise<void> {
    const identity = identities[hot ? 0 : i % identities.length] as Identity;
    const hold = await budgets.reserve(identity, 1000);
    await budgets.settle(hold, { agent: 'default', tokensIn: 400, tokensOut: 600, estimated: false });
  }
  for (let i = 0; i < 100; i++) await turn(i); // warm the pool and the plans
  let next = 0;
  async function worker(): Promise<void> {
    while (next < n) await turn(next++);
  }
  const start = performance.now();
  await Promise.all(Array.from({ length: inFlight }, worker));
  const ms = performance.now() - start;
  const us = (ms * 1000) / n;
  console.log(
    `${`${label} (${inFlight} in flight)`.padEnd(44)} ${us.toFixed(2).padStart(9)} µs/turn      (${Math.round(n / (ms / 1000))}/s, n=${n})`,
  );
}

function budgetsOn(pool: pg.Pool, tokensPerDay: number | undefined): Budgets {
  const log = createLogger({ level: 'silent' });
  return createBudgets({ pool, log, defaultTokensPerDay: tokensPerDay, reservationTtlMs: 600_000 });
}

async function benchBudgets(pool: pg.Pool, engine: string, n: number): Promise<void> {
  await migrate(pool);
  // Unlimited: nothing to reserve, only the usage row after the turn.
  await benchBudget(`${engine} no budget: settle only`, budgetsOn(pool, undefined), n, 1);
  const budgets = budgetsOn(pool, Number.MAX_SAFE_INTEGER);
  await benchBudget(`${engine} budget: reserve + settle`, budgets, n, 1);
  if (engine === 'postgres') {
    await benchBudget(`${engine} budget: reserve + settle`, budgets, 4 * n, 10);
    await benchBudget(`${engine} budget: one identity`, budgets, 2 * n, 10, true);
  }
}

async function benchBudgetsPglite(): Promise<void> {
  const db = await PGlite.create();
  const pool = new pg.Pool(createPgConfig(db));
  try {
    await benchBudgets(pool, 'pglite', 2_000);
  } finally {
    await pool.end();
    await db.close();
  }
}

async function benchBudgetsPostgres(url: string): Promise<void> {
  const schema = `lim_bench_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Pool({ connectionString: url, max: 1 });
  await admin.query(`CREATE SCHEMA ${schema}`);
  const pool = new pg.Pool({ connectionString: url, max: 10, options: `-c search_path=${schema}` });
  pool.on('error', () => {});
  try {
    await benchBudgets(pool, 'postgres', 5_000);
  } finally {
    await pool.end();
    await admin.query(`DROP SCHEMA ${schema} CASCADE`);
    await admin.end();
  }
}

benchMemory();
await benchMemoryAsync();
benchMemoryFootprint();
await benchPglite();
const url = process.env.BENCH_DATABASE_URL ?? process.env.TEST_DATABASE_URL;
if (url) await benchPostgres(url);
else console.log('postgres: skipped (set BENCH_DATABASE_URL)');
await benchBudgetsPglite();
if (url) await benchBudgetsPostgres(url);
