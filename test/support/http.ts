// Serves a small route table through createApp on a real node:http server on port 0, with captured logs.
import { createServer, type IncomingMessage } from 'node:http';
import { type AddressInfo, connect } from 'node:net';
import { createApp } from '../../lib/http/app.ts';
import { createClientIp } from '../../lib/http/client-ip.ts';
import type { Route } from '../../lib/http/router.ts';
import type { Handler, Middleware, Reply } from '../../lib/http/types.ts';
import { createLogger, type Logger, type LogLevel } from '../../lib/log.ts';
import { logLines } from './log-lines.ts';

export interface Served {
  /** Base URL, e.g. http://127.0.0.1:41234 */
  url: string;
  port: number;
  log: Logger;
  /** Everything logged so far (flushed first). */
  logs(): string;
  /** Every log line so far, parsed. */
  lines(): Array<Record<string, unknown>>;
  close(): Promise<void>;
}

export interface ServeOptions {
  level?: LogLevel;
  secrets?: readonly string[];
  deadlineMs?: number;
  clientIp?: (req: IncomingMessage) => string;
}

/**
 * Starts createApp(routes, middleware) on 127.0.0.1:0; close() ends every connection.
 * Pass a function to build middleware that needs the captured logger.
 */
export async function serve(
  routes: readonly Route[],
  middleware: readonly Middleware[] | ((log: Logger) => readonly Middleware[]),
  options: ServeOptions = {},
): Promise<Served> {
  const chunks: string[] = [];
  const log = createLogger({
    level: options.level ?? 'debug',
    secrets: options.secrets ?? [],
    sink: (chunk) => chunks.push(chunk),
  });
  const listener = createApp({
    routes,
    middleware: typeof middleware === 'function' ? middleware(log) : middleware,
    log,
    deadlineMs: options.deadlineMs ?? 30_000,
    clientIp: options.clientIp ?? createClientIp([]),
  });
  const server = createServer(listener);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  const logs = (): string => {
    log.flush();
    return chunks.join('');
  };
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    log,
    logs,
    lines: () => logLines(logs()),
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** A route whose handler answers `reply`; protected unless `options.public`. */
export function route(
  method: string,
  pattern: string,
  reply: Reply | Handler,
  options: { public?: boolean } = {},
): Route {
  const handler: Handler = typeof reply === 'function' ? reply : async () => reply;
  return { method, pattern, handler, public: options.public === true };
}

/** A JSON 200 reply. */
export function ok(body: unknown = { ok: true }): Reply {
  return { kind: 'json', status: 200, body };
}

/** Sends raw bytes on a fresh TCP connection and resolves with everything the server sent until it closed. */
export function rawRequest(port: number, ...parts: Array<string | Buffer>): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    const received: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => received.push(chunk));
    socket.on('error', (err: NodeJS.ErrnoException) => {
      // The server may reset a connection whose body it refused; what it sent before counts.
      if (err.code === 'ECONNRESET' || err.code === 'EPIPE') resolve(Buffer.concat(received).toString('latin1'));
      else reject(err);
    });
    socket.on('close', () => resolve(Buffer.concat(received).toString('latin1')));
    for (const part of parts) socket.write(part);
  });
}

/** The status code of a raw HTTP/1.1 response. */
export function rawStatus(response: string): number {
  return Number(/^HTTP\/1\.1 (\d{3})/.exec(response)?.[1] ?? 0);
}
