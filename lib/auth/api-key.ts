// API key material: generation, hashing and comparison. Storage lives in lib/db.
//
// A key is 'csk_' + 32 random bytes in base64url. Only its SHA-256 is stored: the key has 256
// bits of entropy, so a fast unsalted hash cannot be brute-forced, and the hash can be an
// indexed lookup column. The first 12 characters are kept in clear for display.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';

const KEY_PREFIX = 'csk_';
const KEY_RANDOM_BYTES = 32;
const DISPLAY_PREFIX_CHARS = 12;
// 32 bytes are 43 base64url characters; the last one carries 2 unused bits, which must be zero
const KEY_SHAPE = /^csk_[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$/;

/** A freshly generated key: show `key` once, store `prefix` and `hash`. */
export interface GeneratedApiKey {
  key: string;
  prefix: string;
  hash: Buffer;
}

/** Generates a new random API key with its display prefix and SHA-256 hash. */
export function generateApiKey(): GeneratedApiKey {
  const key = KEY_PREFIX + randomBytes(KEY_RANDOM_BYTES).toString('base64url');
  return { key, prefix: key.slice(0, DISPLAY_PREFIX_CHARS), hash: hashApiKey(key) };
}

/** SHA-256 of the whole key, as stored in api_keys.key_hash. */
export function hashApiKey(key: string): Buffer {
  return createHash('sha256').update(key, 'utf8').digest();
}

/** True only for the exact shape generateApiKey() produces: 'csk_' and 43 base64url characters. */
export function looksLikeApiKey(token: string): boolean {
  return typeof token === 'string' && KEY_SHAPE.test(token);
}

/** Compares two hashes in constant time; different lengths are simply unequal. */
export function keysEqual(a: Buffer, b: Buffer): boolean {
  // timingSafeEqual throws on a length mismatch; lengths of hashes are not secret
  return a.length === b.length && timingSafeEqual(a, b);
}
