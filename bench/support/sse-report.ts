// The SSE part's time-to-first-token table and its goals in the report.
import type { RelayFigures, SseReport } from '../sse.ts';
import { fmt, goal, median, quantile, table } from './harness.ts';
import { liveGoals } from './live.ts';
import type { RelayId } from './relays.ts';

/** What the ttfb client job reports per target (milliseconds from the call, successful requests only). */
export interface TtfbTarget {
  name: string;
  n: number;
  failed: number;
  headersMs: number[];
  firstByteMs: number[];
  tokenMs: number[];
  totalMs: number[];
}

/** Rows per target, the first being the upstream direct; `unmeasured` rows say why a relay is missing. */
export function ttfbTable(targets: TtfbTarget[], unmeasured: Record<string, string>): string {
  const d = targets[0];
  const added = (t: TtfbTarget, k: 'headersMs' | 'firstByteMs' | 'tokenMs') =>
    d === undefined || t === d ? '–' : fmt(median(t[k]) - median(d[k]), 3);
  const rows = targets.map((t) => [
    t.name,
    String(t.n),
    String(t.failed),
    fmt(median(t.headersMs), 3),
    fmt(median(t.firstByteMs), 3),
    fmt(median(t.tokenMs), 3),
    fmt(quantile(t.tokenMs, 0.9), 3),
    fmt(median(t.totalMs), 3),
    added(t, 'headersMs'),
    added(t, 'firstByteMs'),
    `**${added(t, 'tokenMs')}**`,
  ]);
  for (const [name, reason] of Object.entries(unmeasured)) rows.push([name, '0', reason, ...Array(8).fill('–')]);
  return [
    '### Added time to first byte / first token (sequential requests, targets interleaved one request at a time)',
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
        'added: headers ms',
        'added: first body byte ms',
        '**added: first token ms**',
      ],
      rows,
    ),
    '',
    "Added = median of the target − median of the upstream direct. Ours' first body byte on /v1/chat is " +
      "its `event: start` (sent after the user's message is stored); " +
      'the first token is the first `event: delta`, or on the OpenAI routes the first chunk with non-empty ' +
      '`delta.content`. The goals are judged on the first token. ' +
      'The Portkey gateway waits 25 ms (a `setTimeout` in its stream transformer, for every provider but ' +
      'Bedrock) before it relays the first chunk of every stream: that wait, not relay work, dominates its ' +
      'time to first token.',
  ].join('\n');
}

/** What the goal lines need: a relay's figures, why one is missing, and formatting helpers. */
interface GoalContext {
  r: SseReport | undefined;
  chat: RelayFigures | undefined;
  comp: RelayFigures | undefined;
  pk: RelayFigures | undefined;
  why: (part: keyof SseReport['notRun'], ...ids: RelayId[]) => string | undefined;
}

const COMPLETIONS = 'POST /v1/chat/completions';
const WITHIN = `${COMPLETIONS} within 10 % of POST /v1/chat (no more than 10 % worse)`;

function n(x: number | undefined, digits = 2): string {
  return fmt(x ?? Number.NaN, digits);
}

function div(a: number | undefined, b: number | undefined): number | undefined {
  return a === undefined || b === undefined ? undefined : a / b;
}

/** The goal lines of the SSE part; `skipped` says why none could be judged (the part was not run). */
export function sseGoals(r: SseReport | undefined, skipped: string | undefined): string[] {
  const fig = (id: RelayId) => r?.figures[id];
  const why = (part: keyof SseReport['notRun'], ...ids: RelayId[]) => {
    if (skipped !== undefined) return skipped;
    const reasons = ids.map((id) => (fig(id) === undefined ? 'not selected (BENCH_SSE_TARGETS)' : fig(id)?.reason));
    return reasons.find((x) => x?.startsWith('n/a')) ?? reasons.find((x) => x !== undefined) ?? r?.notRun[part];
  };
  const c: GoalContext = { r, chat: fig('ours-chat'), comp: fig('ours-completions'), pk: fig('portkey'), why };
  return [...chatGoals(c), ...portkeyGoals(c), ...parityGoals(c), ...liveGoals(r?.live, skipped)];
}

function chatGoals({ chat, why }: GoalContext): string[] {
  return [
    goal(
      'POST /v1/chat: relay overhead on time to first byte < 2 ms median (judged on the first token)',
      chat?.ttfbAddedMs,
      (v) => v < 2,
      (v) => `+${fmt(v, 3)} ms`,
      why('ttfb', 'ours-chat'),
    ),
    goal(
      'POST /v1/chat: ≤ 64 KiB resident per open stream',
      chat?.kibPerStream,
      (v) => v <= 64,
      (v) => `${fmt(v, 1)} KiB`,
      why('memory', 'ours-chat'),
    ),
  ];
}

function portkeyGoals({ r, comp, pk, why }: GoalContext): string[] {
  const ttfb =
    comp?.ttfbAddedMs === undefined || pk?.ttfbAddedMs === undefined ? undefined : comp.ttfbAddedMs - pk.ttfbAddedMs;
  return [
    goal(
      `${COMPLETIONS} ≥ 2 × the Portkey gateway's streams/s (median of per-round ratios)`,
      r?.ratios['ours-completions/portkey'],
      (v) => v >= 2,
      (v) => `${fmt(v)} ×`,
      why('throughput', 'ours-completions', 'portkey'),
    ),
    goal(
      `${COMPLETIONS} ≤ 0.5 × the Portkey gateway's resident memory per open stream`,
      div(comp?.kibPerStream, pk?.kibPerStream),
      (v) => v <= 0.5,
      (v) => `${n(comp?.kibPerStream, 1)} ÷ ${n(pk?.kibPerStream, 1)} KiB = ${fmt(v)} ×`,
      why('memory', 'ours-completions', 'portkey'),
    ),
    goal(
      `${COMPLETIONS}: added time to first token ≤ the Portkey gateway's`,
      ttfb,
      (v) => v <= 0,
      () => `+${n(comp?.ttfbAddedMs, 3)} ms vs +${n(pk?.ttfbAddedMs, 3)} ms`,
      why('ttfb', 'ours-completions', 'portkey'),
    ),
  ];
}

function parityGoals({ r, comp, chat, why }: GoalContext): string[] {
  const pair = ['ours-completions', 'ours-chat'] as const;
  return [
    goal(
      `${WITHIN}: streams/s (median of per-round ratios)`,
      r?.ratios['ours-completions/ours-chat'],
      (v) => v >= 0.9,
      (v) => `${fmt(v)} ×`,
      why('throughput', ...pair),
    ),
    goal(
      `${WITHIN}: CPU µs per relayed chunk`,
      div(comp?.cpuUsPerChunk, chat?.cpuUsPerChunk),
      (v) => v <= 1.1,
      (v) => `${n(comp?.cpuUsPerChunk)} vs ${n(chat?.cpuUsPerChunk)} µs = ${fmt(v)} ×`,
      why('throughput', ...pair),
    ),
    goal(
      `${WITHIN}: added time to first token`,
      div(comp?.ttfbAddedMs, chat?.ttfbAddedMs),
      (v) => v <= 1.1,
      (v) => `+${n(comp?.ttfbAddedMs, 3)} vs +${n(chat?.ttfbAddedMs, 3)} ms = ${fmt(v)} ×`,
      why('ttfb', ...pair),
    ),
    goal(
      `${WITHIN}: resident memory per open stream`,
      div(comp?.kibPerStream, chat?.kibPerStream),
      (v) => v <= 1.1,
      (v) => `${n(comp?.kibPerStream, 1)} vs ${n(chat?.kibPerStream, 1)} KiB = ${fmt(v)} ×`,
      why('memory', ...pair),
    ),
  ];
}
