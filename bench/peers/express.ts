// d+. express 5 + helmet + cors (one allowlisted origin) + express-rate-limit + pino-http writing to /dev/null.

import cors from 'cors';
import express from 'express';
import { rateLimit } from 'express-rate-limit';
import helmet from 'helmet';
import { pino } from 'pino';
import { pinoHttp } from 'pino-http';
import { AGENTS, ALLOWED_ORIGIN, announce, EXPECTED_AUTHORIZATION, HOST, peerPort } from './common.ts';

const app = express();
app.use(pinoHttp({ logger: pino({ level: 'info' }, pino.destination('/dev/null')) }));
app.use(helmet());
app.use(cors({ origin: [ALLOWED_ORIGIN] }));
// A limit nothing reaches: the counter is still kept and its headers still sent, so its cost is measured.
app.use(rateLimit({ windowMs: 60_000, limit: 1_000_000_000, standardHeaders: 'draft-8', legacyHeaders: false }));

interface Res {
  status(code: number): Res;
  json(body: unknown): void;
}
app.get('/v1/agents', (req: { headers: Record<string, string | undefined> }, res: Res) => {
  if (req.headers.authorization !== EXPECTED_AUTHORIZATION) {
    res.status(401).json({ error: 'unauthorized' });
    return;
  }
  res.json(AGENTS);
});

const server = app.listen(peerPort(), HOST, announce);
process.on('SIGTERM', () => server.close(() => process.exit(0)));
