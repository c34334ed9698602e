// node:http hardening in one place: timeouts, header size, connection caps, and answers to broken requests.
//
// Node answers some requests itself (no Host: a bare 400; an unknown Expect: a bare 417; a request
// pipelined past maxRequestsPerSocket: a bare 503) without our headers or problem+json; those checks
// are ours instead, answered by the writer below.
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { AppError, type ErrorCode, problemBody } from '../errors.ts';
import type { Logger } from '../log.ts';
import { deferContinue } from './body.ts';

export interface HttpServerOptions {
  headersTimeoutMs: number;
  requestTimeoutMs: number;
  keepAliveTimeoutMs: number;
  maxRequestsPerSocket: number;
  /** Open-connection cap; derived from the file-descriptor budget when unset. */
  maxConnections: number | undefined;
  /** Headers every response carries, also the ones written here for unparseable requests. */
  securityHeaders: readonly string[];
  log: Logger;
}

/** 16 KiB: larger header blocks get 431 (Node's default is 16 KiB too, but say it). */
export const MAX_HEADER_BYTES = 16 * 1024;
// Node checks headersTimeout and requestTimeout only on this sweep; its 30 s default lets slowloris hold sockets.
const CONNECTIONS_CHECKING_INTERVAL_MS = 1_000;
const PROBLEM_TYPE = 'application/problem+json; charset=utf-8';
const REQUESTS_SERVED = Symbol('requestsServed');

/** Creates the hardened server around a request listener. */
export function createHttpServer(
  options: HttpServerOptions,
  listener: (req: IncomingMessage, res: ServerResponse) => void,
): Server {
  const { maxRequestsPerSocket } = options;
  function onRequest(req: IncomingMessage, res: ServerResponse): void {
    const refused = hostProblem(req) ?? (maxRequestsPerSocket > 0 ? overSocketLimit(req, res) : undefined);
    if (refused === undefined) listener(req, res);
    else answerRefused(res, refused, options);
  }
  /** Closes the connection after its last allowed request; one pipelined past it gets 503. */
  function overSocketLimit(req: IncomingMessage, res: ServerResponse): AppError | undefined {
    const socket = req.socket as Socket & { [REQUESTS_SERVED]?: number };
    const served = (socket[REQUESTS_SERVED] ?? 0) + 1;
    socket[REQUESTS_SERVED] = served;
    if (served === maxRequestsPerSocket) res.shouldKeepAlive = false;
    if (served <= maxRequestsPerSocket) return undefined;
    return new AppError('SERVICE_UNAVAILABLE', { detail: 'Too many requests on one connection; open a new one' });
  }
  const server = createServer(
    {
      headersTimeout: options.headersTimeoutMs,
      requestTimeout: options.requestTimeoutMs,
      keepAliveTimeout: options.keepAliveTimeoutMs,
      connectionsCheckingInterval: CONNECTIONS_CHECKING_INTERVAL_MS,
      maxHeaderSize: MAX_HEADER_BYTES,
      // Checked by onRequest instead: node's own 400 carries none of our headers.
      requireHostHeader: false,
      // Duplicate Content-Length/Transfer-Encoding are still rejected by llhttp (request smuggling).
      insecureHTTPParser: false,
    },
    onRequest,
  );
  // Counted in onRequest instead: node's own 503 past the limit carries none of our headers.
  server.maxRequestsPerSocket = 0;
  server.maxConnections = options.maxConnections ?? connectionBudget();
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => answerClientError(err, socket, options));
  // Node would send 100 Continue before any check; the body reader sends it once the body is wanted.
  server.on('checkContinue', (req: IncomingMessage, res: ServerResponse) => {
    deferContinue(res);
    onRequest(req, res);
  });
  // RFC 9110 §10.1.1: an expectation other than 100-continue cannot be met.
  server.on('checkExpectation', (_req: IncomingMessage, res: ServerResponse) =>
    answerRefused(
      res,
      new AppError('EXPECTATION_FAILED', { detail: 'Only Expect: 100-continue is supported' }),
      options,
    ),
  );
  return server;
}

// RFC 9110 §7.2: uri-host [ ":" port ], where uri-host is an IP literal in brackets or a reg-name
// (which covers IPv4): unreserved characters, sub-delims and percent-escapes, possibly empty.
const IP_LITERAL = String.raw`\[(?:[0-9A-Fa-f:.]+|v[0-9A-Fa-f]+\.[\w\-.~!$&'()*+,;=:]+)\]`;
const REG_NAME = String.raw`(?:[\w\-.~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*`;
const HOST_VALUE = new RegExp(`^(?:${IP_LITERAL}|${REG_NAME})(?::[0-9]*)?$`);

/**
 * RFC 9112 §3.2: an HTTP/1.1 request without Host, or any request with more than one or with a value
 * that is not a host and port, is a 400.
 */
function hostProblem(req: IncomingMessage): AppError | undefined {
  // Node keeps only the first of duplicate Host fields in req.headers: count them in the raw list.
  const raw = req.rawHeaders;
  let hosts = 0;
  let value: string | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    if (name.length === 4 && name.toLowerCase() === 'host') {
      hosts++;
      value = raw[i + 1];
    }
  }
  if (hosts > 1) return new AppError('BAD_REQUEST', { detail: 'More than one Host header' });
  if (hosts === 0 && req.httpVersionMajor === 1 && req.httpVersionMinor === 1) {
    return new AppError('BAD_REQUEST', { detail: 'A Host header is required' });
  }
  if (value !== undefined && !HOST_VALUE.test(value)) {
    return new AppError('BAD_REQUEST', {
      detail: 'The Host header is not a host name or address with an optional port',
    });
  }
  return undefined;
}

/** The open-connection cap from RLIMIT_NOFILE, keeping room for the database, upstream and files. */
export function connectionBudget(): number {
  let soft = 1024;
  try {
    const limits = readFileSync('/proc/self/limits', 'utf8');
    const match = /^Max open files\s+(\d+|unlimited)/m.exec(limits);
    if (match?.[1] !== undefined) soft = match[1] === 'unlimited' ? 65_536 : Number(match[1]);
  } catch {
    // not Linux: keep the conservative default
  }
  return Math.max(64, Math.floor(soft * 0.8) - 128);
}

function clientErrorCode(err: NodeJS.ErrnoException): ErrorCode {
  switch (err.code) {
    case 'HPE_HEADER_OVERFLOW':
      return 'HEADERS_TOO_LARGE';
    case 'ERR_HTTP_REQUEST_TIMEOUT':
    case 'HPE_HEADERS_TIMEOUT':
      return 'REQUEST_TIMEOUT';
    case 'HPE_UNEXPECTED_CONTENT_LENGTH':
    case 'HPE_INVALID_TRANSFER_ENCODING':
      return 'BAD_FRAMING';
    default:
      return 'BAD_REQUEST';
  }
}

/** The fields and body of a problem answered outside the app: its own request id, the security headers, close. */
function problemAnswer(
  err: AppError,
  options: HttpServerOptions,
): { fields: string[]; body: string; requestId: string } {
  const requestId = randomUUID();
  const body = JSON.stringify(problemBody(err, requestId));
  const fields = [
    ...options.securityHeaders,
    'x-request-id',
    requestId,
    'content-type',
    PROBLEM_TYPE,
    'content-length',
    String(Buffer.byteLength(body)),
    'connection',
    'close',
  ];
  return { fields, body, requestId };
}

/** Answers a parsed request the app never sees (bad Host, unmet Expect) with problem+json, then closes. */
function answerRefused(res: ServerResponse, err: AppError, options: HttpServerOptions): void {
  const { fields, body, requestId } = problemAnswer(err, options);
  options.log.debug('request refused', { code: err.code, status: err.status, requestId });
  res.writeHead(err.status, fields);
  res.end(body);
}

/** Answers a request Node could not parse with problem+json and the security headers, then closes. */
function answerClientError(err: NodeJS.ErrnoException, socket: Socket, options: HttpServerOptions): void {
  // A response already under way on this socket (a pipelined request went bad mid-stream):
  // writing a status line now would splice a second response into its body. Cut it instead.
  const inFlight = (socket as Socket & { _httpMessage?: ServerResponse | null })._httpMessage;
  if (err.code === 'ECONNRESET' || !socket.writable || inFlight?.headersSent === true) {
    socket.destroy();
    return;
  }
  const problem = new AppError(clientErrorCode(err));
  const { fields, body, requestId } = problemAnswer(problem, options);
  const lines = [`HTTP/1.1 ${problem.status} ${problem.title}`];
  for (let i = 0; i < fields.length; i += 2) lines.push(`${fields[i]}: ${fields[i + 1]}`);
  options.log.debug('client error', { code: err.code, status: problem.status, requestId });
  socket.end(`${lines.join('\r\n')}\r\n\r\n${body}`);
}
