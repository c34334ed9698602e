import assert from 'node:assert/strict';
import { generateKeyPairSync, sign as nodeSign } from 'node:crypto';
import { test } from 'node:test';
import fc from 'fast-check';
import { exportJWK, exportSPKI, generateKeyPair, jwtVerify, SignJWT } from 'jose';
import type { JwtVerifierOptions } from '../../lib/auth/jwt.ts';
import { createJwtVerifier, looksLikeJwt } from '../../lib/auth/jwt.ts';
import { AppError } from '../../lib/errors.ts';
import { RFC_NOW_SECONDS, RFC7515_A1, RFC7515_A2, RFC7515_A3, RFC8037_A4 } from './fixtures/rfc-vectors.ts';
import { assertInvalid, claims, NOW, SECRET, segment, signHmac } from './fixtures/tokens.ts';

const ISSUER = 'https://issuer.test';
const AUDIENCE = 'chat-api';
const HS256 = { alg: 'HS256', typ: 'JWT' };
const ASYMMETRIC = ['RS256', 'ES256', 'EdDSA'] as const;
const pairs = {
  RS256: await generateKeyPair('RS256', { extractable: true }),
  ES256: await generateKeyPair('ES256', { extractable: true }),
  EdDSA: await generateKeyPair('EdDSA', { extractable: true }),
};
const rsaPem = await exportSPKI(pairs.RS256.publicKey);
const scoped = (overrides: Record<string, unknown> = {}) => claims({ iss: ISSUER, aud: AUDIENCE, ...overrides });
/** The issuer and audience every verifier is built with (an audience is required, an issuer with a public key). */
const SCOPE = { issuer: ISSUER, audience: AUDIENCE };
const hsVerifier = (options: Partial<JwtVerifierOptions> = {}) =>
  createJwtVerifier({ secret: SECRET, ...SCOPE, ...options });

async function publicKeyText(alg: (typeof ASYMMETRIC)[number], format: string): Promise<string> {
  const key = pairs[alg].publicKey;
  return format === 'PEM' ? exportSPKI(key) : JSON.stringify(await exportJWK(key));
}

function mint(alg: string, key: Parameters<SignJWT['sign']>[0], payload = scoped()): Promise<string> {
  return new SignJWT(payload).setProtectedHeader({ alg, typ: 'JWT' }).sign(key);
}

test('createJwtVerifier() refuses a secret under 32 bytes and accepts one of exactly 32', async () => {
  await assert.rejects(createJwtVerifier({ ...SCOPE, secret: 'x'.repeat(31) }), /at least 32 bytes/);
  await assert.doesNotReject(createJwtVerifier({ ...SCOPE, secret: 'x'.repeat(32) }));
});

test('createJwtVerifier() refuses both a secret and a public key, or neither', async () => {
  await assert.rejects(createJwtVerifier({ ...SCOPE, secret: SECRET, publicKey: rsaPem }), /not both/);
  await assert.rejects(createJwtVerifier(SCOPE), /is required/);
});

test('createJwtVerifier() refuses to build without an audience (RFC 8725 §3.9)', async () => {
  const noAudience = { secret: SECRET, issuer: ISSUER } as JwtVerifierOptions;
  await assert.rejects(createJwtVerifier(noAudience), /audience is required/);
  await assert.rejects(createJwtVerifier({ ...noAudience, audience: '' }), /must not be empty/);
});

test('createJwtVerifier() refuses a public key without an issuer and accepts a secret without one', async () => {
  await assert.rejects(createJwtVerifier({ publicKey: rsaPem, audience: AUDIENCE }), /issuer is required/);
  await assert.doesNotReject(createJwtVerifier({ secret: SECRET, audience: AUDIENCE }));
});

test('createJwtVerifier() refuses a leeway over 60 seconds or below 0', async () => {
  await assert.rejects(hsVerifier({ leewaySeconds: 61 }), /0 to 60/);
  await assert.rejects(hsVerifier({ leewaySeconds: -1 }), /0 to 60/);
});

test('createJwtVerifier() refuses a JWK holding private or symmetric key material', async () => {
  const privateJwk = await exportJWK(pairs.ES256.privateKey);
  await assert.rejects(createJwtVerifier({ ...SCOPE, publicKey: JSON.stringify(privateJwk) }), /private or symmetric/);
  const octJwk = { kty: 'oct', k: Buffer.from(SECRET).toString('base64url') };
  await assert.rejects(createJwtVerifier({ ...SCOPE, publicKey: JSON.stringify(octJwk) }), /private or symmetric/);
});

test('createJwtVerifier() refuses unsupported key types, weak RSA keys and PKCS#1 PEM', async () => {
  const p384 = await generateKeyPair('ES384', { extractable: true });
  await assert.rejects(
    createJwtVerifier({ ...SCOPE, publicKey: await exportSPKI(p384.publicKey) }),
    /not supported: ec/,
  );
  const rsa1024 = generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey;
  await assert.rejects(
    createJwtVerifier({ ...SCOPE, publicKey: rsa1024.export({ type: 'spki', format: 'pem' }).toString() }),
    /2048/,
  );
  const pkcs1 = rsa1024.export({ type: 'pkcs1', format: 'pem' }).toString();
  await assert.rejects(createJwtVerifier({ ...SCOPE, publicKey: pkcs1 }), /BEGIN PUBLIC KEY/);
});

test('createJwtVerifier() refuses a JWK whose alg does not match its key type', async () => {
  const jwk = { ...(await exportJWK(pairs.RS256.publicKey)), alg: 'PS256' };
  await assert.rejects(createJwtVerifier({ ...SCOPE, publicKey: JSON.stringify(jwk) }), /alg must be RS256/);
});

for (const alg of ['HS256', 'HS384', 'HS512']) {
  test(`verify() accepts a jose-signed ${alg} token and returns its claims`, async () => {
    const token = await mint(alg, new TextEncoder().encode(SECRET), scoped({ role: 'admin' }));
    const verified = await (await hsVerifier()).verify(token, NOW);
    assert.deepEqual(verified, scoped({ role: 'admin' }));
  });
}

for (const alg of ASYMMETRIC) {
  for (const format of ['PEM', 'JWK']) {
    test(`verify() accepts a jose-signed ${alg} token with a ${format} public key`, async () => {
      const verifier = await createJwtVerifier({ ...SCOPE, publicKey: await publicKeyText(alg, format) });
      const verified = await verifier.verify(await mint(alg, pairs[alg].privateKey), NOW);
      assert.equal(verified.sub, 'user-1');
    });
  }

  test(`verify() and jose jwtVerify agree on a valid and a tampered ${alg} token`, async () => {
    const verifier = await createJwtVerifier({ ...SCOPE, publicKey: await publicKeyText(alg, 'JWK') });
    const token = await mint(alg, pairs[alg].privateKey);
    const joseOptions = { issuer: ISSUER, audience: AUDIENCE, currentDate: new Date(NOW * 1000), algorithms: [alg] };
    const ours = await verifier.verify(token, NOW);
    assert.deepEqual((await jwtVerify(token, pairs[alg].publicKey, joseOptions)).payload, ours);
    const tampered = `${token.slice(0, token.lastIndexOf('.'))}.${segment({ raw: 'x'.repeat(64) })}`;
    await assertInvalid(verifier.verify(tampered, NOW), /signature/);
    await assert.rejects(jwtVerify(tampered, pairs[alg].publicKey, joseOptions), {
      code: 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED',
    });
  });
}

test('verify() rejects an HS256 token signed with the RSA public key PEM as the secret', async () => {
  const verifier = await createJwtVerifier({ ...SCOPE, publicKey: rsaPem });
  await assertInvalid(verifier.verify(signHmac(HS256, claims(), rsaPem), NOW), /algorithm/);
});

test('verify() rejects an RS256 token on a secret-configured verifier', async () => {
  await assertInvalid((await hsVerifier()).verify(await mint('RS256', pairs.RS256.privateKey), NOW), /algorithm/);
});

test('verify() rejects a token whose alg belongs to another asymmetric key type', async () => {
  const verifier = await createJwtVerifier({ ...SCOPE, publicKey: rsaPem });
  for (const alg of ['ES256', 'EdDSA'] as const) {
    await assertInvalid(verifier.verify(await mint(alg, pairs[alg].privateKey), NOW), /algorithm/);
  }
});

test('verify() rejects an ES256 signature in DER form and accepts the same signature as raw R || S', async () => {
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const verifier = await createJwtVerifier({
    ...SCOPE,
    publicKey: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
  });
  const input = `${segment({ alg: 'ES256' })}.${segment(scoped())}`;
  const signed = (dsaEncoding: 'der' | 'ieee-p1363') =>
    `${input}.${nodeSign('sha256', Buffer.from(input), { key: privateKey, dsaEncoding }).toString('base64url')}`;
  await assertInvalid(verifier.verify(signed('der'), NOW), /wrong length/);
  assert.equal((await verifier.verify(signed('ieee-p1363'), NOW)).sub, 'user-1');
});

const nonCanonical = (token: string) => {
  // an HS256 signature is 43 characters: the last one has 2 unused bits, set one of them
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
  return token.slice(0, -1) + alphabet.charAt(alphabet.indexOf(token.slice(-1)) | 1);
};
const valid = signHmac(HS256, scoped());
const rejections: Array<[string, string, RegExp]> = [
  ['alg none with an empty signature', `${segment({ alg: 'none' })}.${segment(scoped())}.`, /algorithm/],
  ['alg none with a signature', signHmac({ alg: 'none' }, scoped()), /algorithm/],
  ['a missing alg', signHmac({ typ: 'JWT' }, scoped()), /algorithm/],
  ['an alg that names an Object.prototype member', signHmac({ alg: 'constructor' }, scoped()), /algorithm/],
  ['an expired token', signHmac(HS256, scoped({ exp: NOW - 61 })), /expired/],
  ['a token without exp', signHmac(HS256, scoped({ exp: undefined })), /no expiry/],
  ['an exp that is a string', signHmac(HS256, scoped({ exp: String(NOW + 300) })), /exp\) is not a number/],
  ['an exp that overflows to Infinity', signHmac(HS256, { raw: `{"sub":"a","exp":1e400}` }), /exp\) is not a number/],
  ['an nbf in the future beyond the leeway', signHmac(HS256, scoped({ nbf: NOW + 61 })), /not valid yet/],
  ['an iat in the future beyond the leeway', signHmac(HS256, scoped({ iat: NOW + 61 })), /issued in the future/],
  ['an iat that is not a number', signHmac(HS256, scoped({ iat: null })), /iat\) is not a number/],
  ['a wrong iss', signHmac(HS256, scoped({ iss: 'https://evil.test' })), /issuer/],
  ['a missing iss', signHmac(HS256, scoped({ iss: undefined })), /issuer/],
  ['a wrong aud', signHmac(HS256, scoped({ aud: 'other-api' })), /audience/],
  ['an aud array without the audience', signHmac(HS256, scoped({ aud: ['a', 'b'] })), /audience/],
  ['a missing aud', signHmac(HS256, scoped({ aud: undefined })), /audience/],
  ['a crit header', signHmac({ ...HS256, crit: ['exp'] }, scoped()), /crit/],
  ['a typ other than JWT', signHmac({ ...HS256, typ: 'JOSE+JSON' }, scoped()), /typ/],
  ['a header that is a JSON array', signHmac({ raw: '["HS256"]' }, scoped()), /header is not a JSON object/],
  ['a header that is not JSON', signHmac({ raw: '{alg:HS256}' }, scoped()), /header is not valid JSON/],
  ['a header with invalid UTF-8', `${Buffer.from([0x7b, 0xff, 0x7d]).toString('base64url')}.e30.e30`, /not valid JSON/],
  ['a header with an own __proto__', signHmac({ raw: '{"alg":"HS256","__proto__":{}}' }, scoped()), /__proto__/],
  ['a payload that is a JSON array', signHmac(HS256, [scoped()]), /payload is not a JSON object/],
  ['a payload that is null', signHmac(HS256, null), /payload is not a JSON object/],
  ['a payload that is not JSON', signHmac(HS256, { raw: 'sub=user-1' }), /payload is not valid JSON/],
  ['a payload with an own __proto__', signHmac(HS256, { raw: `{"__proto__":{"sub":"a"},"exp":${NOW}}` }), /__proto__/],
  ['a missing sub', signHmac(HS256, scoped({ sub: undefined })), /subject \(sub\) is missing/],
  ['an empty sub', signHmac(HS256, scoped({ sub: '' })), /subject \(sub\) is missing/],
  ['a sub that is a number', signHmac(HS256, scoped({ sub: 42 })), /subject \(sub\) is missing/],
  ['a sub over 256 characters', signHmac(HS256, scoped({ sub: 'u'.repeat(257) })), /longer than 256/],
  ['two segments', valid.slice(0, valid.lastIndexOf('.')), /three segments/],
  ['four segments', `${valid}.e30`, /three segments/],
  ['an empty header segment', valid.slice(valid.indexOf('.')), /empty segment/],
  ['base64 padding', `${valid}=`, /base64url/],
  ['standard base64 characters', valid.replace(/.$/, '+'), /base64url/],
  ['non-zero unused bits in the signature', nonCanonical(valid), /base64url/],
  ['a signature made with another secret', signHmac(HS256, scoped(), `${SECRET}!`), /signature is invalid/],
  ['a truncated signature', valid.slice(0, -3), /wrong length/],
];
for (const [name, token, detail] of rejections) {
  test(`verify() rejects ${name}`, async () => {
    await assertInvalid((await hsVerifier()).verify(token, NOW), detail);
  });
}

test('verify() accepts the well-formed control token of the rejection table', async () => {
  assert.equal((await (await hsVerifier()).verify(valid, NOW)).sub, 'user-1');
});

test('verify() rejects a validly signed token over 8 KiB and accepts one just under', async () => {
  const verifier = await hsVerifier();
  const big = signHmac(HS256, scoped({ pad: 'p'.repeat(6000) }));
  assert.ok(big.length > 8192);
  await assertInvalid(verifier.verify(big, NOW), /larger than 8192/);
  const under = signHmac(HS256, scoped({ pad: 'p'.repeat(5900) }));
  assert.ok(under.length <= 8192);
  assert.equal((await verifier.verify(under, NOW)).sub, 'user-1');
});

test('verify() rejects an oversize string before looking at its shape', async () => {
  await assertInvalid((await hsVerifier()).verify('.'.repeat(9000), NOW), /larger than 8192/);
});

test('verify() accepts a token that expired 30 s ago within the default 60 s leeway', async () => {
  assert.equal((await (await hsVerifier()).verify(signHmac(HS256, scoped({ exp: NOW - 30 })), NOW)).sub, 'user-1');
});

test('verify() with leewaySeconds 0 rejects a token at its exp second', async () => {
  await assertInvalid(
    (await hsVerifier({ leewaySeconds: 0 })).verify(signHmac(HS256, scoped({ exp: NOW })), NOW),
    /expired/,
  );
});

test('verify() accepts nbf and iat ahead of the clock within the leeway', async () => {
  const token = signHmac(HS256, scoped({ nbf: NOW + 60, iat: NOW + 60 }));
  assert.equal((await (await hsVerifier()).verify(token, NOW)).sub, 'user-1');
});

test('verify() accepts an aud array containing the configured audience', async () => {
  const token = signHmac(HS256, scoped({ aud: ['other-api', AUDIENCE] }));
  assert.deepEqual((await (await hsVerifier()).verify(token, NOW)).aud, ['other-api', AUDIENCE]);
});

test('verify() accepts typ in any case and ignores kid', async () => {
  const token = signHmac({ alg: 'HS256', typ: 'jwt', kid: 'unknown-key' }, scoped());
  assert.equal((await (await hsVerifier()).verify(token, NOW)).sub, 'user-1');
});

test('verify() uses the system clock when nowSeconds is omitted', async () => {
  const verifier = await hsVerifier();
  await assertInvalid(verifier.verify(valid), /expired/);
  const now = Math.floor(Date.now() / 1000);
  assert.equal((await verifier.verify(signHmac(HS256, scoped({ iat: now, exp: now + 300 })))).sub, 'user-1');
});

test('verify() never puts the token in its error', async () => {
  const token = signHmac(HS256, scoped({ sub: 'secret-subject-value', exp: NOW - 600 }));
  const err = await (await hsVerifier()).verify(token, NOW).catch((caught: unknown) => caught);
  assert.ok(err instanceof AppError);
  const rendered = `${err.message} ${err.detail} ${err.stack} ${JSON.stringify(err)} ${String(err.cause)}`;
  for (const part of [...token.split('.'), 'secret-subject-value']) assert.ok(!rendered.includes(part));
});

test('verify() answers any string with INVALID_TOKEN and nothing else', async () => {
  const verifier = await hsVerifier();
  const tokens = fc.oneof(
    fc.string(),
    fc.stringMatching(/^eyJ[A-Za-z0-9_-]{0,40}\.[A-Za-z0-9_-]{0,40}\.[A-Za-z0-9_-]{0,50}$/),
  );
  await fc.assert(fc.asyncProperty(tokens, (token) => assertInvalid(verifier.verify(token, NOW), /^Token /)));
});

test('verify() answers any signed JSON header and payload with valid claims or INVALID_TOKEN', async () => {
  const verifier = await hsVerifier({ issuer: undefined });
  const headers = fc.record({ alg: fc.constantFrom('HS256', 'none', 'RS256') }, { requiredKeys: [] });
  const payloads = fc.oneof(
    fc.jsonValue(),
    fc.record({ sub: fc.jsonValue(), exp: fc.jsonValue(), nbf: fc.jsonValue() }),
  );
  await fc.assert(
    fc.asyncProperty(headers, payloads, async (header, payload) => {
      const outcome = await verifier.verify(signHmac(header, payload), NOW).then(
        (verified) =>
          assert.ok(typeof verified.sub === 'string' && typeof verified.exp === 'number' && header.alg === 'HS256'),
        (err: unknown) => assert.ok(err instanceof AppError && err.code === 'INVALID_TOKEN', String(err)),
      );
      return outcome;
    }),
  );
});

// The RFC example tokens carry iss "joe" and neither aud nor sub: a valid signature, refused for its claims.
const RFC_SCOPE = { issuer: 'joe', audience: AUDIENCE };

test('verify() checks the RFC 7515 A.1 (RFC 7519 §3.1) HS256 signature; only the missing aud fails it', async () => {
  const verifier = await createJwtVerifier({
    ...RFC_SCOPE,
    secret: Buffer.from(RFC7515_A1.secretBase64url, 'base64url'),
  });
  await assertInvalid(verifier.verify(RFC7515_A1.token, RFC_NOW_SECONDS), /audience \(aud\) does not match/);
  await assertInvalid(verifier.verify(`${RFC7515_A1.token.slice(0, -1)}A`, RFC_NOW_SECONDS), /signature is invalid/);
  await assertInvalid(verifier.verify(RFC7515_A1.token, 1300819380 + 60), /expired/);
});

test('verify() checks the RFC 7515 A.2 RS256 and A.3 ES256 signatures; only the missing aud fails them', async () => {
  for (const vector of [RFC7515_A2, RFC7515_A3]) {
    const verifier = await createJwtVerifier({ ...RFC_SCOPE, publicKey: JSON.stringify(vector.jwk) });
    await assertInvalid(verifier.verify(vector.token, RFC_NOW_SECONDS), /audience \(aud\) does not match/);
    await assertInvalid(
      verifier.verify(vector.token.replace(/eyJpc3/, 'eyJpc4'), RFC_NOW_SECONDS),
      /signature is invalid/,
    );
  }
});

test('verify() checks the RFC 8037 A.4 Ed25519 signature and rejects its non-JSON payload', async () => {
  const verifier = await createJwtVerifier({ ...SCOPE, publicKey: JSON.stringify(RFC8037_A4.jwk) });
  await assertInvalid(verifier.verify(RFC8037_A4.token, RFC_NOW_SECONDS), /payload is not valid JSON/);
});

test('looksLikeJwt() accepts three base64url segments starting with eyJ and nothing else', async () => {
  assert.ok(looksLikeJwt(valid));
  assert.ok(looksLikeJwt(RFC7515_A2.token));
  for (const token of [
    '',
    'csk_abc',
    valid.slice(1),
    `${valid}.x`,
    `${valid.slice(0, valid.lastIndexOf('.'))}.`,
    `${valid}=`,
    ` ${valid}`,
  ]) {
    assert.equal(looksLikeJwt(token), false, token);
  }
});
