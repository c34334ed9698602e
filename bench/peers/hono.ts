// e+. hono + @hono/node-server + secureHeaders + cors (one allowlisted origin) + bodyLimit + requestId.

import { serve } from '@hono/node-server';
import { Hono } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { cors } from 'hono/cors';
import { requestId } from 'hono/request-id';
import { secureHeaders } from 'hono/secure-headers';
import { AGENTS, ALLOWED_ORIGIN, announce, EXPECTED_AUTHORIZATION, HOST, peerPort } from './common.ts';

const app = new Hono();
app.use(requestId());
app.use(secureHeaders());
app.use(cors({ origin: [ALLOWED_ORIGIN] }));
app.use(bodyLimit({ maxSize: 10_240 }));

app.get('/v1/agents', (c) => {
  if (c.req.header('authorization') !== EXPECTED_AUTHORIZATION) return c.json({ error: 'unauthorized' }, 401);
  return c.json(AGENTS);
});

const server = serve({ fetch: app.fetch, port: peerPort(), hostname: HOST }, announce);
process.on('SIGTERM', () => server.close(() => process.exit(0)));
