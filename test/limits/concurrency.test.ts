import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createConcurrencyLimiter } from '../../lib/limits/concurrency.ts';

describe('createConcurrencyLimiter()', () => {
  it('concurrencyLimiter.acquire() refuses a key at its cap until a lease is released', () => {
    const limiter = createConcurrencyLimiter(2);
    const first = limiter.acquire('k');
    assert.ok(first);
    assert.ok(limiter.acquire('k'));
    assert.equal(limiter.acquire('k'), undefined);
    first.release();
    assert.ok(limiter.acquire('k'));
    assert.equal(limiter.inUse('k'), 2);
  });

  it('concurrencyLimiter counts each key separately', () => {
    const limiter = createConcurrencyLimiter(1);
    assert.ok(limiter.acquire('a'));
    assert.ok(limiter.acquire('b'));
    assert.equal(limiter.acquire('a'), undefined);
    assert.equal(limiter.inUse('a'), 1);
    assert.equal(limiter.inUse(), 2);
  });

  it('lease.release() twice frees only one slot', () => {
    const limiter = createConcurrencyLimiter(2);
    const lease = limiter.acquire('k');
    limiter.acquire('k');
    lease?.release();
    lease?.release();
    assert.equal(limiter.inUse('k'), 1);
    assert.ok(limiter.acquire('k'));
    assert.equal(limiter.acquire('k'), undefined);
  });

  it('concurrencyLimiter forgets a key whose count returns to zero', () => {
    const limiter = createConcurrencyLimiter(1);
    limiter.acquire('k')?.release();
    assert.equal(limiter.inUse('k'), 0);
    assert.equal(limiter.inUse(), 0);
  });

  it('a lease held with `using` is released when the block ends, even by a throw', () => {
    const limiter = createConcurrencyLimiter(1);
    {
      using lease = limiter.acquire('k');
      assert.ok(lease);
      assert.equal(limiter.inUse('k'), 1);
    }
    assert.equal(limiter.inUse('k'), 0);
    assert.throws(() => {
      using _lease = limiter.acquire('k');
      throw new Error('Stream failed');
    }, /Stream failed/);
    assert.equal(limiter.inUse('k'), 0);
  });

  it('createConcurrencyLimiter() rejects a cap that is not a positive integer', () => {
    assert.throws(() => createConcurrencyLimiter(0), RangeError);
    assert.throws(() => createConcurrencyLimiter(1.5), RangeError);
  });
});
