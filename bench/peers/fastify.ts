// c+. fastify 5 + @fastify/helmet + @fastify/cors (one allowlisted origin) + @fastify/rate-limit
// + its own pino logger to /dev/null.

import cors from '@fastify/cors';
import helmet from '@fastify/helmet';
import rateLimit from '@fastify/rate-limit';
import Fastify from 'fastify';
import { AGENTS, ALLOWED_ORIGIN, announce, EXPECTED_AUTHORIZATION, HOST, peerPort } from './common.ts';

// Fastify's default request logging (two lines a request) at level info, written to /dev/null.
const app = Fastify({ logger: { level: 'info', file: '/dev/null' } });
await app.register(helmet);
await app.register(cors, { origin: [ALLOWED_ORIGIN] });
// A limit nothing reaches: the bucket is still kept and its headers still sent, so its cost is measured.
await app.register(rateLimit, { max: 1_000_000_000, timeWindow: 60_000 });

app.get('/v1/agents', async (req, reply) => {
  if (req.headers.authorization !== EXPECTED_AUTHORIZATION) return reply.code(401).send({ error: 'unauthorized' });
  return AGENTS;
});

await app.listen({ port: peerPort(), host: HOST });
announce();
process.on('SIGTERM', () => void app.close().then(() => process.exit(0)));
