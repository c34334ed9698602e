import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createFailureThrottle } from '../../lib/limits/failure-throttle.ts';

/** A hand-driven clock: tests move time, they never sleep through it. */
function manualClock(startMs = 0): { now: () => number; advance: (ms: number) => void } {
  let nowMs = startMs;
  return { now: () => nowMs, advance: (ms) => void (nowMs += ms) };
}

function failTimes(throttle: ReturnType<typeof createFailureThrottle>, address: string, times: number): void {
  for (let i = 0; i < times; i++) throttle.fail(address);
}

test('failureThrottle.blockedFor() is 0 for an address that never failed', () => {
  const throttle = createFailureThrottle(10, { now: () => 0 });
  assert.equal(throttle.blockedFor('192.0.2.1'), 0);
});

test('failureThrottle lets an address fail 9 times of 10 per minute without blocking it', () => {
  const throttle = createFailureThrottle(10, { now: () => 0 });
  failTimes(throttle, '192.0.2.1', 9);
  assert.equal(throttle.blockedFor('192.0.2.1'), 0);
});

test('failureThrottle blocks an address after its 10th failure of 10 per minute', () => {
  const throttle = createFailureThrottle(10, { now: () => 0 });
  failTimes(throttle, '192.0.2.1', 10);
  // 10 per minute: one failure comes back every 6 s
  assert.equal(throttle.blockedFor('192.0.2.1'), 6);
});

test('failureThrottle.blockedFor() counts down in whole seconds, rounding up', () => {
  const clock = manualClock();
  const throttle = createFailureThrottle(10, { now: clock.now });
  failTimes(throttle, '192.0.2.1', 10);
  clock.advance(500);
  assert.equal(throttle.blockedFor('192.0.2.1'), 6); // 5.5 s left
  clock.advance(4_600);
  assert.equal(throttle.blockedFor('192.0.2.1'), 1); // 0.9 s left, never 0 while blocked
  assert.ok(Number.isInteger(throttle.blockedFor('192.0.2.1')));
});

test('failureThrottle unblocks an address once a failure has refilled, and blocks it again on the next failure', () => {
  const clock = manualClock();
  const throttle = createFailureThrottle(10, { now: clock.now });
  failTimes(throttle, '192.0.2.1', 10);
  clock.advance(6_000);
  assert.equal(throttle.blockedFor('192.0.2.1'), 0);
  throttle.fail('192.0.2.1');
  assert.equal(throttle.blockedFor('192.0.2.1'), 6);
});

test('failureThrottle refills the whole allowance after a minute', () => {
  const clock = manualClock();
  const throttle = createFailureThrottle(10, { now: clock.now });
  failTimes(throttle, '192.0.2.1', 10);
  clock.advance(60_000);
  failTimes(throttle, '192.0.2.1', 9);
  assert.equal(throttle.blockedFor('192.0.2.1'), 0);
  throttle.fail('192.0.2.1');
  assert.ok(throttle.blockedFor('192.0.2.1') > 0);
});

test('failureThrottle keeps blocking while failures keep arriving from a blocked address', () => {
  const clock = manualClock();
  const throttle = createFailureThrottle(10, { now: clock.now });
  failTimes(throttle, '192.0.2.1', 10);
  // A failure recorded while blocked (a request already past the check) must not shorten the block.
  clock.advance(3_000);
  throttle.fail('192.0.2.1');
  assert.equal(throttle.blockedFor('192.0.2.1'), 3);
});

test('failureThrottle keeps one allowance per address', () => {
  const throttle = createFailureThrottle(10, { now: () => 0 });
  failTimes(throttle, '192.0.2.1', 10);
  assert.equal(throttle.blockedFor('192.0.2.2'), 0);
  failTimes(throttle, '192.0.2.2', 9);
  assert.equal(throttle.blockedFor('192.0.2.2'), 0);
});

test('failureThrottle blocks an address whose allowance is 1 per minute after one failure for 60 s', () => {
  const throttle = createFailureThrottle(1, { now: () => 0 });
  throttle.fail('192.0.2.1');
  assert.equal(throttle.blockedFor('192.0.2.1'), 60);
});

test('failureThrottle blocks a new address at once when its bounded store is full of partly spent buckets', () => {
  const throttle = createFailureThrottle(10, { now: () => 0, maxKeys: 2 });
  throttle.fail('192.0.2.1');
  throttle.fail('192.0.2.2');
  // A flood of new addresses must not grow memory or reset anyone's allowance: the newcomer waits.
  throttle.fail('192.0.2.3');
  assert.ok(throttle.blockedFor('192.0.2.3') > 0);
  assert.equal(throttle.blockedFor('192.0.2.1'), 0);
});

test('failureThrottle.anyBlocked() is true only while some address is blocked', () => {
  const clock = manualClock();
  const throttle = createFailureThrottle(10, { now: clock.now });
  assert.equal(throttle.anyBlocked(), false);
  failTimes(throttle, '192.0.2.1', 9);
  assert.equal(throttle.anyBlocked(), false, 'failures that block nobody do not count');
  throttle.fail('192.0.2.1');
  assert.equal(throttle.anyBlocked(), true);
  clock.advance(60_000);
  assert.equal(throttle.blockedFor('192.0.2.1'), 0);
  assert.equal(throttle.anyBlocked(), false, 'an expired block is forgotten once looked at');
});

test('failureThrottle.admit() lets every credential be checked from an address that is not blocked', () => {
  const throttle = createFailureThrottle(10, { now: () => 0 });
  failTimes(throttle, '192.0.2.1', 9);
  for (let i = 0; i < 5; i++) assert.equal(throttle.admit('192.0.2.1', `guess-${i}`), 0);
});

test('failureThrottle.admit() gives a blocked address one unknown credential per probe interval', () => {
  const clock = manualClock();
  const throttle = createFailureThrottle(10, { now: clock.now, probeIntervalMs: 1_000 });
  failTimes(throttle, '192.0.2.1', 10);
  assert.equal(throttle.admit('192.0.2.1', 'guess-1'), 0, 'the first probe is due at once');
  throttle.fail('192.0.2.1', 'guess-1');
  assert.equal(throttle.admit('192.0.2.1', 'guess-2'), 1);
  clock.advance(999);
  assert.equal(throttle.admit('192.0.2.1', 'guess-2'), 1);
  clock.advance(1);
  assert.equal(throttle.admit('192.0.2.1', 'guess-2'), 0);
  assert.equal(throttle.admit('192.0.2.1', 'guess-3'), 1, 'the probe was taken');
  assert.ok(throttle.blockedFor('192.0.2.1') > 0, 'admitting never lifts the block');
});

test('failureThrottle.admit() keeps probes per address', () => {
  const throttle = createFailureThrottle(10, { now: () => 0 });
  failTimes(throttle, '192.0.2.1', 10);
  failTimes(throttle, '192.0.2.2', 10);
  assert.equal(throttle.admit('192.0.2.1', 'a'), 0);
  assert.equal(throttle.admit('192.0.2.2', 'b'), 0);
});

test('failureThrottle.admit() always lets a credential that succeeded before be checked from a blocked address', () => {
  const clock = manualClock();
  const throttle = createFailureThrottle(10, { now: clock.now });
  throttle.succeed('valid-key');
  failTimes(throttle, '192.0.2.1', 10);
  assert.equal(throttle.admit('192.0.2.1', 'guess'), 0); // takes the probe
  for (let i = 0; i < 5; i++) assert.equal(throttle.admit('192.0.2.1', 'valid-key'), 0);
  assert.equal(throttle.admit('192.0.2.1', 'guess'), 1);
});

test('failureThrottle forgets a known-valid credential when it fails (a revoked key) and after knownValidMs', () => {
  const clock = manualClock();
  const throttle = createFailureThrottle(10, { now: clock.now, knownValidMs: 60_000 });
  throttle.succeed('revoked-key');
  throttle.succeed('old-key');
  failTimes(throttle, '192.0.2.1', 10);
  throttle.admit('192.0.2.1', 'guess'); // the probe is taken
  throttle.fail('192.0.2.1', 'revoked-key');
  assert.equal(throttle.admit('192.0.2.1', 'revoked-key'), 1);
  clock.advance(60_000);
  failTimes(throttle, '192.0.2.1', 10);
  throttle.admit('192.0.2.1', 'guess');
  assert.equal(throttle.admit('192.0.2.1', 'old-key'), 1);
});
