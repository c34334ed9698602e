import assert from 'node:assert/strict';
import { type TestContext, test } from 'node:test';
import { createLogger } from '../lib/log.ts';
import { createSecurityEvents } from '../lib/security-events.ts';
import { logLines } from './support/log-lines.ts';

/** A logger whose lines are parsed back into objects, and the events built on it, on a mocked clock. */
function setup(t: TestContext, options: { perSecond?: number } = {}) {
  // Start mid-second so a window boundary is never crossed by accident.
  t.mock.timers.enable({ apis: ['Date', 'setTimeout'], now: 1_700_000_000_250 });
  const chunks: string[] = [];
  const log = createLogger({ level: 'debug', sink: (chunk) => chunks.push(chunk) });
  const events = createSecurityEvents(log, options);
  const lines = (): Array<Record<string, unknown>> => {
    log.flush();
    return logLines(chunks.join(''));
  };
  return { events, lines };
}

test('securityEvents.emit() writes one warn line with event "security", the kind and the fields', (t) => {
  const { events, lines } = setup(t);
  events.emit('auth_failure', { requestId: 'req-1', ip: '192.0.2.1', reason: 'Unknown or revoked API key' });
  const [line, ...rest] = lines();
  assert.equal(rest.length, 0);
  assert.equal(line?.['level'], 'warn');
  assert.equal(line?.['event'], 'security');
  assert.equal(line?.['kind'], 'auth_failure');
  assert.equal(line?.['requestId'], 'req-1');
  assert.equal(line?.['ip'], '192.0.2.1');
  assert.equal(line?.['reason'], 'Unknown or revoked API key');
});

test('securityEvents.emit() writes at most perSecond lines of a flood within one second', (t) => {
  const { events, lines } = setup(t, { perSecond: 5 });
  for (let i = 0; i < 1000; i++) events.emit('auth_failure', { ip: '192.0.2.1' });
  assert.equal(lines().length, 5);
});

test('securityEvents.emit() reports the suppressed count in one summary line when the next second begins', (t) => {
  const { events, lines } = setup(t, { perSecond: 5 });
  for (let i = 0; i < 1000; i++) events.emit('auth_failure', { ip: '192.0.2.1' });
  t.mock.timers.tick(1000);
  events.emit('rate_limited', { identity: 'key:1' });
  const summaries = lines().filter((line) => line['suppressed'] !== undefined);
  assert.deepEqual(
    summaries.map((line) => [line['event'], line['suppressed']]),
    [['security', 995]],
  );
});

test('securityEvents reports a suppressed flood even when no event follows it', (t) => {
  const { events, lines } = setup(t, { perSecond: 5 });
  for (let i = 0; i < 50; i++) events.emit('auth_failure', { ip: '192.0.2.1' });
  // The attack stops: the operator must still learn how much was not logged.
  t.mock.timers.tick(1000);
  const summaries = lines().filter((line) => line['suppressed'] !== undefined);
  assert.deepEqual(
    summaries.map((line) => line['suppressed']),
    [45],
  );
});

test('securityEvents.emit() writes perSecond lines again in the next second', (t) => {
  const { events, lines } = setup(t, { perSecond: 5 });
  for (let i = 0; i < 100; i++) events.emit('auth_failure', { ip: '192.0.2.1' });
  t.mock.timers.tick(1000);
  for (let i = 0; i < 100; i++) events.emit('auth_throttled', { ip: '192.0.2.1' });
  const kinds = lines().map((line) => line['kind']);
  assert.equal(kinds.filter((kind) => kind === 'auth_failure').length, 5);
  assert.equal(kinds.filter((kind) => kind === 'auth_throttled').length, 5);
});

test('securityEvents.emit() writes no summary when nothing was suppressed', (t) => {
  const { events, lines } = setup(t, { perSecond: 5 });
  for (let i = 0; i < 5; i++) events.emit('cors_rejected', { origin: 'https://evil.example' });
  t.mock.timers.tick(1000);
  events.emit('cors_rejected', { origin: 'https://evil.example' });
  t.mock.timers.tick(1000);
  const all = lines();
  assert.equal(all.length, 6);
  assert.equal(
    all.some((line) => line['suppressed'] !== undefined),
    false,
  );
});

test('securityEvents.emit() counts every event, suppressed ones included, through onEvent', (t) => {
  t.mock.timers.enable({ apis: ['Date', 'setTimeout'], now: 1_700_000_000_250 });
  const counted: string[] = [];
  const events = createSecurityEvents(createLogger({ sink: () => {} }), {
    perSecond: 2,
    onEvent: (kind) => counted.push(kind),
  });
  for (let i = 0; i < 10; i++) events.emit('rate_limited', {});
  assert.equal(counted.length, 10);
});
