import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createMemoryStore } from '../../lib/limits/memory-store.ts';
import { bucketPolicy } from '../../lib/limits/token-bucket.ts';

/** A hand-driven clock: tests move time, they never sleep through it. */
function manualClock(startMs = 0): { now: () => number; advance: (ms: number) => void } {
  let nowMs = startMs;
  return { now: () => nowMs, advance: (ms) => void (nowMs += ms) };
}

const twoPerSecond = { capacity: 2, refillPerSecond: 1 };

describe('createMemoryStore()', () => {
  it('memoryStore.takeSync() refuses after the burst with the whole seconds until a token is back', () => {
    const clock = manualClock();
    const store = createMemoryStore({ now: clock.now });
    const policy = bucketPolicy(1, 3); // 3 at once, then 1 per minute
    const decisions = [1, 2, 3, 4].map(() => store.takeSync('k', policy));
    assert.deepEqual(
      decisions.map((d) => d.allowed),
      [true, true, true, false],
    );
    assert.deepEqual(
      decisions.map((d) => d.remaining),
      [2, 1, 0, 0],
    );
    assert.equal(decisions[3]?.retryAfterSeconds, 60);
    clock.advance(20_500);
    assert.equal(store.takeSync('k', policy).retryAfterSeconds, 40); // 39.5 s rounds up
  });

  it('memoryStore.takeSync() refills with the injected clock', () => {
    const clock = manualClock();
    const store = createMemoryStore({ now: clock.now });
    store.takeSync('k', twoPerSecond);
    store.takeSync('k', twoPerSecond);
    assert.equal(store.takeSync('k', twoPerSecond).allowed, false);
    clock.advance(1000);
    assert.deepEqual(store.takeSync('k', twoPerSecond), {
      allowed: true,
      remaining: 0,
      resetSeconds: 2,
      retryAfterSeconds: 0,
    });
  });

  it('memoryStore.takeSync() keeps one bucket per key', () => {
    const store = createMemoryStore({ now: () => 0 });
    store.takeSync('a', twoPerSecond);
    store.takeSync('a', twoPerSecond);
    assert.equal(store.takeSync('a', twoPerSecond).allowed, false);
    assert.equal(store.takeSync('b', twoPerSecond).remaining, 1);
    assert.equal(store.size(), 2);
  });

  it('memoryStore.take() resolves to the same decision as takeSync()', async () => {
    const store = createMemoryStore({ now: () => 0 });
    assert.deepEqual(await store.take('k', twoPerSecond), {
      allowed: true,
      remaining: 1,
      resetSeconds: 1,
      retryAfterSeconds: 0,
    });
    await store.close();
    assert.equal(store.size(), 0);
  });

  it('memoryStore evicts a refilled bucket to admit a new key when full', () => {
    const clock = manualClock();
    const store = createMemoryStore({ maxKeys: 2, now: clock.now });
    store.takeSync('a', twoPerSecond); // full again at 1 s
    store.takeSync('b', twoPerSecond);
    store.takeSync('b', twoPerSecond); // full again at 2 s
    clock.advance(1500);
    assert.equal(store.takeSync('c', twoPerSecond).allowed, true);
    assert.equal(store.size(), 2);
    // b was partly spent and is still: 1.5 tokens, one taken, none left.
    assert.deepEqual(store.takeSync('b', twoPerSecond), {
      allowed: true,
      remaining: 0,
      resetSeconds: 2,
      retryAfterSeconds: 0,
    });
  });

  it('memoryStore finds a refilled bucket behind a spent one at the head', () => {
    const clock = manualClock();
    const store = createMemoryStore({ maxKeys: 2, now: clock.now });
    const slow = bucketPolicy(1, 2); // a spent bucket takes a minute per token
    store.takeSync('spent', slow);
    store.takeSync('spent', slow); // least recently used, empty for two minutes
    store.takeSync('light', twoPerSecond); // full again at 1 s
    clock.advance(1000);
    assert.equal(store.takeSync('new', twoPerSecond).allowed, true);
    assert.equal(store.takeSync('spent', slow).allowed, false, 'the spent bucket must not have been reset');
  });

  it('memoryStore keeps a bucket used again within a second in place and still evicts refilled ones', () => {
    const clock = manualClock();
    const store = createMemoryStore({ maxKeys: 2, now: clock.now });
    store.takeSync('busy', twoPerSecond); // inserted first: the head
    store.takeSync('idle', twoPerSecond);
    clock.advance(1100);
    store.takeSync('busy', twoPerSecond); // used a second later: moves behind 'idle'
    clock.advance(100);
    assert.equal(store.takeSync('busy', twoPerSecond).remaining, 0, 'used again at once: counted, not moved');
    clock.advance(1000); // both have refilled
    assert.equal(store.takeSync('new', twoPerSecond).allowed, true);
    assert.equal(store.size(), 2);
    assert.equal(store.takeSync('busy', twoPerSecond).allowed, true);
    assert.equal(store.size(), 2);
  });

  it('memoryStore refuses a new key rather than reset a partly spent bucket when full', () => {
    const clock = manualClock();
    const store = createMemoryStore({ maxKeys: 2, now: clock.now });
    store.takeSync('a', twoPerSecond); // full again at 1 s
    store.takeSync('b', twoPerSecond); // full again at 1 s
    clock.advance(400);
    assert.deepEqual(store.takeSync('c', twoPerSecond), {
      allowed: false,
      remaining: 0,
      resetSeconds: 1,
      retryAfterSeconds: 1,
    });
    assert.equal(store.size(), 2);
    // Both buckets kept their spent token: 1.4 left each, so one more then none.
    assert.equal(store.takeSync('a', twoPerSecond).remaining, 0);
    assert.equal(store.takeSync('b', twoPerSecond).remaining, 0);
  });

  it('memoryStore admits the refused new key once a bucket has refilled', () => {
    const clock = manualClock();
    const store = createMemoryStore({ maxKeys: 1, minSweepIntervalMs: 0, now: clock.now });
    const slow = bucketPolicy(6, 1); // one token per 10 s
    store.takeSync('a', slow);
    clock.advance(2000);
    const refused = store.takeSync('b', slow);
    assert.equal(refused.allowed, false);
    assert.equal(refused.retryAfterSeconds, 8);
    clock.advance(8000);
    assert.equal(store.takeSync('b', slow).allowed, true);
    assert.equal(store.size(), 1);
  });

  it('createMemoryStore() rejects a maxKeys that is not a positive integer', () => {
    assert.throws(() => createMemoryStore({ maxKeys: 0 }), RangeError);
  });
});
