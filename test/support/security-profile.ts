// The API security header profile of DESIGN.md ("Every response … carries"), written out here
// rather than taken from lib/, so the tests check the code against the contract.
import assert from 'node:assert/strict';

const PROFILE: Readonly<Record<string, string>> = {
  'content-security-policy': "default-src 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'cross-origin-resource-policy': 'same-origin',
  'cross-origin-opener-policy': 'same-origin',
  'cache-control': 'no-store',
  'x-xss-protection': '0',
};
const HSTS = 'max-age=31536000; includeSubDomains';

/** Asserts the profile on a response's headers; HSTS present or absent as configured. */
export function assertSecurityProfile(headers: { get(name: string): string | null }, hsts: boolean): void {
  for (const [name, value] of Object.entries(PROFILE)) assert.equal(headers.get(name), value, name);
  const permissions = headers.get('permissions-policy') ?? '';
  assert.ok(
    permissions !== '' && permissions.split(',').every((d) => /^\s*[a-z-]+=\(\)$/.test(d)),
    `permissions-policy denies all: ${permissions}`,
  );
  assert.match(permissions, /camera=\(\)/);
  assert.match(permissions, /geolocation=\(\)/);
  assert.match(permissions, /microphone=\(\)/);
  assert.equal(headers.get('x-powered-by'), null);
  assert.equal(headers.get('server'), null);
  assert.equal(headers.get('strict-transport-security'), hsts ? HSTS : null);
}
