// The SSE benchmark's notify-cpu part: CPU per relayed chunk of the instance running answers (A), with
// nobody following them (checkpointing only) and with one follower per answer on another instance (B),
// which turns on A's pg_notify of every part for the whole answer. Same paced upstream, same answers,
// configs alternated round by round; the ratio is taken within each round.
//
// Layout: A on CPU 0 (measured); B, the client and the upstream on CPU 1; PostgreSQL unpinned (its
// backends' CPU is reported apart). Needs BENCH_DATABASE_URL: the fan-out exists only on PostgreSQL.
import type { Target } from '../sse-client.ts';
import {
  CLIENT_CPU,
  cpuBusy,
  cpuJiffies,
  dbBackendCpu,
  dbCpuBetween,
  fmt,
  fmtInt,
  freePort,
  median,
  type Proc,
  processCpuSeconds,
  runWorker,
  SERVER_CPU,
  table,
} from './harness.ts';
import { databaseName, type OursPrep, startOurs } from './ours.ts';
import { endUpstream, oursChatTarget, startUpstream } from './relays.ts';

/** Medians of A's CPU µs per relayed chunk and the per-round ratio; `reason` when not measured. */
export interface NotifyFigures {
  reason?: string;
  aloneUsPerChunk?: number;
  followedUsPerChunk?: number;
  /** followed ÷ alone, median of per-round ratios. */
  followedVsAlone?: number;
  /** The throughput part's CPU per relayed chunk for POST /v1/chat in the same run ("today's relay"). */
  relayUsPerChunk?: number | undefined;
}

export interface NotifyOptions {
  rounds: number;
  durationS: number;
  warmupS: number;
  chunks: number;
  log: (line: string) => void;
}

/** Answers in flight at once; at 100 chunks/s each, A relays 2,000 chunks/s, well under one core. */
const CONCURRENT_ANSWERS = 20;
const CHUNK_INTERVAL_MS = 10;
/** Time before the first content chunk, so that the follower is attached before it (late ones are counted). */
const LEAD_MS = 200;

const CONFIGS = [
  { id: 'alone', label: '(a) POST /v1/chat, nobody following (checkpointing only)', follow: false },
  { id: 'followed', label: '(b) same, one follower per answer on B (checkpointing + NOTIFY)', follow: true },
] as const;
type Config = (typeof CONFIGS)[number];

interface FollowResult {
  answers: number;
  followers: number;
  answerDeltas: number;
  followerDeltas: number;
  lateFollows: number;
  chunksBeforeFollow: number;
  failures: Record<string, number>;
  wallMs: number;
}
interface Sample extends FollowResult {
  round: number;
  aUsPerChunk: number;
  bUsPerChunk: number;
  dbUsPerChunk: number;
  aUtil: number;
  foreign: number;
}
interface Servers {
  a: Proc;
  b: Proc;
  posts: Target[];
  followUrl: string;
}

/** Runs the part; `relayUsPerChunk` is the throughput part's figure for POST /v1/chat from this run, if any. */
export async function runNotifyCpu(
  prep: OursPrep,
  o: NotifyOptions,
  relayUsPerChunk: number | undefined,
  procs: Proc[],
  commands: string[],
): Promise<{ markdown: string; figures: NotifyFigures }> {
  const db = databaseName(process.env.BENCH_DATABASE_URL);
  if (!prep.ok || !prep.external || db === undefined) {
    const reason = prep.ok ? 'n/a (needs BENCH_DATABASE_URL: the fan-out runs on PostgreSQL only)' : prep.reason;
    return { markdown: notifyMarkdown([], relayUsPerChunk, o, reason), figures: { reason } };
  }
  const pace = [String(CHUNK_INTERVAL_MS), String(LEAD_MS)];
  const up = await startUpstream('upstream-paced', CLIENT_CPU, 'paced', o.chunks, 'bench', pace);
  procs.push(up.proc);
  commands.push(`notify-cpu: upstream ${up.cmd}; A as ours above on CPU ${SERVER_CPU}, B on CPU ${CLIENT_CPU}`);
  const started: Proc[] = [];
  try {
    const base = `http://127.0.0.1:${up.port}/v1`;
    const [portA, portB] = [await freePort(), await freePort()];
    started.push(await startOurs(prep, portA, base));
    started.push(await startOurs(prep, portB, base, [], {}, CLIENT_CPU));
    procs.push(...started);
    const s: Servers = {
      a: started[0] as Proc,
      b: started[1] as Proc,
      posts: prep.keys.map((k) => oursChatTarget(portA, k)),
      followUrl: `http://127.0.0.1:${portB}/v1/conversations/{id}/stream`,
    };
    const samples = await rounds(s, db, o);
    const figures = notifyFigures(samples);
    return { markdown: notifyMarkdown(samples, relayUsPerChunk, o), figures };
  } catch (err) {
    const reason = `could not run: ${(err as Error).message.replace(/\s+/g, ' ').slice(0, 300)}`;
    return { markdown: notifyMarkdown([], relayUsPerChunk, o, reason), figures: { reason } };
  } finally {
    await endUpstream(up.proc);
    for (const p of started) await p.stop(5000);
    await up.proc.stop(2000);
  }
}

/** A warm-up per config, then `rounds` rounds with the order rotated; samples by config index. */
async function rounds(s: Servers, db: string, o: NotifyOptions): Promise<Sample[][]> {
  o.log(`SSE notify-cpu: warm-up ${o.warmupS} s per config`);
  for (const c of CONFIGS) await measure(s, c, db, o.warmupS, -1);
  const samples: Sample[][] = CONFIGS.map(() => []);
  for (let round = 0; round < o.rounds; round++) {
    for (let k = 0; k < CONFIGS.length; k++) {
      const i = (k + round) % CONFIGS.length;
      const c = CONFIGS[i] as Config;
      const x = await measure(s, c, db, o.durationS, round);
      samples[i]?.push(x);
      o.log(
        `  round ${round + 1}/${o.rounds} ${c.id}: ${fmt(x.aUsPerChunk)} µs per chunk on A, ${x.answerDeltas} ` +
          `chunks, late follows ${x.lateFollows} (${x.chunksBeforeFollow} chunks before them), failures ` +
          JSON.stringify(x.failures),
      );
    }
  }
  return samples;
}

/** One run of `durationS`: answers started within it are all read to their end, and so are counted. */
async function measure(s: Servers, c: Config, db: string, durationS: number, round: number): Promise<Sample> {
  const d0 = dbBackendCpu(db);
  const j0 = cpuJiffies();
  const a0 = processCpuSeconds(s.a.pid);
  const b0 = processCpuSeconds(s.b.pid);
  const job = {
    mode: 'follow',
    posts: s.posts,
    ...(c.follow ? { followUrl: s.followUrl } : {}),
    concurrency: CONCURRENT_ANSWERS,
    durationMs: durationS * 1000,
  };
  const r = await runWorker<FollowResult>('live-client.ts', job, (durationS + 120) * 1000);
  const aCpu = processCpuSeconds(s.a.pid) - a0;
  const bCpu = processCpuSeconds(s.b.pid) - b0;
  const dbCpu = dbCpuBetween(d0, dbBackendCpu(db));
  const busy = cpuBusy(j0, cpuJiffies())[SERVER_CPU] ?? Number.NaN;
  const chunks = Math.max(r.answerDeltas, 1);
  const aUtil = aCpu / (r.wallMs / 1000);
  return {
    ...r,
    round,
    aUsPerChunk: (aCpu * 1e6) / chunks,
    bUsPerChunk: (bCpu * 1e6) / chunks,
    dbUsPerChunk: (dbCpu * 1e6) / chunks,
    aUtil,
    foreign: Math.max(0, busy - aUtil),
  };
}

function perRound(a: Sample[], b: Sample[]): number[] {
  return b
    .map((x) => x.aUsPerChunk / (a.find((y) => y.round === x.round)?.aUsPerChunk ?? Number.NaN))
    .filter(Number.isFinite);
}

function notifyFigures(samples: Sample[][]): NotifyFigures {
  const [alone = [], followed = []] = samples;
  return {
    aloneUsPerChunk: median(alone.map((x) => x.aUsPerChunk)),
    followedUsPerChunk: median(followed.map((x) => x.aUsPerChunk)),
    followedVsAlone: median(perRound(alone, followed)),
  };
}

function row(label: string, s: Sample[], alone: Sample[] | undefined): string[] {
  const r = alone ? perRound(alone, s) : [];
  const failures = s.reduce((n, x) => n + Object.values(x.failures).reduce((a, b) => a + b, 0), 0);
  const per = (f: (x: Sample) => number) => median(s.map(f));
  return [
    label,
    String(s.length),
    fmtInt(per((x) => x.answers / (x.wallMs / 1000))),
    fmtInt(per((x) => x.answerDeltas / (x.wallMs / 1000))),
    `**${fmt(per((x) => x.aUsPerChunk))}**`,
    alone ? `${fmt(median(r))} [${fmt(Math.min(...r))}–${fmt(Math.max(...r))}]` : '1.00',
    `${fmtInt(per((x) => x.aUtil * 100))}%`,
    fmt(per((x) => x.bUsPerChunk)),
    fmt(per((x) => x.dbUsPerChunk)),
    `${fmtInt(per((x) => x.foreign * 100))}%`,
    lateCell(s),
    failures === 0 ? '0' : `${failures} ${JSON.stringify(s.map((x) => x.failures))}`,
  ];
}

/** Late follows and the share of chunks their answers sent before them (those went out in one batch). */
function lateCell(s: Sample[]): string {
  const late = s.reduce((n, x) => n + x.lateFollows, 0);
  const before = s.reduce((n, x) => n + x.chunksBeforeFollow, 0);
  const chunks = s.reduce((n, x) => n + x.answerDeltas, 0);
  return late === 0 ? '0' : `${late} (${fmt((100 * before) / Math.max(chunks, 1), 1)} % of chunks before them)`;
}

function notifyMarkdown(samples: Sample[][], relayUs: number | undefined, o: NotifyOptions, why?: string): string {
  const [alone, followed] = samples;
  const rows = why
    ? CONFIGS.map((c) => [c.label, '0', why, ...Array(9).fill('–')])
    : [row(CONFIGS[0].label, alone ?? [], undefined), row(CONFIGS[1].label, followed ?? [], alone)];
  const f = why ? undefined : notifyFigures(samples);
  const vsRelay = (x: number | undefined) => (relayUs === undefined || x === undefined ? '–' : fmt(x / relayUs));
  const relay = relayUs === undefined ? 'not measured in this run (the throughput part did not run)' : fmt(relayUs);
  return [
    `### CPU per relayed chunk with checkpointing and NOTIFY (${CONCURRENT_ANSWERS} answers at a time, ` +
      `${o.chunks} chunks each, one every ${CHUNK_INTERVAL_MS} ms)`,
    '',
    table(
      [
        'config (A relays; measured)',
        'n',
        'answers/s',
        'chunks relayed/s',
        '**CPU µs per relayed chunk on A**',
        '÷ (a): median of per-round ratios [min–max]',
        'A CPU util',
        'B CPU µs per chunk',
        'database CPU µs per chunk',
        'other processes on CPU 0',
        'follows attached after the first chunk',
        'failed',
      ],
      rows,
    ),
    '',
    "Today's relay (the throughput part's POST /v1/chat, nobody following, this run): " +
      `${relay} µs per relayed chunk; (a) ÷ it: ${vsRelay(f?.aloneUsPerChunk)}, (b) ÷ it: ` +
      `${vsRelay(f?.followedUsPerChunk)}. That figure comes from 200-chunk bursts, where an answer ends ` +
      'before its first checkpoint is due (250 ms or 4 KiB) and many chunks share one socket read and write; ' +
      'here every chunk is its own read, frame and write, so (b) ÷ (a) is the like-for-like cost of NOTIFY.',
    '',
    notifyMethod(o),
  ].join('\n');
}

/** How the part measures, for its section of the report. */
function notifyMethod(o: NotifyOptions): string {
  return (
    `CPU per relayed chunk = A's CPU time (utime + stime from /proc/<pid>/stat) over the run ÷ the deltas A's ` +
    `clients received. Each run starts answers for ${o.durationS} s and reads every one to its end, so the ` +
    `CPU and the chunks cover the same answers. The upstream sends the role chunk, waits ${LEAD_MS} ms, then ` +
    `a chunk every ${CHUNK_INTERVAL_MS} ms; in (b) the client opens a resume on B (no Last-Event-ID) as soon ` +
    "as the answer's `event: start` arrives, and reads it to its end; a follow whose start frame came after " +
    "the answer's first delta is counted as late, with the chunks sent before it (A publishes those in one " +
    'batch, the rest one notification each). A checkpoints each answer every 250 ms (at most 2 in ' +
    'flight); in (b) it also publishes every part with pg_notify. B runs on CPU 1 and the database backends ' +
    'unpinned: their CPU per chunk is shown apart, not in A’s.'
  );
}
