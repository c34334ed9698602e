import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { waitAtMost } from '../lib/deadline.ts';

describe('waitAtMost()', () => {
  it('waitAtMost() resolves with the value of a promise that settles in time', async () => {
    assert.equal(await waitAtMost(Promise.resolve('answered'), 1_000, 'late'), 'answered');
  });

  it('waitAtMost() resolves with the fallback once the deadline passes', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    let result: string | undefined;
    const waiting = waitAtMost(new Promise<string>(() => {}), 5_000, 'late').then((value) => {
      result = value;
    });
    t.mock.timers.tick(4_999);
    await Promise.resolve();
    assert.equal(result, undefined);
    t.mock.timers.tick(1);
    await waiting;
    assert.equal(result, 'late');
  });

  it('waitAtMost() passes a rejection on', async () => {
    await assert.rejects(waitAtMost(Promise.reject(new RangeError('failed')), 1_000, 'late'), RangeError);
  });

  it('waitAtMost() clears its timer once the promise settles', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const cleared = t.mock.method(globalThis, 'clearTimeout');
    await waitAtMost(Promise.resolve(1), 60_000, 0);
    assert.equal(cleared.mock.callCount(), 1);
  });
});
