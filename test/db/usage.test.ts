// Token usage and budget reservations against a real database: what is admitted, what counts, what
// expires, and what each identity reads back.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { before, describe, it } from 'node:test';
import { migrate } from '../../lib/db/migrate.ts';
import { releaseReservation, reserveBudget, settleUsage, type TurnUsage, usageOf, usedOn } from '../../lib/db/usage.ts';
import { ENGINES, engineDatabase } from '../support/engines.ts';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const DAY = '2026-03-15';
const TTL_MS = 60_000;

for (const engine of ENGINES) {
  describe(`usage repository on ${engine.label}`, { skip: engine.skip }, () => {
    const db = engineDatabase(engine, 'usage-test-');
    let n = 0;
    // Every test has identities of its own, so no test sees another's rows.
    const freshIdentity = (): string => `key:usage-${++n}`;

    function turn(identity: string, fields: Partial<TurnUsage> = {}): TurnUsage {
      return { identity, agent: 'default', day: DAY, tokensIn: 0, tokensOut: 0, estimated: false, ...fields };
    }

    function reserve(identity: string, tokens: number, budget: number, day = DAY, ttlMs = TTL_MS) {
      return reserveBudget(db.pool, { identity, day, tokens, budget, ttlMs });
    }

    /** Inserts a reservation behind the repository's back, expired `agoSeconds` ago (negative: still live). */
    async function insertReservation(identity: string, tokens: number, agoSeconds: number, day = DAY) {
      const id = randomUUID();
      await db.pool.query(
        `INSERT INTO budget_reservations (id, identity, day, tokens, expires_at)
         VALUES ($1, $2, $3, $4, now() - make_interval(secs => $5))`,
        [id, identity, day, tokens, agoSeconds],
      );
      return id;
    }

    async function reservationIds(identity: string): Promise<string[]> {
      const { rows } = await db.pool.query<{ id: string }>(
        'SELECT id FROM budget_reservations WHERE identity = $1 ORDER BY id',
        [identity],
      );
      return rows.map((r) => r.id);
    }

    before(() => migrate(db.pool));

    it('reserveBudget() admits up to the budget exactly, then refuses with what is used', async () => {
      const who = freshIdentity();
      const first = await reserve(who, 40, 100);
      const second = await reserve(who, 60, 100);
      assert.ok(first.ok && second.ok);
      assert.match(first.id, UUID);
      assert.notEqual(first.id, second.id);
      assert.deepEqual(await reserve(who, 1, 100), { ok: false, used: 100 });
      assert.deepEqual(await reservationIds(who), [first.id, second.id].sort());
    });

    it('reserveBudget() refuses a turn larger than the whole budget and stores nothing', async () => {
      const who = freshIdentity();
      assert.deepEqual(await reserve(who, 101, 100), { ok: false, used: 0 });
      assert.deepEqual(await reservationIds(who), []);
    });

    it("reserveBudget() counts the day's recorded usage of every agent plus live reservations", async () => {
      const who = freshIdentity();
      await settleUsage(db.pool, turn(who, { agent: 'alpha', tokensIn: 10, tokensOut: 20 }), undefined);
      await settleUsage(db.pool, turn(who, { agent: 'beta', tokensIn: 5, tokensOut: 5 }), undefined);
      assert.equal((await reserve(who, 30, 100)).ok, true);
      assert.deepEqual(await reserve(who, 31, 100), { ok: false, used: 70 });
    });

    it("reserveBudget() counts neither another day's usage nor another identity's", async () => {
      const who = freshIdentity();
      await settleUsage(db.pool, turn(who, { day: '2026-03-14', tokensIn: 1000 }), undefined);
      await settleUsage(db.pool, turn(freshIdentity(), { tokensIn: 1000 }), undefined);
      await reserve(freshIdentity(), 100, 100);
      assert.equal((await reserve(who, 100, 100)).ok, true);
    });

    it('reserveBudget() deletes and ignores the expired reservations of its identity and day', async () => {
      const who = freshIdentity();
      const other = freshIdentity();
      const expired = await insertReservation(who, 100, 1);
      const otherDay = await insertReservation(who, 100, 1, '2026-03-14');
      const otherIdentity = await insertReservation(other, 100, 1);
      const reserved = await reserve(who, 100, 100);
      assert.ok(reserved.ok);
      const left = await reservationIds(who);
      assert.equal(left.includes(expired), false, 'the expired reservation is gone');
      assert.deepEqual(left, [reserved.id, otherDay].sort(), 'another day is left alone');
      assert.deepEqual(await reservationIds(other), [otherIdentity], 'another identity is left alone');
    });

    it('reserveBudget() counts a reservation that has not expired yet', async () => {
      const who = freshIdentity();
      await insertReservation(who, 60, -30);
      assert.deepEqual(await reserve(who, 41, 100), { ok: false, used: 60 });
    });

    it('reserveBudget() sets a reservation to expire ttlMs milliseconds from now', async () => {
      const who = freshIdentity();
      const reserved = await reserve(who, 1, 100, DAY, 10_500);
      assert.ok(reserved.ok);
      const { rows } = await db.pool.query<{ seconds: number }>(
        'SELECT extract(epoch FROM expires_at - now())::float8 AS seconds FROM budget_reservations WHERE id = $1',
        [reserved.id],
      );
      const seconds = rows[0]?.seconds ?? Number.NaN;
      assert.ok(seconds > 0 && seconds <= 10.5, `expires in ${seconds} s`);
    });

    it('reserveBudget() admits no more than the budget holds when 20 reservers race', async () => {
      const who = freshIdentity();
      const results = await Promise.all(Array.from({ length: 20 }, () => reserve(who, 10, 55)));
      assert.equal(results.filter((r) => r.ok).length, 5);
      assert.equal(await usedOn(db.pool, who, DAY), 50);
    });

    it('settleUsage() records a turn as one request and adds later turns of the same day and agent', async () => {
      const who = freshIdentity();
      await settleUsage(db.pool, turn(who, { tokensIn: 3, tokensOut: 4 }), undefined);
      await settleUsage(db.pool, turn(who, { tokensIn: 10, tokensOut: 20, estimated: true }), undefined);
      assert.deepEqual(await usageOf(db.pool, who, DAY, DAY), [
        { day: DAY, agent: 'default', tokensIn: 13, tokensOut: 24, requests: 2, estimatedRequests: 1 },
      ]);
    });

    it("settleUsage() deletes the turn's own reservation and no other", async () => {
      const who = freshIdentity();
      const mine = await reserve(who, 30, 100);
      const other = await reserve(who, 20, 100);
      assert.ok(mine.ok && other.ok);
      await settleUsage(db.pool, turn(who, { tokensIn: 7, tokensOut: 8 }), mine.id);
      assert.deepEqual(await reservationIds(who), [other.id]);
      assert.equal(await usedOn(db.pool, who, DAY), 15 + 20);
    });

    it('settleUsage() without a reservation records the usage and deletes nothing', async () => {
      const who = freshIdentity();
      const held = await reserve(who, 30, 100);
      assert.ok(held.ok);
      await settleUsage(db.pool, turn(who, { tokensOut: 5 }), undefined);
      assert.deepEqual(await reservationIds(who), [held.id]);
      assert.equal((await usageOf(db.pool, who, DAY, DAY))[0]?.tokensOut, 5);
    });

    it('settleUsage() records the usage even when its reservation has already gone', async () => {
      const who = freshIdentity();
      await settleUsage(db.pool, turn(who, { tokensIn: 9 }), randomUUID());
      assert.equal(await usedOn(db.pool, who, DAY), 9);
    });

    it('releaseReservation() deletes that reservation alone, and an unknown id is harmless', async () => {
      const who = freshIdentity();
      const a = await reserve(who, 10, 100);
      const b = await reserve(who, 10, 100);
      assert.ok(a.ok && b.ok);
      await releaseReservation(db.pool, a.id);
      await releaseReservation(db.pool, randomUUID());
      assert.deepEqual(await reservationIds(who), [b.id]);
    });

    it('usageOf() lists from..to inclusive, oldest day first then by agent, for the identity alone', async () => {
      const who = freshIdentity();
      for (const [day, agent] of [
        ['2025-12-31', 'alpha'],
        ['2026-01-01', 'beta'],
        ['2026-01-01', 'alpha'],
        ['2026-01-02', 'alpha'],
        ['2026-01-03', 'alpha'],
      ] as const) {
        await settleUsage(db.pool, turn(who, { day, agent, tokensIn: 1 }), undefined);
      }
      await settleUsage(db.pool, turn(freshIdentity(), { day: '2026-01-02', tokensIn: 1 }), undefined);
      const rows = await usageOf(db.pool, who, '2026-01-01', '2026-01-02');
      assert.deepEqual(
        rows.map((r) => `${r.day} ${r.agent}`),
        ['2026-01-01 alpha', '2026-01-01 beta', '2026-01-02 alpha'],
      );
    });

    it('usageOf() answers token counts past 32 bits as exact numbers', async () => {
      const who = freshIdentity();
      await settleUsage(db.pool, turn(who, { tokensIn: 5_000_000_000, tokensOut: 2 ** 40 }), undefined);
      const [row] = await usageOf(db.pool, who, DAY, DAY);
      assert.deepEqual(row, {
        day: DAY,
        agent: 'default',
        tokensIn: 5_000_000_000,
        tokensOut: 2 ** 40,
        requests: 1,
        estimatedRequests: 0,
      });
    });

    it('usageOf() answers an empty list for an identity that used nothing', async () => {
      assert.deepEqual(await usageOf(db.pool, freshIdentity(), '2000-01-01', '2100-01-01'), []);
    });

    it("usedOn() adds the day's usage to its live reservations and ignores expired ones, kept", async () => {
      const who = freshIdentity();
      await settleUsage(db.pool, turn(who, { tokensIn: 4, tokensOut: 6 }), undefined);
      await settleUsage(db.pool, turn(who, { day: '2026-03-16', tokensIn: 1000 }), undefined);
      await insertReservation(who, 25, -30);
      const expired = await insertReservation(who, 500, 1);
      assert.equal(await usedOn(db.pool, who, DAY), 10 + 25);
      assert.ok((await reservationIds(who)).includes(expired));
    });

    it('usedOn() answers 0 for an identity with neither usage nor reservations', async () => {
      assert.equal(await usedOn(db.pool, freshIdentity(), DAY), 0);
    });
  });
}
