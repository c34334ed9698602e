import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isDatabaseUnavailable } from '../../lib/db/errors.ts';

function coded(message: string, code: string): Error {
  return Object.assign(new Error(message), { code });
}

test('isDatabaseUnavailable() recognises connection failures, shutdowns and a password mid-rotation', () => {
  assert.equal(isDatabaseUnavailable(coded('connect ECONNREFUSED 127.0.0.1:5432', 'ECONNREFUSED')), true);
  assert.equal(isDatabaseUnavailable(coded('terminating connection due to administrator command', '57P01')), true);
  assert.equal(isDatabaseUnavailable(coded('password authentication failed', '28P01')), true);
  assert.equal(isDatabaseUnavailable(coded('too many connections', '53300')), true);
  assert.equal(isDatabaseUnavailable(new Error('timeout exceeded when trying to connect')), true);
  assert.equal(
    isDatabaseUnavailable(new Error('wrapped', { cause: new Error('Connection terminated unexpectedly') })),
    true,
  );
});

test('isDatabaseUnavailable() leaves bugs and data errors alone', () => {
  assert.equal(isDatabaseUnavailable(coded('relation "x" does not exist', '42P01')), false);
  assert.equal(isDatabaseUnavailable(coded('duplicate key', '23505')), false);
  assert.equal(isDatabaseUnavailable(new Error('something else')), false);
  assert.equal(isDatabaseUnavailable('not an error'), false);
});
