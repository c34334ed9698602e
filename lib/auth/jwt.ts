// JWT bearer verification (RFC 7519 over RFC 7515 compact JWS) on WebCrypto, no JWT library.
//
// The accepted algorithms are fixed by the configured key (RFC 8725 §3.1), never by the
// token: a secret allows only HS*, an RSA key only RS256, a P-256 key only ES256, an Ed25519
// key only EdDSA. So `alg: none` and HS/RS key confusion cannot happen. Keys are imported once.
// An audience is always required, and an issuer with a public key (RFC 8725 §3.9): a token minted
// for another service with the same key is refused. Every rejection is `AppError('INVALID_TOKEN')`
// with a reason that never quotes the token.

import type { JsonWebKey, KeyObject, webcrypto } from 'node:crypto';
import { createPublicKey } from 'node:crypto';
import { AppError } from '../errors.ts';

/** The verified claims set; `sub` and `exp` are guaranteed, the rest are as sent. */
export interface JwtClaims {
  readonly sub: string;
  readonly exp: number;
  readonly [claim: string]: unknown;
}

/** Verifies compact JWTs against the key it was created with. */
export interface JwtVerifier {
  verify(token: string, nowSeconds?: number): Promise<JwtClaims>;
}

export interface JwtVerifierOptions {
  /** HMAC secret (HS256/384/512), at least 32 bytes; a string is taken as UTF-8. */
  secret?: string | Uint8Array;
  /** PEM SPKI ('BEGIN PUBLIC KEY') or JWK JSON text of an RSA, P-256 or Ed25519 public key. */
  publicKey?: string;
  /** The `iss` every token must carry; required with a public key, which usually signs for many services. */
  issuer?: string;
  /** The `aud` every token must carry (one of, when it is an array). */
  audience: string;
  /** Clock skew tolerated on exp, nbf and iat; default and maximum 60. */
  leewaySeconds?: number;
}

interface Verification {
  key: webcrypto.CryptoKey;
  params: webcrypto.AlgorithmIdentifier | webcrypto.EcdsaParams;
  /** Exact signature length where the algorithm fixes it. */
  signatureBytes: number;
}

interface KeySpec {
  alg: string;
  importParams: webcrypto.RsaHashedImportParams | webcrypto.EcKeyImportParams | webcrypto.Algorithm;
  params: webcrypto.AlgorithmIdentifier | webcrypto.EcdsaParams;
  signatureBytes: number;
}

const MAX_TOKEN_CHARS = 8192;
const MAX_LEEWAY_SECONDS = 60;
const MAX_SUB_CHARS = 256;
const MIN_SECRET_BYTES = 32;
const MIN_RSA_BITS = 2048;
const BASE64URL_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
const BASE64URL_CHARS = /^[A-Za-z0-9_-]*$/;
const JWT_SHAPE = /^eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;
const HMAC_ALGORITHMS = [
  ['HS256', 'SHA-256', 32],
  ['HS384', 'SHA-384', 48],
  ['HS512', 'SHA-512', 64],
] as const;
// RFC 7517 §6.2.2 / §6.3.2 / RFC 8037 §2: members that only a private or symmetric key has.
const PRIVATE_JWK_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'];
const utf8 = new TextDecoder('utf-8', { fatal: true });

/** True for a string shaped like a compact JWT: three base64url segments, the first a JSON object. */
export function looksLikeJwt(token: string): boolean {
  return typeof token === 'string' && JWT_SHAPE.test(token);
}

/** Builds a verifier for one key; throws a plain Error on bad configuration. */
export async function createJwtVerifier(options: JwtVerifierOptions): Promise<JwtVerifier> {
  const leewaySeconds = options.leewaySeconds ?? MAX_LEEWAY_SECONDS;
  if (!Number.isInteger(leewaySeconds) || leewaySeconds < 0 || leewaySeconds > MAX_LEEWAY_SECONDS) {
    throw new Error(`JWT leeway must be an integer from 0 to ${MAX_LEEWAY_SECONDS} seconds`);
  }
  if (options.secret !== undefined && options.publicKey !== undefined) {
    throw new Error('Configure either a JWT secret or a JWT public key, not both');
  }
  if (options.issuer === '' || options.audience === '') throw new Error('JWT issuer and audience must not be empty');
  // RFC 8725 §3.9: without these, a token minted for another service with the same key is accepted here.
  if (typeof options.audience !== 'string') throw new Error('A JWT audience is required');
  if (options.publicKey !== undefined && options.issuer === undefined) {
    throw new Error('A JWT issuer is required with a JWT public key');
  }
  const allowed = await importKeys(options);
  const rules = { issuer: options.issuer, audience: options.audience, leewaySeconds };
  return {
    async verify(token: string, nowSeconds: number = Math.floor(Date.now() / 1000)): Promise<JwtClaims> {
      if (!Number.isFinite(nowSeconds)) throw new RangeError('nowSeconds must be a finite number');
      try {
        const payload = await verifySignedPayload(allowed, token);
        checkClaims(payload, rules, nowSeconds);
        return payload as unknown as JwtClaims;
      } catch (err) {
        if (err instanceof AppError) throw err;
        // whatever else went wrong, the caller sees a rejected token, not a 500 it can provoke
        throw invalid('Token could not be verified');
      }
    },
  };
}

function invalid(detail: string): AppError {
  return new AppError('INVALID_TOKEN', { detail });
}

async function importKeys(options: JwtVerifierOptions): Promise<Map<string, Verification>> {
  if (options.secret !== undefined) return importSecret(options.secret);
  if (options.publicKey !== undefined) return importPublicKey(options.publicKey);
  throw new Error('A JWT secret or a JWT public key is required');
}

async function importSecret(secret: string | Uint8Array): Promise<Map<string, Verification>> {
  const bytes = typeof secret === 'string' ? new TextEncoder().encode(secret) : Uint8Array.from(secret);
  // RFC 7518 §3.2 and RFC 8725 §3.5: short HMAC keys can be brute-forced offline
  if (bytes.byteLength < MIN_SECRET_BYTES) throw new Error(`JWT secret must be at least ${MIN_SECRET_BYTES} bytes`);
  const allowed = new Map<string, Verification>();
  for (const [alg, hash, signatureBytes] of HMAC_ALGORITHMS) {
    const params = { name: 'HMAC', hash };
    const key = await crypto.subtle.importKey('raw', bytes, params, false, ['verify']);
    allowed.set(alg, { key, params, signatureBytes });
  }
  return allowed;
}

async function importPublicKey(text: string): Promise<Map<string, Verification>> {
  const trimmed = text.trim();
  let keyObject: KeyObject;
  let jwkAlg: unknown;
  if (trimmed.startsWith('{')) {
    const jwk = parseJwk(trimmed);
    jwkAlg = jwk.alg;
    keyObject = createPublicKey({ key: jwk, format: 'jwk' });
  } else if (trimmed.startsWith('-----BEGIN PUBLIC KEY-----')) {
    keyObject = createPublicKey({ key: pemBody(trimmed), format: 'der', type: 'spki' });
  } else {
    throw new Error("JWT public key must be PEM SPKI ('BEGIN PUBLIC KEY') or JWK JSON");
  }
  const spec = describeKey(keyObject);
  if (jwkAlg !== undefined && jwkAlg !== spec.alg) throw new Error(`JWT public key JWK alg must be ${spec.alg}`);
  const der = keyObject.export({ type: 'spki', format: 'der' });
  const key = await crypto.subtle.importKey('spki', der, spec.importParams, false, ['verify']);
  return new Map([[spec.alg, { key, params: spec.params, signatureBytes: spec.signatureBytes }]]);
}

function parseJwk(text: string): JsonWebKey {
  let jwk: unknown;
  try {
    jwk = JSON.parse(text);
  } catch {
    throw new Error('JWT public key JWK is not valid JSON');
  }
  if (!isJsonObject(jwk)) throw new Error('JWT public key JWK must be a JSON object');
  // a private or symmetric JWK here is a secret in the wrong place, and "oct" would reopen HS/RS confusion
  if (PRIVATE_JWK_MEMBERS.some((member) => Object.hasOwn(jwk, member))) {
    throw new Error('JWT public key JWK must not contain private or symmetric key material');
  }
  if (jwk['use'] !== undefined && jwk['use'] !== 'sig') throw new Error("JWT public key JWK use must be 'sig'");
  const ops = jwk['key_ops'];
  if (ops !== undefined && !(Array.isArray(ops) && ops.includes('verify'))) {
    throw new Error("JWT public key JWK key_ops must include 'verify'");
  }
  return jwk as JsonWebKey;
}

function pemBody(pem: string): Buffer {
  const match = /^-----BEGIN PUBLIC KEY-----\r?\n([A-Za-z0-9+/=\r\n]+)-----END PUBLIC KEY-----$/.exec(pem);
  if (match === null || match[1] === undefined) throw new Error('JWT public key PEM is malformed');
  return Buffer.from(match[1].replace(/\r?\n/g, ''), 'base64');
}

function describeKey(keyObject: KeyObject): KeySpec {
  const type = keyObject.asymmetricKeyType;
  const details = keyObject.asymmetricKeyDetails ?? {};
  if (type === 'rsa') {
    const bits = details.modulusLength ?? 0;
    if (bits < MIN_RSA_BITS) throw new Error(`JWT public key RSA modulus must be at least ${MIN_RSA_BITS} bits`);
    const importParams = { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' };
    return { alg: 'RS256', importParams, params: importParams, signatureBytes: Math.ceil(bits / 8) };
  }
  if (type === 'ec' && details.namedCurve === 'prime256v1') {
    const importParams = { name: 'ECDSA', namedCurve: 'P-256' };
    // RFC 7518 §3.4: the JWS signature is raw R || S, 32 bytes each, which is WebCrypto's format too
    return { alg: 'ES256', importParams, params: { name: 'ECDSA', hash: 'SHA-256' }, signatureBytes: 64 };
  }
  if (type === 'ed25519') {
    return { alg: 'EdDSA', importParams: { name: 'Ed25519' }, params: { name: 'Ed25519' }, signatureBytes: 64 };
  }
  const curve = details.namedCurve === undefined ? '' : ` (${details.namedCurve})`;
  throw new Error(`JWT public key type is not supported: ${type ?? 'unknown'}${curve}; use RSA, EC P-256 or Ed25519`);
}

async function verifySignedPayload(
  allowed: Map<string, Verification>,
  token: string,
): Promise<Record<string, unknown>> {
  // RFC 8725 §3.1 order: size and syntax, then header, then signature; the payload is parsed last
  if (typeof token !== 'string') throw invalid('Token must be a string');
  if (token.length > MAX_TOKEN_CHARS) throw invalid(`Token is larger than ${MAX_TOKEN_CHARS} bytes`);
  const segments = token.split('.');
  if (segments.length !== 3) throw invalid('Token must have exactly three segments');
  const [headerSegment = '', payloadSegment = '', signatureSegment = ''] = segments;
  if (headerSegment === '' || payloadSegment === '') throw invalid('Token has an empty segment');
  for (const segment of segments) {
    if (!isCanonicalBase64url(segment)) throw invalid('Token segment is not unpadded base64url');
  }
  const header = decodeJsonObject(headerSegment, 'header');
  const verification = checkHeader(allowed, header);
  const signature = Buffer.from(signatureSegment, 'base64url');
  if (signature.byteLength !== verification.signatureBytes) throw invalid('Token signature has the wrong length');
  // the signing input is ASCII (checked above), so latin1 gives its bytes without a UTF-8 pass
  const signingInput = Buffer.from(token.slice(0, headerSegment.length + 1 + payloadSegment.length), 'latin1');
  const valid = await crypto.subtle.verify(verification.params, verification.key, signature, signingInput);
  if (!valid) throw invalid('Token signature is invalid');
  return decodeJsonObject(payloadSegment, 'payload');
}

function checkHeader(allowed: Map<string, Verification>, header: Record<string, unknown>): Verification {
  const typ = header['typ'];
  if (typ !== undefined && (typeof typ !== 'string' || typ.toLowerCase() !== 'jwt')) {
    throw invalid('Token type (typ) is not JWT');
  }
  // RFC 7515 §4.1.11: a recipient that does not understand a listed extension must reject
  if (header['crit'] !== undefined) throw invalid('Token has critical header extensions (crit)');
  const alg = header['alg'];
  const verification = typeof alg === 'string' ? allowed.get(alg) : undefined;
  if (verification === undefined) throw invalid('Token algorithm (alg) is not allowed');
  return verification;
}

function checkClaims(
  payload: Record<string, unknown>,
  rules: { issuer: string | undefined; audience: string; leewaySeconds: number },
  nowSeconds: number,
): void {
  const { exp, nbf, iat, iss, aud, sub } = payload;
  const leeway = rules.leewaySeconds;
  if (exp === undefined) throw invalid('Token has no expiry (exp)');
  if (!isNumericDate(exp)) throw invalid('Token expiry (exp) is not a number');
  // RFC 7519 §4.1.4: the current time must be before exp
  if (nowSeconds >= exp + leeway) throw invalid('Token expired');
  if (nbf !== undefined && !isNumericDate(nbf)) throw invalid('Token not-before (nbf) is not a number');
  if (nbf !== undefined && nowSeconds + leeway < nbf) throw invalid('Token is not valid yet (nbf)');
  if (iat !== undefined && !isNumericDate(iat)) throw invalid('Token issued-at (iat) is not a number');
  if (iat !== undefined && iat > nowSeconds + leeway) throw invalid('Token is issued in the future (iat)');
  if (rules.issuer !== undefined && iss !== rules.issuer) throw invalid('Token issuer (iss) does not match');
  if (!audienceMatches(aud, rules.audience)) throw invalid('Token audience (aud) does not match');
  if (typeof sub !== 'string' || sub === '') throw invalid('Token subject (sub) is missing');
  if (sub.length > MAX_SUB_CHARS) throw invalid(`Token subject (sub) is longer than ${MAX_SUB_CHARS} characters`);
}

function audienceMatches(aud: unknown, audience: string): boolean {
  // RFC 7519 §4.1.3: aud is a string or an array of strings
  if (typeof aud === 'string') return aud === audience;
  return Array.isArray(aud) && aud.includes(audience);
}

function isNumericDate(value: unknown): value is number {
  // JSON.parse turns 1e400 into Infinity; such a date means nothing
  return typeof value === 'number' && Number.isFinite(value);
}

function decodeJsonObject(segment: string, part: 'header' | 'payload'): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(utf8.decode(Buffer.from(segment, 'base64url')));
  } catch {
    // the parser's message quotes the input, so it is not passed on
    throw invalid(`Token ${part} is not valid JSON`);
  }
  if (!isJsonObject(value)) throw invalid(`Token ${part} is not a JSON object`);
  // an own "__proto__" member becomes a prototype change when a caller copies with Object.assign
  if (Object.hasOwn(value, '__proto__')) throw invalid(`Token ${part} has a forbidden member (__proto__)`);
  return value;
}

function isJsonObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isCanonicalBase64url(segment: string): boolean {
  if (!BASE64URL_CHARS.test(segment)) return false;
  const remainder = segment.length % 4;
  if (remainder === 1) return false;
  if (remainder === 0) return true;
  // RFC 4648 §3.5: unused trailing bits must be zero, else one value has many spellings
  const last = BASE64URL_ALPHABET.indexOf(segment.charAt(segment.length - 1));
  return (last & (remainder === 2 ? 0x0f : 0x03)) === 0;
}
