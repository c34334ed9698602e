// The SSE benchmark's memory part: resident memory per open idle stream, one fresh relay process each.
//
// Each relay (the Portkey gateway, ours on each streaming route) starts fresh on CPU 0 with
// `--inspect=127.0.0.1:0` against the 'hold' upstream (one chunk, then open); a warm-up opens and
// closes 100 streams; the idle RSS is sampled after a forced GC; then N streams are opened and held.
import { join } from 'node:path';
import type { Target } from '../sse-client.ts';
import {
  BENCH_DIR,
  CLIENT_CPU,
  fmt,
  fmtInt,
  freePort,
  median,
  NODE,
  type Proc,
  rssKiB,
  sleep,
  startPinned,
  table,
} from './harness.ts';
import { type HeapPoint, heapTable, maybeSnapshot, readHeap } from './heap-report.ts';
import { inspectorUrl } from './inspector.ts';
import { endUpstream, type Relay, type RelayId, startUpstream } from './relays.ts';

export interface MemoryOptions {
  streams: number;
  chunks: number;
  log: (line: string) => void;
}

/** One relay's figures; `reason` is set (and the figures are not) when it could not be measured. */
export interface MemoryResult {
  id: RelayId;
  name: string;
  reason?: string;
  kibPerStream?: number;
  markdownRow?: string[];
  heap?: string;
}

/** What a hold client reports once its streams are open. */
export type OpenLine = { open: number; failed: number; failures: Record<string, number>; openMs: number };

/**
 * Measures every relay in turn against one 'hold' upstream; a relay with a `known` reason (route
 * missing, server broken) is reported with it and not started. Never throws for a relay that cannot run.
 */
export async function runMemory(
  relays: readonly Relay[],
  known: ReadonlyMap<RelayId, string | undefined>,
  o: MemoryOptions,
  procs: Proc[],
  commands: string[],
): Promise<{ markdown: string; results: MemoryResult[] }> {
  const holdUp = await startUpstream('upstream-hold', CLIENT_CPU, 'hold', o.chunks);
  procs.push(holdUp.proc);
  const extra = extraNodeArgs().join(' ');
  commands.push(
    `memory: upstream ${holdUp.cmd}; per relay a fresh process (node --inspect=127.0.0.1:0 ` +
      `${extra === '' ? '' : `${extra} `}…, read over the inspector only at the measuring points); client ` +
      `opens ${o.streams} streams (ours: spread over its keys)`,
  );
  const results: MemoryResult[] = [];
  for (const relay of relays) {
    const reason = known.get(relay.id);
    const upstreamBase = `http://127.0.0.1:${holdUp.port}/v1`;
    const r = reason
      ? { id: relay.id, name: relay.name, reason }
      : await measureRelay(relay, upstreamBase, holdUp.proc, o, procs);
    if (r.reason) o.log(`SSE memory: ${relay.id}: ${r.reason}`);
    results.push(r);
  }
  return { markdown: memoryMarkdown(results, o), results };
}

async function measureRelay(
  relay: Relay,
  upstreamBase: string,
  upstream: Proc,
  o: MemoryOptions,
  procs: Proc[],
): Promise<MemoryResult> {
  const port = await freePort();
  const base = { id: relay.id, name: relay.name };
  let server: Proc;
  try {
    server = await relay.server.start(port, upstreamBase, ['--inspect=127.0.0.1:0', ...extraNodeArgs()]);
  } catch (err) {
    return { ...base, reason: `server did not start: ${(err as Error).message.replace(/\s+/g, ' ').slice(0, 300)}` };
  }
  procs.push(server);
  try {
    const targets = relay.targets(port, upstreamBase);
    return await holdAndSample(relay, server, targets, upstream, o, procs);
  } finally {
    await server.stop(5000);
  }
}

async function holdAndSample(
  relay: Relay,
  server: Proc,
  targets: Target[],
  upstream: Proc,
  o: MemoryOptions,
  procs: Proc[],
): Promise<MemoryResult> {
  const inspector = inspectorUrl(server.output());
  if (inspector === undefined) o.log(`SSE memory: ${relay.id}: no inspector URL in its output; heap columns left out`);
  o.log(`SSE memory: ${relay.id}: warm-up with ${Math.min(100, o.streams)} streams opened and closed`);
  const warm = holdClient(targets, Math.min(100, o.streams), procs);
  const w = await openLine(warm);
  await closeHold(warm);
  // Answers that outlive their client (ours on /v1/chat) would stay live through the idle reading: end them.
  await endUpstream(upstream);
  if (w.open === 0) {
    const missing = (w.failures['404'] ?? 0) > 0;
    const reason = missing ? 'n/a (route missing)' : `no stream opened: ${JSON.stringify(w.failures)}`;
    return { id: relay.id, name: relay.name, reason };
  }
  await sleep(2000);
  // The idle baseline is taken after a forced GC when the inspector is there, so that garbage left
  // by the warm-up cannot be collected later and make the per-stream figure look smaller.
  // Snapshots come after the RSS samples: writing one grows the process's native memory for a while.
  const idleHeap: HeapPoint = { afterGc: await readHeap(inspector, o.log, 'afterGc') };
  const idle = median(await rssSamples(server.pid, 1000));
  await maybeSnapshot(inspector, `${relay.id}-idle`, o.log);
  o.log(`SSE memory: ${relay.id}: idle RSS ${fmt(idle / 1024, 1)} MiB; opening ${o.streams} streams`);
  const open = await sampleOpen(relay, server, inspector, holdClient(targets, o.streams, procs), o);
  return memoryResult(relay, w.open, idle, idleHeap, open, o);
}

/** RSS and heap readings with the streams open; closes them at the end. */
interface OpenSamples {
  opened: OpenLine;
  withOpen: number[];
  settled?: number;
  heap: HeapPoint;
  after: number;
}

async function sampleOpen(
  relay: Relay,
  server: Proc,
  inspector: string | undefined,
  big: Proc,
  o: MemoryOptions,
): Promise<OpenSamples> {
  const opened = await openLine(big);
  await sleep(1000);
  const withOpen = await rssSamples(server.pid, 2000);
  const heap: HeapPoint = { now: await readHeap(inspector, o.log, 'now') };
  // The young generation grows while 1,000 streams open within a second or two and V8 shrinks it
  // only after a quiet spell; the settled reading shows what the same open streams hold then.
  const settleS = settleSeconds();
  let settled: number | undefined;
  if (settleS > 0) {
    o.log(`SSE memory: holding the streams ${settleS} s more for the settled reading (no forced GC)`);
    await sleep(settleS * 1000);
    settled = median(await rssSamples(server.pid, 2000));
    heap.settled = await readHeap(inspector, o.log, 'now');
  }
  heap.afterGc = await readHeap(inspector, o.log, 'afterGc');
  await maybeSnapshot(inspector, `${relay.id}-open`, o.log);
  await closeHold(big);
  await sleep(3000);
  const after = median(await rssSamples(server.pid, 1000));
  return { opened, withOpen, settled, heap, after };
}

function memoryResult(
  relay: Relay,
  warmed: number,
  idle: number,
  idleHeap: HeapPoint,
  s: OpenSamples,
  o: MemoryOptions,
): MemoryResult {
  const n = s.opened.open;
  const atOpen = median(s.withOpen);
  const kib = n > 0 ? (atOpen - idle) / n : Number.NaN;
  const perStream = (rss: number | undefined) => (rss === undefined || n === 0 ? '–' : fmt((rss - idle) / n, 1));
  o.log(
    `SSE memory: ${relay.id}: ${n} open (failed ${s.opened.failed}) in ${fmtInt(s.opened.openMs)} ms; RSS ` +
      `${fmt(atOpen / 1024, 1)} MiB → ${fmt(kib, 1)} KiB/stream`,
  );
  const failed = s.opened.failed > 0 ? ` (${s.opened.failed} failed: ${JSON.stringify(s.opened.failures)})` : '';
  return {
    id: relay.id,
    name: relay.name,
    reason: n === 0 ? `no stream could be opened${failed}` : undefined,
    kibPerStream: n > 0 ? kib : undefined,
    markdownRow: [
      relay.name,
      `${n}${failed}`,
      String(warmed),
      fmt(idle / 1024, 1),
      `${fmt(atOpen / 1024, 1)} (${s.withOpen.length} samples)`,
      `**${fmt(kib, 1)}**`,
      perStream(s.settled),
      perStream(s.heap.afterGc?.rss),
      fmt(s.after / 1024, 1),
      fmtInt(s.opened.openMs),
    ],
    heap: heapTable(relay.name, idleHeap, s.heap, n),
  };
}

function memoryMarkdown(results: MemoryResult[], o: MemoryOptions): string {
  const settleS = settleSeconds();
  const rows = results.map(
    (r) => r.markdownRow ?? [r.name, r.reason ?? 'unavailable', '–', '–', '–', '–', '–', '–', '–', '–'],
  );
  return [
    `### Memory per open idle stream (${o.streams} concurrent streams held open; upstream sends one chunk ` +
      `and stays open)`,
    '',
    table(
      [
        'process measured (fresh, on CPU 0)',
        'streams open',
        'warm-up streams',
        'idle RSS MiB (after warm-up, forced GC)',
        'RSS MiB with streams open (median)',
        '**KiB per stream**',
        `KiB per stream ${settleS} s later (no forced GC)`,
        'KiB per stream after forced GC',
        'RSS MiB 3 s after closing',
        'time to open all, ms',
      ],
      rows,
    ),
    '',
    'VmRSS from /proc/<pid>/status; per stream = (RSS with the streams open − idle RSS) ÷ streams open. ' +
      `The headline column is sampled 1–3 s after the last stream opened; the next two are the same ` +
      `streams ${settleS} s later without any forced GC, and then right after a forced GC. ` +
      'The Portkey gateway runs with the same V8 flag and MALLOC_ARENA_MAX as ours. With the embedded ' +
      'database, ours also includes PGlite’s growth from storing the conversations.',
    ...results.map((r) => r.heap ?? ''),
  ].join('\n');
}

/** Starts a hold client on CPU 1; with `detach` it closes each stream once it has its first token. */
export function holdClient(targets: Target[], n: number, procs: Proc[], detach = false): Proc {
  const job = { mode: 'hold', targets, n, openConcurrency: 50, openTimeoutMs: 60_000, holdMaxMs: 120_000, detach };
  const p = startPinned('sse-client-hold', CLIENT_CPU, NODE, [join(BENCH_DIR, 'sse-client.ts'), JSON.stringify(job)]);
  procs.push(p);
  return p;
}

/** VmRSS of `pid` every 250 ms for `ms`. */
export async function rssSamples(pid: number, ms: number): Promise<number[]> {
  const xs: number[] = [];
  for (let t = 0; t < ms; t += 250) {
    xs.push(rssKiB(pid));
    await sleep(250);
  }
  return xs;
}

/** Resolves with the hold client's `open` report once every stream has shown its first token. */
export function openLine(p: Proc): Promise<OpenLine> {
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

/** Tells a hold client to close its streams and waits for it to exit. */
export async function closeHold(p: Proc): Promise<void> {
  p.child.stdin?.end('close\n');
  const timer = setTimeout(() => void p.stop(1000), 30_000);
  await p.exited;
  clearTimeout(timer);
}

/**
 * BENCH_SERVER_NODE_ARGS (space-separated) adds Node flags to the memory test's relays, for experiments
 * such as --max-semi-space-size. Production starts with none beyond the ones ours.ts sets, so leave it
 * unset for figures that stand for production; the command list in the report records it when set.
 */
export function extraNodeArgs(): string[] {
  return (process.env.BENCH_SERVER_NODE_ARGS ?? '').split(' ').filter((a) => a !== '');
}

/** Seconds to keep the streams open after the headline samples before the settled reading (0 skips it). */
export function settleSeconds(): number {
  const raw = process.env.BENCH_SETTLE_S;
  const v = raw === undefined || raw === '' ? 20 : Number(raw);
  if (!Number.isFinite(v) || v < 0) throw new Error(`invalid BENCH_SETTLE_S: ${raw}`);
  return v;
}
