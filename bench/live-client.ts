// Client worker for the live-answer parts of the SSE benchmark (pinned to CPU 1 by its parent): argv[2]
// is a JSON job; the result is one JSON line on stdout. Native SSE only (`event: start|delta|done`).
//
//   resume  POSTs one answer, waits until it has `startDeltas` deltas, then sends `n` sequential resumes
//           (GET …/stream with Last-Event-ID = the first delta's id, so the rest is already there),
//           alternating the resume targets one request at a time; each on a fresh connection, cut once
//           its first delta arrived. Times from the call: headers, first body byte (`event: start`)
//           and first delta.
//   follow  `concurrency` workers POST answers in a loop for `durationMs` and read each to its end;
//           with `followUrl`, each answer is also followed from another instance (a resume with no
//           Last-Event-ID, sent once the answer's `event: start` arrived) and read to its end. Answers
//           still running when the window closes are read to their end too, so that the relay's CPU
//           and the chunks counted cover the same work.
// Only loopback URLs are accepted; every request is bounded in time.
import type { Target } from './sse-client.ts';
import { stream } from './support/sse-read.ts';

/** A resume target: its URL has `{id}` where the conversation id goes. */
export interface ResumeTarget {
  name: string;
  url: string;
  headers: Record<string, string>;
}
export type LiveJob =
  | { mode: 'resume'; start: Target; startDeltas: number; targets: ResumeTarget[]; n: number; warmup: number }
  | { mode: 'follow'; posts: Target[]; followUrl?: string; concurrency: number; durationMs: number };

function emit(obj: object): void {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

function checkLoopback(job: LiveJob): void {
  const urls =
    job.mode === 'resume'
      ? [job.start.url, ...job.targets.map((t) => t.url)]
      : [...job.posts.map((p) => p.url), job.followUrl ?? 'http://127.0.0.1/'];
  for (const u of urls) {
    const host = new URL(u.replace('{id}', 'x')).hostname;
    if (host !== '127.0.0.1' && host !== 'localhost' && host !== '[::1]')
      throw new Error(`refusing non-loopback URL ${u}`);
  }
}

/** What the answer being resumed is: known once its start frame and first delta arrived. */
interface Live {
  conversationId: string;
  firstDeltaId: string;
}

/** Starts the answer every resume goes to and keeps reading it until `cut` aborts. */
function startAnswer(t: Target, startDeltas: number, cut: AbortSignal): Promise<Live> {
  const live: Partial<Live> = {};
  let deltas = 0;
  return new Promise((resolve, reject) => {
    const init = { method: 'POST', headers: t.headers, body: t.body };
    void stream(
      t.url,
      init,
      600_000,
      (f) => {
        if (f.event === 'start')
          live.conversationId = (JSON.parse(f.data) as { conversationId: string }).conversationId;
        if (f.event === 'delta' && deltas++ === 0) live.firstDeltaId = f.id;
        if (deltas >= startDeltas && live.conversationId !== undefined && live.firstDeltaId !== undefined)
          resolve(live as Live);
        return undefined;
      },
      cut,
    ).then((r) => reject(new Error(`the answer to resume ended early: status ${r.status} ${r.error ?? ''}`)));
  });
}

interface ResumeSamples {
  name: string;
  n: number;
  failed: number;
  failures: Record<string, number>;
  headersMs: number[];
  startMs: number[];
  deltaMs: number[];
}

async function resumeJob(job: Extract<LiveJob, { mode: 'resume' }>): Promise<void> {
  const cut = new AbortController();
  const live = await startAnswer(job.start, job.startDeltas, cut.signal);
  const messageId = live.firstDeltaId.split(':')[0] ?? '';
  const out: ResumeSamples[] = job.targets.map((t) => ({
    name: t.name,
    n: 0,
    failed: 0,
    failures: {},
    headersMs: [],
    startMs: [],
    deltaMs: [],
  }));
  for (let i = 0; i < job.warmup + job.n; i++) {
    // Alternate which target goes first so neither always follows the other.
    const order = job.targets.map((_, j) => (i % 2 === 0 ? j : job.targets.length - 1 - j));
    for (const j of order) {
      const s = await resumeOnce(job.targets[j] as ResumeTarget, live, messageId);
      if (i < job.warmup) continue;
      const o = out[j] as ResumeSamples;
      o.n++;
      if (s.error === undefined) {
        o.headersMs.push(s.headersMs);
        o.startMs.push(s.startMs);
        o.deltaMs.push(s.deltaMs);
      } else {
        o.failed++;
        o.failures[s.error] = (o.failures[s.error] ?? 0) + 1;
      }
    }
  }
  cut.abort();
  emit({ conversationId: live.conversationId, targets: out });
}

/** One resume after the first delta; its first delta must be a later part of the same message. */
async function resumeOnce(
  t: ResumeTarget,
  live: Live,
  messageId: string,
): Promise<{ headersMs: number; startMs: number; deltaMs: number; error?: string }> {
  let startMs = Number.NaN;
  let deltaMs = Number.NaN;
  let wrong: string | undefined;
  const headers = { ...t.headers, 'last-event-id': live.firstDeltaId };
  const r = await stream(t.url.replace('{id}', live.conversationId), { method: 'GET', headers }, 30_000, (f, at) => {
    if (f.event === 'start') startMs = at;
    if (f.event !== 'delta') return undefined;
    deltaMs = at;
    if (!f.id.startsWith(`${messageId}:`) || f.id === live.firstDeltaId) wrong = 'first delta is not the next part';
    return 'stop';
  });
  const error =
    r.status !== 200
      ? `status ${r.status}${r.error ? ` ${r.error}` : ''}`
      : (wrong ?? (Number.isNaN(deltaMs) ? 'no delta' : undefined));
  return { headersMs: r.headersMs, startMs, deltaMs, ...(error === undefined ? {} : { error }) };
}

interface FollowTotals {
  answers: number;
  followers: number;
  answerDeltas: number;
  followerDeltas: number;
  /** Followers whose start frame came after the answer's first delta (not attached for the whole answer). */
  lateFollows: number;
  /** Deltas the answer's client had received when its follower's start frame came (published in one batch). */
  chunksBeforeFollow: number;
  failures: Record<string, number>;
}

/** One answer on the running instance, and with `followUrl` its follower on the other one. */
async function followOnce(post: Target, followUrl: string | undefined, totals: FollowTotals): Promise<void> {
  const fail = (why: string) => (totals.failures[why] = (totals.failures[why] ?? 0) + 1);
  let follower: Promise<void> | undefined;
  let deltas = 0;
  let beforeFollow: number | undefined;
  const startFollow = (conversationId: string) => {
    if (followUrl === undefined) return;
    const url = followUrl.replace('{id}', conversationId);
    follower = stream(url, { method: 'GET', headers: post.headers }, 60_000, (f) => {
      if (f.event === 'start') beforeFollow ??= deltas;
      if (f.event === 'delta') totals.followerDeltas++;
      return undefined;
    }).then((r) => {
      if (r.status === 200 && r.frames.get('done') === 1) totals.followers++;
      else fail(`follower: ${r.status} ${r.error ?? (r.frames.has('error') ? 'error frame' : 'no done')}`);
    });
  };
  const r = await stream(post.url, { method: 'POST', headers: post.headers, body: post.body }, 60_000, (f) => {
    if (f.event === 'start') startFollow((JSON.parse(f.data) as { conversationId: string }).conversationId);
    if (f.event === 'delta') {
      totals.answerDeltas++;
      deltas++;
    }
    return undefined;
  });
  await follower;
  if (r.status === 200 && r.frames.get('done') === 1) totals.answers++;
  else fail(`answer: ${r.status} ${r.error ?? 'no done'}`);
  if (followUrl === undefined) return;
  // A follower that never started counts as late for the whole answer.
  const before = beforeFollow ?? deltas;
  if (before > 0) totals.lateFollows++;
  totals.chunksBeforeFollow += before;
}

async function followJob(job: Extract<LiveJob, { mode: 'follow' }>): Promise<void> {
  const totals: FollowTotals = {
    answers: 0,
    followers: 0,
    answerDeltas: 0,
    followerDeltas: 0,
    lateFollows: 0,
    chunksBeforeFollow: 0,
    failures: {},
  };
  const t0 = performance.now();
  const end = t0 + job.durationMs;
  async function worker(i: number): Promise<void> {
    const post = job.posts[i % job.posts.length] as Target;
    while (performance.now() < end) await followOnce(post, job.followUrl, totals);
  }
  await Promise.all(Array.from({ length: job.concurrency }, (_, i) => worker(i)));
  emit({ ...totals, wallMs: performance.now() - t0 });
}

const job = JSON.parse(process.argv[2] ?? '{}') as LiveJob;
checkLoopback(job);
if (job.mode === 'resume') await resumeJob(job);
else if (job.mode === 'follow') await followJob(job);
else throw new Error('unknown mode');
process.exit(0);
