// Recognises database failures that mean "unavailable right now" rather than a bug.
import { causeChain } from '../errors.ts';

// SQLSTATE class 08 (connection exception), class 28 (authorization: a password mid-rotation),
// 53300 too_many_connections, 57P01-57P03 shutdown/cannot connect now.
const UNAVAILABLE_SQLSTATE = /^(08...|28...|53300|57P0[123])$/;
const UNAVAILABLE_ERRNO = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EAI_AGAIN',
]);
// pg and pg-pool report these as plain Errors without a code (node-postgres #2973).
const UNAVAILABLE_MESSAGE = new RegExp(
  '^(timeout exceeded when trying to connect|Connection terminated|Query read timeout|' +
    'Client has encountered a connection error)',
);

/** True when `err` (or its cause) says the database cannot be reached or is overloaded. */
export function isDatabaseUnavailable(err: unknown): boolean {
  return causeChain(err).some(
    ({ code, message }) =>
      (typeof code === 'string' && (UNAVAILABLE_SQLSTATE.test(code) || UNAVAILABLE_ERRNO.has(code))) ||
      UNAVAILABLE_MESSAGE.test(message),
  );
}
