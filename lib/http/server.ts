// node:http hardening in one place: timeouts, header size, connection caps, and answers to broken requests.
import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { ERROR_CODES, type ErrorCode } from '../errors.ts';
import type { Logger } from '../log.ts';

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

/** Creates the hardened server around a request listener. */
export function createHttpServer(
  options: HttpServerOptions,
  listener: (req: IncomingMessage, res: ServerResponse) => void,
): Server {
  const server = createServer(
    {
      headersTimeout: options.headersTimeoutMs,
      requestTimeout: options.requestTimeoutMs,
      keepAliveTimeout: options.keepAliveTimeoutMs,
      connectionsCheckingInterval: CONNECTIONS_CHECKING_INTERVAL_MS,
      maxHeaderSize: MAX_HEADER_BYTES,
      // RFC 9112 §3.2: a request without Host is a 400.
      requireHostHeader: true,
      // Duplicate Content-Length/Transfer-Encoding are still rejected by llhttp (request smuggling).
      insecureHTTPParser: false,
    },
    listener,
  );
  server.maxRequestsPerSocket = options.maxRequestsPerSocket;
  server.maxConnections = options.maxConnections ?? connectionBudget();
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => answerClientError(err, socket, options));
  return server;
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

/** Answers a request Node could not parse with problem+json and the security headers, then closes. */
function answerClientError(err: NodeJS.ErrnoException, socket: Socket, options: HttpServerOptions): void {
  // A response already under way on this socket (a pipelined request went bad mid-stream):
  // writing a status line now would splice a second response into its body. Cut it instead.
  const inFlight = (socket as Socket & { _httpMessage?: ServerResponse | null })._httpMessage;
  if (err.code === 'ECONNRESET' || !socket.writable || inFlight?.headersSent === true) {
    socket.destroy();
    return;
  }
  const code = clientErrorCode(err);
  const { status, title } = ERROR_CODES[code];
  const body = JSON.stringify({ type: 'about:blank', title, status, code });
  const lines = [`HTTP/1.1 ${status} ${title}`];
  for (let i = 0; i < options.securityHeaders.length; i += 2)
    lines.push(`${options.securityHeaders[i]}: ${options.securityHeaders[i + 1]}`);
  lines.push(
    'content-type: application/problem+json; charset=utf-8',
    `content-length: ${Buffer.byteLength(body)}`,
    'connection: close',
  );
  options.log.debug('client error', { code: err.code, status });
  socket.end(`${lines.join('\r\n')}\r\n\r\n${body}`);
}
