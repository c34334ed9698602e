// The SSE benchmark's processes and requests: the fake upstreams, the relays under test (the Portkey
// gateway and ours) and the request each target gets, plus a probe that says whether a target can be measured.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Target } from '../sse-client.ts';
import {
  BENCH_DIR,
  freePort,
  NODE,
  type Proc,
  REPO_ROOT,
  SERVER_CPU,
  sleep,
  startPinned,
  waitForHttp,
  waitForLine,
} from './harness.ts';
import { ORIGIN, type OursPrep, oursCommand, PRODUCTION_ENV, PRODUCTION_NODE_FLAGS, startOurs } from './ours.ts';

/** The relays measured against the upstream, in report order. */
export const RELAY_IDS = ['portkey', 'ours-chat', 'ours-completions'] as const;
export type RelayId = (typeof RELAY_IDS)[number];
/** Row labels in the report. */
export const RELAY_NAMES: Readonly<Record<RelayId, string>> = {
  portkey: 'Portkey gateway: POST /v1/chat/completions',
  'ours-chat': 'ours: POST /v1/chat (full chain + DB writes)',
  'ours-completions': 'ours: POST /v1/chat/completions (full chain)',
};

/** Matches the first content token in both dialects: a non-empty OpenAI delta, or our `event: delta`. */
const OPENAI_TOKEN = '"content":"[^"]';
const OPENAI_BODY = {
  stream: true,
  stream_options: { include_usage: true },
  messages: [{ role: 'user', content: 'hi' }],
};

/** The fake upstream itself, as a client would call the provider. */
export function directTarget(port: number): Target {
  return {
    name: 'upstream direct',
    url: `http://127.0.0.1:${port}/v1/chat/completions`,
    headers: { 'content-type': 'application/json', authorization: 'Bearer bench-upstream-key' },
    body: JSON.stringify({ model: 'bench-model', ...OPENAI_BODY }),
    okMarker: 'data: [DONE]',
    tokenPattern: OPENAI_TOKEN,
  };
}

/** The Portkey gateway relaying to `upstreamBase` (…/v1), with the headers its OpenAI provider needs. */
function portkeyTarget(port: number, upstreamBase: string): Target {
  return {
    name: RELAY_NAMES.portkey,
    url: `http://127.0.0.1:${port}/v1/chat/completions`,
    headers: {
      'content-type': 'application/json',
      authorization: 'Bearer bench-upstream-key',
      'x-portkey-provider': 'openai',
      'x-portkey-custom-host': upstreamBase,
    },
    body: JSON.stringify({ model: 'bench-model', ...OPENAI_BODY }),
    okMarker: 'data: [DONE]',
    tokenPattern: OPENAI_TOKEN,
  };
}

/** Ours on its native route (SSE `event:` frames). */
export function oursChatTarget(port: number, key: string): Target {
  return {
    name: RELAY_NAMES['ours-chat'],
    url: `http://127.0.0.1:${port}/v1/chat`,
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}`, origin: ORIGIN },
    body: JSON.stringify({ message: 'hi' }),
    okMarker: 'event: done',
    tokenPattern: 'event: delta',
  };
}

/** Ours on the OpenAI Chat Completions route; the model is an agent id. */
function oursCompletionsTarget(port: number, key: string): Target {
  return {
    name: RELAY_NAMES['ours-completions'],
    url: `http://127.0.0.1:${port}/v1/chat/completions`,
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}`, origin: ORIGIN },
    body: JSON.stringify({ model: 'default', ...OPENAI_BODY }),
    okMarker: 'data: [DONE]',
    tokenPattern: OPENAI_TOKEN,
  };
}

/** A relay process kind: how to start a fresh one on CPU 0 and the command line for the report. */
export interface RelayServer {
  kind: 'portkey' | 'ours';
  start(port: number, upstreamBase: string, nodeArgs?: readonly string[]): Promise<Proc>;
  command: string;
}

/** One measured relay: the process kind that serves it and the request(s) it gets (one per key for ours). */
export interface Relay {
  id: RelayId;
  name: string;
  server: RelayServer;
  targets(port: number, upstreamBase: string): Target[];
}

const PORTKEY_ENTRY = join(BENCH_DIR, 'node_modules', '@portkey-ai', 'gateway', 'build', 'start-server.js');

/**
 * The gateway with the same V8 flags and malloc arenas as ours, so that memory per stream compares
 * the code and not the process settings.
 */
const portkeyServer: RelayServer = {
  kind: 'portkey',
  command: `NODE_ENV=production ${Object.entries(PRODUCTION_ENV)
    .map(([k, v]) => `${k}=${v}`)
    .join(' ')} taskset -c ${SERVER_CPU} node ${PRODUCTION_NODE_FLAGS.join(' ')} peers/portkey.ts <port>`,
  async start(port, _upstreamBase, nodeArgs = []) {
    if (!existsSync(PORTKEY_ENTRY)) throw new Error('@portkey-ai/gateway is not installed (run `npm ci` in bench/)');
    const env = { PATH: process.env.PATH ?? '', NODE_ENV: 'production', ...PRODUCTION_ENV };
    const args = [...PRODUCTION_NODE_FLAGS, ...nodeArgs, 'peers/portkey.ts', String(port)];
    const proc = startPinned('portkey', SERVER_CPU, NODE, args, { env });
    try {
      await waitForLine(proc, 'listening', 30_000);
      await waitForHttp(proc, `http://127.0.0.1:${port}/`, 10_000);
    } catch (err) {
      await proc.stop(2000);
      throw err;
    }
    return proc;
  },
};

function oursServer(prep: OursPrep): RelayServer {
  return {
    kind: 'ours',
    command: prep.ok ? oursCommand(prep) : 'ours: unavailable',
    async start(port, upstreamBase, nodeArgs = []) {
      if (!prep.ok) throw new Error(prep.reason);
      return startOurs(prep, port, upstreamBase, nodeArgs);
    },
  };
}

/** The relays BENCH_SSE_TARGETS selects (default all); ours' fail to start when `prep` says why. */
export function relaysFor(prep: OursPrep, raw = process.env.BENCH_SSE_TARGETS): Relay[] {
  const wanted = raw === undefined || raw.trim() === '' ? [...RELAY_IDS] : raw.split(',').map((x) => x.trim());
  for (const id of wanted)
    if (!RELAY_IDS.includes(id as RelayId))
      throw new Error(`BENCH_SSE_TARGETS: unknown target '${id}' (use ${RELAY_IDS.join(',')})`);
  const keys = prep.ok ? prep.keys : [];
  const ours = oursServer(prep);
  const all: Relay[] = [
    { id: 'portkey', name: RELAY_NAMES.portkey, server: portkeyServer, targets: (p, up) => [portkeyTarget(p, up)] },
    {
      id: 'ours-chat',
      name: RELAY_NAMES['ours-chat'],
      server: ours,
      targets: (p) => keys.map((k) => oursChatTarget(p, k)),
    },
    {
      id: 'ours-completions',
      name: RELAY_NAMES['ours-completions'],
      server: ours,
      targets: (p) => keys.map((k) => oursCompletionsTarget(p, k)),
    },
  ];
  return all.filter((r) => wanted.includes(r.id));
}

/** What one request says about a target: measurable, its route missing (404), or broken (why). */
export type Probe = { ok: true } | { ok: false; missing: boolean; reason: string };

/** Sends the target's request once and reads it to the end (bounded at 15 s). */
export async function probe(t: Target): Promise<Probe> {
  try {
    const res = await fetch(t.url, {
      method: 'POST',
      headers: t.headers,
      body: t.body,
      signal: AbortSignal.timeout(15_000),
    });
    const text = await res.text();
    if (res.status === 404) return { ok: false, missing: true, reason: 'n/a (route missing)' };
    if (res.status !== 200) return { ok: false, missing: false, reason: `status ${res.status}: ${oneLine(text)}` };
    if (!text.includes(t.okMarker) || !new RegExp(t.tokenPattern).test(text))
      return { ok: false, missing: false, reason: `200 without a token and '${t.okMarker}': ${oneLine(text)}` };
    return { ok: true };
  } catch (err) {
    return { ok: false, missing: false, reason: `no answer: ${(err as Error).message}` };
  }
}

function oneLine(text: string): string {
  return text.replace(/\s+/g, ' ').trim().slice(0, 200);
}

/** The test suite's fake upstream entry (used for 'burst' with --upstream test). */
const TEST_FAKE = join(REPO_ROOT, 'test', 'support', 'fake-upstream-main.ts');

/**
 * Starts a fake upstream pinned to `cpu`: 'burst' streams `chunks` chunks at once, 'hold' one (or `extra[0]`)
 * and stays open, 'paced' one every `extra[0]` ms after a lead of `extra[1]` ms (see upstream.ts).
 */
export async function startUpstream(
  name: string,
  cpu: number,
  mode: 'burst' | 'hold' | 'paced',
  chunks: number,
  which: 'bench' | 'test' = 'bench',
  extra: readonly string[] = [],
): Promise<{ proc: Proc; port: number; cmd: string }> {
  const port = await freePort();
  if (which === 'test' && mode === 'burst') {
    // Prints its base URL when listening; behaviour 'burst' writes `chunks` content chunks as fast as it can.
    const proc = startPinned(name, cpu, NODE, [TEST_FAKE, String(port), '--burst', String(chunks)], {
      cwd: REPO_ROOT,
      env: { PATH: process.env.PATH ?? '' },
    });
    await waitForLine(proc, `http://127.0.0.1:${port}/v1`, 15_000);
    return { proc, port, cmd: `taskset -c ${cpu} node test/support/fake-upstream-main.ts <port> --burst ${chunks}` };
  }
  const args = [join(BENCH_DIR, 'support', 'upstream.ts'), String(port), mode, String(chunks), ...extra];
  const proc = startPinned(name, cpu, NODE, args, { env: { PATH: process.env.PATH ?? '', HOLD_MAX_MS: '180000' } });
  await waitForLine(proc, 'listening', 15_000);
  return { proc, port, cmd: `taskset -c ${cpu} node support/upstream.ts <port> ${[mode, chunks, ...extra].join(' ')}` };
}

/** Ends every held or paced stream of an upstream started here (its `end` command) and waits until it has. */
export async function endUpstream(upstream: Proc): Promise<void> {
  if (!upstream.isAlive()) return;
  const ended = new Promise<void>((resolve) => {
    let seen = '';
    const onData = (chunk: Buffer) => {
      seen += chunk.toString('utf8');
      if (!seen.includes('"event":"ended"')) return;
      upstream.child.stdout?.off('data', onData);
      resolve();
    };
    upstream.child.stdout?.on('data', onData);
  });
  upstream.child.stdin?.write('end\n');
  await Promise.race([ended, upstream.exited, sleep(10_000)]);
}
