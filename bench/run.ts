// Benchmark suite: GET /v1/agents through bare node:http, fastify/express/hono with their security
// plugins, and our full chain with each rate-limit store; then the SSE relays, ours and the Portkey
// gateway (sse.ts). Writes a markdown report.
//
// Method: every server on CPU 0, the load generator and this script on CPU 1; keep-alive; a warm-up
// per config, then rounds in which every config runs once (order rotated each round) and is compared
// with bare node:http of the SAME round, because absolute throughput on a shared machine drifts far
// more than the differences measured.
//
//   npm run bench                  5 rounds x 5 s, then the SSE part; writes RESULTS.md
//   npm run bench -- --quick       3 rounds x 3 s, 2-s warm-ups, 100 TTFB requests (about 2 minutes)
//   flags: --rounds N --duration S --warmup S --connections N
//          --configs bare,bare-headers,fastify,express,hono,ours-memory,ours-postgres,ours-postgres-leased
//          --gen wrk|autocannon --install-wrk --skip-http --skip-sse --ttfb-requests N --streams N --out FILE
//          --upstream bench|test (the burst upstream: bench/support/upstream.ts, or test/support/fake-upstream-main.ts)
//   env:   BENCH_DATABASE_URL (run ours on PostgreSQL instead of a temp embedded database; the PostgreSQL
//          rate-limit stores need it; the cross-instance live-answer figures too),
//          BENCH_SSE_PARTS=throughput,ttfb,memory,notify-cpu,resume,detached-memory,
//          BENCH_SSE_TARGETS=portkey,ours-chat,ours-completions
import { execFileSync } from 'node:child_process';
import { existsSync, rmSync, writeFileSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { runSse, type SseReport } from './sse.ts';
import {
  BENCH_DIR,
  CLIENT_CPU,
  commandVersion,
  cpuBusy,
  cpuJiffies,
  dbBackendCpu,
  dbCpuBetween,
  fmt,
  fmtInt,
  freePort,
  goal,
  killAll,
  lockedVersions,
  machineFacts,
  median,
  NODE,
  type Proc,
  processCpuSeconds,
  REPO_ROOT,
  rssKiB,
  SERVER_CPU,
  startPinned,
  table,
  waitForLine,
} from './support/harness.ts';
import { chooseGenerator, type Generator, type LoadResult, loadCommand, runLoad } from './support/load.ts';
import {
  cleanupOurs,
  databaseName,
  ORIGIN,
  type OursPrep,
  oursCommand,
  prepareOurs,
  type RateLimitStore,
  startOurs,
} from './support/ours.ts';
import { sseGoals } from './support/sse-report.ts';

const { values: flags } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    rounds: { type: 'string' },
    duration: { type: 'string' },
    warmup: { type: 'string' },
    connections: { type: 'string' },
    configs: { type: 'string' },
    gen: { type: 'string' },
    'install-wrk': { type: 'boolean', default: false },
    'skip-http': { type: 'boolean', default: false },
    'skip-sse': { type: 'boolean', default: false },
    'ttfb-requests': { type: 'string' },
    streams: { type: 'string' },
    out: { type: 'string' },
    upstream: { type: 'string' },
  },
  allowPositionals: false,
});

function num(flag: string | undefined, env: string, quick: number, full: number): number {
  const raw = flag ?? process.env[env];
  const v = raw === undefined || raw === '' ? (flags.quick ? quick : full) : Number(raw);
  if (!Number.isFinite(v) || v <= 0) throw new Error(`invalid value for ${env}: ${raw}`);
  return v;
}

const opts = {
  rounds: num(flags.rounds, 'BENCH_ROUNDS', 3, 5),
  durationS: num(flags.duration, 'BENCH_DURATION', 3, 5),
  warmupS: num(flags.warmup, 'BENCH_WARMUP', 2, 3),
  connections: num(flags.connections, 'BENCH_CONNECTIONS', 50, 50),
  ttfbRequests: num(flags['ttfb-requests'], 'BENCH_TTFB_REQUESTS', 100, 200),
  streams: num(flags.streams, 'BENCH_STREAMS', 1000, 1000),
  sseConcurrency: 50,
  chunks: 200,
};
const PEER_TOKEN = 'bench-token';
/** The database BENCH_DATABASE_URL names, whose backends' CPU is counted for ours; undefined when unset. */
const BENCH_DB_NAME = databaseName(process.env.BENCH_DATABASE_URL);
/** A run with more than this share of CPU 0 used by other processes is repeated (within the retry budget). */
const FOREIGN_LOAD_LIMIT = 0.15;
let retryBudget = Number(process.env.BENCH_RETRIES ?? (flags.quick ? 4 : 20));
let retried = 0;
let sseUpstreamLabel = 'bench/support/upstream.ts';
const started = new Date();
// Read before this script pins itself to one CPU (nproc counts the CPUs a process may use).
const MACHINE = machineFacts();
const log = (line: string) => process.stdout.write(`${line}\n`);

interface Config {
  id: string;
  label: string;
  file?: string;
  /** Ours only: the RATE_LIMIT_STORE it runs with. */
  store?: RateLimitStore;
}
const ALL_CONFIGS: Config[] = [
  { id: 'bare', label: 'a. bare node:http', file: 'peers/bare.ts' },
  {
    id: 'bare-headers',
    label: "a′. bare node:http + our response's header fields (the floor for them)",
    file: 'peers/bare-headers.ts',
  },
  { id: 'fastify', label: 'c+. fastify 5 + helmet + cors + rate-limit + logger', file: 'peers/fastify.ts' },
  { id: 'express', label: 'd+. express 5 + helmet + cors + express-rate-limit + pino-http', file: 'peers/express.ts' },
  { id: 'hono', label: 'e+. hono + secureHeaders + cors + bodyLimit + requestId', file: 'peers/hono.ts' },
  { id: 'ours-memory', label: 'ours: full chain, RATE_LIMIT_STORE=memory (server.ts, access log on)', store: 'memory' },
  {
    id: 'ours-postgres',
    label: 'ours: full chain, RATE_LIMIT_STORE=postgres (exact, one statement a request)',
    store: 'postgres',
  },
  {
    id: 'ours-postgres-leased',
    label: 'ours: full chain, RATE_LIMIT_STORE=postgres-leased (tokens leased from PostgreSQL)',
    store: 'postgres-leased',
  },
];
/** `--configs ours` still selects ours with the memory store (the id before the store configs existed). */
function configIds(raw: string | undefined): string[] {
  const ids = (raw ?? ALL_CONFIGS.map((c) => c.id).join(',')).split(',').map((x) => x.trim());
  return ids.map((id) => (id === 'ours' ? 'ours-memory' : id));
}

interface Running {
  config: Config;
  proc: Proc;
  url: string;
  headers: Record<string, string>;
}
interface Sample extends LoadResult {
  round: number;
  serverCpuUsPerReq: number;
  serverUtil: number;
  cpu0Busy: number;
  cpu1Busy: number;
  /** CPU of the database's backends per request; NaN without BENCH_DATABASE_URL or for the peers. */
  dbCpuUsPerReq: number;
}

// ---- safety: nothing outlives the run ----
let tempPrep: OursPrep | undefined;
function emergencyCleanup(): void {
  killAll();
  if (tempPrep?.ok) rmSync(tempPrep.dataDir, { recursive: true, force: true });
}
process.on('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.on(sig, () => {
    log(`\n${sig}: stopping every process started by the bench`);
    emergencyCleanup();
    process.exit(130);
  });
}
const maxSeconds = Number(process.env.BENCH_MAX_SECONDS ?? 1800);
setTimeout(() => {
  log(`watchdog: the run exceeded ${maxSeconds} s; stopping everything`);
  emergencyCleanup();
  process.exit(1);
}, maxSeconds * 1000).unref();

async function startConfig(c: Config, prep: OursPrep): Promise<Running | { config: Config; unavailable: string }> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}/v1/agents`;
  if (c.store !== undefined) {
    if (!prep.ok) return { config: c, unavailable: prep.reason };
    if (c.store !== 'memory' && !prep.external)
      return {
        config: c,
        unavailable: 'n/a (needs BENCH_DATABASE_URL: a shared store on the embedded database means nothing)',
      };
    try {
      // The upstream is never called by GET /v1/agents; the discard port keeps the config valid.
      const proc = await startOurs(prep, port, 'http://127.0.0.1:9/v1', [], { RATE_LIMIT_STORE: c.store });
      return { config: c, proc, url, headers: { authorization: `Bearer ${prep.keys[0]}`, origin: ORIGIN } };
    } catch (err) {
      return { config: c, unavailable: startFailure(err) };
    }
  }
  const env = { PATH: process.env.PATH ?? '', NODE_ENV: 'production', BENCH_TOKEN: PEER_TOKEN, BENCH_ORIGIN: ORIGIN };
  const proc = startPinned(c.id, SERVER_CPU, NODE, [c.file as string, String(port)], { env });
  const headers = { authorization: `Bearer ${PEER_TOKEN}`, origin: ORIGIN };
  try {
    await waitForLine(proc, 'listening', 20_000);
    const res = await fetch(url, { headers, signal: AbortSignal.timeout(5000) });
    await res.arrayBuffer();
    // bare node:http has no CORS: it is the physical limit, not a peer stack
    const corsOk = c.id === 'bare' || res.headers.get('access-control-allow-origin') === ORIGIN;
    if (res.status !== 200 || !corsOk)
      throw new Error(`sanity request: status ${res.status}, CORS ${res.headers.get('access-control-allow-origin')}`);
  } catch (err) {
    await proc.stop(2000);
    return { config: c, unavailable: (err as Error).message.slice(0, 300) };
  }
  return { config: c, proc, url, headers };
}

/** Why ours did not start; a server that refuses its configuration (exit 1) reads as n/a. */
function startFailure(err: unknown): string {
  const text = ((err as Error).message ?? String(err)).replace(/\s+/g, ' ');
  if (text.includes('exited during start')) {
    const at = text.indexOf('Invalid configuration:');
    return `n/a (the server refused to start${at >= 0 ? `: ${text.slice(at, at + 200).trim()}` : ''})`;
  }
  return `server did not start: ${text.slice(0, 300)}`;
}

/**
 * Measures once; repeats while other processes loaded CPU 0 and the retry budget lasts. Not for the
 * PostgreSQL stores: their database backends are part of the config's cost and may run on CPU 0.
 */
async function measure(gen: Generator, r: Running, durationS: number, round: number): Promise<Sample> {
  for (;;) {
    const s = await measureOnce(gen, r, durationS, round);
    const dbStore = r.config.store !== undefined && r.config.store !== 'memory';
    if (round < 0 || dbStore || foreignLoad(s) <= FOREIGN_LOAD_LIMIT || retryBudget <= 0) return s;
    retryBudget--;
    retried++;
    log(`  (${r.config.id}: ${fmtInt(foreignLoad(s) * 100)}% of CPU 0 used by other processes; repeating the run)`);
  }
}

function foreignLoad(s: Sample): number {
  return Math.max(0, s.cpu0Busy - s.serverUtil);
}

async function measureOnce(gen: Generator, r: Running, durationS: number, round: number): Promise<Sample> {
  const db = r.config.store === undefined ? undefined : BENCH_DB_NAME;
  const d0 = db === undefined ? undefined : dbBackendCpu(db);
  const j0 = cpuJiffies();
  const s0 = processCpuSeconds(r.proc.pid);
  const w0 = performance.now();
  const res = await runLoad(gen, r.url, opts.connections, durationS, r.headers);
  const wall = (performance.now() - w0) / 1000;
  const sCpu = processCpuSeconds(r.proc.pid) - s0;
  const busy = cpuBusy(j0, cpuJiffies());
  const dbCpu = db === undefined || d0 === undefined ? Number.NaN : dbCpuBetween(d0, dbBackendCpu(db));
  return {
    ...res,
    round,
    dbCpuUsPerReq: (dbCpu * 1e6) / Math.max(res.requests, 1),
    serverCpuUsPerReq: (sCpu * 1e6) / Math.max(res.requests, 1),
    serverUtil: sCpu / wall,
    cpu0Busy: busy[SERVER_CPU] ?? NaN,
    cpu1Busy: busy[CLIENT_CPU] ?? NaN,
  };
}

interface HttpReport {
  markdown: string;
  commands: string[];
  oursRatio: number | undefined;
  oursVsFastify: number | undefined;
  /** RATE_LIMIT_STORE=postgres-leased ÷ memory, median of per-round ratios. */
  leasedVsMemory: number | undefined;
  unavailable: Map<string, string>;
}

async function runHttp(gen: Generator, prep: OursPrep): Promise<HttpReport> {
  const wanted = configIds(flags.configs);
  const configs = ALL_CONFIGS.filter((c) => wanted.includes(c.id));
  // The reference is always measured.
  if (!configs.some((c) => c.id === 'bare')) configs.unshift(ALL_CONFIGS[0] as Config);
  const running: Running[] = [];
  const unavailable = new Map<string, string>();
  const commands: string[] = [];
  try {
    for (const c of configs) {
      const r = await startConfig(c, prep);
      if ('unavailable' in r) {
        unavailable.set(c.id, r.unavailable);
        log(`  ${c.label}: unavailable (${r.unavailable})`);
      } else {
        running.push(r);
        log(`  ${c.label}: listening (pid ${r.proc.pid}, CPU ${SERVER_CPU})`);
        commands.push(
          c.store !== undefined && prep.ok
            ? `RATE_LIMIT_STORE=${c.store} ${oursCommand(prep)}`
            : `taskset -c ${SERVER_CPU} node ${c.file} <port>   # NODE_ENV=production`,
        );
      }
    }
    if (!running.some((r) => r.config.id === 'bare'))
      throw new Error(`bare node:http did not start: ${unavailable.get('bare')}`);
    const first = running[0] as Running;
    commands.push(
      `load: ` +
        `${loadCommand(gen, first.url.replace(/:\d+\//, ':<port>/'), opts.connections, opts.durationS, first.headers)}`,
    );

    log(`HTTP: warm-up ${opts.warmupS} s per config`);
    for (const r of running) await measure(gen, r, opts.warmupS, -1);
    const samples = new Map<string, Sample[]>(running.map((r) => [r.config.id, []]));
    for (let round = 0; round < opts.rounds; round++) {
      const order = running.map((_, i) => running[(i + round) % running.length] as Running);
      for (const r of order) {
        const s = await measure(gen, r, opts.durationS, round);
        samples.get(r.config.id)?.push(s);
        const bad = s.non2xx + s.errors > 0 ? `, non-2xx ${s.non2xx}, errors ${s.errors}` : '';
        log(
          `  round ${round + 1}/${opts.rounds} ${r.config.id.padEnd(20)} ${fmtInt(s.rps).padStart(7)} rps  ` +
            `p50 ${fmt(s.p50ms)} ms  p99 ${fmt(s.p99ms)} ms  server ${fmtInt(s.serverUtil * 100)}% CPU${bad}`,
        );
      }
    }
    const rss = new Map(running.map((r) => [r.config.id, rssKiB(r.proc.pid)]));
    return { ...httpTables(configs, samples, unavailable, rss, gen), commands, unavailable };
  } finally {
    for (const r of running) await r.proc.stop(5000);
  }
}

function perRoundRatio(a: Sample[], b: Sample[]): number[] {
  return a.map((x) => x.rps / (b.find((y) => y.round === x.round)?.rps ?? NaN)).filter(Number.isFinite);
}

function httpTables(
  configs: Config[],
  samples: Map<string, Sample[]>,
  unavailable: Map<string, string>,
  rss: Map<string, number>,
  gen: Generator,
) {
  const bare = samples.get('bare') ?? [];
  const bareMedian = median(bare.map((s) => s.rps));
  // Server CPU per request is far less sensitive to other load on the machine than throughput.
  const bareCpu = median(bare.map((s) => s.serverCpuUsPerReq));
  const rows = configs.map((c) => {
    const s = samples.get(c.id);
    if (!s) {
      const why = (unavailable.get(c.id) ?? '').replace(/\|/g, '/').replace(/\n/g, ' ');
      return [c.label, '0', why.startsWith('n/a') ? why : `unavailable: ${why}`, ...Array<string>(11).fill('–')];
    }
    const ratios = perRoundRatio(s, bare);
    const rpsMedian = median(s.map((x) => x.rps));
    const foreign = s.filter((x) => foreignLoad(x) > FOREIGN_LOAD_LIMIT).length;
    const bad = s.reduce((a, x) => a + x.non2xx + x.errors, 0);
    const kept = foreign > 0 ? ` (${foreign} kept over ${FOREIGN_LOAD_LIMIT * 100}%)` : '';
    return [
      c.label,
      String(s.length),
      fmtInt(rpsMedian),
      `${fmt(median(ratios))} (${fmt(rpsMedian / bareMedian)}) ` +
        `[${fmt(Math.min(...ratios))}–${fmt(Math.max(...ratios))}]`,
      fmt(median(s.map((x) => x.p50ms))),
      fmt(median(s.map((x) => x.p99ms))),
      fmt(median(s.map((x) => x.serverCpuUsPerReq)), 1),
      fmt(median(s.map((x) => x.dbCpuUsPerReq)), 1),
      fmt(bareCpu / median(s.map((x) => x.serverCpuUsPerReq))),
      `${fmtInt(median(s.map((x) => x.serverUtil * 100)))}%`,
      `${fmtInt(median(s.map((x) => x.cpu1Busy * 100)))}%`,
      fmt((rss.get(c.id) ?? NaN) / 1024, 1),
      `${fmtInt(median(s.map((x) => foreignLoad(x) * 100)))}%${kept}`,
      String(bad),
    ];
  });
  const ours = samples.get('ours-memory');
  const fastify = samples.get('fastify');
  const floor = samples.get('bare-headers');
  const oursRatio = ours ? median(perRoundRatio(ours, bare)) : undefined;
  const oursVsFastify = ours && fastify ? median(perRoundRatio(ours, fastify)) : undefined;
  const leased = samples.get('ours-postgres-leased');
  const exact = samples.get('ours-postgres');
  const leasedVsMemory = ours && leased ? median(perRoundRatio(leased, ours)) : undefined;
  const storeLines = [
    ['postgres', exact],
    ['postgres-leased', leased],
  ].flatMap(([name, x]) => {
    if (!ours || !Array.isArray(x)) return [];
    const r = perRoundRatio(x, ours);
    return [
      `- RATE_LIMIT_STORE=${name} ÷ memory: **${fmt(median(r))}** [${fmt(Math.min(...r))}–${fmt(Math.max(...r))}]`,
    ];
  });
  const markdown = [
    `### HTTP: GET /v1/agents, ${opts.connections} connections, keep-alive, ${gen} (server on CPU ` +
      `${SERVER_CPU}, generator on CPU ${CLIENT_CPU})`,
    '',
    table(
      [
        'config',
        'n',
        'rps (median)',
        'ratio to bare: median of per-round ratios (ratio of medians) [min–max]',
        'p50 ms',
        'p99 ms',
        'server CPU µs/req',
        "database CPU µs/req (BENCH_DATABASE_URL's backends)",
        'ratio by CPU cost (bare µs ÷ config µs)',
        'server CPU util',
        'CPU 1 (generator) util',
        'server RSS MiB at end',
        'other processes on CPU 0 (median)',
        'non-2xx + errors',
      ],
      rows,
    ),
    '',
    ours && fastify
      ? `Ours ÷ fastify+ (median of per-round ratios): **${fmt(oursVsFastify ?? NaN)}** ` +
        `[${fmt(Math.min(...perRoundRatio(ours, fastify)))}–${fmt(Math.max(...perRoundRatio(ours, fastify)))}]`
      : '',
    ours && floor
      ? '\nOurs ÷ a′ (bare node:http sending the same header fields; median of per-round ratios): ' +
        `**${fmt(median(perRoundRatio(ours, floor)))}**; a′ ÷ bare: ${fmt(median(perRoundRatio(floor, bare)))}. ` +
        'The 0.80 goal is judged against a, which sends two header fields.'
      : '',
    storeLines.length > 0
      ? `\nOurs by rate-limit store (median of per-round ratios [min–max]):\n\n${storeLines.join('\n')}\n\n` +
        "The PostgreSQL stores' database backends are not pinned: they run on either CPU, so these runs " +
        'are not repeated for load from other processes on CPU 0; the database column counts every backend ' +
        "of BENCH_DATABASE_URL's database (found by process title)."
      : '',
    `\nRuns repeated because other processes used more than ${FOREIGN_LOAD_LIMIT * 100}% of CPU 0: ` +
      `${retried} (budget left ${retryBudget}).`,
    gen === 'autocannon'
      ? '\nautocannon reports latency in whole milliseconds; use wrk for sub-millisecond percentiles.'
      : '',
  ].join('\n');
  return { markdown, oursRatio, oursVsFastify, leasedVsMemory };
}

function gitState(): string {
  try {
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], {
      cwd: REPO_ROOT,
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    }).trim();
    const dirty =
      execFileSync('git', ['status', '--porcelain'], {
        cwd: REPO_ROOT,
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'ignore'],
      }).trim() !== '';
    return `${head}${dirty ? ' + uncommitted changes' : ''}`;
  } catch {
    return 'no commit yet (working tree)';
  }
}

function databaseLabel(prep: OursPrep): string {
  if (!prep.ok) return 'n/a';
  return prep.external ? 'PostgreSQL (BENCH_DATABASE_URL)' : 'embedded PGlite in a temp DATA_DIR';
}

function report(args: {
  gen: { gen: Generator; version: string; note: string } | undefined;
  http?: HttpReport;
  sse?: SseReport;
  prep: OursPrep;
  seconds: number;
}): string {
  const m = MACHINE;
  const versions = lockedVersions();
  const npmVersion =
    /npm\/(\S+)/.exec(process.env.npm_config_user_agent ?? '')?.[1] ?? commandVersion('npm', ['-v']) ?? 'unknown';
  const argv = process.argv.slice(2).join(' ');
  const why = (u: string | undefined) => (u ? u.replace(/\s+/g, ' ').trim().slice(0, 200) : undefined);
  const httpWhy = (id: string) =>
    args.http
      ? why(args.http.unavailable.get(id) ?? (args.prep.ok ? undefined : args.prep.reason))
      : 'HTTP part skipped';
  const lines = [
    '# Benchmark results',
    '',
    `Generated ${started.toISOString()} by \`npm run bench${argv ? ` -- ${argv}` : ''}\` in ${fmtInt(args.seconds)} s` +
      ` (${opts.rounds} rounds × ${opts.durationS} s per config, ${opts.warmupS} s ` +
      `warm-up${flags.quick ? ', quick mode: indicative only' : ''}).`,
    '',
    '## Machine and software',
    '',
    `- Machine: ${m.nproc} CPUs (${m.cpuModel}), ${m.memTotal} RAM, Linux ${m.kernel}; shared, so absolute ` +
      `figures drift: compare the per-round ratios (treat them as ±0.1)`,
    // Relative to the repository: the report is committed, the machine's own paths are not its business.
    `- Node ${process.version} (${relative(REPO_ROOT, NODE)}); npm ${npmVersion}`,
    `- Load generator: ${args.gen ? `${args.gen.version} — ${args.gen.note}` : 'not used'}`,
    `- Server under test: repo root server.ts at ${gitState()}; database: ${databaseLabel(args.prep)}`,
    '',
    table(
      ['package (bench/package-lock.json)', 'version'],
      Object.entries(versions).map(([k, v]) => [k, v]),
    ),
    '',
    '## Method',
    '',
    `Every server is pinned to CPU ${SERVER_CPU} (\`taskset -c ${SERVER_CPU}\`), the load generator, the ` +
      `SSE client and this script to CPU ${CLIENT_CPU}. ` +
      `Each config gets a warm-up, then ${opts.rounds} rounds; in each round every config runs once for ` +
      `${opts.durationS} s (order rotated each round) and its throughput is divided by bare node:http's in ` +
      `the same round. ` +
      'All requests carry `Authorization: Bearer …` and an allowlisted `Origin`; peers compare the bearer ' +
      'with a fixed token, ours checks a real API key. Logs go to /dev/null (ours: LOG_LEVEL=info, stdout ' +
      'to /dev/null). Rate limits are set so that nothing is rejected (the last column must be 0).',
    '',
    'Ours runs once per rate-limit store (RATE_LIMIT_STORE=memory, postgres, postgres-leased); the ' +
      'PostgreSQL stores need BENCH_DATABASE_URL, and a server that refuses its configuration is reported as ' +
      'n/a.',
    '',
    `SSE: the process under test on CPU ${SERVER_CPU}, the client (sse-client.ts, node:http keep-alive ` +
      `Agent) on CPU ${CLIENT_CPU}. 'upstream direct' is the fake upstream (${sseUpstreamLabel}, 'burst': ` +
      `${opts.chunks} chunks written as fast as it can) on CPU ${SERVER_CPU}; ` +
      `each relay (the Portkey gateway, peers/portkey.ts, bound to 127.0.0.1; ours on POST /v1/chat and on ` +
      `POST /v1/chat/completions, one process serving both) runs on CPU ${SERVER_CPU} and relays from an ` +
      `identical upstream on CPU ${CLIENT_CPU}. ` +
      'Every relay route is probed with one request first; a 404 is reported as n/a (route missing). ' +
      `Throughput: ${opts.sseConcurrency} concurrent clients, rounds alternated like the HTTP part. Time ` +
      `to first token: ${opts.ttfbRequests} sequential requests per target, interleaved. Memory: per relay ` +
      `a fresh process, ${opts.streams} streams held open against bench/support/upstream.ts 'hold' (one ` +
      `chunk, then open); VmRSS before (idle, after a warm-up) and with all open.`,
    '',
    'Answers that outlive the connection (ours only; each part starts fresh server processes; the ' +
      'cross-instance figures need BENCH_DATABASE_URL): CPU per relayed chunk with and without a follower on ' +
      'another instance (notify-cpu), time for a resume to deliver its first byte on the same and on another ' +
      'instance (resume), and the memory of an answer whose client left, beyond its upstream stream ' +
      '(detached-memory). Each section below states its method.',
    '',
    '### Commands',
    '',
    '```',
    ...new Set([...(args.http?.commands ?? []), ...(args.sse?.commands ?? [])]),
    '```',
    '',
    '## Results',
    '',
    args.http?.markdown ?? '_HTTP part skipped._',
    '',
    args.sse?.markdown ?? '_SSE part skipped._',
    '',
    '## Goals',
    '',
    goal(
      'Full chain ≥ 0.80 × bare node:http (median of per-round ratios)',
      args.http?.oursRatio,
      (v) => v >= 0.8,
      (v) => fmt(v),
      httpWhy('ours-memory'),
    ),
    goal(
      '≥ 2 × fastify with its security plugins (median of per-round ratios)',
      args.http?.oursVsFastify,
      (v) => v >= 2,
      (v) => `${fmt(v)} ×`,
      httpWhy('ours-memory'),
    ),
    goal(
      'RATE_LIMIT_STORE=postgres-leased ≥ 0.9 × the memory store (median of per-round ratios)',
      args.http?.leasedVsMemory,
      (v) => v >= 0.9,
      (v) => `${fmt(v)} ×`,
      httpWhy('ours-postgres-leased') ?? httpWhy('ours-memory'),
    ),
    ...sseGoals(args.sse, args.sse ? undefined : 'SSE part skipped'),
    '',
  ];
  return lines.join('\n');
}

async function main(): Promise<void> {
  const t0 = performance.now();
  const major = Number(process.versions.node.split('.')[0]);
  if (major !== 24)
    throw new Error(
      `this is Node ${process.version}; run through npm (npm run bench) so that ` +
        `bench/node_modules/.bin/node (24) is used`,
    );
  const { nproc } = MACHINE;
  if (nproc < 2) throw new Error('needs 2 CPUs: servers on CPU 0, load on CPU 1');
  execFileSync('taskset', ['-a', '-p', '-c', String(CLIENT_CPU), String(process.pid)], { stdio: 'ignore' });
  log(
    `bench: Node ${process.version}, ${nproc} CPUs; this script pinned to CPU ${CLIENT_CPU}; rounds ` +
      `${opts.rounds} × ${opts.durationS} s, warm-up ${opts.warmupS} s${flags.quick ? ' (quick)' : ''}`,
  );

  // Children raise their soft limit to the hard one (support/harness.ts); the server holds 2 sockets a stream.
  const hardFd = execFileSync('bash', ['-c', 'ulimit -Hn'], { encoding: 'utf8' }).trim();
  const needFd = opts.streams * 2 + 512;
  log(`file descriptors: hard limit ${hardFd} (children raise their soft limit to it; ${needFd} needed)`);
  if (hardFd !== 'unlimited' && Number(hardFd) < needFd)
    log(`warning: the memory test may not open all ${opts.streams} streams`);

  const wantHttp = !flags['skip-http'];
  const wantSse = !flags['skip-sse'];
  const gen = wantHttp ? chooseGenerator(flags.gen, flags['install-wrk'] ?? false) : undefined;
  if (gen) log(`load generator: ${gen.version} (${gen.note})`);

  const needOurs = wantSse || (wantHttp && configIds(flags.configs).some((id) => id.startsWith('ours-')));
  if (needOurs) log('ours: creating API keys with `node server.ts keys create` before the server starts');
  const prep: OursPrep = needOurs ? await prepareOurs(2) : { ok: false, reason: 'not selected (--configs)' };
  tempPrep = prep;
  log(
    prep.ok
      ? `ours: ${prep.keys.length} keys created ` +
          `(${prep.external ? 'BENCH_DATABASE_URL' : `embedded database in ${prep.dataDir}`})`
      : `ours: unavailable (${prep.reason})`,
  );

  let http: HttpReport | undefined;
  let sse: SseReport | undefined;
  try {
    if (wantHttp && gen) {
      log('HTTP: starting servers');
      http = await runHttp(gen.gen, prep);
      log(`\n${http.markdown}\n`);
    }
    if (wantSse) {
      log('SSE: starting upstreams and server');
      const upstream = flags.upstream ?? process.env.BENCH_UPSTREAM ?? 'bench';
      if (upstream !== 'bench' && upstream !== 'test') throw new Error('--upstream must be bench or test');
      if (upstream === 'test' && !existsSync(join(REPO_ROOT, 'test', 'support', 'fake-upstream-main.ts')))
        throw new Error('--upstream test: test/support/fake-upstream-main.ts not found');
      sseUpstreamLabel = upstream === 'test' ? 'test/support/fake-upstream-main.ts' : 'bench/support/upstream.ts';
      log(`SSE: burst upstream ${sseUpstreamLabel}`);
      sse = await runSse(
        {
          upstream,
          rounds: opts.rounds,
          durationS: opts.durationS,
          warmupS: opts.warmupS,
          concurrency: opts.sseConcurrency,
          chunks: opts.chunks,
          ttfbRequests: opts.ttfbRequests,
          streams: opts.streams,
          log,
        },
        prep,
      );
      log(`\n${sse.markdown}\n`);
    }
  } finally {
    await cleanupOurs(prep);
  }
  const text = report({ gen, http, sse, prep, seconds: (performance.now() - t0) / 1000 });
  const out = flags.out ?? (wantHttp && wantSse ? 'RESULTS.md' : wantHttp ? 'RESULTS-http.md' : 'RESULTS-sse.md');
  const path = resolve(BENCH_DIR, out);
  writeFileSync(path, text);
  log(text.slice(text.indexOf('## Goals')));
  log(`written: ${path} (${fmtInt((performance.now() - t0) / 1000)} s)`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    log(`bench failed: ${(err as Error).stack ?? String(err)}`);
    emergencyCleanup();
    process.exit(1);
  },
);
