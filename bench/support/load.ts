// HTTP load generators: wrk (preferred, when installed) or autocannon (a bench dependency), pinned to CPU 1.
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { BENCH_DIR, CLIENT_CPU, commandVersion, lockedVersions, NODE, onPath, startPinned } from './harness.ts';

export type Generator = 'wrk' | 'autocannon';

export interface LoadResult {
  requests: number;
  durationS: number;
  rps: number;
  p50ms: number;
  p99ms: number;
  non2xx: number;
  errors: number;
}

/**
 * Picks the generator: `wanted` if given, else wrk when on PATH, else autocannon. Installs wrk
 * (apt-get) only when asked with --install-wrk, and says so; nothing is installed silently.
 */
export function chooseGenerator(
  wanted: string | undefined,
  installWrk: boolean,
): { gen: Generator; version: string; note: string } {
  if (installWrk && !onPath('wrk')) {
    process.stdout.write('--install-wrk: running `apt-get install -y wrk` (Debian package)\n');
    try {
      execFileSync('apt-get', ['install', '-y', 'wrk'], { stdio: 'inherit', timeout: 300_000 });
    } catch {
      process.stdout.write('apt-get install wrk failed; continuing without it\n');
    }
  }
  const hasWrk = onPath('wrk');
  if (wanted === 'wrk' && !hasWrk)
    throw new Error('--gen wrk: wrk is not installed (apt-get install -y wrk, or run with --install-wrk)');
  const gen: Generator = wanted === 'autocannon' ? 'autocannon' : hasWrk ? 'wrk' : 'autocannon';
  if (gen === 'wrk') {
    const v = commandVersion('wrk', ['-v']) ?? 'wrk (version unknown)';
    return { gen, version: v.replace(/\s*Copyright.*$/, ''), note: 'wrk found on PATH' };
  }
  const note = hasWrk
    ? 'autocannon (asked for with --gen autocannon)'
    : 'wrk not installed (`apt-get install -y wrk` or --install-wrk to use it); using autocannon';
  return { gen, version: `autocannon ${lockedVersions().autocannon ?? '?'}`, note };
}

/** The command line a run uses, with the bearer value hidden. */
export function loadCommand(
  gen: Generator,
  url: string,
  connections: number,
  durationS: number,
  headers: Record<string, string>,
): string {
  const shown = Object.entries(headers).map(
    ([k, v]) => [k, k.toLowerCase() === 'authorization' ? 'Bearer <key>' : v] as const,
  );
  if (gen === 'wrk') {
    const h = shown.map(([k, v]) => `-H '${k}: ${v}'`).join(' ');
    return `taskset -c ${CLIENT_CPU} wrk -t1 -c${connections} -d${durationS}s --latency ${h} ${url}`;
  }
  const job = { url, connections, durationS, headers: Object.fromEntries(shown) };
  return (
    `taskset -c ${CLIENT_CPU} node support/autocannon-run.ts '${JSON.stringify(job)}'` +
    '  # autocannon({url, connections, duration, headers, pipelining: 1})'
  );
}

/** Runs one measurement of `durationS` seconds. */
export async function runLoad(
  gen: Generator,
  url: string,
  connections: number,
  durationS: number,
  headers: Record<string, string>,
): Promise<LoadResult> {
  const timeoutMs = (durationS + 30) * 1000;
  if (gen === 'wrk') {
    const args = ['-t1', `-c${connections}`, `-d${durationS}s`, '--latency'];
    for (const [k, v] of Object.entries(headers)) args.push('-H', `${k}: ${v}`);
    args.push(url);
    return parseWrk(await collect('wrk', 'wrk', args, timeoutMs));
  }
  const job = JSON.stringify({ url, connections, durationS, headers });
  const out = await collect('autocannon', NODE, [join(BENCH_DIR, 'support', 'autocannon-run.ts'), job], timeoutMs);
  const r = JSON.parse(out.trim().split('\n').pop() ?? '{}') as Omit<LoadResult, 'rps'>;
  return { ...r, rps: r.requests / r.durationS };
}

async function collect(name: string, cmd: string, args: string[], timeoutMs: number): Promise<string> {
  const p = startPinned(name, CLIENT_CPU, cmd, args);
  const timer = setTimeout(() => void p.stop(1000), timeoutMs);
  const code = await p.exited;
  clearTimeout(timer);
  if (code !== 0) throw new Error(`${name} exited with ${code}: ${p.output().slice(-800)}`);
  return p.output();
}

function toMs(value: string, unit: string): number {
  const v = Number(value);
  if (unit === 'us') return v / 1000;
  if (unit === 's') return v * 1000;
  if (unit === 'm') return v * 60_000;
  return v;
}

/** Parses `wrk --latency` output. */
export function parseWrk(out: string): LoadResult {
  const total = /(\d+) requests in ([\d.]+)(us|ms|s|m)/.exec(out);
  if (!total) throw new Error(`cannot parse wrk output: ${out.slice(-500)}`);
  const requests = Number(total[1]);
  const durationS = toMs(total[2] as string, total[3] as string) / 1000;
  const pct = (p: string) => {
    const m = new RegExp(`^\\s*${p}%\\s+([\\d.]+)(us|ms|s|m)\\s*$`, 'm').exec(out);
    return m ? toMs(m[1] as string, m[2] as string) : Number.NaN;
  };
  const non2xx = Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0);
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  const errors = sock ? Number(sock[1]) + Number(sock[2]) + Number(sock[3]) + Number(sock[4]) : 0;
  return { requests, durationS, rps: requests / durationS, p50ms: pct('50'), p99ms: pct('99'), non2xx, errors };
}
