// Stand-in OpenAI-compatible upstream for the SSE benchmark: POST .../chat/completions with stream:true.
//
// Usage: node support/upstream.ts PORT MODE [CHUNKS]
//   burst  writes CHUNKS (default 200) content chunks as fast as it can (one write each), then usage and [DONE]
//   hold   writes the role chunk and one content chunk, then keeps the stream open (at most HOLD_MAX_MS)
// Prints 'listening' when ready; loopback only. Its contract is fixed here so the benchmark does not
// change when the test suite's fake upstream does.
import { createServer, type ServerResponse } from 'node:http';

const [portArg, mode = 'burst', chunksArg = '200'] = process.argv.slice(2);
const port = Number(portArg);
const chunks = Number(chunksArg);
if (
  !Number.isInteger(port) ||
  port <= 0 ||
  (mode !== 'burst' && mode !== 'hold') ||
  !Number.isInteger(chunks) ||
  chunks < 1
) {
  process.stderr.write('Usage: node support/upstream.ts PORT burst|hold [CHUNKS]\n');
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
const USAGE = `data: ${JSON.stringify({ id: 'chatcmpl-bench', object: 'chat.completion.chunk', created: 1_764_000_000, model: 'bench-model', choices: [], usage: { prompt_tokens: 5, completion_tokens: chunks, total_tokens: chunks + 5 } })}\n\n`;
const DONE = 'data: [DONE]\n\n';
const SSE_HEADERS = { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' };
const held = new Set<ServerResponse>();

const server = createServer((req, res) => {
  if (req.method !== 'POST' || !req.url?.endsWith('/chat/completions')) {
    res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":{"message":"not found"}}');
    return;
  }
  // Read the body to its end (keep-alive needs it consumed); its content does not change the answer.
  req.resume();
  req.on('end', () => {
    res.writeHead(200, SSE_HEADERS);
    if (mode === 'burst') {
      // One write per chunk, all in the same tick (what a fast model server does; the kernel may coalesce them).
      // Not corked: on Node 24.21, res.cork() + writes + end() without uncork() sends only the first write.
      res.write(ROLE);
      for (const token of TOKENS) res.write(token);
      res.write(STOP);
      res.write(USAGE);
      res.end(DONE);
      return;
    }
    res.write(ROLE);
    res.write(TOKENS[0]);
    held.add(res);
    const timer = setTimeout(() => res.end(STOP + USAGE + DONE), HOLD_MAX_MS);
    res.on('close', () => {
      clearTimeout(timer);
      held.delete(res);
    });
  });
});
server.keepAliveTimeout = 60_000;
server.listen(port, '127.0.0.1', () => process.stdout.write('listening\n'));
process.on('SIGTERM', () => {
  for (const res of held) res.destroy();
  server.close(() => process.exit(0));
  server.closeAllConnections();
});
