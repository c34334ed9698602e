// The SSE benchmark's resume part: time for a resume (GET /v1/conversations/:id/stream with
// Last-Event-ID) to deliver its first byte and its first delta, on the instance running the answer and
// on another instance (two server processes on one PostgreSQL; the answer runs on A, the resume goes to B).
//
// One answer is started on A against the 'hold' upstream (the role chunk and 4 content chunks, then
// silence), so it stays live for the whole part. Every resume names its first delta as Last-Event-ID:
// the next parts are already there, so the first delta measures the resume, not the model.
import type { ResumeTarget } from '../live-client.ts';
import { CLIENT_CPU, fmt, freePort, median, type Proc, quantile, runWorker, table } from './harness.ts';
import { ORIGIN, type OursPrep, type OursPrepared, startOurs } from './ours.ts';
import { endUpstream, oursChatTarget, startUpstream } from './relays.ts';

/** Medians in ms; `reason` (or `acrossReason` for B alone) says why a figure is missing. */
export interface ResumeFigures {
  reason?: string;
  acrossReason?: string;
  sameStartMs?: number;
  sameDeltaMs?: number;
  acrossStartMs?: number;
  acrossDeltaMs?: number;
}

export interface ResumeOptions {
  /** Sequential resumes per target (after 20 warm-up ones). */
  requests: number;
  log: (line: string) => void;
}

interface Samples {
  name: string;
  n: number;
  failed: number;
  failures: Record<string, number>;
  headersMs: number[];
  startMs: number[];
  deltaMs: number[];
}

const STARTED_CHUNKS = 4;
const WARMUP = 20;
const SAME = 'same instance (A runs the answer)';
const ACROSS = 'another instance (B; A runs the answer, fan-out over LISTEN/NOTIFY)';

/** Runs the part; never throws for a server that cannot run, only for a broken harness. */
export async function runResume(
  prep: OursPrep,
  o: ResumeOptions,
  procs: Proc[],
  commands: string[],
): Promise<{ markdown: string; figures: ResumeFigures }> {
  if (!prep.ok) return { markdown: resumeMarkdown([], prep.reason, o), figures: { reason: prep.reason } };
  const acrossReason = prep.external
    ? undefined
    : 'n/a (needs BENCH_DATABASE_URL: the embedded database is one instance)';
  const up = await startUpstream('upstream-resume', CLIENT_CPU, 'hold', 200, 'bench', [String(STARTED_CHUNKS)]);
  procs.push(up.proc);
  commands.push(`resume: upstream ${up.cmd}; A${acrossReason ? '' : ' and B'} as ours above, on CPU 0`);
  const servers: Proc[] = [];
  try {
    const key = prep.keys[0] ?? '';
    const { portA, targets } = await startInstances(prep, `http://127.0.0.1:${up.port}/v1`, !acrossReason, servers);
    procs.push(...servers);
    o.log(`SSE resume: ${o.requests} sequential resumes per instance, interleaved`);
    const start = oursChatTarget(portA, key);
    const job = { mode: 'resume', start, startDeltas: STARTED_CHUNKS, targets, n: o.requests, warmup: WARMUP };
    const r = await runWorker<{ targets: Samples[] }>('live-client.ts', job, 600_000);
    const [same, across] = r.targets;
    const figures: ResumeFigures = {
      sameStartMs: median(same?.startMs ?? []),
      sameDeltaMs: median(same?.deltaMs ?? []),
      acrossStartMs: across ? median(across.startMs) : undefined,
      acrossDeltaMs: across ? median(across.deltaMs) : undefined,
      ...(acrossReason === undefined ? {} : { acrossReason }),
    };
    return { markdown: resumeMarkdown(r.targets, acrossReason, o), figures };
  } catch (err) {
    const reason = `could not run: ${(err as Error).message.replace(/\s+/g, ' ').slice(0, 300)}`;
    return { markdown: resumeMarkdown([], reason, o), figures: { reason } };
  } finally {
    await endUpstream(up.proc);
    for (const s of servers) await s.stop(5000);
    await up.proc.stop(2000);
  }
}

/** Starts A and, `across`, B (both on CPU 0) into `servers`; the resume targets in report order. */
async function startInstances(
  prep: OursPrepared,
  base: string,
  across: boolean,
  servers: Proc[],
): Promise<{ portA: number; targets: ResumeTarget[] }> {
  const key = prep.keys[0] ?? '';
  const portA = await freePort();
  servers.push(await startOurs(prep, portA, base));
  const targets = [resumeTarget(SAME, portA, key)];
  if (across) {
    const portB = await freePort();
    servers.push(await startOurs(prep, portB, base));
    targets.push(resumeTarget(ACROSS, portB, key));
  }
  return { portA, targets };
}

function resumeTarget(name: string, port: number, key: string): ResumeTarget {
  return {
    name,
    url: `http://127.0.0.1:${port}/v1/conversations/{id}/stream`,
    headers: { authorization: `Bearer ${key}`, origin: ORIGIN },
  };
}

function resumeMarkdown(targets: Samples[], missing: string | undefined, o: ResumeOptions): string {
  const rows = targets.map((t) => [
    t.name,
    String(t.n),
    t.failed === 0 ? '0' : `${t.failed} ${JSON.stringify(t.failures)}`,
    fmt(median(t.headersMs), 3),
    `**${fmt(median(t.startMs), 3)}**`,
    fmt(quantile(t.startMs, 0.9), 3),
    fmt(median(t.deltaMs), 3),
    fmt(quantile(t.deltaMs, 0.9), 3),
  ]);
  if (missing !== undefined)
    for (const name of targets.length === 0 ? [SAME, ACROSS] : [ACROSS])
      rows.push([name, '0', missing, ...Array(5).fill('–')]);
  return [
    `### Resume: time to first byte of GET /v1/conversations/:id/stream (${o.requests} sequential resumes ` +
      'per instance, interleaved)',
    '',
    table(
      [
        'resume sent to',
        'n',
        'failed',
        'headers ms (p50)',
        '**first body byte = `event: start` ms (p50)**',
        'first body byte ms (p90)',
        'first delta ms (p50)',
        'first delta ms (p90)',
      ],
      rows,
    ),
    '',
    `One answer runs on A for the whole part (the upstream sends ${STARTED_CHUNKS} content chunks, then stays ` +
      'silent). Each resume names the answer’s first delta as `Last-Event-ID: <messageId>:<offset>`, so the ' +
      'parts after it are already there: the first delta measures the resume, not the model. Times are from ' +
      'the request call on a fresh loopback connection (the response is cut after its first delta, so it ' +
      `cannot be reused); ${WARMUP} warm-up resumes per instance first; the two instances alternate one ` +
      'request at a time. On B the start frame is sent once A has acknowledged the follow request (B listens ' +
      'on the conversation’s channel, reads the row, notifies A, A answers with pg_notify). Both servers on ' +
      'CPU 0, the client and the upstream on CPU 1. Every B resume leaves a publishing loop on A until the ' +
      'answer ends (A is not told that the follower left); the held answer gets no new part, so they stay idle.',
  ].join('\n');
}
