// The SSE part of the benchmark: relay throughput, added time to first token, memory per open stream.
//
// Layout on the 2-core box: the process under test on CPU 0; the client (sse-client.ts) on CPU 1.
// "direct" = the fake upstream itself on CPU 0. "ours" = the chat server on CPU 0 relaying from a
// second, identical upstream on CPU 1 (sharing that core with the client), so the ratio says how
// the relay's cost per stream compares with the upstream's cost of producing it: it is not an
// overhead figure (see /work/shared/notes/performance-anchors.md).
import { join } from 'node:path';
import type { Target } from './sse-client.ts';
import {
  BENCH_DIR,
  CLIENT_CPU,
  fmt,
  fmtInt,
  freePort,
  median,
  NODE,
  type Proc,
  processCpuSeconds,
  quantile,
  REPO_ROOT,
  rssKiB,
  SERVER_CPU,
  sleep,
  startPinned,
  table,
  waitForLine,
} from './support/harness.ts';
import { type HeapFigures, heapAfterGc, heapNow, inspectorUrl, writeHeapSnapshot } from './support/inspector.ts';
import { ORIGIN, type OursPrep, oursCommand, startOurs } from './support/ours.ts';

export interface SseOptions {
  rounds: number;
  durationS: number;
  warmupS: number;
  concurrency: number;
  chunks: number;
  ttfbRequests: number;
  streams: number;
  /** Which fake upstream streams the bursts: bench/support/upstream.ts or the test suite's. */
  upstream: 'bench' | 'test';
  log: (line: string) => void;
}

export interface SseReport {
  markdown: string;
  commands: string[];
  /** Median added time to first token, ms (undefined when ours is unavailable). */
  ttfbAddedMs: number | undefined;
  kibPerStream: number | undefined;
  oursUnavailable: string | undefined;
}

function directTarget(port: number): Target {
  return {
    name: 'upstream direct',
    url: `http://127.0.0.1:${port}/v1/chat/completions`,
    headers: { 'content-type': 'application/json', authorization: 'Bearer bench-upstream-key' },
    body: JSON.stringify({
      model: 'bench-model',
      stream: true,
      stream_options: { include_usage: true },
      messages: [{ role: 'user', content: 'hi' }],
    }),
    okMarker: 'data: [DONE]',
    // Content chunks only: the role chunk is {"role":"assistant","content":""}.
    tokenMarker: '"delta":{"content":"',
  };
}

function oursTarget(port: number, key: string): Target {
  return {
    name: 'ours: POST /v1/chat (full chain + DB writes)',
    url: `http://127.0.0.1:${port}/v1/chat`,
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}`, origin: ORIGIN },
    body: JSON.stringify({ message: 'hi' }),
    okMarker: 'event: done',
    tokenMarker: 'event: delta',
  };
}

/** Runs one client job on CPU 1 and returns its last JSON line. */
async function client<T>(job: object, timeoutMs: number): Promise<T> {
  const p = startPinned('sse-client', CLIENT_CPU, NODE, [join(BENCH_DIR, 'sse-client.ts'), JSON.stringify(job)]);
  // The whole stdout (the TTFB result carries every sample; Proc.output() keeps only a tail).
  let stdout = '';
  p.child.stdout?.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
  const timer = setTimeout(() => void p.stop(1000), timeoutMs);
  const code = await p.exited;
  clearTimeout(timer);
  if (code !== 0) throw new Error(`sse-client exited with ${code}: ${p.output().slice(-800)}`);
  const lines = stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1] ?? '{}') as T;
}

/** The test suite's fake upstream entry (used for 'burst' with --upstream test). */
const TEST_FAKE = join(REPO_ROOT, 'test', 'support', 'fake-upstream-main.ts');

async function startUpstream(
  name: string,
  cpu: number,
  mode: 'burst' | 'hold',
  chunks: number,
  which: 'bench' | 'test' = 'bench',
): Promise<{ proc: Proc; port: number; cmd: string }> {
  const port = await freePort();
  if (which === 'test' && mode === 'burst') {
    // Prints its base URL when listening; behaviour 'burst' writes `chunks` content chunks as fast as it can.
    const proc = startPinned(name, cpu, NODE, [TEST_FAKE, String(port), '--burst', String(chunks)], {
      cwd: REPO_ROOT,
      env: { PATH: process.env.PATH ?? '' },
    });
    await waitForLine(proc, `http://127.0.0.1:${port}/v1`, 15_000);
    return { proc, port, cmd: `taskset -c ${cpu} node test/support/fake-upstream-main.ts <port> --burst ${chunks}` };
  }
  const args = [join(BENCH_DIR, 'support', 'upstream.ts'), String(port), mode, String(chunks)];
  const proc = startPinned(name, cpu, NODE, args, { env: { PATH: process.env.PATH ?? '', HOLD_MAX_MS: '180000' } });
  await waitForLine(proc, 'listening', 15_000);
  return { proc, port, cmd: `taskset -c ${cpu} node support/upstream.ts <port> ${mode} ${chunks}` };
}

interface TputResult {
  completed: number;
  failed: number;
  failures: Record<string, number>;
  streamsPerSec: number;
  p50ms: number;
  p99ms: number;
}
interface TputSample extends TputResult {
  round: number;
  serverCpuUsPerStream: number;
  serverUtil: number;
  upstreamCpuUsPerStream: number;
}

async function measureThroughput(
  t: Target,
  server: Proc,
  upstream: Proc,
  o: SseOptions,
  durationS: number,
): Promise<TputResult & Omit<TputSample, 'round' | keyof TputResult>> {
  const s0 = processCpuSeconds(server.pid);
  const u0 = processCpuSeconds(upstream.pid);
  const w0 = performance.now();
  const r = await client<TputResult>(
    { mode: 'throughput', target: t, concurrency: o.concurrency, durationMs: durationS * 1000 },
    (durationS + 90) * 1000,
  );
  const wall = (performance.now() - w0) / 1000;
  const sCpu = processCpuSeconds(server.pid) - s0;
  const uCpu = processCpuSeconds(upstream.pid) - u0;
  const n = Math.max(r.completed, 1);
  return {
    ...r,
    serverCpuUsPerStream: (sCpu * 1e6) / n,
    serverUtil: sCpu / wall,
    upstreamCpuUsPerStream: server === upstream ? Number.NaN : (uCpu * 1e6) / n,
  };
}

/** The parts of the SSE benchmark to run: BENCH_SSE_PARTS=throughput,ttfb,memory (default: all). */
export type SsePart = 'throughput' | 'ttfb' | 'memory';
const ALL_PARTS: readonly SsePart[] = ['throughput', 'ttfb', 'memory'];

export function ssePartsFromEnv(raw = process.env.BENCH_SSE_PARTS): Set<SsePart> {
  if (raw === undefined || raw.trim() === '') return new Set(ALL_PARTS);
  const parts = raw.split(',').map((x) => x.trim());
  for (const p of parts)
    if (!ALL_PARTS.includes(p as SsePart))
      throw new Error(`BENCH_SSE_PARTS: unknown part '${p}' (use ${ALL_PARTS.join(',')})`);
  return new Set(parts as SsePart[]);
}

/** Runs the SSE parts BENCH_SSE_PARTS selects; never throws for an unavailable server, only for a broken harness. */
export async function runSse(o: SseOptions, prep: OursPrep): Promise<SseReport> {
  const parts = ssePartsFromEnv();
  const commands: string[] = [];
  const procs: Proc[] = [];
  let oursUnavailable: string | undefined = prep.ok ? undefined : prep.reason;
  const sections: string[] = [];
  let ttfbAddedMs: number | undefined;
  let kibPerStream: number | undefined;
  if (parts.size < ALL_PARTS.length) commands.push(`BENCH_SSE_PARTS=${[...parts].join(',')}`);
  try {
    if (parts.has('throughput') || parts.has('ttfb')) {
      const r = await runRelayParts(o, prep, parts, procs, commands);
      sections.push(...r.sections);
      ttfbAddedMs = r.ttfbAddedMs;
      oursUnavailable ??= r.oursUnavailable;
    }

    // (c) memory per open stream, on a fresh server process
    if (!parts.has('memory')) {
      sections.push('### Memory per open stream\n\nnot run (BENCH_SSE_PARTS)');
    } else if (prep.ok && !oursUnavailable) {
      const mem = await measureMemory(prep, o, procs, commands);
      sections.push(mem.markdown);
      kibPerStream = mem.kibPerStream;
      if (mem.unavailable) oursUnavailable = mem.unavailable;
    } else {
      sections.push(`### Memory per open stream\n\nunavailable: ${oursUnavailable}`);
    }
  } finally {
    for (const p of procs.reverse()) await p.stop(5000);
  }
  return { markdown: sections.join('\n\n'), commands, ttfbAddedMs, kibPerStream, oursUnavailable };
}

/** (a) relay throughput and (b) added time to first token, against burst upstreams. */
async function runRelayParts(
  o: SseOptions,
  prep: OursPrep,
  parts: Set<SsePart>,
  procs: Proc[],
  commands: string[],
): Promise<{ sections: string[]; ttfbAddedMs: number | undefined; oursUnavailable: string | undefined }> {
  const sections: string[] = [];
  let oursUnavailable: string | undefined = prep.ok ? undefined : prep.reason;
  let ttfbAddedMs: number | undefined;
  const direct = await startUpstream('upstream-direct', SERVER_CPU, 'burst', o.chunks, o.upstream);
  const feed = await startUpstream('upstream-feed', CLIENT_CPU, 'burst', o.chunks, o.upstream);
  procs.push(direct.proc, feed.proc);
  commands.push(`direct upstream: ${direct.cmd}`, `upstream feeding ours: ${feed.cmd}`);
  let ours: Proc | undefined;
  let oursT: Target | undefined;
  if (prep.ok) {
    const port = await freePort();
    try {
      ours = await startOurs(prep, port, `http://127.0.0.1:${feed.port}/v1`);
      procs.push(ours);
      oursT = oursTarget(port, prep.keys[0] as string);
      commands.push(oursCommand(prep));
    } catch (err) {
      oursUnavailable = `server did not start: ${(err as Error).message.slice(0, 300)}`;
    }
  }
  const directT = directTarget(direct.port);

  // (a) throughput, alternated round by round
  if (parts.has('throughput')) {
    commands.push(
      `client: taskset -c ${CLIENT_CPU} node sse-client.ts '{"mode":"throughput","concurrency":${o.concurrency},"durationMs":${o.durationS * 1000},…}' (node:http keep-alive Agent)`,
    );
    const configs: Array<{ t: Target; server: Proc; upstream: Proc }> = [
      { t: directT, server: direct.proc, upstream: direct.proc },
    ];
    if (ours && oursT) configs.push({ t: oursT, server: ours, upstream: feed.proc });
    o.log(`SSE throughput: warm-up ${o.warmupS} s per target`);
    for (const c of configs) await measureThroughput(c.t, c.server, c.upstream, o, o.warmupS);
    const samples: TputSample[][] = configs.map(() => []);
    for (let round = 0; round < o.rounds; round++) {
      const order = configs.map((_, i) => (i + round) % configs.length);
      for (const i of order) {
        const c = configs[i] as (typeof configs)[number];
        const s = await measureThroughput(c.t, c.server, c.upstream, o, o.durationS);
        (samples[i] as TputSample[]).push({ ...s, round });
        o.log(
          `  round ${round + 1}/${o.rounds} ${c.t.name}: ${fmtInt(s.streamsPerSec)} streams/s, p50 ${fmt(s.p50ms)} ms, failed ${s.failed}`,
        );
      }
    }
    sections.push(
      throughputTable(
        configs.map((c) => c.t.name),
        samples,
        o,
      ),
    );
  }

  // (b) added time to first token, sequential and interleaved
  if (!parts.has('ttfb')) {
    sections.push('### Added time to first token\n\nnot run (BENCH_SSE_PARTS)');
  } else if (ours && oursT) {
    o.log(`SSE time to first token: ${o.ttfbRequests} sequential requests per target, interleaved`);
    const r = await client<{ targets: TtfbTarget[] }>(
      { mode: 'ttfb', targets: [directT, oursT], n: o.ttfbRequests, warmup: 20 },
      300_000,
    );
    const [d, u] = r.targets as [TtfbTarget, TtfbTarget];
    ttfbAddedMs = median(u.tokenMs) - median(d.tokenMs);
    sections.push(ttfbTable(d, u));
  } else {
    sections.push(`### Added time to first token\n\nunavailable: ${oursUnavailable}`);
  }
  await ours?.stop(5000);
  return { sections, ttfbAddedMs, oursUnavailable };
}

function throughputTable(names: string[], samples: TputSample[][], o: SseOptions): string {
  const direct = samples[0] ?? [];
  const rows = names.map((name, i) => {
    const s = samples[i] ?? [];
    const ratios = s.map((x) => x.streamsPerSec / (direct.find((d) => d.round === x.round)?.streamsPerSec ?? NaN));
    const failures = s.reduce((a, x) => a + x.failed, 0);
    return [
      name,
      String(s.length),
      fmtInt(median(s.map((x) => x.streamsPerSec))),
      i === 0 ? '1.00' : `${fmt(median(ratios))} [${fmt(Math.min(...ratios))}–${fmt(Math.max(...ratios))}]`,
      fmt(median(s.map((x) => x.p50ms))),
      fmt(median(s.map((x) => x.p99ms))),
      fmtInt(median(s.map((x) => x.serverCpuUsPerStream))),
      i === 0 ? '–' : fmtInt(median(s.map((x) => x.upstreamCpuUsPerStream))),
      `${fmtInt(median(s.map((x) => x.serverUtil * 100)))}%`,
      failures === 0 ? '0' : `${failures} ${JSON.stringify(mergeFailures(s))}`,
    ];
  });
  return [
    `### SSE relay throughput (${o.concurrency} concurrent clients, ${o.chunks} chunks a stream, upstream 'burst')`,
    '',
    table(
      [
        'target',
        'n',
        'streams/s (median)',
        'ratio to direct: median of per-round ratios [min–max]',
        'p50 stream ms',
        'p99 stream ms',
        'CPU µs/stream of the process on CPU 0',
        'upstream CPU µs/stream',
        'CPU 0 process util',
        'failed',
      ],
      rows,
    ),
    '',
    "Ours relays from an identical upstream on CPU 1 (shared with the client); 'direct' is that upstream alone on CPU 0. Ours also writes the conversation to its database per stream.",
  ].join('\n');
}

function mergeFailures(s: TputSample[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const x of s) for (const [k, v] of Object.entries(x.failures)) out[k] = (out[k] ?? 0) + v;
  return out;
}

interface TtfbTarget {
  name: string;
  n: number;
  failed: number;
  headersMs: number[];
  firstByteMs: number[];
  tokenMs: number[];
  totalMs: number[];
}

function ttfbTable(d: TtfbTarget, u: TtfbTarget): string {
  const row = (t: TtfbTarget) => [
    t.name,
    String(t.n),
    String(t.failed),
    fmt(median(t.headersMs), 3),
    fmt(median(t.firstByteMs), 3),
    fmt(median(t.tokenMs), 3),
    fmt(quantile(t.tokenMs, 0.9), 3),
    fmt(median(t.totalMs), 3),
  ];
  const added = (k: 'headersMs' | 'firstByteMs' | 'tokenMs') => median(u[k]) - median(d[k]);
  return [
    `### Added time to first byte / first token (sequential requests, targets interleaved one request at a time)`,
    '',
    table(
      [
        'target',
        'n',
        'failed',
        'headers ms (p50)',
        'first body byte ms (p50)',
        'first token ms (p50)',
        'first token ms (p90)',
        'whole stream ms (p50)',
      ],
      [row(d), row(u)],
    ),
    '',
    `Added by the relay (median ours − median direct): headers ${fmt(added('headersMs'), 3)} ms, first body byte ${fmt(added('firstByteMs'), 3)} ms, **first token ${fmt(added('tokenMs'), 3)} ms**. ` +
      "Ours' first body byte is its `event: start` (sent after the user's message is stored); the first token is the first `event: delta`. The goal is judged on the first token.",
  ].join('\n');
}

/** V8 figures read over the inspector (KiB); each is undefined without an inspector. */
interface HeapPoint {
  /** Right after the RSS samples with the streams open, no GC forced. */
  now?: HeapFigures;
  /** BENCH_SETTLE_S later, still no GC forced: what V8's own heuristics keep for idle streams. */
  settled?: HeapFigures;
  afterGc?: HeapFigures;
}

/** One inspector reading; a failure leaves the figures out instead of failing the run. */
async function readHeap(
  url: string | undefined,
  o: SseOptions,
  how: 'now' | 'afterGc',
): Promise<HeapFigures | undefined> {
  if (url === undefined) return undefined;
  try {
    return how === 'now' ? await heapNow(url) : await heapAfterGc(url);
  } catch (err) {
    o.log(`SSE memory: inspector reading failed: ${(err as Error).message}`);
    return undefined;
  }
}

/**
 * BENCH_SERVER_NODE_ARGS (space-separated) adds Node flags to the memory test's server, for experiments
 * such as --max-semi-space-size. Production starts with none (package.json, deploy/), so leave it unset
 * for figures that stand for production; the command list in the report records it when set.
 */
function extraNodeArgs(): string[] {
  return (process.env.BENCH_SERVER_NODE_ARGS ?? '').split(' ').filter((a) => a !== '');
}

/** Seconds to keep the streams open after the headline samples before the settled reading (0 skips it). */
function settleSeconds(): number {
  const raw = process.env.BENCH_SETTLE_S;
  const v = raw === undefined || raw === '' ? 20 : Number(raw);
  if (!Number.isFinite(v) || v < 0) throw new Error(`invalid BENCH_SETTLE_S: ${raw}`);
  return v;
}

/** BENCH_HEAP_SNAPSHOT_DIR=dir writes idle/open heap snapshots there (for scripts/heap-diff.ts). */
async function maybeSnapshot(url: string | undefined, name: string, o: SseOptions): Promise<void> {
  const dir = process.env.BENCH_HEAP_SNAPSHOT_DIR;
  if (dir === undefined || dir === '' || url === undefined) return;
  const path = join(dir, `${name}.heapsnapshot`);
  await writeHeapSnapshot(url, path);
  o.log(`SSE memory: heap snapshot written to ${path}`);
}

async function measureMemory(
  prep: Extract<OursPrep, { ok: true }>,
  o: SseOptions,
  procs: Proc[],
  commands: string[],
): Promise<{ markdown: string; kibPerStream: number | undefined; unavailable?: string }> {
  const holdUp = await startUpstream('upstream-hold', CLIENT_CPU, 'hold', o.chunks);
  procs.push(holdUp.proc);
  const extra = extraNodeArgs().join(' ');
  commands.push(
    `memory: upstream ${holdUp.cmd}; fresh server process (node --inspect=127.0.0.1:0 ${extra === '' ? '' : `${extra} `}server.ts, read over the inspector only at the measuring points); client opens ${o.streams} streams over ${prep.keys.length} keys`,
  );
  const port = await freePort();
  let ours: Proc;
  try {
    ours = await startOurs(prep, port, `http://127.0.0.1:${holdUp.port}/v1`, [
      '--inspect=127.0.0.1:0',
      ...extraNodeArgs(),
    ]);
  } catch (err) {
    const why = `server did not start for the memory test: ${(err as Error).message.slice(0, 300)}`;
    return { markdown: `### Memory per open stream\n\nunavailable: ${why}`, kibPerStream: undefined, unavailable: why };
  }
  procs.push(ours);
  const inspector = inspectorUrl(ours.output());
  if (inspector === undefined) o.log('SSE memory: no inspector URL in the server output; heap columns left out');
  const targets = prep.keys.map((k) => oursTarget(port, k));
  const hold = (n: number) => {
    const job = { mode: 'hold', targets, n, openConcurrency: 50, openTimeoutMs: 60_000, holdMaxMs: 120_000 };
    const p = startPinned('sse-client-hold', CLIENT_CPU, NODE, [join(BENCH_DIR, 'sse-client.ts'), JSON.stringify(job)]);
    procs.push(p);
    return p;
  };
  const samplesFor = async (ms: number) => {
    const xs: number[] = [];
    for (let t = 0; t < ms; t += 250) {
      xs.push(rssKiB(ours.pid));
      await sleep(250);
    }
    return xs;
  };

  o.log(`SSE memory: warm-up with ${Math.min(100, o.streams)} streams opened and closed`);
  const warm = hold(Math.min(100, o.streams));
  const w = await openLine(warm);
  await closeHold(warm);
  await sleep(2000);
  // The idle baseline is taken after a forced GC when the inspector is there, so that garbage left
  // by the warm-up cannot be collected later and make the per-stream figure look smaller.
  // Snapshots come after the RSS samples: writing one grows the process's native memory for a while.
  const idleHeap: HeapPoint = { afterGc: await readHeap(inspector, o, 'afterGc') };
  const idle = median(await samplesFor(1000));
  await maybeSnapshot(inspector, 'idle', o);
  o.log(`SSE memory: idle RSS ${fmt(idle / 1024, 1)} MiB; opening ${o.streams} streams`);
  const big = hold(o.streams);
  const opened = await openLine(big);
  await sleep(1000);
  const withOpen = await samplesFor(2000);
  const atOpen = median(withOpen);
  const openHeap: HeapPoint = { now: await readHeap(inspector, o, 'now') };
  // The young generation grows while 1,000 streams open within a second or two and V8 shrinks it
  // only after a quiet spell; the settled reading shows what the same open streams hold then.
  const settleS = settleSeconds();
  let settled: number | undefined;
  if (settleS > 0) {
    o.log(`SSE memory: holding the streams ${settleS} s more for the settled reading (no forced GC)`);
    await sleep(settleS * 1000);
    settled = median(await samplesFor(2000));
    openHeap.settled = await readHeap(inspector, o, 'now');
  }
  openHeap.afterGc = await readHeap(inspector, o, 'afterGc');
  const afterGcRss = openHeap.afterGc === undefined ? undefined : openHeap.afterGc.rss;
  await maybeSnapshot(inspector, 'open', o);
  await closeHold(big);
  await sleep(3000);
  const after = median(await samplesFor(1000));
  await ours.stop(5000);
  const n = opened.open;
  const kib = n > 0 ? (atOpen - idle) / n : Number.NaN;
  const perStream = (rss: number | undefined) => (rss === undefined || n === 0 ? '–' : fmt((rss - idle) / n, 1));
  o.log(
    `SSE memory: ${n} open (failed ${opened.failed}) in ${fmtInt(opened.openMs)} ms; RSS ${fmt(atOpen / 1024, 1)} MiB → ${fmt(kib, 1)} KiB/stream`,
  );
  const failNote = opened.failed > 0 ? ` ${opened.failed} failed to open: ${JSON.stringify(opened.failures)}.` : '';
  const markdown = [
    `### Memory per open stream (${o.streams} concurrent streams held open; upstream sends one chunk and stays open)`,
    '',
    table(
      [
        'process measured',
        'streams open',
        'idle RSS MiB (after warm-up)',
        `RSS MiB with streams open (median of ${withOpen.length} samples)`,
        '**KiB per stream**',
        `KiB per stream ${settleS} s later (no forced GC)`,
        'KiB per stream after forced GC',
        'RSS MiB 3 s after closing',
        'time to open all, ms',
      ],
      [
        [
          'ours (node server.ts, embedded DB in-process unless BENCH_DATABASE_URL)',
          String(n),
          fmt(idle / 1024, 1),
          fmt(atOpen / 1024, 1),
          `**${fmt(kib, 1)}**`,
          perStream(settled),
          perStream(afterGcRss),
          fmt(after / 1024, 1),
          fmtInt(opened.openMs),
        ],
      ],
    ),
    '',
    `VmRSS from /proc/<pid>/status; per stream = (RSS with the streams open − idle RSS) ÷ streams open. The idle RSS is sampled after a forced GC (over the inspector), so warm-up garbage collected later cannot make the figure look smaller. ` +
      `The headline column is sampled 1–3 s after the last stream opened; the next two are the same streams ${settleS} s later without any forced GC, and then right after a forced GC. Warm-up: ${w.open} streams opened and closed first.${failNote} With the embedded database the figure includes PGlite's memory growth from storing ${n} conversations.`,
    heapTable(idleHeap, openHeap, n),
  ].join('\n');
  return {
    markdown,
    kibPerStream: n > 0 ? kib : undefined,
    unavailable: n === 0 ? 'no stream could be opened' : undefined,
  };
}

type OpenLine = { open: number; failed: number; failures: Record<string, number>; openMs: number };

/** Resolves with the hold client's `open` report once every stream has shown its first token. */
function openLine(p: Proc): Promise<OpenLine> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error('hold client: streams did not open within 150 s')), 150_000);
    p.child.stdout?.on('data', (c: Buffer) => {
      buf += c.toString('utf8');
      const line = buf.split('\n').find((l) => l.includes('"event":"open"'));
      if (line) {
        clearTimeout(timer);
        resolve(JSON.parse(line) as OpenLine);
      }
    });
    p.child.once('exit', () => reject(new Error(`hold client exited early: ${p.output().slice(-500)}`)));
  });
}

async function closeHold(p: Proc): Promise<void> {
  p.child.stdin?.end('close\n');
  const timer = setTimeout(() => void p.stop(1000), 30_000);
  await p.exited;
  clearTimeout(timer);
}

/** The V8 breakdown: per stream = (with streams open − idle) / streams, idle always after a forced GC. */
function heapTable(idle: HeapPoint, open: HeapPoint, n: number): string {
  const base = idle.afterGc;
  if (base === undefined || n === 0) return '';
  const keys = ['rss', 'heapUsed', 'heapTotal', 'external', 'arrayBuffers'] as const;
  const mib = (f: HeapFigures) => keys.map((k) => fmt(f[k] / 1024, 1));
  const per = (f: HeapFigures) => keys.map((k) => fmt((f[k] - base[k]) / n, 1));
  const points: Array<[string, HeapFigures | undefined]> = [
    ['streams open, 1–3 s after opening', open.now],
    ['streams open, settled (no forced GC)', open.settled],
    ['streams open, after forced GC', open.afterGc],
  ];
  const rows = [['idle, after forced GC (MiB)', ...mib(base)]];
  const spaceLines = [`idle after GC: ${spaces(base)}`];
  for (const [label, f] of points) {
    if (f === undefined) continue;
    rows.push([`${label} (MiB)`, ...mib(f)], [`**KiB per stream, ${label}**`, ...per(f)]);
    spaceLines.push(`${label}: ${spaces(f)}`);
  }
  return [
    '',
    'Where it goes: `process.memoryUsage()` read over the inspector (Runtime.evaluate; for "after forced GC", HeapProfiler.collectGarbage twice first).',
    '',
    table(['point', 'rss', 'heapUsed', 'heapTotal', 'external', 'arrayBuffers'], rows),
    '',
    `Committed V8 heap spaces ≥ 1 MiB, in MiB: ${spaceLines.join('; ')}.`,
  ].join('\n');
}

function spaces(f: HeapFigures): string {
  return Object.entries(f.spaces)
    .filter(([, kib]) => kib >= 1024)
    .map(([name, kib]) => `${name} ${fmt(kib / 1024, 1)}`)
    .join(', ');
}
