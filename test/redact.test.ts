import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { createRedactor, MIN_SECRET_RUN, REDACTED } from '../lib/redact.ts';

const KEY = 'sk-proj-Q7wXb2Lm9Zt4Rk8Vn1Hc5Jp3Fd6Gs0Ya';
const TOKEN = 'metrics-token-5b1e9c7a3f2d8e4b6a0c';
const DATABASE_URL = 'postgres://chat:pw-8f3a1c9e7b5d@db.internal:5432/chat';

function scrub(text: string, secrets: readonly string[] = [KEY, TOKEN]): string {
  return createRedactor(secrets).scrub(text);
}

/** Every window of `length` characters of `secret`. */
function windows(secret: string, length = MIN_SECRET_RUN): string[] {
  return Array.from({ length: secret.length - length + 1 }, (_, i) => secret.slice(i, i + length));
}

describe('createRedactor().scrub() configured secrets', () => {
  it('scrub() redacts a configured secret wherever it appears', () => {
    assert.equal(scrub(`a ${KEY} b ${TOKEN} c`), `a ${REDACTED} b ${REDACTED} c`);
  });

  it('scrub() redacts a 14-character prefix of a configured secret', () => {
    assert.equal(
      scrub(`Incorrect API key provided: ${KEY.slice(0, 14)}****`),
      `Incorrect API key provided: ${REDACTED}****`,
    );
  });

  it('scrub() redacts a run of 12 characters from the middle and from the end of a configured secret', () => {
    assert.equal(scrub(`x${TOKEN.slice(10, 22)}y`), `x${REDACTED}y`);
    assert.equal(scrub(`x${TOKEN.slice(-12)}`), `x${REDACTED}`);
  });

  it('scrub() leaves a run of 11 characters of a configured secret alone', () => {
    const piece = TOKEN.slice(10, 21);
    assert.equal(scrub(`x${piece}y`), `x${piece}y`);
  });

  it('scrub() redacts two overlapping runs of different secrets as one', () => {
    const a = 'alpha-secret-0123456789';
    const b = '0123456789-beta-secret';
    assert.equal(scrub(`<alpha-secret-0123456789-beta-secret>`, [a, b]), `<${REDACTED}>`);
  });

  it('scrub() redacts a run of a secret as JSON spells it, once and twice escaped', () => {
    const secret = 'pass"word\\with-escapes-0123';
    const once = JSON.stringify(secret).slice(1, -1);
    const twice = JSON.stringify(once).slice(1, -1);
    const text = `${once.slice(0, 16)} ${twice} ${JSON.stringify({ v: secret })}`;
    const out = scrub(text, [secret]);
    for (const form of [secret, once, twice]) for (const w of windows(form)) assert.ok(!out.includes(w), out);
  });

  it('scrub() redacts a URL-valued secret whole and its password as a run, but not its host and port alone', () => {
    const password = 'pw-8f3a1c9e7b5d';
    const redactor = createRedactor([DATABASE_URL, password]);
    assert.equal(redactor.scrub(`dsn=${DATABASE_URL}`), `dsn=${REDACTED}`);
    assert.equal(redactor.scrub('connect ECONNREFUSED db.internal:5432'), 'connect ECONNREFUSED db.internal:5432');
    assert.equal(redactor.scrub(`auth ${password.slice(0, 13)}`), `auth ${REDACTED}`);
  });

  it('scrub() ignores secrets shorter than 4 characters and redacts short ones only whole', () => {
    assert.equal(scrub('the dev says dev', ['dev']), 'the dev says dev');
    assert.equal(scrub('a hunter22 b hunter2', ['hunter22']), `a ${REDACTED} b hunter2`);
  });

  it('scrub() leaves no window of 12 characters of a configured secret in any text', () => {
    const secretArb = fc.string({ unit: fc.constantFrom(...'abcdefghijklmnopqrstuvwxyz0123456789-_'), minLength: 12 });
    const property = fc.property(
      secretArb,
      fc.string({ maxLength: 40 }),
      fc.string({ maxLength: 40 }),
      fc.nat(),
      fc.nat(),
      (secret, before, after, from, length) => {
        const start = from % (secret.length - MIN_SECRET_RUN + 1);
        const run = secret.slice(start, start + MIN_SECRET_RUN + (length % (secret.length - start - 11)));
        const out = scrub(`${before}${run}${after}${secret}`, [secret]);
        for (const w of windows(secret)) assert.ok(!out.includes(w), `${w} in ${out}`);
      },
    );
    fc.assert(property, { numRuns: 300 });
  });
});

describe('createRedactor().scrub() credential shapes', () => {
  for (const key of [
    'sk-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z',
    'sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z_Zz-00',
    'sk-ant-api03-Ab3dEf6hIj9kLm2nOp5qRs8t',
  ]) {
    it(`scrub() redacts the unconfigured provider key ${key.slice(0, 11)}…`, () => {
      assert.equal(scrub(`{"msg":"bad key ${key}"}`, []), `{"msg":"bad key ${REDACTED}"}`);
    });
  }

  it('scrub() leaves words that merely contain sk- alone', () => {
    const text = 'mounted disk-cache-volume-at-startup and task-runner-queue-length';
    assert.equal(scrub(text, []), text);
  });

  for (const scheme of ['Bearer', 'bearer', 'BEARER']) {
    it(`scrub() redacts the credential after "${scheme} " and keeps the JSON around it valid`, () => {
      const line = JSON.stringify({ header: `${scheme} opaque.token_value~+/abc==`, next: 1 });
      const out = scrub(line, []);
      assert.deepEqual(JSON.parse(out), { header: `${scheme} ${REDACTED}`, next: 1 });
    });
  }

  it('scrub() leaves "Bearer" followed by a short word or a placeholder alone', () => {
    const text = 'WWW-Authenticate: Bearer error="invalid_token"; send Authorization: Bearer <API key>';
    assert.equal(scrub(text, []), text);
  });

  it('scrub() redacts our API keys and JWTs it was not told about', () => {
    const apiKey = `csk_${'Zm9vYmFy'.repeat(5)}abc`;
    const jwt = 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl';
    assert.equal(scrub(`${apiKey} ${jwt}`, []), `${REDACTED} ${REDACTED}`);
  });
});

describe('createRedactor().head()', () => {
  it('head() keeps the first maxChars characters of a long text, scrubbed', () => {
    const out = createRedactor([TOKEN]).head(`${TOKEN} ${'x'.repeat(10_000)}`, 100);
    assert.equal(out.length, 100);
    assert.ok(out.startsWith(`${REDACTED} x`));
  });

  it('head() redacts a configured secret that straddles the cut instead of keeping its first half', () => {
    for (let offset = 1; offset < TOKEN.length; offset++) {
      const text = `${'x'.repeat(100 - offset)}${TOKEN}${'y'.repeat(1000)}`;
      const expected = `${'x'.repeat(100 - offset)}${`${REDACTED}${'y'.repeat(100)}`.slice(0, offset)}`;
      assert.equal(createRedactor([TOKEN]).head(text, 100), expected);
    }
  });

  it('head() redacts an unconfigured provider key that straddles the cut', () => {
    const key = 'sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z';
    const out = createRedactor([]).head(`${'x '.repeat(47)} ${key}`, 100);
    assert.equal(out, `${'x '.repeat(47)} [REDA`);
  });

  it('head() returns a short text whole and scrubbed', () => {
    assert.equal(createRedactor([TOKEN]).head(`a ${TOKEN}`, 100), `a ${REDACTED}`);
  });
});
