// Reading native SSE responses for the live-answer client worker: frames as they arrive, times from
// the call, a cut on demand (the server then sees its client leave).
import { type IncomingMessage, request } from 'node:http';

/** One SSE frame: its event name, id and data lines. */
export interface Frame {
  event: string;
  id: string;
  data: string;
}

/** Splits SSE text into frames as it arrives; `onFrame` sees each whole frame once. */
function frameReader(onFrame: (f: Frame) => void): (chunk: string) => void {
  let buf = '';
  return (chunk) => {
    buf += chunk;
    for (let end = buf.indexOf('\n\n'); end !== -1; end = buf.indexOf('\n\n')) {
      const frame: Frame = { event: '', id: '', data: '' };
      for (const line of buf.slice(0, end).split('\n')) {
        if (line.startsWith('event: ')) frame.event = line.slice(7);
        else if (line.startsWith('id: ')) frame.id = line.slice(4);
        else if (line.startsWith('data: ')) frame.data += line.slice(6);
      }
      buf = buf.slice(end + 2);
      if (frame.event !== '') onFrame(frame);
    }
  };
}

/** Outcome of one streamed request; times in ms from the call (NaN when not reached). */
export interface Read {
  status: number;
  headersMs: number;
  firstByteMs: number;
  frames: Map<string, number>;
  error?: string;
}

/**
 * Sends one request and reads it as SSE; `onFrame` may return 'stop', or `cut` abort, to cut the request
 * (the server sees its client leave). Resolves when the response ends, is cut, fails or `timeoutMs` passes.
 */
export function stream(
  url: string,
  init: { method: string; headers: Record<string, string>; body?: string },
  timeoutMs: number,
  onFrame: (f: Frame, atMs: number) => 'stop' | undefined,
  cut?: AbortSignal,
): Promise<Read> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const out: Read = { status: 0, headersMs: Number.NaN, firstByteMs: Number.NaN, frames: new Map() };
    const body = init.body ?? '';
    const headers = init.body === undefined ? init.headers : { ...init.headers, 'content-length': `${body.length}` };
    // A fresh connection each time: a cut response cannot be reused, and every request pays the same.
    const req = request(url, { method: init.method, headers, agent: false });
    let settled = false;
    const done = (error?: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (error !== undefined) out.error = error;
      req.destroy();
      resolve(out);
    };
    const timer = setTimeout(() => done('timeout'), timeoutMs);
    cut?.addEventListener('abort', () => done(), { once: true });
    req.on('error', (err) => done((err as NodeJS.ErrnoException).code ?? 'network'));
    req.on('response', (res: IncomingMessage) => {
      out.status = res.statusCode ?? 0;
      out.headersMs = performance.now() - t0;
      res.setEncoding('utf8');
      const feed = frameReader((f) => {
        out.frames.set(f.event, (out.frames.get(f.event) ?? 0) + 1);
        if (onFrame(f, performance.now() - t0) === 'stop') done();
      });
      res.on('data', (chunk: string) => {
        if (Number.isNaN(out.firstByteMs)) out.firstByteMs = performance.now() - t0;
        feed(chunk);
      });
      res.on('end', () => done());
      res.on('error', () => done('reset'));
      res.on('close', () => done());
    });
    req.end(body);
  });
}
