// The `fetch` the openai SDK calls: undici.request on our Agent, answered with a small
// Response-shaped object whose body is undici's Node Readable.
//
// Why not undici's fetch: per open stream it keeps a WHATWG Request and Response, two header
// lists, a byte ReadableStream with its controller and a chain of pending promises, and makes more
// garbage per chunk (bench/RESULTS.md has the figures). The SDK needs only what it reads: status,
// ok, url, headers.get/entries, text()/json() for errors and buffered answers, and `body`, which
// its SSE reader iterates with for-await when the body has no getReader()
// (openai/internal/shims.js ReadableStreamToAsyncIterable).
//
// Behaviour kept from fetch: an aborted signal rejects with the signal's reason (an AbortError,
// which the SDK turns into a timeout or APIUserAbortError); other failures before the response
// reject with TypeError('fetch failed', { cause }), so the SDK's APIConnectionError wrapping and
// our classifier see the same chain as before. Mid-body failures surface as undici's own errors
// (SocketError, BodyTimeoutError with their UND_ERR codes), which the classifier reads from the
// cause chain either way. Not kept: redirects are not followed (the API answers, it does not
// redirect), and bodies are requested uncompressed instead of being decoded here.
//
// Bounded: no line of a body may grow past `maxLineBytes` (the SDK's SSE reader buffers a line
// whole, so one endless line would hold the process's memory), and an error body is read only up
// to `maxErrorBodyBytes` (nobody needs more of it; it is never logged or sent on).
import { type Dispatcher, request } from 'undici';

type Body = Dispatcher.ResponseData['body'];
type RawHeaders = Dispatcher.ResponseData['headers'];

/** How much of an upstream body is read. */
export interface UpstreamFetchLimits {
  /** Longest line (bytes between CR or LF) of a body; longer fails the body. */
  maxLineBytes: number;
  /** Bytes of an error (non-2xx) body read; the rest is dropped with the connection. */
  maxErrorBodyBytes: number;
}

const DEFAULT_LIMITS: UpstreamFetchLimits = { maxLineBytes: 1024 * 1024, maxErrorBodyBytes: 64 * 1024 };
const LF = 10;
const CR = 13;

/** A body went past a limit; the classifier reports it as a broken stream. */
export class UpstreamLimitError extends Error {
  readonly code = 'UPSTREAM_TOO_LARGE';
  constructor(what: string) {
    super(`Upstream ${what}`);
    this.name = 'UpstreamLimitError';
  }
}

/** The response headers as the SDK reads them (get, entries, iteration), over undici's record. */
export class UpstreamHeaders {
  readonly #raw: RawHeaders;

  constructor(raw: RawHeaders) {
    this.#raw = raw;
  }

  get(name: string): string | null {
    const value = this.#raw[name.toLowerCase()];
    if (value === undefined) return null;
    // RFC 9110 §5.3: repeated field lines combine into one comma-separated value.
    return Array.isArray(value) ? value.join(', ') : value;
  }

  *entries(): IterableIterator<[string, string]> {
    for (const name of Object.keys(this.#raw)) {
      const value = this.get(name);
      if (value !== null) yield [name, value];
    }
  }

  [Symbol.iterator](): IterableIterator<[string, string]> {
    return this.entries();
  }
}

/** The body as the SDK iterates it: undici's Readable, with every line held to `maxLineBytes`. */
class BoundedBody implements AsyncIterable<Buffer> {
  readonly #body: Body;
  readonly #maxLineBytes: number;

  constructor(body: Body, maxLineBytes: number) {
    this.#body = body;
    this.#maxLineBytes = maxLineBytes;
  }

  [Symbol.asyncIterator](): AsyncIterator<Buffer> {
    const body = this.#body;
    const inner = body[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
    const max = this.#maxLineBytes;
    let lineBytes = 0;
    const check = (step: IteratorResult<Buffer>): IteratorResult<Buffer> => {
      if (step.done === true) return step;
      const chunk = step.value;
      const lastBreak = Math.max(chunk.lastIndexOf(LF), chunk.lastIndexOf(CR));
      lineBytes = lastBreak === -1 ? lineBytes + chunk.length : chunk.length - lastBreak - 1;
      if (lineBytes > max) {
        body.on('error', () => {}).destroy(); // closes the socket; nobody else reads this body now
        throw new UpstreamLimitError(`sent a line longer than ${max} bytes`);
      }
      return step;
    };
    return {
      next: () => inner.next().then(check),
      return: (value?: unknown) => inner.return?.(value) ?? Promise.resolve({ done: true, value: undefined }),
    };
  }
}

/** What the SDK uses of a fetch Response. */
export class UpstreamResponse {
  readonly status: number;
  readonly statusText: string;
  readonly url: string;
  readonly headers: UpstreamHeaders;
  readonly body: BoundedBody;
  readonly #raw: Body;
  readonly #limits: UpstreamFetchLimits;

  constructor(url: string, data: Dispatcher.ResponseData, limits: UpstreamFetchLimits = DEFAULT_LIMITS) {
    this.status = data.statusCode;
    this.statusText = data.statusText ?? '';
    this.url = url;
    this.headers = new UpstreamHeaders(data.headers);
    this.#raw = data.body;
    this.#limits = limits;
    this.body = new BoundedBody(data.body, limits.maxLineBytes);
  }

  get ok(): boolean {
    return this.status >= 200 && this.status < 300;
  }

  /** The body as text: whole for a 2xx (the Agent's maxResponseSize bounds it), the head only for an error. */
  text(): Promise<string> {
    return this.ok ? this.#raw.text() : readHead(this.#raw, this.#limits.maxErrorBodyBytes);
  }

  async json(): Promise<unknown> {
    return JSON.parse(await this.text());
  }
}

/** Up to `maxBytes` of a body as UTF-8; the rest is not read (the connection is closed instead). */
async function readHead(body: Body, maxBytes: number): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    chunks.push(chunk);
    size += chunk.length;
    if (size >= maxBytes) {
      body.on('error', () => {}).destroy();
      break;
    }
  }
  return Buffer.concat(chunks).subarray(0, maxBytes).toString('utf8');
}

/** A fetch for the openai SDK that sends every request through `dispatcher` (our pooled Agent). */
export function createUpstreamFetch(
  dispatcher: Dispatcher,
  limits: UpstreamFetchLimits = DEFAULT_LIMITS,
): typeof fetch {
  async function upstreamFetch(input: string | URL | Request, init: RequestInit = {}): Promise<Response> {
    const url = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url;
    const signal = init.signal ?? undefined;
    let data: Dispatcher.ResponseData;
    try {
      data = await request(url, {
        dispatcher,
        method: (init.method ?? 'GET') as Dispatcher.HttpMethod,
        headers: requestHeaders(init.headers),
        body: requestBody(init.body),
        ...(signal === undefined ? {} : { signal }),
      });
    } catch (err) {
      // Like fetch: an abort rejects with the signal's reason, anything else is a network error.
      if (signal?.aborted) throw err;
      throw new TypeError('fetch failed', { cause: err });
    }
    const encoding = data.headers['content-encoding'];
    if (encoding !== undefined && encoding !== 'identity') {
      // Destroying an unread body emits 'error' (RequestAbortedError): nobody else listens, so we do.
      data.body.on('error', () => {}).destroy();
      throw new TypeError('fetch failed', {
        cause: new Error(`Unsupported content-encoding: ${String(encoding).slice(0, 40)}`),
      });
    }
    // Only the fields the SDK reads exist; the cast is where this object stands in for a Response.
    return new UpstreamResponse(url, data, limits) as unknown as Response;
  }
  return upstreamFetch;
}

/** Lower-cased name/value pairs; we always ask for an uncompressed body (fetch decoded it, we do not). */
function requestHeaders(init: RequestInit['headers']): Record<string, string> {
  const out: Record<string, string> = {};
  if (init !== undefined) {
    for (const [name, value] of init instanceof Headers ? init : new Headers(init)) out[name] = value;
  }
  out['accept-encoding'] = 'identity';
  return out;
}

/** The SDK sends JSON as a string; multipart and streamed uploads are not used by the chat client. */
function requestBody(body: RequestInit['body']): string | Uint8Array | undefined {
  if (body === undefined || body === null) return undefined;
  if (typeof body === 'string' || body instanceof Uint8Array) return body;
  throw new TypeError(`Unsupported request body for the upstream fetch: ${Object.prototype.toString.call(body)}`);
}
