import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { rateLimitHeaders, retryAfterSeconds, windowSeconds } from '../../lib/limits/ratelimit-headers.ts';
import { bucketPolicy, takeToken } from '../../lib/limits/token-bucket.ts';

// draft-ietf-httpapi-ratelimit-headers-10 §3 and §4: an SF List item is a quoted String with
// Integer parameters (RFC 8941 §3.1.2, §3.3.1, §3.3.3).
const POLICY_ITEM = /^"(?:[\x20-\x21\x23-\x5b\x5d-\x7e]|\\["\\])*";q=\d{1,15};w=[1-9]\d{0,14}$/;
const LIMIT_ITEM = /^"(?:[\x20-\x21\x23-\x5b\x5d-\x7e]|\\["\\])*";r=\d{1,15};t=\d{1,15}$/;

describe('rateLimitHeaders()', () => {
  it('rateLimitHeaders() formats the policy and the current limit as draft-10 structured fields', () => {
    const policy = bucketPolicy(60, 10); // 10 at once, refilled in 10 s
    const headers = rateLimitHeaders(policy, { allowed: true, remaining: 7, resetSeconds: 3, retryAfterSeconds: 0 });
    assert.deepEqual(headers, ['ratelimit-policy', '"default";q=10;w=10', 'ratelimit', '"default";r=7;t=3']);
    assert.match(headers[1], POLICY_ITEM);
    assert.match(headers[3], LIMIT_ITEM);
  });

  it('rateLimitHeaders() sets w to the whole seconds needed to refill the burst', () => {
    const policy = bucketPolicy(7, 5); // 5 / (7/60) = 42.86 s
    assert.equal(windowSeconds(policy), 43);
    assert.equal(rateLimitHeaders(policy, takeToken(undefined, policy, 0).decision)[1], '"default";q=5;w=43');
    assert.equal(windowSeconds(bucketPolicy(6000, 5)), 1); // 0.05 s: w is never 0
  });

  it('rateLimitHeaders() on a refusal sets t to the Retry-After value, not earlier (draft-10 §6)', () => {
    const policy = bucketPolicy(60, 5);
    const refused = { allowed: false, remaining: 0, resetSeconds: 5, retryAfterSeconds: 1 };
    assert.equal(rateLimitHeaders(policy, refused)[3], '"default";r=0;t=1');
    assert.equal(retryAfterSeconds(refused), '1');
  });

  it('rateLimitHeaders() quotes and escapes a policy name', () => {
    const headers = rateLimitHeaders(
      { ...bucketPolicy(60, 5), name: 'per "key" \\ v1' },
      { allowed: true, remaining: 4, resetSeconds: 1, retryAfterSeconds: 0 },
    );
    assert.equal(headers[1], '"per \\"key\\" \\\\ v1";q=5;w=5');
    assert.match(headers[1], POLICY_ITEM);
  });

  it('rateLimitHeaders() rejects a policy name that could split the header', () => {
    const decision = { allowed: true, remaining: 4, resetSeconds: 1, retryAfterSeconds: 0 };
    assert.throws(
      () => rateLimitHeaders({ ...bucketPolicy(60, 5), name: 'a\r\nSet-Cookie: x=1' }, decision),
      RangeError,
    );
    assert.throws(() => rateLimitHeaders({ ...bucketPolicy(60, 5), name: 'café' }, decision), RangeError);
  });
});

describe('retryAfterSeconds()', () => {
  it('retryAfterSeconds() gives 60 for an empty bucket of one token per minute', () => {
    const policy = bucketPolicy(1, 1);
    const empty = takeToken(undefined, policy, 0).state;
    assert.equal(retryAfterSeconds(takeToken(empty, policy, 0).decision), '60');
    assert.equal(retryAfterSeconds(takeToken(empty, policy, 30_400).decision), '30'); // 29.6 s rounds up
  });

  it('retryAfterSeconds() never answers 0 or a fraction', () => {
    assert.equal(retryAfterSeconds({ allowed: false, remaining: 0, resetSeconds: 0, retryAfterSeconds: 0 }), '1');
    assert.equal(retryAfterSeconds({ allowed: false, remaining: 0, resetSeconds: 3, retryAfterSeconds: 2.2 }), '3');
  });
});
