// Stand-in OpenAI-compatible upstream for the SSE benchmark: POST .../chat/completions with stream:true.
//
// Usage: node support/upstream.ts PORT MODE [CHUNKS] [A] [B]
//   burst  writes CHUNKS (default 200) content chunks as fast as it can (one write each), then usage and [DONE]
//   hold   writes the role chunk and the first A (default 1) content chunks, then keeps the stream open
//   paced  writes the role chunk, B ms later (default 0) the first content chunk, then one every A ms
//          until CHUNKS are out, then usage and [DONE]
// Held and paced streams end at HOLD_MAX_MS at the latest; the line `end` on stdin ends every open one
// now (finish, usage, [DONE]) and then closes the idle keep-alive connections, so that the relay's pool
// holds no upstream socket afterwards. Prints 'listening' when ready; loopback only. Its contract is
// fixed here so the benchmark does not change when the test suite's fake upstream does.
import { createServer, type ServerResponse } from 'node:http';
import { createInterface } from 'node:readline';

const [portArg, mode = 'burst', chunksArg = '200', aArg, bArg] = process.argv.slice(2);
const port = Number(portArg);
const chunks = Number(chunksArg);
const held = mode === 'hold' ? Number(aArg ?? 1) : 0;
const intervalMs = mode === 'paced' ? Number(aArg) : 0;
const leadMs = mode === 'paced' ? Number(bArg ?? 0) : 0;
const whole = (x: number, min: number) => Number.isInteger(x) && x >= min;
if (
  !whole(port, 1) ||
  !['burst', 'hold', 'paced'].includes(mode) ||
  !whole(chunks, 1) ||
  !whole(held, 0) ||
  held > chunks ||
  !whole(intervalMs, 0) ||
  !whole(leadMs, 0) ||
  (mode === 'paced' && intervalMs < 1)
) {
  process.stderr.write('Usage: node support/upstream.ts PORT burst|hold|paced [CHUNKS] [A] [B]\n');
  process.exit(2);
}
// Bound every held stream so that nothing outlives a crashed harness for long.
const HOLD_MAX_MS = Number(process.env.HOLD_MAX_MS ?? 180_000);

function event(delta: object, finish: string | null = null, extra: object = {}): string {
  const chunk = {
    id: 'chatcmpl-bench',
    object: 'chat.completion.chunk',
    created: 1_764_000_000,
    model: 'bench-model',
    choices: [{ index: 0, delta, finish_reason: finish }],
    ...extra,
  };
  return `data: ${JSON.stringify(chunk)}\n\n`;
}
const ROLE = event({ role: 'assistant', content: '' });
const TOKENS = Array.from({ length: chunks }, (_, i) => event({ content: `tok${i} ` }));
const STOP = event({}, 'stop');
const USAGE_CHUNK = {
  id: 'chatcmpl-bench',
  object: 'chat.completion.chunk',
  created: 1_764_000_000,
  model: 'bench-model',
  choices: [],
  usage: { prompt_tokens: 5, completion_tokens: chunks, total_tokens: chunks + 5 },
};
const USAGE = `data: ${JSON.stringify(USAGE_CHUNK)}\n\n`;
const DONE = 'data: [DONE]\n\n';
const SSE_HEADERS = { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' };
/** Open held or paced streams, each with the function that ends it now. */
const open = new Map<ServerResponse, () => void>();

/** Keeps `res` open until `end` (or HOLD_MAX_MS); `tick` (paced) writes the next chunk, true when all are out. */
function keepOpen(res: ServerResponse, tick?: () => boolean): void {
  let timer: NodeJS.Timeout | undefined;
  const stop = setTimeout(() => finish(), HOLD_MAX_MS);
  function finish(): void {
    clearTimeout(timer);
    clearTimeout(stop);
    open.delete(res);
    if (!res.writableEnded) res.end(STOP + USAGE + DONE);
  }
  function next(): void {
    if (tick?.()) finish();
    else timer = setTimeout(next, intervalMs);
  }
  if (tick) timer = setTimeout(next, leadMs);
  open.set(res, finish);
  res.on('close', () => {
    clearTimeout(timer);
    clearTimeout(stop);
    open.delete(res);
  });
}

const server = createServer((req, res) => {
  if (req.method !== 'POST' || !req.url?.endsWith('/chat/completions')) {
    res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":{"message":"not found"}}');
    return;
  }
  // Read the body to its end (keep-alive needs it consumed); its content does not change the answer.
  req.resume();
  req.on('end', () => {
    res.writeHead(200, SSE_HEADERS);
    res.write(ROLE);
    if (mode === 'burst') {
      // One write per chunk, all in the same tick (what a fast model server does; the kernel may coalesce them).
      // Not corked: on Node 24.21, res.cork() + writes + end() without uncork() sends only the first write.
      for (const token of TOKENS) res.write(token);
      res.write(STOP);
      res.write(USAGE);
      res.end(DONE);
      return;
    }
    if (mode === 'hold') {
      for (const token of TOKENS.slice(0, held)) res.write(token);
      keepOpen(res);
      return;
    }
    let sent = 0;
    keepOpen(res, () => {
      res.write(TOKENS[sent++] as string);
      return sent >= chunks;
    });
  });
});
server.keepAliveTimeout = 60_000;
server.listen(port, '127.0.0.1', () => process.stdout.write('listening\n'));
createInterface({ input: process.stdin }).on('line', (line) => {
  if (line.trim() !== 'end') return;
  const n = open.size;
  for (const finish of [...open.values()]) finish();
  // Once the relays have read the ends, drop the keep-alive connections they would reuse.
  setTimeout(() => {
    server.closeIdleConnections();
    process.stdout.write(`${JSON.stringify({ event: 'ended', streams: n })}\n`);
  }, 500);
});
process.on('SIGTERM', () => {
  for (const res of open.keys()) res.destroy();
  server.close(() => process.exit(0));
  server.closeAllConnections();
});
