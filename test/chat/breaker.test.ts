import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { type Breaker, type BreakerOptions, type BreakerState, createBreaker } from '../../lib/chat/breaker.ts';

interface Harness {
  breaker: Breaker;
  /** Moves the injected clock forward. */
  advance(ms: number): void;
  changes: Array<[BreakerState, BreakerState]>;
}

/** A breaker on an injected clock: 3 consecutive failures, 1 s cool-down, ratio rule off unless asked. */
function harness(options: Partial<BreakerOptions> = {}): Harness {
  let nowMs = 1_000_000;
  const changes: Array<[BreakerState, BreakerState]> = [];
  const breaker = createBreaker({
    failures: 3,
    cooldownMs: 1000,
    failurePercent: 0,
    windowMs: 10_000,
    minCalls: 10,
    trialTimeoutMs: 5000,
    now: () => nowMs,
    onChange: (from, to) => changes.push([from, to]),
    ...options,
  });
  return {
    breaker,
    advance: (ms) => {
      nowMs += ms;
    },
    changes,
  };
}

function fail(breaker: Breaker, times: number): void {
  for (let i = 0; i < times; i++) breaker.admit()?.failure();
}

function succeed(breaker: Breaker, times: number): void {
  for (let i = 0; i < times; i++) breaker.admit()?.success();
}

describe('createBreaker()', () => {
  it('createBreaker() stays closed below the consecutive-failure limit and opens at it', () => {
    const { breaker, changes } = harness();
    fail(breaker, 2);
    assert.equal(breaker.state(), 'closed');
    fail(breaker, 1);
    assert.equal(breaker.state(), 'open');
    assert.deepEqual(changes, [['closed', 'open']]);
  });

  it('createBreaker() counts failures as consecutive only: a success in between starts again', () => {
    const { breaker } = harness();
    fail(breaker, 2);
    succeed(breaker, 1);
    fail(breaker, 2);
    assert.equal(breaker.state(), 'closed');
  });

  it('createBreaker() refuses every call while open and says when a trial may pass', () => {
    const { breaker, advance } = harness();
    fail(breaker, 3);
    assert.equal(breaker.admit(), undefined);
    assert.equal(breaker.retryAfterMs(), 1000);
    advance(400);
    assert.equal(breaker.admit(), undefined);
    assert.equal(breaker.retryAfterMs(), 600);
  });

  it('createBreaker() half-opens after the cool-down and lets exactly one trial through', () => {
    const { breaker, advance, changes } = harness();
    fail(breaker, 3);
    advance(1000);
    const trial = breaker.admit();
    assert.ok(trial, 'the first caller after the cool-down gets the trial');
    assert.equal(breaker.state(), 'half_open');
    assert.equal(breaker.admit(), undefined, 'a second caller fails fast while the trial is out');
    assert.deepEqual(changes.at(-1), ['open', 'half_open']);
  });

  it('createBreaker() closes when the trial succeeds, with its failure count reset', () => {
    const { breaker, advance, changes } = harness();
    fail(breaker, 3);
    advance(1000);
    breaker.admit()?.success();
    assert.equal(breaker.state(), 'closed');
    assert.deepEqual(changes, [
      ['closed', 'open'],
      ['open', 'half_open'],
      ['half_open', 'closed'],
    ]);
    fail(breaker, 2);
    assert.equal(breaker.state(), 'closed');
  });

  it('createBreaker() opens again for a whole cool-down when the trial fails', () => {
    const { breaker, advance } = harness();
    fail(breaker, 3);
    advance(1500);
    breaker.admit()?.failure();
    assert.equal(breaker.state(), 'open');
    assert.equal(breaker.retryAfterMs(), 1000);
    advance(999);
    assert.equal(breaker.admit(), undefined);
  });

  it('createBreaker() gives a released trial (the caller left) to the next caller', () => {
    const { breaker, advance } = harness();
    fail(breaker, 3);
    advance(1000);
    breaker.admit()?.release();
    assert.equal(breaker.state(), 'half_open');
    const next = breaker.admit();
    assert.ok(next);
    next.success();
    assert.equal(breaker.state(), 'closed');
  });

  it('createBreaker() gives up a trial that never reports after trialTimeoutMs, and ignores its late verdict', () => {
    const { breaker, advance } = harness();
    fail(breaker, 3);
    advance(1000);
    const lost = breaker.admit();
    advance(4999);
    assert.equal(breaker.admit(), undefined);
    advance(1);
    const fresh = breaker.admit();
    assert.ok(fresh, 'a new trial after the old one timed out');
    lost?.success();
    assert.equal(breaker.state(), 'half_open', 'the lost trial does not decide');
    fresh.failure();
    assert.equal(breaker.state(), 'open');
  });

  it('createBreaker() ignores verdicts of calls admitted before it opened', () => {
    const { breaker, advance } = harness();
    const early = [breaker.admit(), breaker.admit()];
    fail(breaker, 3);
    for (const permit of early) permit?.success();
    assert.equal(breaker.state(), 'open');
    advance(1000);
    assert.ok(breaker.admit(), 'the cool-down was not extended either');
  });

  it('createBreaker() admits() answers what admit() would, without taking the trial', () => {
    const { breaker, advance } = harness();
    assert.equal(breaker.admits(), true);
    fail(breaker, 3);
    assert.equal(breaker.admits(), false);
    advance(1000);
    assert.equal(breaker.admits(), true);
    assert.equal(breaker.state(), 'open', 'asking changes nothing');
    assert.ok(breaker.admit());
    assert.equal(breaker.admits(), false, 'the trial is out');
  });

  it('createBreaker() takes only the first verdict of a permit', () => {
    const { breaker } = harness();
    const permit = breaker.admit();
    for (let i = 0; i < 3; i++) permit?.failure();
    assert.equal(breaker.state(), 'closed');
  });

  it('createBreaker() opens on the failure ratio in the window once it holds the minimum calls', () => {
    const { breaker } = harness({ failures: 100, failurePercent: 50, minCalls: 10 });
    for (let i = 0; i < 4; i++) {
      fail(breaker, 1);
      succeed(breaker, 1);
    }
    fail(breaker, 1);
    assert.equal(breaker.state(), 'closed', '5 of 9 calls: below the minimum');
    succeed(breaker, 1);
    fail(breaker, 1);
    assert.equal(breaker.state(), 'open', '6 of 11 calls failed');
  });

  it('createBreaker() forgets failures that left the window', () => {
    const { breaker, advance } = harness({ failures: 100, failurePercent: 50, minCalls: 4, windowMs: 10_000 });
    fail(breaker, 3);
    advance(10_000);
    succeed(breaker, 3);
    fail(breaker, 1);
    assert.equal(breaker.state(), 'closed', '1 of 4 in the window');
  });

  it('createBreaker() with failurePercent 0 opens on consecutive failures only', () => {
    const { breaker } = harness({ failures: 1000, failurePercent: 0, minCalls: 1 });
    for (let i = 0; i < 100; i++) {
      fail(breaker, 2);
      succeed(breaker, 1);
    }
    assert.equal(breaker.state(), 'closed');
  });
});
