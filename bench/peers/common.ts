// Shared settings of the peer servers: port, the bearer token they expect, the allowlisted origin, the reply.
import { createServer, type OutgoingHttpHeaders } from 'node:http';

/** Port from argv[2] or PORT; 0 is refused because the harness must know where to send load. */
export function peerPort(): number {
  const raw = process.argv[2] ?? process.env.PORT ?? '';
  const port = Number(raw);
  if (!Number.isInteger(port) || port <= 0 || port > 65535) {
    process.stderr.write('Usage: node peers/NAME.ts PORT (or PORT=... in the environment)\n');
    process.exit(2);
  }
  return port;
}

/** Loopback only: a benchmark server must never be reachable from the network. */
export const HOST = '127.0.0.1';

/** The exact Authorization header value the peers accept (a cheap string compare, like a cached key lookup). */
export const EXPECTED_AUTHORIZATION = `Bearer ${process.env.BENCH_TOKEN ?? 'bench-token'}`;

/** The one origin on the CORS allowlist of every peer. */
export const ALLOWED_ORIGIN = process.env.BENCH_ORIGIN ?? 'http://localhost:5173';

/** What GET /v1/agents answers: the same shape as the chat server's route. */
export const AGENTS = { agents: [{ id: 'default', description: 'General assistant' }] };

/** Tells the harness the peer accepts connections. */
export function announce(): void {
  process.stdout.write('listening\n');
}

/**
 * The bare node:http peers: GET /v1/agents with the fixed bearer, answered with `headers`
 * (content-type and content-length included) and no middleware.
 */
export function serveAgentsBare(headers: OutgoingHttpHeaders | string[], body: string): void {
  const server = createServer((req, res) => {
    if (req.method !== 'GET' || req.url !== '/v1/agents') {
      res.writeHead(404).end();
      return;
    }
    if (req.headers.authorization !== EXPECTED_AUTHORIZATION) {
      res.writeHead(401).end();
      return;
    }
    res.writeHead(200, headers).end(body);
  });
  server.listen(peerPort(), HOST, announce);
  process.on('SIGTERM', () => server.close(() => process.exit(0)));
}
