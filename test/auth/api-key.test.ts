import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import { generateApiKey, hashApiKey, keysEqual, looksLikeApiKey } from '../../lib/auth/api-key.ts';

test('generateApiKey() returns csk_ and 43 base64url characters, a 12-character prefix and its SHA-256', () => {
  const { key, prefix, hash } = generateApiKey();
  assert.match(key, /^csk_[A-Za-z0-9_-]{43}$/);
  assert.equal(Buffer.from(key.slice(4), 'base64url').length, 32);
  assert.equal(prefix, key.slice(0, 12));
  assert.match(prefix, /^csk_[A-Za-z0-9_-]{8}$/);
  assert.deepEqual(hash, createHash('sha256').update(key).digest());
});

test('generateApiKey() never repeats a key or a prefix in 1000 draws', () => {
  const keys = Array.from({ length: 1000 }, () => generateApiKey());
  assert.equal(new Set(keys.map((k) => k.key)).size, 1000);
  // 48 random bits per prefix: a collision in 1000 draws would point at a broken generator
  assert.equal(new Set(keys.map((k) => k.prefix)).size, 1000);
  assert.equal(new Set(keys.map((k) => k.hash.toString('hex'))).size, 1000);
});

test('generateApiKey() produces keys that looksLikeApiKey() accepts', () => {
  for (let i = 0; i < 200; i += 1) assert.ok(looksLikeApiKey(generateApiKey().key));
});

test('hashApiKey() is deterministic and matches the hash generateApiKey() returned', () => {
  const { key, hash } = generateApiKey();
  assert.deepEqual(hashApiKey(key), hash);
  assert.deepEqual(hashApiKey(key), hashApiKey(key));
  assert.equal(hashApiKey(key).length, 32);
  assert.notDeepEqual(hashApiKey(`${key.slice(0, -1)}A`), hashApiKey(`${key.slice(0, -1)}B`));
});

test('hashApiKey() of a known input is its SHA-256', () => {
  // FIPS 180-2 example: SHA-256("abc")
  assert.equal(hashApiKey('abc').toString('hex'), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
});

test('keysEqual() is true only for equal buffers and false for different lengths without throwing', () => {
  const a = hashApiKey('csk_one');
  assert.equal(keysEqual(a, Buffer.from(a)), true);
  assert.equal(keysEqual(a, hashApiKey('csk_two')), false);
  assert.equal(keysEqual(a, a.subarray(0, 31)), false);
  assert.equal(keysEqual(Buffer.alloc(0), a), false);
});

test('looksLikeApiKey() rejects anything but the exact key shape', () => {
  const { key } = generateApiKey();
  const body = key.slice(4);
  const negatives = [
    '',
    body,
    `csk_${body.slice(1)}`,
    `${key}A`,
    `CSK_${body}`,
    `sk_${body}`,
    `csk_${body.slice(0, -1)}=`,
    `csk_${body.slice(0, -1)}+`,
    `csk_${body.slice(0, -1)}/`,
    ` ${key}`,
    `${key}\n`,
    `csk_${body.slice(0, 42)}B`, // non-zero unused bits: no 32-byte key encodes to this
    'eyJhbGciOiJIUzI1NiJ9.e30.sig',
  ];
  for (const token of negatives) assert.equal(looksLikeApiKey(token), false, JSON.stringify(token));
  assert.equal(looksLikeApiKey(key), true);
});
