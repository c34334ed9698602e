// Measures the time to first byte the chat server adds over calling the fake upstream directly.
//
//   npx node scripts/ttfb.ts                                    # embedded PGlite
//   TEST_DATABASE_URL=postgres://… npx node scripts/ttfb.ts     # real PostgreSQL
//   TTFB_RUNS=500 npx node scripts/ttfb.ts
//
// Both sides are hit sequentially over one keep-alive socket each, interleaved so load drift
// hits both alike. "First byte" is the first body byte (the server's `event: start`, sent once
// the upstream has answered); "first token" is the first text delta. The server run is the
// whole product path: auth, rate limit, slot, the user message stored, the SDK call, SSE.
import { Agent, request } from 'node:http';
import { performance } from 'node:perf_hooks';
import { mintKey } from '../test/support/chat.ts';
import { startFakeUpstream } from '../test/support/fake-upstream.ts';
import { startTestServer } from '../test/support/server.ts';

const RUNS = Number(process.env['TTFB_RUNS'] ?? 200);
const WARMUP = 30;

interface Timing {
  firstByteMs: number;
  firstTokenMs: number;
}

/** POSTs `body` and times the first body byte and the first chunk that carries `token`. */
function timeOne(
  agent: Agent,
  url: string,
  headers: Record<string, string>,
  body: string,
  token: string,
): Promise<Timing> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    let firstByteMs = -1;
    let firstTokenMs = -1;
    let seen = '';
    const req = request(url, {
      method: 'POST',
      agent,
      headers: { ...headers, 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) },
    });
    req.on('error', reject);
    req.on('response', (res) => {
      if (res.statusCode !== 200) reject(new Error(`Unexpected status ${res.statusCode} from ${url}`));
      res.on('data', (chunk: Buffer) => {
        const now = performance.now();
        if (firstByteMs < 0) firstByteMs = now - started;
        if (firstTokenMs < 0) {
          seen += chunk.toString('utf8');
          if (seen.includes(token)) firstTokenMs = now - started;
        }
      });
      res.on('end', () => resolve({ firstByteMs, firstTokenMs }));
      res.on('error', reject);
    });
    req.end(body);
  });
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1
    ? (sorted[mid] as number)
    : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] as number;
}

async function main(): Promise<void> {
  const fake = await startFakeUpstream();
  const server = await startTestServer({
    OPENAI_BASE_URL: fake.url,
    LOG_LEVEL: 'warn',
    UPSTREAM_MAX_RETRIES: '0',
    RATE_LIMIT_PER_MINUTE: '1000000',
    RATE_LIMIT_BURST: '1000000',
  });
  const agents = [
    new Agent({ keepAlive: true, maxSockets: 1 }),
    new Agent({ keepAlive: true, maxSockets: 1 }),
  ] as const;
  try {
    const key = await mintKey(server.db.pool);
    const direct = (): Promise<Timing> =>
      timeOne(
        agents[0],
        `${fake.url}/chat/completions`,
        { authorization: 'Bearer direct' },
        JSON.stringify({
          model: 'gpt-4o-mini',
          messages: [{ role: 'user', content: 'Say hello' }],
          stream: true,
          stream_options: { include_usage: true },
        }),
        '"content":"Hel"',
      );
    const viaServer = (): Promise<Timing> =>
      timeOne(
        agents[1],
        `${server.url}/v1/chat`,
        { authorization: `Bearer ${key}` },
        JSON.stringify({ message: 'Say hello' }),
        'event: delta',
      );
    for (let i = 0; i < WARMUP; i++) {
      await direct();
      await viaServer();
    }
    const a: Timing[] = [];
    const b: Timing[] = [];
    for (let i = 0; i < RUNS; i++) {
      a.push(await direct());
      b.push(await viaServer());
    }
    const row = (label: string, xs: number[]): string =>
      `${label.padEnd(30)} median ${median(xs).toFixed(2).padStart(7)} ms   ` +
      `p90 ${percentile(xs, 90).toFixed(2).padStart(7)} ms`;
    console.log(`time to first byte, ${RUNS} sequential requests each (database: ${server.db.kind})`);
    console.log(
      row(
        'fake upstream, first byte',
        a.map((t) => t.firstByteMs),
      ),
    );
    console.log(
      row(
        'chat server, first byte',
        b.map((t) => t.firstByteMs),
      ),
    );
    console.log(
      row(
        'fake upstream, first token',
        a.map((t) => t.firstTokenMs),
      ),
    );
    console.log(
      row(
        'chat server, first token',
        b.map((t) => t.firstTokenMs),
      ),
    );
    const added = (pick: (t: Timing) => number): string => (median(b.map(pick)) - median(a.map(pick))).toFixed(2);
    console.log(
      `added by the server (median difference): first byte ${added((t) => t.firstByteMs)} ms, ` +
        `first token ${added((t) => t.firstTokenMs)} ms`,
    );
  } finally {
    for (const agent of agents) agent.destroy();
    await server.close();
    await fake.close();
  }
}

await main();
