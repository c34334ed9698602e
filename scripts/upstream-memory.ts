// Memory of the upstream client alone: N streams held open through lib/chat/upstream.ts, nothing else.
//
//   npx node --expose-gc scripts/upstream-memory.ts [streams=1000]
//   HEAP_SNAPSHOT_DIR=dir also writes idle.heapsnapshot and open.heapsnapshot (see scripts/heap-diff.ts)
//
// The fake upstream (bench/support/upstream.ts 'hold': a role chunk and one token, then silence) runs
// in a child process so its memory stays out of the figures. Each stream is read to its first
// delta and then waits on next(), as the chat service does while the model is quiet. Prints
// process.memoryUsage() per stream, as running and after a forced GC, against a warmed-up baseline.
import { spawn } from 'node:child_process';
import { type AddressInfo, createServer } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { writeHeapSnapshot } from 'node:v8';
import { createUpstream, type UpstreamStream } from '../lib/chat/upstream.ts';
import { parseConfig } from '../lib/config.ts';
import { createLogger } from '../lib/log.ts';

const STREAMS = Number(process.argv[2] ?? 1000);
const OPEN_CONCURRENCY = 50;
const gc = (globalThis as { gc?: () => void }).gc;
if (gc === undefined) throw new Error('run with --expose-gc');

interface Held {
  controller: AbortController;
  pending: Promise<unknown>;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer().once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

async function startHoldUpstream(port: number): Promise<() => void> {
  const child = spawn(
    process.execPath,
    [join(import.meta.dirname, '..', 'bench', 'support', 'upstream.ts'), String(port), 'hold'],
    {
      env: { PATH: process.env.PATH ?? '', HOLD_MAX_MS: '600000' },
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  for await (const line of createInterface({ input: child.stdout }))
    if (line.trim() === 'listening') return () => child.kill('SIGTERM');
  throw new Error('the hold upstream exited before listening');
}

function kib(bytes: number): number {
  return bytes / 1024;
}

function snapshot(): NodeJS.MemoryUsage {
  return process.memoryUsage();
}

function afterGc(): NodeJS.MemoryUsage {
  gc?.();
  gc?.();
  return process.memoryUsage();
}

function maybeSnapshot(name: string): void {
  const dir = process.env.HEAP_SNAPSHOT_DIR;
  if (dir !== undefined && dir !== '') writeHeapSnapshot(join(dir, `${name}.heapsnapshot`));
}

async function main(): Promise<void> {
  const port = await freePort();
  const stop = await startHoldUpstream(port);
  const parsed = parseConfig({
    OPENAI_BASE_URL: `http://127.0.0.1:${port}/v1`,
    OPENAI_API_KEY: 'memory-probe-key',
    UPSTREAM_MAX_CONNECTIONS: String(STREAMS + 100),
    UPSTREAM_IDLE_TIMEOUT_MS: '600000',
    UPSTREAM_TIMEOUT_MS: '600000',
  });
  if (!parsed.ok) throw new Error(parsed.problems.join('; '));
  const upstream = createUpstream(parsed.config, createLogger({ level: 'error', sink: () => {} }));
  const request = { model: 'bench-model', messages: [{ role: 'user' as const, content: 'hi' }] };

  async function openOne(): Promise<Held> {
    const controller = new AbortController();
    const stream: UpstreamStream = await upstream.stream(request, controller.signal);
    const it = stream[Symbol.asyncIterator]();
    const first = await it.next();
    if (first.done === true || first.value.type !== 'delta') throw new Error('expected a first delta');
    const pending = it.next().catch(() => undefined);
    return { controller, pending };
  }

  async function openMany(n: number): Promise<Held[]> {
    const held: Held[] = [];
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < n) {
        next++;
        held.push(await openOne());
      }
    };
    await Promise.all(Array.from({ length: Math.min(OPEN_CONCURRENCY, n) }, worker));
    return held;
  }

  async function closeAll(held: Held[]): Promise<void> {
    for (const h of held) h.controller.abort();
    await Promise.all(held.map((h) => h.pending));
  }

  await closeAll(await openMany(Math.min(100, STREAMS))); // warm-up: code compiled, pools created
  await new Promise((r) => setTimeout(r, 500));
  const idle = afterGc();
  maybeSnapshot('idle');
  const held = await openMany(STREAMS);
  await new Promise((r) => setTimeout(r, 1000));
  const running = snapshot();
  const collected = afterGc();
  maybeSnapshot('open');
  const keys = ['rss', 'heapUsed', 'heapTotal', 'external', 'arrayBuffers'] as const;
  const per = (m: NodeJS.MemoryUsage) =>
    Object.fromEntries(keys.map((k) => [k, Number(kib((m[k] - idle[k]) / STREAMS).toFixed(1))]));
  process.stdout.write(
    `${JSON.stringify({
      streams: STREAMS,
      stats: upstream.stats(),
      kibPerStreamAsRunning: per(running),
      kibPerStreamAfterGc: per(collected),
    })}\n`,
  );
  await closeAll(held);
  await upstream.close();
  stop();
}

await main();
