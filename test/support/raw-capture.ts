// Raw HTTP/1.1 exchanges for tests that must see every byte a server sends: the status line, the
// headers, the chunk framing and the body, streams included, exactly as they arrive on the socket.
// A client library would parse and drop what it does not understand (SSE comments, trailers).
import { connect } from 'node:net';

/** A request built from fields; `connection: close` is added so the server ends the exchange. */
export interface RawRequest {
  method: string;
  path: string;
  headers?: Record<string, string>;
  body?: string;
}

/** A raw exchange in progress on its own connection. */
export interface RawCapture {
  /** Everything received so far, one character per byte (latin1). */
  text(): string;
  /** Resolves once what has arrived matches `pattern`; rejects if the connection closes or `timeoutMs` passes first. */
  until(pattern: RegExp, timeoutMs: number): Promise<void>;
  /** Everything received, once the server has closed the connection; rejects if it stays open past the timeout. */
  readonly done: Promise<string>;
}

/** Serialises `request` as HTTP/1.1 bytes for the server at `url`, with content-length when there is a body. */
export function formatRequest(url: string, request: RawRequest): string {
  const headers: Record<string, string> = { host: new URL(url).host, connection: 'close', ...request.headers };
  if (request.body !== undefined) headers['content-length'] = String(Buffer.byteLength(request.body));
  const lines = Object.entries(headers).map(([name, value]) => `${name}: ${value}\r\n`);
  return `${request.method} ${request.path} HTTP/1.1\r\n${lines.join('')}\r\n${request.body ?? ''}`;
}

/** Sends `bytes` on a new connection to `url` and keeps every byte that comes back until the server closes it. */
export function capture(url: string, bytes: string | Buffer, timeoutMs = 10_000): RawCapture {
  const { hostname, port } = new URL(url);
  const socket = connect(Number(port), hostname);
  const chunks: Buffer[] = [];
  const waiters = new Set<() => void>();
  let closed = false;
  const text = (): string => Buffer.concat(chunks).toString('latin1');
  const done = new Promise<string>((resolve, reject) => {
    const limit = setTimeout(() => {
      reject(
        new Error(`Connection still open after ${timeoutMs} ms; received ${JSON.stringify(text().slice(0, 200))}`),
      );
      socket.destroy();
    }, timeoutMs);
    socket.once('close', () => {
      clearTimeout(limit);
      closed = true;
      for (const wake of waiters) wake();
      resolve(text());
    });
  });
  done.catch(() => {}); // a caller that only uses until() still sees the failure there
  socket.on('error', () => {}); // a reset is an answer too: 'close' follows
  socket.on('data', (chunk: Buffer) => {
    chunks.push(chunk);
    for (const wake of waiters) wake();
  });
  socket.write(bytes);
  return {
    text,
    done,
    until(pattern, waitMs) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => settle(new Error(`No ${pattern} within ${waitMs} ms`)), waitMs);
        const wake = (): void => {
          if (pattern.test(text())) settle(undefined);
          else if (closed) settle(new Error(`Closed before ${pattern}: ${JSON.stringify(text().slice(-200))}`));
        };
        function settle(err: Error | undefined): void {
          clearTimeout(timer);
          waiters.delete(wake);
          if (err === undefined) resolve();
          else reject(err);
        }
        waiters.add(wake);
        wake();
      });
    },
  };
}

/**
 * The bodies of back-to-back responses in `raw`, chunked ones decoded, as far as they arrived: a
 * value written in several chunks is split by chunk-size lines on the wire, but whole in here.
 */
export function bodiesOf(raw: string): string[] {
  const bodies: string[] = [];
  let rest = raw;
  for (let end = rest.indexOf('\r\n\r\n'); end !== -1; end = rest.indexOf('\r\n\r\n')) {
    const head = rest.slice(0, end).toLowerCase();
    rest = rest.slice(end + 4);
    if (!/^transfer-encoding:\s*chunked/m.test(head)) {
      const length = Number(/^content-length:\s*(\d+)/m.exec(head)?.[1] ?? rest.length);
      bodies.push(rest.slice(0, length));
      rest = rest.slice(length);
      continue;
    }
    let body = '';
    for (;;) {
      const lineEnd = rest.indexOf('\r\n');
      const size = lineEnd === -1 ? Number.NaN : Number.parseInt(rest.slice(0, lineEnd), 16);
      if (Number.isNaN(size)) break; // truncated or not chunked after all: keep what was decoded
      body += rest.slice(lineEnd + 2, lineEnd + 2 + size);
      rest = rest.slice(lineEnd + 2 + size + 2);
      if (size === 0) break;
    }
    bodies.push(body);
  }
  return bodies;
}
