// Reads a server's V8 heap figures from outside, over the inspector protocol, so the memory test
// can report heapUsed/heapTotal after a forced GC without any debug code in lib/.
//
// The server is started with `--inspect=127.0.0.1:0`; it prints its WebSocket URL on stderr
// ("Debugger listening on ws://…"). A session is opened only for a reading and closed at once:
// an attached session enables nothing else (no Debugger/Profiler domain), so the code runs as usual.
import { writeFileSync } from 'node:fs';

export interface HeapFigures {
  rss: number;
  heapTotal: number;
  heapUsed: number;
  external: number;
  arrayBuffers: number;
  /** Committed size of each V8 heap space (new_space, old_space, …), KiB. */
  spaces: Record<string, number>;
}

// process.getBuiltinModule works in the inspector's global scope, where an ES module's imports do not.
const MEMORY_EXPRESSION = `JSON.stringify({
  ...process.memoryUsage(),
  spaces: Object.fromEntries(
    process.getBuiltinModule('node:v8').getHeapSpaceStatistics().map((s) => [s.space_name, s.space_size]),
  ),
})`;

/** The inspector WebSocket URL a `--inspect=…:0` process printed, or undefined. */
export function inspectorUrl(output: string): string | undefined {
  return /Debugger listening on (ws:\/\/\S+)/.exec(output)?.[1];
}

interface Reply {
  id?: number;
  method?: string;
  params?: Record<string, unknown>;
  result?: Record<string, unknown>;
  error?: { message: string };
}

/** One short-lived inspector session: request/response calls plus an event hook. */
class Session {
  #ws: WebSocket;
  #next = 1;
  #pending = new Map<number, { resolve: (r: Record<string, unknown>) => void; reject: (e: Error) => void }>();
  onEvent: (method: string, params: Record<string, unknown>) => void = () => {};

  constructor(ws: WebSocket) {
    this.#ws = ws;
    ws.addEventListener('message', (ev) => {
      const msg = JSON.parse(String(ev.data)) as Reply;
      if (msg.id === undefined) {
        if (msg.method) this.onEvent(msg.method, msg.params ?? {});
        return;
      }
      const waiter = this.#pending.get(msg.id);
      this.#pending.delete(msg.id);
      if (msg.error) waiter?.reject(new Error(`inspector: ${msg.error.message}`));
      else waiter?.resolve(msg.result ?? {});
    });
    ws.addEventListener('close', () => {
      for (const w of this.#pending.values()) w.reject(new Error('inspector: session closed'));
      this.#pending.clear();
    });
  }

  static open(url: string, timeoutMs = 10_000): Promise<Session> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      const timer = setTimeout(
        () => reject(new Error(`inspector: no connection to ${url} within ${timeoutMs} ms`)),
        timeoutMs,
      );
      ws.addEventListener('open', () => {
        clearTimeout(timer);
        resolve(new Session(ws));
      });
      ws.addEventListener('error', () => {
        clearTimeout(timer);
        reject(new Error(`inspector: cannot connect to ${url}`));
      });
    });
  }

  call(method: string, params: object = {}): Promise<Record<string, unknown>> {
    const id = this.#next++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#ws.send(JSON.stringify({ id, method, params }));
    });
  }

  close(): void {
    this.#ws.close();
  }
}

async function withSession<T>(url: string, fn: (s: Session) => Promise<T>): Promise<T> {
  const s = await Session.open(url);
  try {
    return await fn(s);
  } finally {
    s.close();
  }
}

async function memoryUsage(s: Session): Promise<HeapFigures> {
  const r = await s.call('Runtime.evaluate', { expression: MEMORY_EXPRESSION, returnByValue: true });
  const raw = JSON.parse(String((r.result as { value?: unknown } | undefined)?.value)) as HeapFigures;
  const kib = (bytes: number) => bytes / 1024;
  const spaces = Object.fromEntries(Object.entries(raw.spaces).map(([name, bytes]) => [name, kib(bytes)]));
  return {
    rss: kib(raw.rss),
    heapTotal: kib(raw.heapTotal),
    heapUsed: kib(raw.heapUsed),
    external: kib(raw.external),
    arrayBuffers: kib(raw.arrayBuffers),
    spaces,
  };
}

/** Forces full GCs (twice: the first may only queue finalizers) and returns process.memoryUsage() in KiB. */
export function heapAfterGc(url: string): Promise<HeapFigures> {
  return withSession(url, async (s) => {
    await s.call('HeapProfiler.collectGarbage');
    await s.call('HeapProfiler.collectGarbage');
    return memoryUsage(s);
  });
}

/** process.memoryUsage() in KiB without a forced GC (what the process holds as it runs). */
export function heapNow(url: string): Promise<HeapFigures> {
  return withSession(url, memoryUsage);
}

/** Writes a heap snapshot (the snapshot itself forces a GC first) to `path`, for offline diffing. */
export function writeHeapSnapshot(url: string, path: string): Promise<void> {
  return withSession(url, async (s) => {
    const chunks: string[] = [];
    s.onEvent = (method, params) => {
      if (method === 'HeapProfiler.addHeapSnapshotChunk') chunks.push(String(params.chunk));
    };
    await s.call('HeapProfiler.takeHeapSnapshot', { reportProgress: false });
    writeFileSync(path, chunks.join(''));
  });
}
