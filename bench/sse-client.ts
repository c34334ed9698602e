// SSE client worker for sse.ts (pinned to CPU 1 by its parent): argv[2] is a JSON job; results are JSON lines
// on stdout.
//
//   throughput  `concurrency` keep-alive workers POST the same request in a loop for `durationMs`;
//               a stream counts when it completed inside the window and its tail holds `okMarker`.
//   ttfb        sequential requests, alternating the targets one request at a time (drift cancels):
//               time to headers, to the first body byte and to the first match of `tokenPattern`.
//   hold        opens `n` streams (at most `openConcurrency` connecting at once), reports when each
//               has shown `tokenPattern`, then keeps them open until a 'close' line on stdin; with
//               `detach`, closes each one as soon as it has shown the token (the answer stays on the server).
// Only loopback URLs are accepted; every mode is bounded in count and time.
import { Agent, type IncomingMessage, request } from 'node:http';
import { createInterface } from 'node:readline';

export interface Target {
  name: string;
  url: string;
  headers: Record<string, string>;
  body: string;
  okMarker: string;
  /** A RegExp source matched against the last 512 characters read: the first content token. */
  tokenPattern: string;
}
type Job =
  | { mode: 'throughput'; target: Target; concurrency: number; durationMs: number }
  | { mode: 'ttfb'; targets: Target[]; n: number; warmup: number }
  | {
      mode: 'hold';
      targets: Target[];
      n: number;
      openConcurrency: number;
      openTimeoutMs: number;
      holdMaxMs: number;
      detach?: boolean;
    };

const job = JSON.parse(process.argv[2] ?? '{}') as Job;
const targetsOf = (j: Job) => (j.mode === 'throughput' ? [j.target] : j.targets);
for (const t of targetsOf(job)) {
  const host = new URL(t.url).hostname;
  if (host !== '127.0.0.1' && host !== 'localhost' && host !== '[::1]')
    throw new Error(`refusing non-loopback URL ${t.url}`);
}

function emit(obj: object): void {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

interface Outcome {
  ok: boolean;
  status: number;
  headersMs: number;
  firstByteMs: number;
  tokenMs: number;
  totalMs: number;
}

/** One request, read to its end; times are from the call, in ms. */
function once(t: Target, agent: Agent, timeoutMs: number): Promise<Outcome> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const out: Outcome = { ok: false, status: 0, headersMs: NaN, firstByteMs: NaN, tokenMs: NaN, totalMs: NaN };
    const token = new RegExp(t.tokenPattern);
    let tail = '';
    let settled = false;
    const finish = () => {
      if (settled) return;
      settled = true;
      out.totalMs = performance.now() - t0;
      out.ok = out.status === 200 && tail.includes(t.okMarker);
      resolve(out);
    };
    const req = request(t.url, {
      method: 'POST',
      agent,
      headers: { ...t.headers, 'content-length': String(Buffer.byteLength(t.body)) },
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error('timeout')));
    req.on('error', finish);
    req.on('response', (res: IncomingMessage) => {
      out.status = res.statusCode ?? 0;
      out.headersMs = performance.now() - t0;
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        if (Number.isNaN(out.firstByteMs)) out.firstByteMs = performance.now() - t0;
        // Keep a short tail only: the markers are short, and the client's cost stays small and equal for both targets.
        tail = (tail + chunk).slice(-512);
        if (Number.isNaN(out.tokenMs) && token.test(tail)) out.tokenMs = performance.now() - t0;
      });
      res.on('end', finish);
      res.on('error', finish);
      res.on('close', finish);
    });
    req.end(t.body);
  });
}

function quantile(xs: number[], q: number): number {
  const v = xs.filter(Number.isFinite).sort((a, b) => a - b);
  if (v.length === 0) return NaN;
  const pos = (v.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return (v[lo] as number) + ((v[hi] as number) - (v[lo] as number)) * (pos - lo);
}

async function throughput(t: Target, concurrency: number, durationMs: number): Promise<void> {
  const agent = new Agent({ keepAlive: true, maxSockets: concurrency });
  const start = performance.now();
  const end = start + durationMs;
  const times: number[] = [];
  const failures: Record<string, number> = {};
  let completed = 0;
  async function worker(): Promise<void> {
    while (performance.now() < end) {
      const o = await once(t, agent, 30_000);
      if (performance.now() > end) break; // finished after the window: not counted
      if (o.ok) {
        completed++;
        times.push(o.totalMs);
      } else {
        const k = String(o.status || 'network');
        failures[k] = (failures[k] ?? 0) + 1;
      }
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker));
  agent.destroy();
  const elapsedS = durationMs / 1000;
  emit({
    completed,
    failed: Object.values(failures).reduce((a, b) => a + b, 0),
    failures,
    streamsPerSec: completed / elapsedS,
    p50ms: quantile(times, 0.5),
    p99ms: quantile(times, 0.99),
  });
}

async function ttfb(targets: Target[], n: number, warmup: number): Promise<void> {
  const agents = targets.map(() => new Agent({ keepAlive: true, maxSockets: 1 }));
  const results = targets.map(() => [] as Outcome[]);
  for (let i = 0; i < warmup + n; i++) {
    // Alternate which target goes first so neither always follows the other.
    const order = i % 2 === 0 ? targets.map((_, j) => j) : targets.map((_, j) => targets.length - 1 - j);
    for (const j of order) {
      const o = await once(targets[j] as Target, agents[j] as Agent, 30_000);
      if (i >= warmup) (results[j] as Outcome[]).push(o);
    }
  }
  for (const a of agents) a.destroy();
  emit({
    targets: targets.map((t, j) => {
      const rs = results[j] as Outcome[];
      const good = rs.filter((o) => o.ok);
      return {
        name: t.name,
        n: rs.length,
        failed: rs.length - good.length,
        headersMs: good.map((o) => o.headersMs),
        firstByteMs: good.map((o) => o.firstByteMs),
        tokenMs: good.map((o) => o.tokenMs),
        totalMs: good.map((o) => o.totalMs),
      };
    }),
  });
}

async function hold(
  targets: Target[],
  n: number,
  openConcurrency: number,
  openTimeoutMs: number,
  holdMaxMs: number,
  detach: boolean,
): Promise<void> {
  const agent = new Agent({ keepAlive: false, maxSockets: Infinity });
  const reqs: Array<ReturnType<typeof request>> = [];
  const failures: Record<string, number> = {};
  let open = 0;
  let next = 0;
  const t0 = performance.now();
  const fail = (k: string) => (failures[k] = (failures[k] ?? 0) + 1);
  function openOne(i: number): Promise<void> {
    const t = targets[i % targets.length] as Target;
    return new Promise((resolve) => {
      let done = false;
      const settle = (ok: boolean, why: string) => {
        if (done) return;
        done = true;
        if (ok) open++;
        else fail(why);
        resolve();
      };
      const req = request(t.url, {
        method: 'POST',
        agent,
        headers: { ...t.headers, 'content-length': String(Buffer.byteLength(t.body)) },
      });
      reqs.push(req);
      const timer = setTimeout(() => settle(false, 'open timeout'), openTimeoutMs);
      req.on('error', (err) => {
        clearTimeout(timer);
        settle(false, (err as NodeJS.ErrnoException).code ?? 'network');
      });
      req.on('response', (res) => {
        if (res.statusCode !== 200) {
          clearTimeout(timer);
          res.resume();
          settle(false, String(res.statusCode));
          return;
        }
        const token = new RegExp(t.tokenPattern);
        let tail = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          tail = (tail + chunk).slice(-512);
          if (!done && token.test(tail)) {
            clearTimeout(timer);
            settle(true, '');
            if (detach) req.destroy();
          }
        });
        res.on('error', () => settle(false, 'reset'));
        res.on('close', () => settle(false, 'closed before the token'));
      });
      req.end(t.body);
    });
  }
  async function opener(): Promise<void> {
    while (next < n) await openOne(next++);
  }
  await Promise.all(Array.from({ length: Math.min(openConcurrency, n) }, opener));
  emit({ event: 'open', open, failed: n - open, failures, openMs: performance.now() - t0 });
  // Hold until the parent says 'close' (or the bound passes), then cut every stream.
  await new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, holdMaxMs);
    createInterface({ input: process.stdin }).on('line', (line) => {
      if (line.trim() === 'close') {
        clearTimeout(timer);
        resolve();
      }
    });
    process.stdin.on('end', () => {
      clearTimeout(timer);
      resolve();
    });
  });
  for (const r of reqs) r.destroy();
  agent.destroy();
  emit({ event: 'closed' });
}

if (job.mode === 'throughput') await throughput(job.target, job.concurrency, job.durationMs);
else if (job.mode === 'ttfb') await ttfb(job.targets, job.n, job.warmup);
else if (job.mode === 'hold')
  await hold(job.targets, job.n, job.openConcurrency, job.openTimeoutMs, job.holdMaxMs, job.detach === true);
else throw new Error('unknown mode');
process.exit(0);
