// The SSE benchmark's live-answer parts (answers that outlive their connection), selected with
// BENCH_SSE_PARTS like the others: notify-cpu, resume and detached-memory; and their goal lines.
import { fmt, goal, type Proc } from './harness.ts';
import { type DetachedFigures, runDetached } from './live-memory.ts';
import { type NotifyFigures, runNotifyCpu } from './live-notify.ts';
import { type ResumeFigures, runResume } from './live-resume.ts';
import type { OursPrep } from './ours.ts';

export const LIVE_PARTS = ['notify-cpu', 'resume', 'detached-memory'] as const;
export type LivePart = (typeof LIVE_PARTS)[number];

const TITLES: Readonly<Record<LivePart, string>> = {
  'notify-cpu': 'CPU per relayed chunk with checkpointing and NOTIFY',
  resume: 'Resume: time to first byte',
  'detached-memory': 'Memory of an answer with no client attached',
};

export interface LiveFigures {
  notify?: NotifyFigures;
  resume?: ResumeFigures;
  detached?: DetachedFigures;
  /** Why a part has no figures when it was not run. */
  notRun: Partial<Record<LivePart, string>>;
}

export interface LiveOptions {
  rounds: number;
  durationS: number;
  warmupS: number;
  chunks: number;
  ttfbRequests: number;
  streams: number;
  log: (line: string) => void;
}

/**
 * Runs the selected live parts in order, each with fresh processes that it stops before returning.
 * `relayUsPerChunk` is this run's throughput figure for POST /v1/chat, when that part ran.
 */
export async function runLiveParts(
  parts: ReadonlySet<string>,
  o: LiveOptions,
  prep: OursPrep,
  relayUsPerChunk: number | undefined,
  procs: Proc[],
  commands: string[],
): Promise<{ sections: string[]; figures: LiveFigures }> {
  const figures: LiveFigures = { notRun: {} };
  const sections: string[] = [];
  for (const part of LIVE_PARTS) {
    if (!parts.has(part)) {
      figures.notRun[part] = `${part} not run (BENCH_SSE_PARTS)`;
      sections.push(`### ${TITLES[part]}\n\nnot run (BENCH_SSE_PARTS)`);
      continue;
    }
    o.log(`SSE: ${part}`);
    if (part === 'notify-cpu') {
      const r = await runNotifyCpu(prep, o, relayUsPerChunk, procs, commands);
      figures.notify = { ...r.figures, relayUsPerChunk };
      sections.push(r.markdown);
    } else if (part === 'resume') {
      const r = await runResume(prep, { requests: o.ttfbRequests, log: o.log }, procs, commands);
      figures.resume = r.figures;
      sections.push(r.markdown);
    } else {
      const r = await runDetached(prep, { streams: o.streams, log: o.log }, procs, commands);
      figures.detached = r.figures;
      sections.push(r.markdown);
    }
  }
  return { sections, figures };
}

/** The goal lines of the live parts; `skipped` says why none could be judged (the SSE part did not run). */
export function liveGoals(f: LiveFigures | undefined, skipped: string | undefined): string[] {
  const why = (part: LivePart, reason: string | undefined) => skipped ?? f?.notRun[part] ?? reason;
  const { notify: n, resume: r, detached: d } = f ?? { notRun: {} };
  const x = (v: number | undefined, digits = 2) => fmt(v ?? Number.NaN, digits);
  const relay = n?.relayUsPerChunk;
  const vsRelay = (v: number | undefined) => (v === undefined || relay === undefined ? '–' : fmt(v / relay));
  return [
    goal(
      'An answer with no client attached costs ≤ 16 KiB beyond its upstream stream (RSS per live answer)',
      d?.beyondKib,
      (v) => v <= 16,
      (v) => `${x(d?.answerKib, 1)} − ${x(d?.upstreamKib, 1)} KiB = ${fmt(v, 1)} KiB`,
      why('detached-memory', d?.reason),
    ),
    goal(
      'CPU per relayed chunk with checkpointing and NOTIFY ≤ 1.25 × the relay with nobody following ' +
        '(same paced answers, median of per-round ratios)',
      n?.followedVsAlone,
      (v) => v <= 1.25,
      (v) =>
        `(b) ${x(n?.followedUsPerChunk)} vs (a) ${x(n?.aloneUsPerChunk)} µs = ${fmt(v)} ×; against the ` +
        `throughput part's burst relay (${x(relay)} µs): (a) ${vsRelay(n?.aloneUsPerChunk)} ×, ` +
        `(b) ${vsRelay(n?.followedUsPerChunk)} ×`,
      why('notify-cpu', n?.reason),
    ),
    goal(
      'Resume time to first byte, median, on the instance running the answer < 5 ms',
      r?.sameStartMs,
      (v) => v < 5,
      (v) => `${fmt(v, 3)} ms (first delta ${x(r?.sameDeltaMs, 3)} ms)`,
      why('resume', r?.reason),
    ),
    goal(
      'Resume time to first byte, median, across instances < 15 ms',
      r?.acrossStartMs,
      (v) => v < 15,
      (v) => `${fmt(v, 3)} ms (first delta ${x(r?.acrossDeltaMs, 3)} ms)`,
      why('resume', r?.reason ?? r?.acrossReason),
    ),
  ];
}
