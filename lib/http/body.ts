// Reads a JSON request body with a streaming byte cap and structural bounds.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { AppError } from '../errors.ts';
import type { Context } from './types.ts';

export interface BodyLimits {
  maxBytes: number;
  /** Deepest nesting of arrays/objects accepted. */
  maxDepth?: number;
  /** Most object keys accepted across the whole document. */
  maxKeys?: number;
}

// Responses whose client sent Expect: 100-continue and waits for it before sending the body.
const awaitingContinue = new WeakSet<ServerResponse>();

/**
 * Holds back 100 Continue until a handler starts reading the body, so a request refused before
 * that (413 on its declared length, 401) is answered without ever being asked for its body.
 */
export function deferContinue(res: ServerResponse): void {
  awaitingContinue.add(res);
}

const DEFAULT_MAX_DEPTH = 32;
const DEFAULT_MAX_KEYS = 1000;
// Keys that reach Object.prototype through naive merges (prototype pollution).
const FORBIDDEN_KEYS = new Set(['__proto__', 'constructor', 'prototype']);

/** True when the content type is JSON (`application/json`, optionally with a UTF-8 charset). */
export function isJsonContentType(header: string | undefined): boolean {
  if (header === undefined) return false;
  const [type, ...params] = header.split(';');
  if (type?.trim().toLowerCase() !== 'application/json') return false;
  for (const param of params) {
    const [name, value] = param.split('=');
    // RFC 8259 §8.1: JSON is UTF-8; refuse any other declared charset rather than misread it.
    if (name?.trim().toLowerCase() === 'charset' && value?.trim().replace(/"/g, '').toLowerCase() !== 'utf-8')
      return false;
  }
  return true;
}

/** Reads and parses the body as JSON; 415, 413 and 400 are AppErrors, nothing else is thrown. */
export async function readJson(ctx: Context, limits: BodyLimits): Promise<unknown> {
  const { req } = ctx;
  if (!isJsonContentType(req.headers['content-type'])) {
    throw new AppError('UNSUPPORTED_MEDIA_TYPE', { detail: 'Content-Type must be application/json' });
  }
  checkDeclaredLength(req, limits.maxBytes);
  const text = await readText(ctx, limits.maxBytes);
  return parseJson(text, limits);
}

// The rest of the body is never read, so the connection cannot be reused.
const CLOSE = { connection: 'close' };

function tooLarge(maxBytes: number): AppError {
  return new AppError('BODY_TOO_LARGE', { detail: `Body exceeds ${maxBytes} bytes`, headers: CLOSE });
}

/** Throws 413 when the request declares a Content-Length over `maxBytes`, before a byte of the body is read. */
export function checkDeclaredLength(req: IncomingMessage, maxBytes: number): void {
  const declared = req.headers['content-length'];
  if (declared !== undefined && Number(declared) > maxBytes) throw tooLarge(maxBytes);
}

function readText(ctx: Context, maxBytes: number): Promise<string> {
  const { req, signal } = ctx;
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let received = 0;
    const cleanup = (): void => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
      req.off('aborted', onAborted);
      signal.removeEventListener('abort', onAborted);
    };
    const onData = (chunk: Buffer): void => {
      received += chunk.length;
      if (received > maxBytes) {
        cleanup();
        req.pause(); // stop reading: a chunked body is cut at the cap, not buffered
        reject(tooLarge(maxBytes));
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = (): void => {
      cleanup();
      resolve(Buffer.concat(chunks, received).toString('utf8'));
    };
    const onError = (err: Error): void => {
      cleanup();
      reject(new AppError('BAD_REQUEST', { detail: 'Request body could not be read', cause: err, headers: CLOSE }));
    };
    const onAborted = (): void => {
      cleanup();
      // RFC 9110 §15.5.9: close after a 408; the unread rest of the body must not hold the socket.
      reject(new AppError('REQUEST_TIMEOUT', { detail: 'Request body was not received in time', headers: CLOSE }));
    };
    if (signal.aborted) {
      onAborted();
      return;
    }
    // RFC 9110 §10.1.1: the client is told to send its body only now that the body is wanted.
    if (awaitingContinue.delete(ctx.res) && !ctx.res.headersSent) ctx.res.writeContinue();
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onError);
    req.on('aborted', onAborted);
    signal.addEventListener('abort', onAborted, { once: true });
  });
}

/** Parses JSON text and enforces depth, key count and forbidden keys. */
export function parseJson(text: string, limits: Omit<BodyLimits, 'maxBytes'> = {}): unknown {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new AppError('INVALID_JSON', { detail: 'Body is not valid JSON' });
  }
  checkStructure(value, limits.maxDepth ?? DEFAULT_MAX_DEPTH, limits.maxKeys ?? DEFAULT_MAX_KEYS);
  return value;
}

function checkStructure(root: unknown, maxDepth: number, maxKeys: number): void {
  // Iterative walk: no input can overflow the stack.
  const stack: Array<[unknown, number]> = [[root, 1]];
  let keys = 0;
  while (stack.length > 0) {
    const [value, depth] = stack.pop() as [unknown, number];
    if (value === null || typeof value !== 'object') continue;
    if (depth > maxDepth) throw new AppError('INVALID_JSON', { detail: `Body nests deeper than ${maxDepth} levels` });
    if (Array.isArray(value)) {
      for (const item of value) stack.push([item, depth + 1]);
      continue;
    }
    for (const key of Object.keys(value)) {
      if (FORBIDDEN_KEYS.has(key))
        throw new AppError('INVALID_JSON', { detail: `Body contains a forbidden key: ${key}` });
      if (++keys > maxKeys) throw new AppError('INVALID_JSON', { detail: `Body has more than ${maxKeys} keys` });
      stack.push([(value as Record<string, unknown>)[key], depth + 1]);
    }
  }
}
