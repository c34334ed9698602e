// a′. bare node:http writing the chat server's response header set: the floor for these headers.
// No middleware: the same bearer compare as bare.ts, then writeHead with the fields a GET
// /v1/agents answer carries (security profile, request id, CORS, RateLimit, content type and
// length) as constants. The gap between this and bare.ts is what node:http charges for
// validating, assembling and sending ~18 more header fields; the gap between this and ours is
// our chain.
import { securityHeaderList } from '../../lib/http/middleware/security-headers.ts';
import { AGENTS, ALLOWED_ORIGIN, serveAgentsBare } from './common.ts';

const body = JSON.stringify(AGENTS);
const headers = [
  ...securityHeaderList({ hsts: true }),
  'x-request-id',
  '0b6c3f4e-2f55-4b8e-9a51-6f0a4c1d2e3f',
  'vary',
  'origin',
  'access-control-allow-origin',
  ALLOWED_ORIGIN,
  'access-control-expose-headers',
  'x-request-id, ratelimit, ratelimit-policy, retry-after',
  'ratelimit-policy',
  '"default";q=1000000;w=60',
  'ratelimit',
  '"default";r=999999;t=1',
  'content-type',
  'application/json; charset=utf-8',
  'content-length',
  String(Buffer.byteLength(body)),
];

serveAgentsBare(headers, body);
