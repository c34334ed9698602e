// The only writer of responses: JSON, problem+json, plain text, empty, and SSE with backpressure.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { AppError, problemBody, toAppError } from '../errors.ts';
import { formatSse } from './sse.ts';
import type { Context, Reply, SseEvent } from './types.ts';

const JSON_TYPE = 'application/json; charset=utf-8';
const PROBLEM_TYPE = 'application/problem+json; charset=utf-8';
const SSE_HEADERS = ['content-type', 'text/event-stream; charset=utf-8', 'x-accel-buffering', 'no'];
const DEFAULT_HEARTBEAT_MS = 15_000;
/** How long a stream may wait for a client that does not read before the socket is dropped. */
export const DRAIN_TIMEOUT_MS = 30_000;

// The base list as an object, built once per distinct list, for the rare responses whose headers
// must be merged (a handler's or an error's own fields override, a repeated Vary is joined).
const baseObjects = new WeakMap<readonly string[], Record<string, string>>();

function baseObject(list: readonly string[]): Record<string, string> {
  let obj = baseObjects.get(list);
  if (obj === undefined) {
    obj = {};
    for (let i = 0; i < list.length; i += 2) obj[list[i] as string] = list[i + 1] as string;
    baseObjects.set(list, obj);
  }
  return obj;
}

function add(out: Record<string, string>, name: string, value: string): void {
  const key = name.toLowerCase();
  const prev = out[key];
  // A list-valued header set twice (vary) is joined, as RFC 9110 §5.3 allows.
  out[key] = prev === undefined ? value : `${prev}, ${value}`;
}

/**
 * True while request body bytes may still be unread. node:http calls the listener before it has
 * parsed the rest of the message, so `complete` alone is false even for a bodyless GET answered
 * synchronously; a request without Content-Length or Transfer-Encoding has no body to wait for.
 */
function bodyUnread(req: IncomingMessage): boolean {
  if (req.complete) return false;
  const { headers } = req;
  if (headers['transfer-encoding'] !== undefined) return true;
  const length = headers['content-length'];
  return length !== undefined && Number(length) !== 0;
}

function headerList(
  ctx: Context,
  extra: Record<string, string> | undefined,
  content: readonly string[],
): string[] | Record<string, string> {
  const unread = bodyUnread(ctx.req);
  // The common case: our own lowercase names, none repeated (middleware add distinct fields), nothing
  // to override. A flat list goes to writeHead as is: no per-request object, no lowercasing.
  if (extra === undefined && !unread) return ctx.baseHeaders.concat(ctx.headers, content);
  const out = { ...baseObject(ctx.baseHeaders) };
  const { headers } = ctx;
  for (let i = 0; i < headers.length; i += 2) add(out, headers[i] as string, headers[i + 1] as string);
  for (let i = 0; i < content.length; i += 2) add(out, content[i] as string, content[i + 1] as string);
  if (extra !== undefined) for (const name of Object.keys(extra)) out[name.toLowerCase()] = extra[name] as string;
  // Answered before the body was read (401, 413, …): the unread rest would be parsed as the next
  // request, and a slow sender would later get an unsolicited 408. Close the connection instead.
  if (unread && out['connection'] === undefined) out['connection'] = 'close';
  return out;
}

function writeBody(
  ctx: Context,
  status: number,
  body: string,
  contentType: string,
  extra?: Record<string, string>,
): void {
  const length = Buffer.byteLength(body);
  ctx.status = status;
  ctx.res.writeHead(status, headerList(ctx, extra, ['content-type', contentType, 'content-length', String(length)]));
  // HEAD: node's ServerResponse drops the body but keeps the length, as RFC 9110 §9.3.2 wants.
  ctx.res.end(body);
  ctx.bytes = ctx.method === 'HEAD' ? 0 : length;
}

/** Writes a JSON body with the collected headers. */
export function sendJson(ctx: Context, status: number, body: unknown, extra?: Record<string, string>): void {
  writeBody(ctx, status, JSON.stringify(body), JSON_TYPE, extra);
}

/** Writes an error as RFC 9457 problem+json; 5xx bodies carry only title, code and request id. */
export function sendProblem(ctx: Context, err: AppError): void {
  writeBody(ctx, err.status, JSON.stringify(problemBody(err, ctx.requestId)), PROBLEM_TYPE, err.headers);
}

/** Writes a response without a body (204, or a preflight answer). */
export function sendEmpty(ctx: Context, status: number, extra?: Record<string, string>): void {
  ctx.status = status;
  ctx.res.writeHead(status, headerList(ctx, extra, []));
  ctx.res.end();
}

/**
 * A JSON reply built once and sent many times (health answers, the agents list): the body is
 * serialised here, once, instead of on every request. What is serialised here is what is sent: build a
 * new reply rather than change the body afterwards.
 */
export function constantJson(status: number, body: unknown): Reply {
  return Object.freeze({ kind: 'json', status, body, serialised: JSON.stringify(body) });
}

/** Writes a reply returned by a handler: synchronously, except SSE, whose promise settles when the stream has ended. */
export function sendReply(ctx: Context, reply: Reply): Promise<void> | undefined {
  switch (reply.kind) {
    case 'json':
      writeBody(ctx, reply.status, reply.serialised ?? JSON.stringify(reply.body), JSON_TYPE, reply.headers);
      return undefined;
    case 'text':
      writeBody(ctx, reply.status, reply.body, reply.contentType, reply.headers);
      return undefined;
    case 'empty':
      sendEmpty(ctx, reply.status, reply.headers);
      return undefined;
    case 'sse':
      return streamSse(ctx, reply.events, reply.heartbeatMs ?? DEFAULT_HEARTBEAT_MS, reply.headers);
  }
}

/**
 * Streams events with backpressure: waits for 'drain' when the socket buffer is full, stops
 * pulling when the request signal fires (the producer sees `return()`), sends `: ping`
 * comments while idle, and ends a failed stream with one `event: error` frame (code only).
 */
export async function streamSse(
  ctx: Context,
  events: AsyncIterable<SseEvent>,
  heartbeatMs: number,
  extra?: Record<string, string>,
): Promise<void> {
  const { res } = ctx;
  ctx.status = 200;
  ctx.clearDeadline(); // a stream is bounded by its producer's timeouts and the drain timeout, not the request deadline
  res.writeHead(200, headerList(ctx, extra, SSE_HEADERS));
  // node:http already corks the socket for the rest of the tick on each write, so events produced
  // together leave in one syscall; an extra res.cork() here would bypass the backpressure signal.
  const write = (chunk: string): boolean => {
    ctx.bytes += Buffer.byteLength(chunk);
    return res.write(chunk);
  };
  const heartbeat = setInterval(() => {
    if (res.writableLength === 0) write(': ping\n\n');
  }, heartbeatMs);
  heartbeat.unref();
  const iterator = events[Symbol.asyncIterator]();
  let frames = 0;
  try {
    for (;;) {
      if (ctx.signal.aborted || res.destroyed) break;
      const step = await iterator.next();
      if (step.done === true) break;
      if (ctx.signal.aborted || res.destroyed) break;
      const ok = write(formatSse(step.value));
      // node:http corks the socket until the current tick's microtasks are done, and a fast upstream
      // keeps that chain busy parsing every buffered chunk: the first frames (headers + start, the
      // first delta) would wait for all of it. Send them at once; later frames coalesce as before.
      if (++frames <= 2 && res.socket !== null && res.socket.writableCorked > 0) res.socket.uncork();
      if (!ok && !(await drained(res, ctx.signal))) {
        res.destroy(); // a client that stops reading must not make us buffer without bound
        break;
      }
    }
  } catch (err) {
    const appErr = toAppError(err);
    if (appErr.status >= 500 && !(err instanceof AppError)) ctx.log.error('stream failed', { err });
    if (!res.destroyed && !ctx.signal.aborted)
      write(formatSse({ event: 'error', data: { code: appErr.code, requestId: ctx.requestId } }));
  } finally {
    clearInterval(heartbeat);
    // Stop the producer (closes the upstream request) whatever ended the loop.
    try {
      await iterator.return?.();
    } catch (err) {
      ctx.log.warn('stream producer failed to close', { err });
    }
    if (!res.destroyed) res.end();
  }
}

/** Resolves true on 'drain', false when the client is gone, the signal fires or the wait times out. */
function drained(res: ServerResponse, signal: AbortSignal): Promise<boolean> {
  return new Promise((resolve) => {
    const done = (ok: boolean): void => {
      clearTimeout(timer);
      res.off('drain', onDrain);
      res.off('close', onClose);
      signal.removeEventListener('abort', onClose);
      resolve(ok);
    };
    const onDrain = (): void => done(true);
    const onClose = (): void => done(false);
    const timer = setTimeout(onClose, DRAIN_TIMEOUT_MS);
    res.once('drain', onDrain);
    res.once('close', onClose);
    signal.addEventListener('abort', onClose, { once: true });
  });
}
