// a. bare node:http: the physical limit. No middleware; the bearer check and the JSON reply only.
import { createServer } from 'node:http';
import { AGENTS, announce, EXPECTED_AUTHORIZATION, HOST, peerPort } from './common.ts';

const body = JSON.stringify(AGENTS);
const headers = { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) };

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
