// The SSE part of the benchmark: relay throughput, added time to first token, CPU per relayed chunk and
// memory per open stream, for the upstream itself and each relay (the Portkey gateway, ours on POST
// /v1/chat and on POST /v1/chat/completions), side by side in one run.
//
// Layout on the 2-core box: the process under test on CPU 0; the client (sse-client.ts) on CPU 1.
// "direct" = the fake upstream itself on CPU 0. Each relay runs on CPU 0 relaying from a second,
// identical upstream on CPU 1 (sharing that core with the client), so the ratio to direct says how
// the relay's cost per stream compares with the upstream's cost of producing it: it is not an
// overhead figure; CPU per relayed chunk and memory per stream size the relay.
// A relay whose route answers 404 is reported as "n/a (route missing)" and the run goes on.
import type { Target } from './sse-client.ts';
import {
  CLIENT_CPU,
  fmt,
  fmtInt,
  freePort,
  median,
  type Proc,
  processCpuSeconds,
  runWorker,
  SERVER_CPU,
  table,
} from './support/harness.ts';
import { LIVE_PARTS, type LiveFigures, type LivePart, runLiveParts } from './support/live.ts';
import type { OursPrep } from './support/ours.ts';
import {
  directTarget,
  probe,
  RELAY_NAMES,
  type Relay,
  type RelayId,
  relaysFor,
  startUpstream,
} from './support/relays.ts';
import { runMemory } from './support/sse-memory.ts';
import { type TtfbTarget, ttfbTable } from './support/sse-report.ts';

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

/** One relay's headline figures and, when it could not be measured, why ('n/a (route missing)', …). */
export interface RelayFigures {
  reason?: string;
  streamsPerSec?: number;
  cpuUsPerChunk?: number;
  ttfbAddedMs?: number;
  kibPerStream?: number;
}

export interface SseReport {
  markdown: string;
  commands: string[];
  figures: Partial<Record<RelayId, RelayFigures>>;
  /** Streams/s of one relay ÷ another's, median of per-round ratios, keyed 'a/b'. */
  ratios: Record<string, number>;
  /** Why the figures of a part are missing when the part was not run. */
  notRun: Partial<Record<'throughput' | 'ttfb' | 'memory', string>>;
  /** The live-answer parts' figures (resume, detached-memory, notify-cpu). */
  live?: LiveFigures;
}

type TargetId = 'direct' | RelayId;
/** A target under load: the process answering it (CPU 0) and the upstream feeding that process. */
interface Measured {
  id: TargetId;
  t: Target;
  server: Proc;
  upstream: Proc;
}

/** Runs one sse-client.ts job on CPU 1 and returns its last JSON line. */
function client<T>(job: object, timeoutMs: number): Promise<T> {
  return runWorker<T>('sse-client.ts', job, timeoutMs);
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

async function measureThroughput(m: Measured, o: SseOptions, durationS: number, round: number): Promise<TputSample> {
  const s0 = processCpuSeconds(m.server.pid);
  const u0 = processCpuSeconds(m.upstream.pid);
  const w0 = performance.now();
  const r = await client<TputResult>(
    { mode: 'throughput', target: m.t, concurrency: o.concurrency, durationMs: durationS * 1000 },
    (durationS + 90) * 1000,
  );
  const wall = (performance.now() - w0) / 1000;
  const sCpu = processCpuSeconds(m.server.pid) - s0;
  const uCpu = processCpuSeconds(m.upstream.pid) - u0;
  const n = Math.max(r.completed, 1);
  return {
    ...r,
    round,
    serverCpuUsPerStream: (sCpu * 1e6) / n,
    serverUtil: sCpu / wall,
    upstreamCpuUsPerStream: m.server === m.upstream ? Number.NaN : (uCpu * 1e6) / n,
  };
}

/** The parts of the SSE benchmark to run: BENCH_SSE_PARTS=throughput,ttfb,memory,notify-cpu,… (default: all). */
export type SsePart = 'throughput' | 'ttfb' | 'memory' | LivePart;
const ALL_PARTS: readonly SsePart[] = ['throughput', 'ttfb', 'memory', ...LIVE_PARTS];

export function ssePartsFromEnv(raw = process.env.BENCH_SSE_PARTS): Set<SsePart> {
  if (raw === undefined || raw.trim() === '') return new Set(ALL_PARTS);
  const parts = raw.split(',').map((x) => x.trim());
  for (const p of parts)
    if (!ALL_PARTS.includes(p as SsePart))
      throw new Error(`BENCH_SSE_PARTS: unknown part '${p}' (use ${ALL_PARTS.join(',')})`);
  return new Set(parts as SsePart[]);
}

/** Runs the SSE parts BENCH_SSE_PARTS selects; never throws for an unavailable relay, only for a broken harness. */
export async function runSse(o: SseOptions, prep: OursPrep): Promise<SseReport> {
  const parts = ssePartsFromEnv();
  const relays = relaysFor(prep);
  const report: SseReport = { markdown: '', commands: [], figures: {}, ratios: {}, notRun: {} };
  for (const r of relays) report.figures[r.id] = {};
  for (const p of ['throughput', 'ttfb', 'memory'] as const)
    if (!parts.has(p)) report.notRun[p] = `${p} not run (BENCH_SSE_PARTS)`;
  if (parts.size < ALL_PARTS.length) report.commands.push(`BENCH_SSE_PARTS=${[...parts].join(',')}`);
  if (process.env.BENCH_SSE_TARGETS) report.commands.push(`BENCH_SSE_TARGETS=${process.env.BENCH_SSE_TARGETS}`);
  const sections: string[] = [];
  const procs: Proc[] = [];
  try {
    if (parts.has('throughput') || parts.has('ttfb'))
      sections.push(...(await runRelayParts(o, relays, parts, procs, report)));
    if (!parts.has('memory')) {
      sections.push('### Memory per open idle stream\n\nnot run (BENCH_SSE_PARTS)');
    } else {
      // A relay already known to be missing or broken is not started again; its row says why.
      const known = new Map(relays.map((r) => [r.id, report.figures[r.id]?.reason]));
      const mem = await runMemory(relays, known, o, procs, report.commands);
      sections.push(mem.markdown);
      for (const m of mem.results) Object.assign(report.figures[m.id] ?? {}, figuresOf(m));
    }
    const relayUs = report.figures['ours-chat']?.cpuUsPerChunk;
    const live = await runLiveParts(parts, o, prep, relayUs, procs, report.commands);
    sections.push(...live.sections);
    report.live = live.figures;
  } finally {
    for (const p of procs.reverse()) await p.stop(5000);
  }
  report.markdown = sections.join('\n\n');
  return report;
}

function figuresOf(m: { reason?: string; kibPerStream?: number }): RelayFigures {
  return m.reason === undefined ? { kibPerStream: m.kibPerStream } : { reason: m.reason };
}

/** (a) throughput and CPU per chunk and (b) added time to first token, against burst upstreams. */
async function runRelayParts(
  o: SseOptions,
  relays: readonly Relay[],
  parts: Set<SsePart>,
  procs: Proc[],
  report: SseReport,
): Promise<string[]> {
  const direct = await startUpstream('upstream-direct', SERVER_CPU, 'burst', o.chunks, o.upstream);
  const feed = await startUpstream('upstream-feed', CLIENT_CPU, 'burst', o.chunks, o.upstream);
  procs.push(direct.proc, feed.proc);
  report.commands.push(`direct upstream: ${direct.cmd}`, `upstream feeding the relays: ${feed.cmd}`);
  const all: Measured[] = [
    { id: 'direct', t: directTarget(direct.port), server: direct.proc, upstream: direct.proc },
    ...(await startRelays(relays, feed, procs, report, o)),
  ];
  const sections: string[] = [];
  if (parts.has('throughput')) {
    const samples = await throughputPart(all, o, report.commands);
    sections.push(throughputTable(all, samples, report, o));
  } else sections.push('### SSE relay throughput\n\nnot run (BENCH_SSE_PARTS)');
  if (parts.has('ttfb')) {
    o.log(`SSE time to first token: ${o.ttfbRequests} sequential requests per target, interleaved`);
    const r = await client<{ targets: TtfbTarget[] }>(
      { mode: 'ttfb', targets: all.map((m) => m.t), n: o.ttfbRequests, warmup: 20 },
      600_000,
    );
    const base = median(r.targets[0]?.tokenMs ?? []);
    all.forEach((m, i) => {
      const f = m.id === 'direct' ? undefined : report.figures[m.id];
      if (f) f.ttfbAddedMs = median(r.targets[i]?.tokenMs ?? []) - base;
    });
    sections.push(ttfbTable(r.targets, unmeasured(report)));
  } else sections.push('### Added time to first token\n\nnot run (BENCH_SSE_PARTS)');
  // The memory part starts fresh processes; these must not hold memory or CPU meanwhile.
  for (const m of all) if (m.id !== 'direct' && m.server.isAlive()) await m.server.stop(5000);
  return sections;
}

/** Starts each relay process once (ours serves both its routes), probes every route, keeps the measurable. */
async function startRelays(
  relays: readonly Relay[],
  feed: { proc: Proc; port: number },
  procs: Proc[],
  report: SseReport,
  o: SseOptions,
): Promise<Measured[]> {
  const feedBase = `http://127.0.0.1:${feed.port}/v1`;
  const started = new Map<string, { proc: Proc; port: number } | Error>();
  const out: Measured[] = [];
  for (const relay of relays) {
    const figures = report.figures[relay.id] ?? {};
    let s = started.get(relay.server.kind);
    if (s === undefined) {
      const port = await freePort();
      try {
        s = { proc: await relay.server.start(port, feedBase), port };
        procs.push(s.proc);
        report.commands.push(relay.server.command);
      } catch (err) {
        s = err as Error;
      }
      started.set(relay.server.kind, s);
    }
    if (s instanceof Error) {
      figures.reason = `server did not start: ${s.message.replace(/\s+/g, ' ').slice(0, 300)}`;
    } else {
      const t = relay.targets(s.port, feedBase)[0];
      const p = t ? await probe(t) : { ok: false as const, reason: 'no API key' };
      if (p.ok && t) out.push({ id: relay.id, t, server: s.proc, upstream: feed.proc });
      else if (!p.ok) figures.reason = p.reason;
    }
    o.log(`SSE: ${relay.name}: ${figures.reason ?? 'measurable'}`);
  }
  return out;
}

/** Throughput, alternated round by round (order rotated) after a warm-up per target. */
async function throughputPart(all: Measured[], o: SseOptions, commands: string[]): Promise<TputSample[][]> {
  commands.push(
    `client: taskset -c ${CLIENT_CPU} node sse-client.ts ` +
      `'{"mode":"throughput","concurrency":${o.concurrency},"durationMs":${o.durationS * 1000},…}' ` +
      `(node:http keep-alive Agent)`,
  );
  o.log(`SSE throughput: warm-up ${o.warmupS} s per target`);
  for (const m of all) await measureThroughput(m, o, o.warmupS, -1);
  const samples: TputSample[][] = all.map(() => []);
  for (let round = 0; round < o.rounds; round++) {
    for (let k = 0; k < all.length; k++) {
      const i = (k + round) % all.length;
      const m = all[i] as Measured;
      const s = await measureThroughput(m, o, o.durationS, round);
      samples[i]?.push(s);
      o.log(
        `  round ${round + 1}/${o.rounds} ${m.id}: ${fmtInt(s.streamsPerSec)} streams/s, p50 ` +
          `${fmt(s.p50ms)} ms, failed ${s.failed}`,
      );
    }
  }
  return samples;
}

function perRoundRatios(a: TputSample[], b: TputSample[]): number[] {
  return a
    .map((x) => x.streamsPerSec / (b.find((y) => y.round === x.round)?.streamsPerSec ?? Number.NaN))
    .filter(Number.isFinite);
}

/** Ratios reported under the table (and judged by the goals): a ÷ b, median of per-round ratios. */
const RATIO_PAIRS: ReadonlyArray<[RelayId, RelayId]> = [
  ['ours-completions', 'portkey'],
  ['ours-chat', 'portkey'],
  ['ours-completions', 'ours-chat'],
];

function throughputTable(all: Measured[], samples: TputSample[][], report: SseReport, o: SseOptions): string {
  const direct = samples[0] ?? [];
  const rows = all.map((m, i) => throughputRow(m, samples[i] ?? [], i === 0 ? undefined : direct, report, o));
  for (const [name, reason] of Object.entries(unmeasured(report)))
    rows.push([name, '0', reason, ...Array(8).fill('–')]);
  const lines = ratioLines(all, samples, report);
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
        `CPU µs per relayed chunk (÷ ${o.chunks})`,
        'upstream CPU µs/stream',
        'CPU 0 process util',
        'failed',
      ],
      rows,
    ),
    '',
    "Each relay reads from an identical upstream on CPU 1 (shared with the client); 'direct' is that " +
      'upstream alone on CPU 0. ' +
      `CPU per relayed chunk = the relay's CPU time (utime + stime from /proc/<pid>/stat over the run) ÷ ` +
      `(streams completed × ${o.chunks} content chunks); for direct, per chunk produced. ` +
      'Ours on /v1/chat also writes the conversation to its database per stream.',
    '',
    lines.length > 0
      ? `Streams/s, one relay ÷ another (median of per-round ratios [min–max]):\n\n${lines.join('\n')}`
      : '',
  ].join('\n');
}

/** One table row; also records the relay's headline figures in the report. `direct` is undefined for direct. */
function throughputRow(
  m: Measured,
  s: TputSample[],
  direct: TputSample[] | undefined,
  report: SseReport,
  o: SseOptions,
): string[] {
  const ratios = direct ? perRoundRatios(s, direct) : [];
  const failures = s.reduce((a, x) => a + x.failed, 0);
  const cpuPerStream = median(s.map((x) => x.serverCpuUsPerStream));
  const f = m.id === 'direct' ? undefined : report.figures[m.id];
  if (f) {
    f.streamsPerSec = median(s.map((x) => x.streamsPerSec));
    f.cpuUsPerChunk = cpuPerStream / o.chunks;
  }
  return [
    m.t.name,
    String(s.length),
    fmtInt(median(s.map((x) => x.streamsPerSec))),
    direct ? `${fmt(median(ratios))} [${fmt(Math.min(...ratios))}–${fmt(Math.max(...ratios))}]` : '1.00',
    fmt(median(s.map((x) => x.p50ms))),
    fmt(median(s.map((x) => x.p99ms))),
    fmtInt(cpuPerStream),
    fmt(cpuPerStream / o.chunks, 2),
    direct ? fmtInt(median(s.map((x) => x.upstreamCpuUsPerStream))) : '–',
    `${fmtInt(median(s.map((x) => x.serverUtil * 100)))}%`,
    failures === 0 ? '0' : `${failures} ${JSON.stringify(mergeFailures(s))}`,
  ];
}

/** The RATIO_PAIRS both measured, as report lines; records each ratio in the report. */
function ratioLines(all: Measured[], samples: TputSample[][], report: SseReport): string[] {
  const byId = new Map(all.map((m, i) => [m.id, samples[i] ?? []]));
  const lines: string[] = [];
  for (const [a, b] of RATIO_PAIRS) {
    const ra = byId.get(a);
    const rb = byId.get(b);
    if (!ra || !rb) continue;
    const r = perRoundRatios(ra, rb);
    report.ratios[`${a}/${b}`] = median(r);
    lines.push(`- ${a} ÷ ${b}: **${fmt(median(r))}** [${fmt(Math.min(...r))}–${fmt(Math.max(...r))}]`);
  }
  return lines;
}

function mergeFailures(s: TputSample[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const x of s) for (const [k, v] of Object.entries(x.failures)) out[k] = (out[k] ?? 0) + v;
  return out;
}

/** Relays that could not be measured, by row label, with why. */
function unmeasured(report: SseReport): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [id, f] of Object.entries(report.figures)) if (f?.reason) out[RELAY_NAMES[id as RelayId]] = f.reason;
  return out;
}
