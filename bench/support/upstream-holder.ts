// The upstream share of a live answer, as a process of its own: streams held open through the server's
// own upstream client (lib/chat/upstream.ts: the openai SDK over its undici Agent, with its deadlines),
// each read event by event to its end as the turn reads it, and nothing else: no HTTP server, no client
// socket, no answer, no database. The detached-memory part subtracts its memory per stream from ours'.
//
// Usage: node support/upstream-holder.ts UPSTREAM_BASE_URL   (prints 'ready')
//   stdin `open N`  opens N streams, 50 at a time; prints {"event":"open",…} once each has its first delta
// Streams end when the upstream ends them (its `end` command); SIGTERM closes everything.
import { createInterface } from 'node:readline';
import { createUpstream, type UpstreamStream } from '../../lib/chat/upstream.ts';
import { parseConfig } from '../../lib/config.ts';
import { createLogger } from '../../lib/log.ts';
import { OURS_SETTINGS } from './ours.ts';

const OPEN_CONCURRENCY = 50;
const OPEN_TIMEOUT_MS = 60_000;

const base = process.argv[2] ?? '';
if (!/^http:\/\/127\.0\.0\.1:\d+\/v1$/.test(base)) {
  process.stderr.write('Usage: node support/upstream-holder.ts http://127.0.0.1:PORT/v1\n');
  process.exit(2);
}
// The same upstream settings ours runs with in the benchmark (pool size, deadlines, key).
const upstreamEnv = Object.fromEntries(Object.entries(OURS_SETTINGS).filter(([k]) => k.startsWith('UPSTREAM_')));
const parsed = parseConfig({ ...upstreamEnv, OPENAI_API_KEY: OURS_SETTINGS.OPENAI_API_KEY, OPENAI_BASE_URL: base });
if (!parsed.ok) throw new Error(parsed.problems.join('; '));
const upstream = createUpstream(parsed.config, createLogger({ level: 'silent', sink: () => {} }));
const request = { model: 'bench-model', messages: [{ role: 'user' as const, content: 'hi' }] };
const controllers = new Set<AbortController>();

/** Opens one stream, resolves once its first delta is in, and keeps reading it (discarding) to its end. */
function openOne(): Promise<boolean> {
  const controller = new AbortController();
  controllers.add(controller);
  const timer = setTimeout(() => controller.abort(), OPEN_TIMEOUT_MS);
  return new Promise((resolve) => {
    const read = async () => {
      const stream: UpstreamStream = await upstream.stream(request, controller.signal);
      for await (const event of stream) {
        if (event.type !== 'delta') continue;
        clearTimeout(timer);
        resolve(true);
      }
    };
    read()
      .catch(() => {})
      .finally(() => {
        clearTimeout(timer);
        controllers.delete(controller);
        resolve(false);
      });
  });
}

async function openMany(n: number): Promise<void> {
  const t0 = performance.now();
  let next = 0;
  let open = 0;
  const worker = async () => {
    while (next < n) {
      next++;
      if (await openOne()) open++;
    }
  };
  await Promise.all(Array.from({ length: Math.min(OPEN_CONCURRENCY, n) }, worker));
  const failed = n - open;
  const failures = failed > 0 ? { 'no first delta': failed } : {};
  process.stdout.write(
    `${JSON.stringify({ event: 'open', open, failed, failures, openMs: performance.now() - t0 })}\n`,
  );
}

createInterface({ input: process.stdin }).on('line', (line) => {
  const m = /^open (\d{1,6})$/.exec(line.trim());
  if (m) void openMany(Number(m[1]));
});
process.on('SIGTERM', () => {
  for (const c of controllers) c.abort();
  void upstream.close().finally(() => process.exit(0));
});
process.stdout.write('ready\n');
