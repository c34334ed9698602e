// Process, CPU and statistics helpers shared by run.ts and sse.ts.
//
// Every process the harness starts is registered here and killed on exit, error or signal;
// servers go on CPU 0, load generators and clients on CPU 1, through `taskset` (which execs,
// so the pid we hold is the node/wrk process itself).
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync, openSync, readdirSync, readFileSync } from 'node:fs';
import { type AddressInfo, createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const BENCH_DIR = dirname(dirname(fileURLToPath(import.meta.url)));
export const REPO_ROOT = dirname(BENCH_DIR);
/** The Node 24 that runs this script (bench/node_modules/.bin/node under `npm run`). */
export const NODE = process.execPath;
export const SERVER_CPU = 0;
export const CLIENT_CPU = 1;

/** A started child process with a bounded tail of its stderr (and stdout when piped). */
export interface Proc {
  name: string;
  pid: number;
  child: ChildProcess;
  /** Resolves with the exit code (or signal name) when the process ends. */
  exited: Promise<number | string>;
  isAlive(): boolean;
  output(): string;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves when it has exited. */
  stop(graceMs?: number): Promise<void>;
}

const live = new Set<Proc>();
let devNullFd: number | undefined;

/** Kills every process still registered (synchronously: usable from 'exit' handlers). */
export function killAll(): void {
  for (const p of live) {
    try {
      process.kill(p.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  live.clear();
}

/** Starts `cmd args` pinned to one CPU, with the file-descriptor soft limit raised to the hard limit. */
export function startPinned(
  name: string,
  cpu: number,
  cmd: string,
  args: readonly string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv; stdout?: 'pipe' | 'null' } = {},
): Proc {
  devNullFd ??= openSync('/dev/null', 'w');
  const script = 'ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec taskset -c "$0" "$@"';
  const child = spawn('bash', ['-c', script, String(cpu), cmd, ...args], {
    cwd: opts.cwd ?? BENCH_DIR,
    env: opts.env ?? process.env,
    stdio: ['pipe', opts.stdout === 'null' ? devNullFd : 'pipe', 'pipe'],
  });
  let tail = '';
  const keep = (chunk: Buffer) => {
    tail = (tail + chunk.toString('utf8')).slice(-8192);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  const exited = new Promise<number | string>((resolve) =>
    child.once('exit', (code, signal) => resolve(code ?? signal ?? -1)),
  );
  let alive = true;
  const proc: Proc = {
    name,
    pid: child.pid ?? -1,
    child,
    exited,
    isAlive: () => alive,
    output: () => tail,
    async stop(graceMs = 5000) {
      if (!alive) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(timer);
    },
  };
  void exited.then(() => {
    alive = false;
    live.delete(proc);
  });
  if (proc.pid < 0) throw new Error(`${name}: spawn failed`);
  live.add(proc);
  return proc;
}

/** Runs a client worker (`script` in bench/, a JSON job as its argument) on CPU 1; returns its last JSON line. */
export async function runWorker<T>(script: string, job: object, timeoutMs: number): Promise<T> {
  const p = startPinned(script, CLIENT_CPU, NODE, [join(BENCH_DIR, script), JSON.stringify(job)]);
  // The whole stdout (a result may carry every sample; Proc.output() keeps only a tail).
  let stdout = '';
  p.child.stdout?.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
  const timer = setTimeout(() => void p.stop(1000), timeoutMs);
  const code = await p.exited;
  clearTimeout(timer);
  if (code !== 0) throw new Error(`${script} exited with ${code}: ${p.output().slice(-800)}`);
  const lines = stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1] ?? '{}') as T;
}

/** Waits until the process prints `line` on stdout, exits, or `timeoutMs` passes. */
export function waitForLine(p: Proc, line: string, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let seen = '';
    const onData = (chunk: Buffer) => {
      seen += chunk.toString('utf8');
      if (seen.split('\n').some((l) => l.trim() === line)) done();
    };
    const timer = setTimeout(() => fail(`${p.name}: no '${line}' within ${timeoutMs} ms`), timeoutMs);
    const onExit = () => fail(`${p.name}: exited before '${line}'`);
    function done() {
      cleanup();
      resolve();
    }
    function fail(msg: string) {
      cleanup();
      reject(new Error(`${msg}; output: ${p.output().slice(-1500)}`));
    }
    function cleanup() {
      clearTimeout(timer);
      p.child.stdout?.off('data', onData);
      p.child.off('exit', onExit);
    }
    p.child.stdout?.on('data', onData);
    p.child.once('exit', onExit);
  });
}

/** Polls `url` until it answers 200, the process exits, or `timeoutMs` passes. */
export async function waitForHttp(p: Proc, url: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!p.isAlive()) throw new Error(`${p.name}: exited during start; output: ${p.output().slice(-1500)}`);
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      if (res.status === 200) return;
    } catch {
      // not listening yet
    }
    await sleep(200);
  }
  throw new Error(`${p.name}: ${url} did not answer 200 within ${timeoutMs} ms; output: ${p.output().slice(-1500)}`);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A free loopback TCP port (bound and released; the harness starts its servers one after another). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

// ---- CPU and memory accounting from /proc ----

let clkTck: number | undefined;
function ticksPerSecond(): number {
  if (clkTck === undefined) {
    try {
      clkTck = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clkTck = 100;
    }
  }
  return clkTck;
}

/** CPU seconds (user + system, all threads) a process has used so far; NaN when it is gone. */
export function processCpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // After the comm field: state is fields[0], so utime (14th overall) is fields[11], stime fields[12].
    return (Number(fields[11]) + Number(fields[12])) / ticksPerSecond();
  } catch {
    return Number.NaN;
  }
}

/**
 * CPU seconds so far of every PostgreSQL backend on this machine serving database `db`, by pid. Found
 * by process title (`postgres: [CLUSTER: ]USER DB HOST(PORT) STATE`), so no database session is needed.
 */
export function dbBackendCpu(db: string): Map<number, number> {
  const out = new Map<number, number>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let title: string;
    try {
      title = readFileSync(`/proc/${entry}/cmdline`, 'utf8');
    } catch {
      continue; // gone, or not ours to read
    }
    const words = title.replace(/\0/g, ' ').trim().split(/\s+/);
    // cluster_name, when set (Debian sets it), comes first and ends with a colon
    const dbAt = words[1]?.endsWith(':') ? 3 : 2;
    if (words[0] !== 'postgres:' || words[dbAt] !== db) continue;
    const cpu = processCpuSeconds(Number(entry));
    if (Number.isFinite(cpu)) out.set(Number(entry), cpu);
  }
  return out;
}

/** CPU seconds the backends used between two dbBackendCpu() readings (a backend that ended meanwhile is lost). */
export function dbCpuBetween(before: Map<number, number>, after: Map<number, number>): number {
  let sum = 0;
  for (const [pid, cpu] of after) sum += cpu - (before.get(pid) ?? 0);
  return sum;
}

/** Resident set size in KiB (VmRSS); NaN when the process is gone. */
export function rssKiB(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : Number.NaN;
  } catch {
    return Number.NaN;
  }
}

/** Per-CPU [busy, total] jiffies from /proc/stat. */
export function cpuJiffies(): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const line of readFileSync('/proc/stat', 'utf8').split('\n')) {
    const m = /^cpu(\d+)\s+(.*)$/.exec(line);
    if (!m) continue;
    const v = (m[2] ?? '').split(/\s+/).map(Number);
    const idle = (v[3] ?? 0) + (v[4] ?? 0);
    const total = v.slice(0, 8).reduce((a, b) => a + b, 0);
    out[Number(m[1])] = [total - idle, total];
  }
  return out;
}

/** Busy fraction of each CPU between two cpuJiffies() snapshots. */
export function cpuBusy(before: Array<[number, number]>, after: Array<[number, number]>): number[] {
  return after.map((a, i) => {
    const b = before[i] ?? [0, 0];
    const total = a[1] - b[1];
    return total > 0 ? (a[0] - b[0]) / total : 0;
  });
}

// ---- statistics ----

export function median(xs: readonly number[]): number {
  return quantile(xs, 0.5);
}

/** Linear-interpolated quantile of the finite values; NaN when there are none. */
export function quantile(xs: readonly number[], q: number): number {
  const v = xs.filter(Number.isFinite).sort((a, b) => a - b);
  if (v.length === 0) return Number.NaN;
  const pos = (v.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return (v[lo] as number) + ((v[hi] as number) - (v[lo] as number)) * (pos - lo);
}

export function fmt(x: number, digits = 2): string {
  if (!Number.isFinite(x)) return '–';
  return x.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

export function fmtInt(x: number): string {
  return Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : '–';
}

/**
 * One line of the report's goals: the value and whether it meets the goal, or why it could not be
 * judged ('n/a (…)' reasons read as n/a, anything else as unavailable).
 */
export function goal(
  name: string,
  value: number | undefined,
  ok: (v: number) => boolean,
  show: (v: number) => string,
  why: string | undefined,
): string {
  if (value === undefined || !Number.isFinite(value)) {
    if (why?.startsWith('n/a')) return `- ${name}: **n/a**${why.slice(3)}`;
    return `- ${name}: **unavailable**${why ? ` (${why})` : ''}`;
  }
  return `- ${name}: ${show(value)} → **${ok(value) ? 'met' : 'not met'}**`;
}

/** Renders a markdown table. */
export function table(header: readonly string[], rows: ReadonlyArray<readonly string[]>): string {
  const line = (cells: readonly string[]) => `| ${cells.join(' | ')} |`;
  return [line(header), line(header.map(() => '---')), ...rows.map(line)].join('\n');
}

// ---- environment facts ----

/** Versions of the bench's direct dependencies, from bench/package-lock.json. */
export function lockedVersions(): Record<string, string> {
  const lock = JSON.parse(readFileSync(join(BENCH_DIR, 'package-lock.json'), 'utf8')) as {
    packages: Record<string, { version?: string }>;
  };
  const pkg = JSON.parse(readFileSync(join(BENCH_DIR, 'package.json'), 'utf8')) as {
    devDependencies: Record<string, string>;
  };
  const out: Record<string, string> = {};
  for (const name of Object.keys(pkg.devDependencies))
    out[name] = lock.packages[`node_modules/${name}`]?.version ?? '?';
  return out;
}

export function machineFacts(): { nproc: number; cpuModel: string; memTotal: string; kernel: string } {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  const cpuModel = /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1]?.trim() ?? 'unknown';
  const memKiB = Number(/^MemTotal:\s+(\d+) kB/m.exec(readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? Number.NaN);
  let kernel = 'unknown';
  try {
    kernel = readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim();
  } catch {
    // not Linux-like
  }
  let nproc = 0;
  try {
    nproc = Number(execFileSync('nproc', { encoding: 'utf8' }).trim());
  } catch {
    nproc = 0;
  }
  return { nproc, cpuModel, memTotal: `${fmt(memKiB / 1024 / 1024, 1)} GiB`, kernel };
}

/** The first line a command prints (stdout or stderr), or undefined when it cannot run. */
export function commandVersion(cmd: string, args: readonly string[]): string | undefined {
  try {
    const out = execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 5000 });
    return out.split('\n')[0]?.trim();
  } catch (err) {
    // `wrk -v` prints its version and exits 1
    const e = err as { stdout?: string; stderr?: string; code?: string };
    if (e.code === 'ENOENT') return undefined;
    const text = `${e.stdout ?? ''}${e.stderr ?? ''}`.trim();
    return text === '' ? undefined : text.split('\n')[0];
  }
}

export function onPath(cmd: string): boolean {
  return (process.env.PATH ?? '').split(':').some((d) => d !== '' && existsSync(join(d, cmd)));
}
