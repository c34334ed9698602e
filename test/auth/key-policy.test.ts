// The policy flags of `keys create|update`: what each accepts, what it refuses and why, and how a policy reads back.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { describePolicy, parseExpiry, parsePolicyFlags } from '../../lib/auth/key-policy.ts';

const NOW = Date.parse('2026-12-03T10:00:00Z');
const DAY = 86_400_000;

function problem(args: string[]): string {
  const parsed = parsePolicyFlags(args, NOW);
  assert.equal(parsed.ok, false, `accepted ${args.join(' ')}`);
  return parsed.ok ? '' : parsed.problem;
}

describe('parsePolicyFlags()', () => {
  it('reads every flag into the change it stands for', () => {
    const parsed = parsePolicyFlags(
      ['--rpm', '30', '--burst', '5', '--streams', '2', '--tokens-per-day', '100000', '--expires', '30d'],
      NOW,
    );
    assert.deepEqual(parsed, {
      ok: true,
      value: {
        rateLimitPerMinute: 30,
        rateLimitBurst: 5,
        maxStreams: 2,
        tokensPerDay: 100_000,
        expiresAt: new Date(NOW + 30 * DAY),
      },
    });
  });

  it('reads --agents as a list of ids without duplicates', () => {
    assert.deepEqual(parsePolicyFlags(['--agents', 'support,docs,support'], NOW), {
      ok: true,
      value: { agents: ['support', 'docs'] },
    });
  });

  it('reads default, never and all as going back to the server setting (null)', () => {
    const parsed = parsePolicyFlags(['--rpm', 'default', '--expires', 'never', '--agents', 'all'], NOW);
    assert.deepEqual(parsed, { ok: true, value: { rateLimitPerMinute: null, expiresAt: null, agents: null } });
  });

  it('accepts no flags at all (create with the defaults)', () => {
    assert.deepEqual(parsePolicyFlags([], NOW), { ok: true, value: {} });
  });

  const refused: Array<[string, string[], RegExp]> = [
    ['zero', ['--rpm', '0'], /--rpm must be a whole number from 1 to 1000000/],
    ['a negative number', ['--streams', '-1'], /--streams must be a whole number/],
    ['a fraction', ['--burst', '1.5'], /--burst must be a whole number/],
    ['a number over the bound', ['--streams', '1001'], /from 1 to 1000/],
    ['a leading zero', ['--rpm', '060'], /--rpm must be a whole number/],
    ['words', ['--tokens-per-day', 'lots'], /--tokens-per-day must be a whole number/],
    ['an unknown flag', ['--rate', '5'], /Unknown option "--rate"/],
    ['a flag given twice', ['--rpm', '5', '--rpm', '6'], /--rpm given twice/],
    ['a flag without its value', ['--rpm'], /--rpm needs a value/],
    ['a flag followed by another flag', ['--rpm', '--burst', '5'], /--rpm needs a value/],
    ['a bare word', ['five'], /Unexpected argument "five"/],
    ['an agent id with capitals', ['--agents', 'Support'], /"Support" is not an agent id/],
    ['an empty agent id', ['--agents', 'a,,b'], /"" is not an agent id/],
  ];
  for (const [what, args, message] of refused) {
    it(`refuses ${what} with a message naming the flag`, () => {
      assert.match(problem(args), message);
    });
  }
});

describe('parseExpiry()', () => {
  it('reads days and hours from now', () => {
    assert.deepEqual(parseExpiry('30d', NOW), { ok: true, value: new Date(NOW + 30 * DAY) });
    assert.deepEqual(parseExpiry('12h', NOW), { ok: true, value: new Date(NOW + DAY / 2) });
  });

  it('reads a date as 00:00 UTC that day, and a timestamp with its zone as written', () => {
    assert.deepEqual(parseExpiry('2027-01-31', NOW), { ok: true, value: new Date('2027-01-31T00:00:00Z') });
    assert.deepEqual(parseExpiry('2027-01-31T12:30:00+01:00', NOW), {
      ok: true,
      value: new Date('2027-01-31T11:30:00Z'),
    });
  });

  const refused: Array<[string, RegExp]> = [
    ['2020-01-01', /not in the future/],
    ['2026-12-03', /not in the future/],
    ['2027-02-30', /not a real date/],
    ['2027-01-31T12:00', /must be like/],
    ['tomorrow', /must be like 30d, 12h, 2027-01-31/],
    ['0d', /must be like/],
    ['3651d', /within 3650 days/],
  ];
  for (const [value, message] of refused) {
    it(`refuses ${JSON.stringify(value)}`, () => {
      const parsed = parseExpiry(value, NOW);
      assert.equal(parsed.ok, false);
      assert.match(parsed.ok ? '' : parsed.problem, message);
    });
  }
});

describe('describePolicy()', () => {
  it('shows the server default, no expiry and every agent for an empty policy', () => {
    assert.deepEqual(describePolicy({}), [
      'rpm: default',
      'burst: default',
      'streams: default',
      'tokens-per-day: default',
      'expires: never',
      'agents: all',
    ]);
  });

  it("shows a key's own values as the flags that set them", () => {
    const lines = describePolicy({
      rateLimitPerMinute: 30,
      maxStreams: 2,
      tokensPerDay: 5000,
      expiresAt: new Date('2027-01-31T00:00:00Z'),
      agents: ['support', 'docs'],
    });
    assert.deepEqual(lines, [
      'rpm: 30',
      'burst: default',
      'streams: 2',
      'tokens-per-day: 5000',
      'expires: 2027-01-31T00:00:00.000Z',
      'agents: support,docs',
    ]);
  });
});
