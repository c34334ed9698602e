// The SSE benchmark's detached-memory part: resident memory of an answer that runs on with no client
// attached, beyond its upstream stream.
//
// Two fresh processes on CPU 0, one after the other, against one paced upstream (1 chunk/s per stream):
//   1. the upstream client alone (upstream-holder.ts: lib/chat/upstream.ts with ours' settings) holding
//      N streams, each read event by event to its end: what an answer's upstream request costs;
//   2. ours, with N answers started on POST /v1/chat whose clients leave as soon as the first token
//      arrives (ANSWER_ON_DISCONNECT=finish keeps them running; at most 50 client sockets exist at once).
// Per stream = (RSS with the N open − idle RSS) ÷ N in each; the answer's cost beyond its upstream stream
// is ours' figure minus the upstream client's. Both only grow between their readings (RSS that is
// freed is not always returned to the system, so a reading after something closed could flatter).
import {
  CLIENT_CPU,
  fmt,
  fmtInt,
  freePort,
  median,
  NODE,
  type Proc,
  SERVER_CPU,
  sleep,
  startPinned,
  table,
  waitForLine,
} from './harness.ts';
import { type HeapPoint, heapTable, maybeSnapshot, readHeap } from './heap-report.ts';
import { inspectorUrl } from './inspector.ts';
import { type OursPrep, type OursPrepared, PRODUCTION_ENV, PRODUCTION_NODE_FLAGS, startOurs } from './ours.ts';
import { endUpstream, oursChatTarget, startUpstream } from './relays.ts';
import {
  closeHold,
  extraNodeArgs,
  holdClient,
  type OpenLine,
  openLine,
  rssSamples,
  settleSeconds,
} from './sse-memory.ts';

/** KiB per stream (RSS, 1–3 s after opening); `reason` when not measured. */
export interface DetachedFigures {
  reason?: string;
  answerKib?: number;
  upstreamKib?: number;
  beyondKib?: number;
}

export interface DetachedOptions {
  streams: number;
  log: (line: string) => void;
}

/** A process under test and how to open N streams in it. */
interface Driver {
  name: string;
  /** File name stem of its heap snapshots (BENCH_HEAP_SNAPSHOT_DIR). */
  id: string;
  proc: Proc;
  open(n: number): Promise<OpenLine>;
  /** How many answers the server itself counts as streaming (ours only). */
  live?(): Promise<number | undefined>;
}

interface Readings {
  name: string;
  opened: OpenLine;
  idle: number;
  withOpen: number;
  settled?: number;
  idleHeap: HeapPoint;
  heap: HeapPoint;
  live?: number | undefined;
}

const DRIP_MS = 1000;
const HOLDER = 'upstream client alone (upstream-holder.ts: lib/chat/upstream.ts, ours’ upstream settings)';
const OURS = 'ours: POST /v1/chat answers whose client left (ANSWER_ON_DISCONNECT=finish)';

/** Runs the part; never throws for a process that cannot run, only for a broken harness. */
export async function runDetached(
  prep: OursPrep,
  o: DetachedOptions,
  procs: Proc[],
  commands: string[],
): Promise<{ markdown: string; figures: DetachedFigures }> {
  if (!prep.ok) return { markdown: detachedMarkdown([], o, prep.reason), figures: { reason: prep.reason } };
  // A chunk a second for up to 180 s (the upstream's bound), far longer than the readings take.
  const up = await startUpstream('upstream-drip', CLIENT_CPU, 'paced', 180, 'bench', [String(DRIP_MS), '0']);
  procs.push(up.proc);
  const base = `http://127.0.0.1:${up.port}/v1`;
  const flags = [...PRODUCTION_NODE_FLAGS, '--inspect=127.0.0.1:0', ...extraNodeArgs()].join(' ');
  commands.push(
    `detached-memory: upstream ${up.cmd}; fresh on CPU ${SERVER_CPU}: node ${flags} support/upstream-holder.ts ` +
      `<upstream>/v1, then ours as above with the same flags; the client opens ${o.streams} streams and leaves ` +
      'each at its first token (ours)',
  );
  const results: Readings[] = [];
  try {
    for (const start of [() => startHolder(base), () => startOursDriver(prep, base, procs)]) {
      const d = await start();
      procs.push(d.proc);
      try {
        results.push(await measureDriver(d, up.proc, o));
      } finally {
        await endUpstream(up.proc);
        await d.proc.stop(5000);
      }
    }
  } catch (err) {
    const reason = `could not run: ${(err as Error).message.replace(/\s+/g, ' ').slice(0, 300)}`;
    return { markdown: detachedMarkdown(results, o, reason), figures: { reason } };
  } finally {
    await up.proc.stop(2000);
  }
  const [holder, ours] = results.map((r) => perStream(r.withOpen, r));
  const beyond = ours !== undefined && holder !== undefined ? ours - holder : undefined;
  return {
    markdown: detachedMarkdown(results, o),
    figures: { answerKib: ours, upstreamKib: holder, beyondKib: beyond },
  };
}

async function startHolder(base: string): Promise<Driver> {
  const args = [...PRODUCTION_NODE_FLAGS, '--inspect=127.0.0.1:0', ...extraNodeArgs(), 'support/upstream-holder.ts'];
  const env = { PATH: process.env.PATH ?? '', ...PRODUCTION_ENV };
  const proc = startPinned('upstream-holder', SERVER_CPU, NODE, [...args, base], { env });
  await waitForLine(proc, 'ready', 30_000);
  return {
    name: HOLDER,
    id: 'detached-upstream-alone',
    proc,
    open(n) {
      const line = openLine(proc);
      proc.child.stdin?.write(`open ${n}\n`);
      return line;
    },
  };
}

async function startOursDriver(prep: OursPrepared, base: string, procs: Proc[]): Promise<Driver> {
  const port = await freePort();
  const proc = await startOurs(prep, port, base, ['--inspect=127.0.0.1:0', ...extraNodeArgs()]);
  const targets = prep.keys.map((k) => oursChatTarget(port, k));
  return {
    name: OURS,
    id: 'detached-ours',
    proc,
    async open(n) {
      const client = holdClient(targets, n, procs, true);
      const line = await openLine(client);
      await closeHold(client);
      return line;
    },
    async live() {
      const res = await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(10_000) });
      const m = /^chat_active_streams (\d+)/m.exec(await res.text());
      return m ? Number(m[1]) : undefined;
    },
  };
}

/** Warm-up (opened, then ended by the upstream), idle after a forced GC, then N held; readings as they grow. */
async function measureDriver(d: Driver, upstream: Proc, o: DetachedOptions): Promise<Readings> {
  const inspector = inspectorUrl(d.proc.output());
  if (inspector === undefined) o.log(`SSE detached-memory: no inspector URL for ${d.name}; heap figures left out`);
  const warm = await d.open(Math.min(100, o.streams));
  if (warm.open === 0) throw new Error(`${d.name}: no stream opened: ${JSON.stringify(warm.failures)}`);
  await endUpstream(upstream);
  await sleep(2000);
  const idleHeap: HeapPoint = { afterGc: await readHeap(inspector, o.log, 'afterGc') };
  const idle = median(await rssSamples(d.proc.pid, 1000));
  // After the RSS samples: writing a snapshot grows the process's native memory for a while.
  await maybeSnapshot(inspector, `${d.id}-idle`, o.log);
  o.log(`SSE detached-memory: ${d.name}: idle ${fmt(idle / 1024, 1)} MiB; opening ${o.streams}`);
  const opened = await d.open(o.streams);
  await sleep(1000);
  const withOpen = median(await rssSamples(d.proc.pid, 2000));
  const heap: HeapPoint = { now: await readHeap(inspector, o.log, 'now') };
  const settleS = settleSeconds();
  let settled: number | undefined;
  if (settleS > 0) {
    await sleep(settleS * 1000);
    settled = median(await rssSamples(d.proc.pid, 2000));
    heap.settled = await readHeap(inspector, o.log, 'now');
  }
  heap.afterGc = await readHeap(inspector, o.log, 'afterGc');
  await maybeSnapshot(inspector, `${d.id}-open`, o.log);
  const live = await d.live?.();
  const r: Readings = { name: d.name, opened, idle, withOpen, settled, idleHeap, heap, live };
  o.log(
    `SSE detached-memory: ${d.name}: ${opened.open} open → ` +
      `${fmt(perStream(withOpen, r) ?? Number.NaN, 1)} KiB/stream`,
  );
  return r;
}

/** (RSS − idle RSS) ÷ streams open, KiB; undefined without a reading or an open stream. */
function perStream(rss: number | undefined, r: Readings): number | undefined {
  return rss === undefined || r.opened.open === 0 ? undefined : (rss - r.idle) / r.opened.open;
}

function heapUsedPerStream(r: Readings): number | undefined {
  const [idle, gc] = [r.idleHeap.afterGc, r.heap.afterGc];
  return idle === undefined || gc === undefined || r.opened.open === 0
    ? undefined
    : (gc.heapUsed - idle.heapUsed) / r.opened.open;
}

function columns(r: Readings): Array<number | undefined> {
  return [perStream(r.withOpen, r), perStream(r.settled, r), perStream(r.heap.afterGc?.rss, r), heapUsedPerStream(r)];
}

function n1(x: number | undefined): string {
  return fmt(x ?? Number.NaN, 1);
}

/** One row per process measured (or why it was not), then ours minus the upstream client alone. */
function detachedRows(results: Readings[], why: string | undefined): string[][] {
  const rows = results.map((r) => {
    const [kib, settled, gc, heapUsed] = columns(r);
    const failed = r.opened.failed > 0 ? ` (${r.opened.failed} failed: ${JSON.stringify(r.opened.failures)})` : '';
    return [
      r.name,
      `${r.opened.open}${failed}`,
      fmt(r.idle / 1024, 1),
      fmt(r.withOpen / 1024, 1),
      `**${n1(kib)}**`,
      n1(settled),
      n1(gc),
      n1(heapUsed),
      r.live === undefined ? '–' : fmtInt(r.live),
    ];
  });
  for (const name of [HOLDER, OURS].slice(results.length))
    rows.push([name, '0', why ?? '–', ...Array<string>(6).fill('–')]);
  const [holder, ours] = results.map(columns);
  if (holder && ours) {
    const beyond = [0, 1, 2, 3].map((i) => n1(diff(ours[i], holder[i])));
    const label = '**ours beyond its upstream stream** (ours − upstream client alone)';
    rows.push([label, '', '', '', `**${beyond[0]}**`, ...beyond.slice(1), '']);
  }
  return rows;
}

const DETACHED_METHOD =
  'Method: VmRSS from /proc/<pid>/status; per stream = (RSS with the streams open − idle RSS) ÷ streams ' +
  'open, sampled 1–3 s after the last one opened (headline), then again later and after a forced GC. ' +
  'The upstream sends a chunk a second to every stream. Warm-up in each process: 100 streams opened and ' +
  'ended by the upstream, whose idle keep-alive connections it then closes, so the idle reading holds no ' +
  'upstream socket. The upstream client alone reads each stream through lib/chat/upstream.ts exactly ' +
  'as a turn does (socket, HTTP parser, SDK stream, deadlines) and keeps nothing: its figure is the ' +
  "answer's upstream stream. Ours' answers had a client until their first token, which then left; the " +
  'last column is the server’s own count, read after the readings. "Beyond its upstream stream" = ours ' +
  '− the upstream client alone, column by column. With the embedded database, ours also includes ' +
  'PGlite’s growth from storing the conversations and their checkpoints.';

function detachedMarkdown(results: Readings[], o: DetachedOptions, why?: string): string {
  return [
    `### Memory of an answer with no client attached (${o.streams} live answers, upstream 1 chunk/s each)`,
    '',
    table(
      [
        'process measured (fresh, on CPU 0)',
        'streams open',
        'idle RSS MiB (after warm-up, forced GC)',
        'RSS MiB with the streams (median)',
        '**KiB per stream**',
        `KiB per stream ${settleSeconds()} s later (no forced GC)`,
        'KiB per stream after forced GC',
        'heapUsed KiB per stream after forced GC',
        'answers streaming (chat_active_streams)',
      ],
      detachedRows(results, why),
    ),
    '',
    DETACHED_METHOD,
    ...results.map((r) => heapTable(r.name, r.idleHeap, r.heap, r.opened.open)),
  ].join('\n');
}

function diff(a: number | undefined, b: number | undefined): number | undefined {
  return a === undefined || b === undefined ? undefined : a - b;
}
